"""The skorch part: an internal ``NeuralNet`` whose training step is a meta-step.

skorch supplies the loop (epochs, callbacks, history, progress bar, printed
log, device handling); this module changes two override points:

- :meth:`MetaTrainingNet.get_iterator` yields meta-batches of episodes drawn
  from the training data instead of mini-batches of samples;
- :meth:`MetaTrainingNet.train_step_single` computes the meta-gradient
  (FOMAML, MAML, Reptile or ANIL) of a meta-batch and leaves it in ``.grad`` for skorch's
  optimizer step.

The net is private: :class:`fomaml_sklearn.FOMAMLClassifier` builds it in
``fit`` (``NeuralNet`` itself does not pass scikit-learn's estimator checks).
"""

import torch
from skorch import NeuralNet
from skorch.callbacks import PassthroughScoring

from .episodes import EpisodeSampler
from .learner import TaskRunner, meta_gradient

__all__ = ["MetaBatch", "EpisodeLoader", "MetaTrainingNet"]


class MetaBatch:
    """A meta-batch: ``n_tasks`` episodes as stacked tensors on the device.

    ``len(batch)`` is the number of tasks (what skorch records as the batch
    size). Iterating yields ``(x_support, y_support, x_query, y_query)``.
    """

    def __init__(self, X, episodes, device):
        sup = torch.as_tensor(episodes.support_idx, device=X.device)
        qry = torch.as_tensor(episodes.query_idx, device=X.device)
        self.x_support = X[sup.reshape(-1)].reshape(sup.shape + X.shape[1:])
        self.x_query = X[qry.reshape(-1)].reshape(qry.shape + X.shape[1:])
        self.y_support = torch.as_tensor(episodes.support_y, device=device)
        self.y_query = torch.as_tensor(episodes.query_y, device=device)
        self.n_classes = episodes.classes.shape[1]

    def __len__(self):
        return len(self.x_support)

    def __iter__(self):
        for x_s, x_q in zip(self.x_support, self.x_query):
            yield x_s, self.y_support, x_q, self.y_query


class EpisodeLoader:
    """Iterable over meta-batches, ``n_batches`` per pass (one epoch).

    Every pass continues the same random generator, so epochs see new
    episodes and the whole run is reproducible from one seed.

    Parameters
    ----------
    dataset : skorch.dataset.Dataset
        Holds ``X`` (a float tensor on the device) and ``y`` (class codes).
    batch_size : int
        Tasks per meta-batch.
    shape : EpisodeShape
        Episode shape.
    rng : numpy.random.Generator
        Source of randomness for the episodes.
    n_batches : int
        Meta-batches per pass.
    """

    def __init__(self, dataset, batch_size, shape, rng, n_batches):
        self.X = dataset.X
        y = dataset.y
        self.y = y.cpu().numpy() if torch.is_tensor(y) else y
        self.batch_size = batch_size
        self.n_batches = n_batches
        self.sampler = EpisodeSampler(self.y, shape, rng)

    def __len__(self):
        return self.n_batches

    def __iter__(self):
        for _ in range(self.n_batches):
            episodes = self.sampler.sample(self.batch_size)
            yield MetaBatch(self.X, episodes, self.X.device)


class MetaTrainingNet(NeuralNet):
    """skorch ``NeuralNet`` whose training step is one FOMAML meta-step.

    Parameters (beyond ``NeuralNet``'s)
    -----------------------------------
    inner_lr : float
        Inner SGD rate alpha.
    n_inner_steps : int
        Inner SGD steps per task.
    transductive : bool
        Normalise the queries with their own batch statistics.
    algorithm : str
        The update rule, a key of :data:`fomaml_sklearn.learner.ALGORITHMS`.
    autocast_dtype : torch.dtype or None
        Mixed precision for the forward passes.
    """

    def __init__(self, module, *args, inner_lr=0.4, n_inner_steps=1,
                 transductive=False, autocast_dtype=None, algorithm="fomaml", **kwargs):
        super().__init__(module, *args, **kwargs)
        self.inner_lr = inner_lr
        self.n_inner_steps = n_inner_steps
        self.transductive = transductive
        self.autocast_dtype = autocast_dtype
        self.algorithm = algorithm

    @property
    def _default_callbacks(self):
        return super()._default_callbacks + [
            ("train_query_acc", PassthroughScoring(
                name="train_query_acc", lower_is_better=False, on_train=True)),
        ]

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        # The scratch network lives only while training: it is not pickled.
        self.runner_ = TaskRunner(self.module_, self.autocast_dtype)
        try:
            return super().fit_loop(X, y, epochs=epochs, **fit_params)
        finally:
            self.runner_ = None

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        grads, loss, accuracy = meta_gradient(
            self.runner_, batch, batch.n_classes, self.inner_lr,
            self.n_inner_steps, self.transductive, self.algorithm,
        )
        for param, grad in zip(self.module_.parameters(), grads):
            param.grad = grad
        self.history.record_batch("train_query_acc", accuracy)
        return {"loss": torch.tensor(loss), "y_pred": None}
