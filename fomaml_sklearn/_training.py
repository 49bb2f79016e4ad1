"""The skorch part: an internal ``NeuralNet`` whose training step is a meta-step.

skorch supplies the loop (epochs, callbacks, history, progress bar, printed
log, device handling); this module changes three override points:

- :meth:`MetaTrainingNet.get_iterator` yields meta-batches of episodes drawn
  from the training data instead of mini-batches of samples;
- :meth:`MetaTrainingNet.train_step_single` asks the rule of the resolved
  configuration (:mod:`fomaml_sklearn.algorithms`) for the meta-gradient of
  a meta-batch and leaves it in ``.grad`` for skorch's optimizer step;
- :meth:`MetaTrainingNet.validation_step` adapts to each validation episode
  (classes unseen in training, the same episodes every epoch) and records the
  query loss and few-shot accuracy (``valid_loss``, ``valid_acc``), so skorch's
  ``EarlyStopping``, ``Checkpoint`` and ``LRScheduler`` can monitor them.

The net is private: :class:`fomaml_sklearn.FOMAMLClassifier` builds it in
``fit`` (``NeuralNet`` itself does not pass scikit-learn's estimator checks).
"""

import copy
import functools
import math
import os

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import PassthroughScoring

from . import distributed
from ._threads import TaskThreads
from ._threads import recheck as recheck_threads
from .algorithms.runner import MetaBatch, TaskRunner
from .callbacks import meta_steps_per_epoch
from .episodes import EpisodeSampler
from .evaluation import adapted_query_logits

__all__ = ["EpisodeLoader", "MetaTrainingNet", "all_finite", "build_net", "numeric_hint",
           "restart_meta_rate", "training_params"]


def numeric_hint(regression, **settings):
    """What to try when meta-training or an adaptation stops being finite
    (NaN or infinite): the end of the estimators' error message, naming the
    ``settings`` to lower with their values (``lr=0.001, inner_lr=0.4``)."""
    scale = ("scale y, for example TransformedTargetRegressor(regressor=FOMAMLRegressor(...), "
             "transformer=StandardScaler()) from sklearn.compose and sklearn.preprocessing"
             if regression else
             "scale X, for example make_pipeline(StandardScaler(), FOMAMLClassifier(...))")
    lower = " or ".join(f"{name} (now {value:g})" for name, value in settings.items())
    return f"Try: {scale}; or a lower {lower}."


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
    targets : torch.Tensor of shape (n_samples, n_outputs) or None, default=None
        Real-valued targets (regression): ``dataset.y`` then holds the task
        (group) codes, episodes are 1-way (one task, its examples as support
        and queries) and the tasks' targets are taken from here.
    augment : callable or None, default=None
        ``augment(x, rng)`` transforms the inputs of every episode (e.g.
        :class:`~fomaml_sklearn.augmentation.RandomShift`), with randomness
        from the episodes' generator.
    class_groups : ndarray of int or None, default=None
        A group per class code: each task takes its classes from one group
        (:class:`~fomaml_sklearn.episodes.EpisodeSampler`).
    """

    def __init__(self, dataset, batch_size, shape, rng, n_batches=None, n_episodes=None,
                 targets=None, augment=None, class_groups=None):
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
        self.targets = targets
        self.augment = augment
        self.sampler = EpisodeSampler(self.y, shape, self._generator(), class_groups)

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
            augment = None if self.augment is None else (self.augment, self.sampler.rng)
            yield MetaBatch(self.X, episodes, self.X.device, self.targets, augment)


class _TaskLoss(torch.nn.Module):
    """``loss(outputs, targets)`` as a module without parameters."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss

    def forward(self, outputs, targets):
        return self.loss(outputs, targets)


def all_finite(tensors):
    """Whether every element of every tensor is finite, read with one host
    sync (not one per tensor)."""
    tensors = list(tensors)
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


