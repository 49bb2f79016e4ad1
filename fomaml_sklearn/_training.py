"""The skorch part: an internal ``NeuralNet`` whose training step is a meta-step.

skorch supplies the loop (epochs, callbacks, history, progress bar, printed
log, device handling); this module changes two override points:

- :meth:`MetaTrainingNet.get_iterator` yields meta-batches of episodes drawn
  from the training data instead of mini-batches of samples;
- :meth:`MetaTrainingNet.train_step_single` computes the meta-gradient
  (FOMAML, MAML, Reptile or ANIL) of a meta-batch and leaves it in ``.grad`` for skorch's
  optimizer step;
- :meth:`MetaTrainingNet.validation_step` adapts to each validation episode
  (classes unseen in training, the same episodes every epoch) and records the
  query loss and few-shot accuracy (``valid_loss``, ``valid_acc``), so skorch's
  ``EarlyStopping``, ``Checkpoint`` and ``LRScheduler`` can monitor them.

The net is private: :class:`fomaml_sklearn.FOMAMLClassifier` builds it in
``fit`` (``NeuralNet`` itself does not pass scikit-learn's estimator checks).
"""

import math

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import PassthroughScoring

from .episodes import EpisodeSampler
from .evaluation import adapted_query_logits
from .grouped import grouped_meta_gradient, resolve_task_batching
from .learner import TaskRunner, meta_gradient, resolve_prototype_gradient

__all__ = ["MetaBatch", "EpisodeLoader", "MetaTrainingNet", "meta_steps_per_epoch"]