class MetaTrainingNet(NeuralNet):
    """skorch ``NeuralNet`` whose training step is one meta-step.

    Parameters (beyond ``NeuralNet``'s)
    -----------------------------------
    config : MetaConfig
        Everything resolved in the estimator's ``fit``: the rule (with its
        options), the inner rate and steps, precision, task batching and
        loss. The net only reads it.
    """

    def __init__(self, module, *args, config=None, **kwargs):
        super().__init__(module, *args, **kwargs)
        self.config = config

    def initialize_criterion(self):
        # The task loss of the configuration, as a module so that skorch's
        # Checkpoint and save_params find the criterion_ they expect.
        self.criterion_ = _TaskLoss(self.config.loss)
        return self

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
        self.runner_ = TaskRunner(self.module_, self.config)
        self.task_threads_ = (TaskThreads(self.runner_)
                              if self.config.task_batching == "threads" else None)
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
            if self.task_threads_ is not None:
                self.task_threads_.close()
            self.runner_ = self.task_threads_ = None

    def train_step_single(self, batch, **fit_params):
        recheck_threads()  # fewer threads while other processes busy the cores
        self._set_training(True)
        grads, loss, accuracy = self._meta_gradient(batch)
        # The loss is a float on the host already: checking it costs nothing.
        # The gradient is checked where that needs no device sync (the CPU);
        # on a GPU a non-finite gradient makes the weights, hence the next
        # step's loss, non-finite, and fit checks the final weights.
        if not math.isfinite(loss):
            raise self._not_finite_error(f"a training loss of {loss}", batch)
        params = list(self.module_.parameters())
        if params and params[0].device.type == "cpu" and not all_finite(grads):
            raise self._not_finite_error("a meta-gradient that is not finite", batch)
        for param, grad in zip(params, grads):
            param.grad = grad
        if not math.isnan(accuracy):  # nan: real-valued targets
            self.history.record_batch("train_query_acc", accuracy)
        return {"loss": torch.tensor(loss), "y_pred": None}

    def _not_finite_error(self, what, batch):
        """The ValueError (as scikit-learn's MLP raises for non-finite
        weights) that stops a fit whose meta-step is not finite."""
        step = sum(meta_steps_per_epoch(self.history)) + 1
        hint = numeric_hint(batch.per_task_targets, lr=self.lr, inner_lr=self.config.inner_lr)
        return ValueError(
            f"fit stopped at meta-step {step} (epoch {len(self.history)}): it gave {what} "
            f"(the meta-parameters would become NaN or infinite). {hint} The estimator "
            "was not changed."
        )

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        super().partial_fit(X, y, classes=classes, **fit_params)
        # As scikit-learn's MLP does: never hand back non-finite weights
        # (also after a stop by a callback or a Ctrl-C).
        bad = [name for name, p in self.module_.named_parameters()
               if not bool(torch.isfinite(p).all())]
        if bad:
            regression = getattr(self, "iterator_train__targets", None) is not None
            hint = numeric_hint(regression, lr=self.lr, inner_lr=self.config.inner_lr)
            raise ValueError(
                f"fit produced meta-parameters that are not finite ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''}). {hint} The estimator was not changed."
            )
        return self

    def _meta_gradient(self, batch):
        """The mean meta-gradient of a meta-batch, its mean query loss and
        its query accuracy: one arithmetic whatever the number of processes.

        Each task's meta-gradient is the rule's ``meta_gradient`` of that
        task alone; the tasks' gradients (and losses and counts) are summed
        in float64, one task at a time in task order, then divided by the
        number of tasks. In a distributed fit rank ``r`` computes the tasks
        of its slice and every rank receives every task's gradient
        (:func:`~fomaml_sklearn.distributed.ordered_sum`), so that 1, 2 or
        4 processes (with the same threads each) make the same additions in
        the same order and take bitwise the same step. The rule's grouped
        path (``task_batching="grouped"``) computes a slice at once: its
        slices' means are all-reduced, the same to float rounding only.
        """
        rank, world_size = distributed.world()
        if self.config.task_batching == "grouped":
            if world_size == 1:
                return self.config.algorithm.meta_gradient(self.runner_, batch, batched=True)
            return self._sharded_meta_gradient(batch, rank, world_size)
        params = list(self.module_.parameters())
        lo, hi = distributed.shard(len(batch), rank, world_size)
        dtype = functools.reduce(torch.promote_types, (p.dtype for p in params))
        width = sum(p.numel() for p in params) + 3
        tasks = (batch.subset(i, i + 1) for i in range(lo, hi))
        if self.task_threads_ is not None:  # computed on threads, kept in task order
            rows = self.task_threads_.map(
                lambda runner, task: self._task_row(runner, task, dtype), tasks)
        else:
            rows = (self._task_row(self.runner_, task, dtype) for task in tasks)
        if world_size > 1:  # computed before the exchange (errors are the rule's own)
            rows = list(rows)
        total = self._collective(
            "all-gather", "the meta-gradient", distributed.ordered_sum, rows, len(batch),
            width, dtype=dtype, device=params[0].device)
        n_tasks, grads, offset = len(batch), [], 0
        for p in params:
            grads.append((total[offset:offset + p.numel()] / n_tasks).to(p.dtype).view_as(p))
            offset += p.numel()
        loss, n_correct, n_queries = total[offset:].tolist()
        accuracy = float("nan") if batch.per_task_targets else n_correct / n_queries
        return grads, loss / n_tasks, accuracy

    def _task_row(self, runner, task, dtype):
        """One task's meta-gradient (adapted on ``runner``), flat, followed
        by its query loss, its correct queries and its queries (exact in
        ``dtype``)."""
        grads, loss, accuracy = self.config.algorithm.meta_gradient(
            runner, task, batched=False)
        n_queries = task.queries_per_task
        n_correct = 0 if math.isnan(accuracy) else round(accuracy * n_queries)
        stats = torch.tensor([loss, n_correct, n_queries], dtype=dtype, device=grads[0].device)
        return torch.cat([g.reshape(-1).to(dtype) for g in grads] + [stats])

    def _sharded_meta_gradient(self, batch, rank, world_size):
        """The grouped path: this rank's slice of the meta-batch at once,
        then one bucketed all-reduce of the gradient sums, the loss sum and
        the counts: the mean over all the tasks, the same on every rank."""
        lo, hi = distributed.shard(len(batch), rank, world_size)
        params = list(self.module_.parameters())
        n, n_queries = hi - lo, (hi - lo) * batch.queries_per_task
        if n > 0:
            result = self.config.algorithm.meta_gradient(
                self.runner_, batch.subset(lo, hi),
                batched=self.config.task_batching == "grouped")
            sums = [g * n for g in result.grads]
            correct = distributed.nan_to_zero(result.accuracy) * n_queries
            stats = [result.loss * n, correct, n, n_queries]
        else:  # more ranks than tasks
            sums = [torch.zeros_like(p) for p in params]
            stats = [0.0, 0.0, 0, 0]
        stats = torch.tensor(stats, dtype=torch.float64, device=params[0].device)
        self._all_reduce(sums + [stats], "the meta-gradient")
        total = stats[2].item()
        grads = [(s / total).to(p.dtype) for s, p in zip(sums, params)]
        accuracy = (float("nan") if batch.per_task_targets
                    else stats[1].item() / stats[3].item())
        return grads, stats[0].item() / total, accuracy

    def _all_reduce(self, tensors, what):
        return self._collective("all-reduce", what, distributed.all_reduce_sum, tensors)

    def _collective(self, kind, what, function, *args, **kwargs):
        """``function(*args, **kwargs)``; a failure names this rank and the step."""
        step = len(self.history[-1]["batches"]) if len(self.history) else 0
        try:
            return function(*args, **kwargs)
        except Exception as exc:
            rank, world_size = distributed.world()
            if world_size == 1:
                raise
            raise RuntimeError(
                f"rank {rank} of {world_size}: the {kind} of {what} failed in epoch "
                f"{len(self.history)}, batch {step + 1} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300]}). Another rank has probably died or "
                "hung (the process group's timeout bounds the wait); see its error."
            ) from exc

    def validation_step(self, batch, **fit_params):
        """Few-shot query loss and accuracy of a meta-batch of validation episodes.

        Each episode adapts from the meta-parameters (which do not change)
        with the rule's test-time adaptation, as
        :meth:`FOMAMLClassifier.evaluate` does. Real-valued targets record
        the loss alone. In a distributed fit each rank scores its slice of
        the episodes; every rank receives every episode's scores and sums
        them in episode order, as one process does.
        """
        rank, world_size = distributed.world()
        lo, hi = distributed.shard(len(batch), rank, world_size)
        part = batch if world_size == 1 else batch.subset(lo, hi)
        device = next(self.module_.parameters()).device

        def rows():
            for x_s, y_s, x_q, y_q in part:
                logits = adapted_query_logits(self.runner_, x_s, y_s, x_q, batch.n_classes)
                loss = float(self.criterion_(logits.float(), y_q))
                correct = (0 if y_q.is_floating_point()
                           else int((logits.argmax(1) == y_q).sum()))
                yield torch.tensor([loss, correct, len(y_q)], dtype=torch.float64,
                                   device=device)

        total = self._collective("all-gather", "the validation scores",
                                 distributed.ordered_sum,
                                 rows() if world_size == 1 else list(rows()), len(batch), 3,
                                 dtype=torch.float64, device=device)
        total_loss, n_correct, n_queries = total.tolist()
        if not batch.per_task_targets:
            self.history.record_batch("valid_acc", n_correct / n_queries)
        return {"loss": torch.tensor(total_loss / len(batch)), "y_pred": None}


# ------------------------------------------------------------ the net's wiring
def _private_checkpoint(callback):
    """A Checkpoint-like callback (``dirname`` and ``f_*`` files) writing into
    a private temporary folder instead (for ranks other than 0)."""
    name, cb = callback if isinstance(callback, tuple) else (None, callback)
    target = getattr(cb, "checkpoint", cb)  # TrainEndCheckpoint wraps a Checkpoint
    if not hasattr(target, "dirname"):
        return callback
    import atexit
    import shutil
    import tempfile

    target.dirname = tempfile.mkdtemp(prefix="fomaml_sklearn_rank_")
    # Kept while the process lives (a warm-start fit writes there again).
    atexit.register(shutil.rmtree, target.dirname, True)
    for attr in ("f_params", "f_optimizer", "f_criterion", "f_history", "f_pickle"):
        value = getattr(target, attr, None)
        if isinstance(value, (str, os.PathLike)):
            setattr(target, attr, os.path.basename(os.fspath(value)))
    if hasattr(cb, "dirname") and cb is not target:
        cb.dirname = target.dirname
    return callback if name is None else (name, cb)


def training_params(shape, *, max_epochs, meta_batch_size, meta_batches_per_epoch,
                    train_split=None, **valid_params):
    """The skorch net's training settings: ``max_epochs`` of
    ``meta_batches_per_epoch`` meta-batches of ``meta_batch_size`` episodes of
    ``shape`` (:class:`EpisodeLoader`), plus validation settings."""
    return dict(
        max_epochs=max_epochs,
        batch_size=meta_batch_size,
        iterator_train=EpisodeLoader,
        iterator_train__shape=shape,
        iterator_train__n_batches=meta_batches_per_epoch,
        train_split=train_split,
        **valid_params,
    )