def meta_steps_per_epoch(history):
    """Meta-steps (training batches) recorded in each epoch of a skorch history.

    Validation batches share an epoch's ``batches`` list; only training
    batches carry ``train_loss``.
    """
    return [sum(1 for batch in epoch["batches"] if "train_loss" in batch) for epoch in history]


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

    With a :class:`numpy.random.Generator` as ``rng`` (training), every pass
    continues the same generator, so epochs see new episodes and the whole
    run is reproducible from one seed. With an int ``rng`` (validation), every
    pass starts again from that seed: the same episodes every epoch, so
    epochs are compared on identical tasks.

    Parameters
    ----------
    dataset : skorch.dataset.Dataset
        Holds ``X`` (a float tensor on the device) and ``y`` (class codes).
    batch_size : int
        Tasks per meta-batch.
    shape : EpisodeShape
        Episode shape.
    rng : numpy.random.Generator or int
        Source of randomness for the episodes, or the seed of fixed episodes.
    n_batches : int or None, default=None
        Meta-batches per pass; ``None`` takes ``ceil(n_episodes / batch_size)``.
    n_episodes : int or None, default=None
        Episodes per pass (the last meta-batch may be smaller); ``None`` takes
        ``n_batches * batch_size``.
    """

    def __init__(self, dataset, batch_size, shape, rng, n_batches=None, n_episodes=None):
        if n_batches is None and n_episodes is None:
            raise ValueError("EpisodeLoader needs n_batches or n_episodes.")
        self.X = dataset.X
        y = dataset.y
        self.y = y.cpu().numpy() if torch.is_tensor(y) else np.asarray(y)
        self.batch_size = batch_size
        self.shape = shape
        self.n_episodes = n_batches * batch_size if n_episodes is None else n_episodes
        self.n_batches = math.ceil(self.n_episodes / batch_size)
        self.rng = rng
        self.sampler = EpisodeSampler(self.y, shape, self._generator())

    def _generator(self):
        if isinstance(self.rng, np.random.Generator):
            return self.rng
        return np.random.default_rng(self.rng)

    def __len__(self):
        return self.n_batches

    def __iter__(self):
        self.sampler.rng = self._generator()
        for start in range(0, self.n_episodes, self.batch_size):
            episodes = self.sampler.sample(min(self.batch_size, self.n_episodes - start))
            yield MetaBatch(self.X, episodes, self.X.device)


class MetaTrainingNet(NeuralNet):
    """skorch ``NeuralNet`` whose training step is one FOMAML meta-step.

    Parameters (beyond ``NeuralNet``'s)
    -----------------------------------
    inner_lr : float
        Inner SGD rate alpha.
    n_inner_steps : int
        Inner SGD steps per task in meta-training.
    n_inner_steps_test : int
        Inner SGD steps per validation episode.
    transductive : bool
        Normalise the queries with their own batch statistics.
    autocast_dtype : torch.dtype or None
        Mixed precision for the forward passes.
    algorithm : str
        The update rule, a key of :data:`fomaml_sklearn.learner.ALGORITHMS`.
    adapt_body : bool
        Adapt the body on validation episodes (False for ANIL).
    task_batching : {"auto", "loop", "grouped"}
        Run the tasks of a meta-batch one by one or all at once
        (:mod:`fomaml_sklearn.grouped`); ``"auto"`` groups on a GPU where
        supported and loops on a CPU, where the loop was measured faster.
    prototype_gradient : {"auto", True, False}
        FOMAML with the prototype head: carry the head's gradient back
        through the prototypes; ``"auto"``: unless the backbone batch-normalises
        flat features, a BatchNorm layer and no convolution
        (:func:`~fomaml_sklearn.learner.resolve_prototype_gradient`).
        ``prototype_gradient_`` holds the resolved value.
    """

    def __init__(self, module, *args, inner_lr=0.4, n_inner_steps=1, n_inner_steps_test=3,
                 transductive=False, autocast_dtype=None, algorithm="fomaml",
                 adapt_body=True, task_batching="auto", prototype_gradient="auto", **kwargs):
        super().__init__(module, *args, **kwargs)
        self.inner_lr = inner_lr
        self.n_inner_steps = n_inner_steps
        self.n_inner_steps_test = n_inner_steps_test
        self.transductive = transductive
        self.autocast_dtype = autocast_dtype
        self.algorithm = algorithm
        self.adapt_body = adapt_body
        self.task_batching = task_batching
        self.prototype_gradient = prototype_gradient

    @property
    def _default_callbacks(self):
        callbacks = super()._default_callbacks
        # Before print_log, so the printed table has the columns.
        at = [name for name, _ in callbacks].index("print_log")
        return callbacks[:at] + [
            ("train_query_acc", PassthroughScoring(
                name="train_query_acc", lower_is_better=False, on_train=True)),
            ("valid_acc", PassthroughScoring(name="valid_acc", lower_is_better=False)),
        ] + callbacks[at:]

    def notify(self, method_name, **cb_kwargs):
        # Callbacks (EarlyStopping, TimeLimit) end training by raising
        # KeyboardInterrupt; remember that it was them, not the user.
        try:
            return super().notify(method_name, **cb_kwargs)
        except KeyboardInterrupt:
            self._stopped_by_callback = True
            raise

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        # The scratch network lives only while training: it is not pickled.
        self.grouped_ = resolve_task_batching(
            self.task_batching, self.module_, self.algorithm, self.device) == "grouped"
        self.prototype_gradient_ = resolve_prototype_gradient(
            self.prototype_gradient, self.module_.backbone)
        self.runner_ = TaskRunner(self.module_, self.autocast_dtype,
                                  prototype_gradient=self.prototype_gradient_)
        self.interrupted_ = False
        self._stopped_by_callback = False
        try:
            return super().fit_loop(X, y, epochs=epochs, **fit_params)
        except KeyboardInterrupt:
            # A user's Ctrl-C: skorch ends training quietly, keeping the last
            # completed meta-step; the estimator says so.
            self.interrupted_ = not self._stopped_by_callback
            raise
        finally:
            self.runner_ = None

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        if self.grouped_:
            grads, loss, accuracy = grouped_meta_gradient(
                self.module_, batch, batch.n_classes, self.inner_lr, self.n_inner_steps,
                self.transductive, self.autocast_dtype, self.prototype_gradient_,
            )
        else:
            grads, loss, accuracy = meta_gradient(
                self.runner_, batch, batch.n_classes, self.inner_lr,
                self.n_inner_steps, self.transductive, self.algorithm,
            )
        for param, grad in zip(self.module_.parameters(), grads):
            param.grad = grad
        self.history.record_batch("train_query_acc", accuracy)
        return {"loss": torch.tensor(loss), "y_pred": None}

    def validation_step(self, batch, **fit_params):
        """Few-shot query loss and accuracy of a meta-batch of validation episodes.

        Each episode adapts from the meta-parameters (which do not change)
        with ``n_inner_steps_test`` steps, as :meth:`FOMAMLClassifier.evaluate`
        does.
        """
        total_loss, n_correct, n_queries = 0.0, 0, 0
        for x_s, y_s, x_q, y_q in batch:
            logits = adapted_query_logits(
                self.runner_, x_s, y_s, x_q, batch.n_classes, self.inner_lr,
                self.n_inner_steps_test, self.transductive, self.adapt_body,
            )
            total_loss += float(torch.nn.functional.cross_entropy(logits.float(), y_q))
            n_correct += int((logits.argmax(1) == y_q).sum())
            n_queries += len(y_q)
        self.history.record_batch("valid_acc", n_correct / n_queries)
        return {"loss": torch.tensor(total_loss / len(batch)), "y_pred": None}