def _cosine_schedule(n_steps):
    """skorch's ``LRScheduler`` annealing the meta rate to 0 along a cosine over
    ``n_steps`` meta-steps, from the rate the optimizer has when it starts."""
    from skorch.callbacks import LRScheduler

    # last_epoch=-1: count from this fit's first meta-step (skorch would
    # otherwise start from the number of epochs in the history).
    return LRScheduler(policy="CosineAnnealingLR", T_max=max(1, n_steps),
                       step_every="batch", last_epoch=-1)


def restart_meta_rate(net, *, lr, lr_schedule, n_steps):
    """Set a meta-trained ``net`` up for a warm-start fit: the meta rate
    starts again at ``lr`` and follows ``lr_schedule`` over this fit's
    ``n_steps`` meta-steps (``"cosine"``: down to 0), whatever the earlier
    fits used; the optimizer's state (Adam's moments) carries on."""
    for group in net.optimizer_.param_groups:
        group["lr"] = group["initial_lr"] = lr
    net.lr = lr
    others = [(name, cb) for name, cb in net.callbacks_ if name != "lr_schedule"]
    declared = [cb for cb in (net.callbacks or [])
                if not (isinstance(cb, tuple) and cb[0] == "lr_schedule")]
    if lr_schedule == "cosine":
        schedule = _cosine_schedule(n_steps)
        schedule.initialize()
        others.append(("lr_schedule", schedule))
        declared.append(("lr_schedule", schedule))
    net.callbacks_ = others
    net.callbacks = declared


def build_net(meta_model, *, optimizer_cls, lr, optimizer_params, callbacks, lr_schedule,
              n_steps, verbose, n_batches_shown, device, episode_rng, net_params):
    """The skorch net that meta-trains ``meta_model``.

    ``callbacks`` are copied (ranks other than 0 write checkpoints into a
    private folder); ``lr_schedule="cosine"`` adds skorch's ``LRScheduler``
    annealing over ``n_steps`` meta-steps; ``verbose`` (rank 0 only) adds a
    progress bar of ``n_batches_shown`` batches per epoch.
    """
    callbacks = copy.deepcopy(list(callbacks or []))
    rank, _ = distributed.world()
    if rank != 0:
        # Only rank 0 writes checkpoints where the user asked; the other
        # ranks keep theirs in a private folder, so that every rank's
        # history and load_best behave alike.
        callbacks = [_private_checkpoint(cb) for cb in callbacks]
    if lr_schedule == "cosine":
        callbacks.append(("lr_schedule", _cosine_schedule(n_steps)))
    verbose = verbose if rank == 0 else 0
    if verbose:
        from skorch.callbacks import ProgressBar

        callbacks.append(("progress_bar", ProgressBar(batches_per_epoch=n_batches_shown)))
    return MetaTrainingNet(
        meta_model,
        criterion=None,
        optimizer=optimizer_cls,
        lr=lr,
        iterator_train__rng=episode_rng,
        callbacks=callbacks,
        verbose=verbose,
        device=device,
        **{f"optimizer__{k}": v for k, v in (optimizer_params or {}).items()},
        **net_params,
    )
