"""The adaptation engine every rule uses: :class:`TaskRunner`, the one inner
loop (:func:`inner_loop`) and the meta-batch of tasks (:class:`MetaBatch`).

A rule (:class:`~fomaml_sklearn.algorithms.MetaAlgorithm`) receives a
``TaskRunner`` and a ``MetaBatch``; the estimators, the training loop and
:mod:`fomaml_sklearn.evaluation` build them. The members of ``TaskRunner``
listed in its docstring are the API a rule may use; anything else (names
with a leading underscore) is the runner's own.

Notation: ``theta`` are the meta-parameters (a backbone and the head
initialisation), ``phi = U(theta)`` the parameters after ``k`` SGD steps at
rate ``alpha`` on a task's support loss.
"""

import contextlib
import copy

import torch
from torch import nn
from torch.nn import functional as F

from .._config import MetaConfig
from ..backbones import SupportBatchNorm, statistics_gradient_auto, support_rows
from ..heads import TaskModel
from . import get_algorithm

__all__ = ["MetaBatch", "TaskRunner", "attach_rule_parameters", "first_gradient", "inner_loop"]


def inner_loop(support_loss, params, n_steps, lr, *, create_graph=False, proximal=None,
               first_loss=None):
    """``n_steps`` SGD steps on a support loss: the inner loop of every rule.

    Parameters
    ----------
    support_loss : callable
        ``support_loss(params)`` returns the scalar loss at ``params``.
    params : list of torch.Tensor
        The starting point. Without ``create_graph`` these must be leaf
        tensors that require grad; they are updated in place (a scratch copy
        of ``theta``). With ``create_graph`` they may carry a graph to
        ``theta``; new tensors are returned and the graph runs through every
        step (second-order MAML).
    n_steps : int
        Number of steps; 0 returns ``params`` unchanged.
    lr : float, list of torch.Tensor or callable
        Step size alpha: one number; or one tensor per parameter,
        broadcastable to it (learned rates, as Meta-SGD's; with
        ``create_graph`` the graph runs through them too); or a function
        ``lr(step)`` returning either, for rates that change with the step.
    create_graph : bool, default=False
        Keep the graph of the steps, for derivatives through them.
    proximal : tuple (lam, anchors) or None, default=None
        Add ``lam / 2 * ||params - anchors||^2`` to the loss (iMAML's inner
        problem); ``anchors`` are constants.
    first_loss : torch.Tensor, tuple or None, default=None
        ``support_loss(params)`` at the starting point, when the caller has
        already computed it (its forward pass also built the task head), so
        the first step reuses it instead of a second forward pass; or a pair
        ``(loss, tensors)`` (see :func:`first_gradient`).

    Returns
    -------
    params : list of torch.Tensor
        The parameters after the steps.
    """
    with torch.enable_grad():  # also when called under torch.no_grad()
        for step in range(n_steps):
            if step == 0 and first_loss is not None:
                _, grads = first_gradient(first_loss, params, create_graph=create_graph)
            else:
                grads = torch.autograd.grad(support_loss(params), params,
                                            create_graph=create_graph)
            if proximal is not None:
                lam, anchors = proximal
                grads = [g + lam * ((p if create_graph else p.detach()) - a)
                         for g, p, a in zip(grads, params, anchors)]
            rate = lr(step) if callable(lr) else lr
            if create_graph:
                if isinstance(rate, (list, tuple)):
                    params = [p - a * g for p, g, a in zip(params, grads, rate)]
                else:
                    params = [p - rate * g for p, g in zip(params, grads)]
            else:
                with torch.no_grad():
                    if isinstance(rate, (list, tuple)):
                        for p, g, a in zip(params, grads, rate):
                            p.sub_(a * g)
                    else:
                        torch._foreach_add_(params, grads, alpha=-rate)
    return params


def first_gradient(first_loss, params, create_graph=False):
    """The gradient of a first support loss computed before the inner loop.

    Parameters
    ----------
    first_loss : torch.Tensor or tuple
        The support loss at ``params``; or ``(loss, tensors)`` when its
        graph starts from ``tensors``, which hold the same values as
        ``params`` (:meth:`TaskRunner.start_with_head_graph`): the gradient
        is taken there and that graph is kept for the caller's later use.
    params : list of torch.Tensor
        The parameters the inner loop updates.
    create_graph : bool, default=False
        Keep the graph of the gradient.

    Returns
    -------
    loss : torch.Tensor
        The scalar loss.
    grads : tuple of torch.Tensor
        One per parameter.
    """
    loss, wrt = first_loss if isinstance(first_loss, tuple) else (first_loss, params)
    grads = torch.autograd.grad(loss, wrt, create_graph=create_graph,
                                retain_graph=create_graph or wrt is not params)
    return loss, grads


def attach_rule_parameters(meta_model, config, *, create=True):
    """Give ``meta_model`` the meta-learned tensors of the configuration's rule.

    They become ``meta_model.rule_state``, a ``torch.nn.ParameterDict`` of
    the rule's :meth:`~fomaml_sklearn.algorithms.MetaAlgorithm.meta_parameters`:
    parameters of the meta-model like the network's, so the meta-optimizer,
    the distributed all-reduce, checkpoints, pickles and model files see
    them. A meta-model that already holds the same names and shapes keeps
    its values (a warm start, a loaded model); one holding none gets the
    rule's initial values.

    Parameters
    ----------
    meta_model : MetaModel
        The meta-model.
    config : MetaConfig
        The resolved settings; ``config.algorithm`` is the rule.
    create : bool, default=True
        Whether a meta-model without them may get new ones (False for a
        warm start, whose meta-optimizer already holds its parameters).

    Returns
    -------
    meta_model : the same meta-model

    Raises
    ------
    ValueError
        If ``meta_model`` holds other rule tensors (of another rule, or of
        other options), which this rule cannot continue from.
    """
    rule = config.algorithm
    tensors = rule.meta_parameters(meta_model, config)
    if not isinstance(tensors, dict) or not all(
            isinstance(k, str) and k and "." not in k and torch.is_tensor(v)
            for k, v in tensors.items()):
        raise TypeError(
            f"{type(rule).__name__}.meta_parameters must return a dict of names (non-empty, "
            f"without '.') to tensors; got {tensors!r}.")
    current = getattr(meta_model, "rule_state", None)
    have = {} if current is None else {k: tuple(v.shape) for k, v in current.items()}
    want = {k: tuple(v.shape) for k, v in tensors.items()}
    if have == want and (current is not None or not create):
        # (A meta-model made before rules could own tensors has no rule_state:
        # a rule without tensors continues from it as it is.)
        return meta_model
    if have or not create:
        def describe(shapes):
            if not shapes:
                return "none"
            names = ", ".join(f"{k} {list(v)}" for k, v in list(shapes.items())[:3])
            return f"{len(shapes)} ({names}{', ...' if len(shapes) > 3 else ''})"

        raise ValueError(
            f"algorithm={rule!r} needs meta-learned tensors of its own: {describe(want)}; "
            f"the meta-model holds {describe(have)} from the rule and options it was "
            "trained with, and cannot continue with these. Fit with warm_start=False (a "
            "new meta-model), or keep the rule and options it was trained with.")
    meta_model.rule_state = nn.ParameterDict(
        {k: nn.Parameter(v.detach().clone()) for k, v in tensors.items()})
    return meta_model


class MetaBatch:
    """A meta-batch of tasks: what a rule's ``meta_gradient`` receives.

    The training loop builds it from sampled episodes (this constructor);
    research code and tests from a list of tasks (:meth:`from_tasks`).
    ``len(batch)`` is the number of tasks; iterating yields
    ``(x_support, y_support, x_query, y_query)`` per task.

    Parameters
    ----------
    X : torch.Tensor of shape (n_samples, ...)
        All examples, on the device.
    episodes : Episodes
        Indices of each task's support and query examples
        (:class:`~fomaml_sklearn.episodes.EpisodeSampler`).
    device : torch.device
        Where the labels go.
    targets : torch.Tensor of shape (n_samples, n_outputs) or None, default=None
        Real-valued targets (regression): each task's targets are its
        examples' rows and ``n_classes`` is the number of outputs;
        otherwise the episodes' class labels, shared by the tasks.
    augment : tuple (transform, rng) or None, default=None
        ``transform(x, rng)`` applied to the support and query inputs.

    Attributes
    ----------
    x_support, x_query : torch.Tensor of shape (n_tasks, n, ...)
        The tasks' inputs, stacked (a list of tensors for tasks of different
        sizes given to :meth:`from_tasks`).
    y_support, y_query : torch.Tensor
        Labels ``(n,)`` shared by every task, or, when ``per_task_targets``,
        one row per task (stacked, or a list).
    n_classes : int
        Classes (outputs) per task.
    per_task_targets : bool
        Whether each task has its own targets (regression, or tasks given
        with different labels).
    """

    def __init__(self, X, episodes, device, targets=None, augment=None):
        sup = torch.as_tensor(episodes.support_idx, device=X.device)
        qry = torch.as_tensor(episodes.query_idx, device=X.device)
        self.x_support = X[sup.reshape(-1)].reshape(sup.shape + X.shape[1:])
        self.x_query = X[qry.reshape(-1)].reshape(qry.shape + X.shape[1:])
        if augment is not None:
            transform, rng = augment
            self.x_support = transform(self.x_support, rng)
            self.x_query = transform(self.x_query, rng)
        self.per_task_targets = targets is not None
        if targets is None:
            self.y_support = torch.as_tensor(episodes.support_y, device=device)
            self.y_query = torch.as_tensor(episodes.query_y, device=device)
            self.n_classes = episodes.classes.shape[1]
        else:
            self.y_support = targets[sup.reshape(-1)].reshape(sup.shape + targets.shape[1:])
            self.y_query = targets[qry.reshape(-1)].reshape(qry.shape + targets.shape[1:])
            self.n_classes = targets.shape[1]

    @classmethod
    def from_tasks(cls, tasks, n_classes):
        """A meta-batch of a list of tasks.

        Parameters
        ----------
        tasks : iterable of (x_support, y_support, x_query, y_query)
            The tasks, labels coded ``0 .. n_classes-1`` (or real targets).
        n_classes : int
            Classes (outputs) per task.

        Returns
        -------
        batch : MetaBatch
            Inputs stacked where the tasks' shapes agree; labels shared when
            every task has the same integer labels.
        """
        tasks = [tuple(task) for task in tasks]
        if not tasks:
            raise ValueError("tasks is empty: a meta-batch needs at least one task.")
        columns = list(zip(*tasks))

        def stacked(tensors):
            same = all(t.shape == tensors[0].shape for t in tensors[1:])
            return torch.stack(tensors) if same else list(tensors)

        batch = object.__new__(cls)
        batch.n_classes = n_classes
        batch.x_support, batch.x_query = stacked(columns[0]), stacked(columns[2])
        shared = all(not y.is_floating_point() and torch.equal(y, ys[0])
                     for ys in (columns[1], columns[3]) for y in ys)
        batch.per_task_targets = not shared
        if shared:
            batch.y_support, batch.y_query = columns[1][0], columns[3][0]
        else:
            batch.y_support, batch.y_query = stacked(columns[1]), stacked(columns[3])
        return batch

    def __len__(self):
        return len(self.x_support)

    @property
    def queries_per_task(self):
        """Query examples of each task."""
        return len(self.x_query[0])

    def subset(self, lo, hi):
        """Tasks ``lo .. hi-1`` as a meta-batch (views, no copies)."""
        part = object.__new__(type(self))
        part.__dict__.update(self.__dict__)
        part.x_support, part.x_query = self.x_support[lo:hi], self.x_query[lo:hi]
        if self.per_task_targets:
            part.y_support, part.y_query = self.y_support[lo:hi], self.y_query[lo:hi]
        return part

    def stacked(self):
        """``(x_support, y_support, x_query, y_query)`` for a batched path:
        inputs stacked ``(n_tasks, n, ...)``, labels ``(n,)`` shared by the
        tasks; a ValueError says what stops it."""
        if self.per_task_targets:
            raise ValueError("The batched path needs the same class labels in every task; "
                             "use the per-task loop (batched=False).")
        if not (torch.is_tensor(self.x_support) and torch.is_tensor(self.x_query)):
            raise ValueError("The batched path needs tasks of the same shapes; use the "
                             "per-task loop (batched=False).")
        return self.x_support, self.y_support, self.x_query, self.y_query

    def __iter__(self):
        if self.per_task_targets:
            yield from zip(self.x_support, self.y_support, self.x_query, self.y_query)
            return
        for x_s, x_q in zip(self.x_support, self.x_query):
            yield x_s, self.y_support, x_q, self.y_query


class TaskRunner:
    """Adapts from ``theta`` on one scratch copy of the backbone.

    Adapting a task copies ``theta`` into the scratch backbone in place, so
    no module is allocated per task. The runner knows the mechanics (copies,
    forward passes, precision, the loss); the rules decide what to do with
    them.

    Parameters
    ----------
    meta_model : MetaModel
        The meta-parameters (never modified here).
    config : MetaConfig or None, default=None
        The resolved settings (inner rate, steps, precision, loss, rule);
        ``None`` takes :class:`~fomaml_sklearn._config.MetaConfig`'s defaults.

    Attributes
    ----------
    meta_model : MetaModel
        ``theta``: the backbone, the head initialisation and the rule's
        own meta-learned tensors (:attr:`rule_parameters`).
    config : MetaConfig
        The resolved settings (``inner_lr``, ``n_inner_steps``,
        ``n_inner_steps_test``, ``transductive``, ``loss``, ...).
    loss_fn : callable
        ``loss_fn(outputs, targets)``, the task loss.
    scratch : torch.nn.Module
        The scratch copy of the backbone that adaptation changes in place.
    params : list of torch.Tensor
        The scratch backbone's parameters (leaf tensors requiring grad).
    meta_params : list of torch.Tensor
        The meta backbone's parameters, in the same order.
    meta_buffers : list of torch.Tensor
        The meta backbone's buffers (BatchNorm statistics), in the order of
        its ``buffers()``.
    has_support_norm : bool
        Whether the backbone has :class:`~fomaml_sklearn.backbones.SupportBatchNorm`
        layers (support statistics to record after adapting).
    statistics_gradient : bool
        Whether the meta-gradient runs through the support statistics
        (:meth:`query_features`, :meth:`prototype_head_graph`):
        ``config.statistics_gradient``, or when None
        :func:`~fomaml_sklearn.backbones.statistics_gradient_auto`.

    Methods a rule may use: :meth:`reset`, :meth:`start`, :meth:`adapt`,
    :meth:`adapt_from`, :meth:`adapt_head`, :meth:`features`, :meth:`logits`,
    :meth:`support_loss`, :meth:`query_features`, :meth:`query_logits`,
    :meth:`prototype_head_graph`, :meth:`start_with_head_graph`,
    :meth:`meta_gradients`, :meth:`total_gradients`, :meth:`task_model`,
    :meth:`autocast`, and the properties :attr:`algorithm` and
    :attr:`rule_parameters`.
    """

    def __init__(self, meta_model, config=None):
        self.meta_model = meta_model
        self.config = MetaConfig() if config is None else config
        if self.config.algorithm is None:  # FOMAML through the prototypes, from the registry
            self.config = self.config.replace(
                algorithm=get_algorithm("fomaml").set_params(prototype_gradient=True))
        self.loss_fn = self.config.loss
        self.scratch = copy.deepcopy(meta_model.backbone)
        self.scratch.requires_grad_(True)
        self.params = list(self.scratch.parameters())
        self.meta_params = list(meta_model.backbone.parameters())
        self.meta_buffers = list(meta_model.backbone.buffers())
        self._buffers = list(self.scratch.buffers())
        # Names for functional calls of the meta backbone (read once: a hot path).
        self._param_names = [n for n, _ in meta_model.backbone.named_parameters()]
        self._buffer_names = [n for n, _ in meta_model.backbone.named_buffers()]
        self.has_support_norm = any(
            isinstance(m, SupportBatchNorm) for m in self.scratch.modules()
        )
        through = self.config.statistics_gradient
        self.statistics_gradient = self.has_support_norm and (
            statistics_gradient_auto(self.scratch) if through is None else bool(through))
        self._autocast_dtype = self.config.autocast_dtype  # read once: a hot path
        # The module that runs theta functionally (its train/eval flag is set
        # per call); a fork has its own, so that forks never share a flag.
        self._body = meta_model.backbone

    def fork(self):
        """A runner on the same meta-model and configuration with a scratch
        copy of its own: rules whose ``concurrent_tasks`` is true may adapt
        different tasks on different forks at the same time (one thread
        each). Nothing of the meta-model is copied but the module that runs
        ``theta`` functionally (its parameters are not used there)."""
        other = TaskRunner(self.meta_model, self.config)
        other._body = copy.deepcopy(self.meta_model.backbone)
        other._body.requires_grad_(False)
        return other

    @property
    def algorithm(self):
        """The rule of the configuration."""
        return self.config.algorithm

    @property
    def rule_parameters(self):
        """The rule's own meta-learned tensors, ``{name: parameter}``: those
        of ``meta_model.rule_state`` (empty for a rule without any; see
        :meth:`~fomaml_sklearn.algorithms.MetaAlgorithm.meta_parameters`)."""
        state = getattr(self.meta_model, "rule_state", None)
        return {} if state is None else dict(state.items())

    # ------------------------------------------------------------ mechanics
    def autocast(self):
        """``torch.autocast`` for the forward passes, or a null context."""
        dtype = self._autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        device = self.params[0].device.type if self.params else "cpu"
        return torch.autocast(device_type=device, dtype=dtype)

    def reset(self):
        """Copy ``theta`` (parameters and buffers) into the scratch backbone."""
        with torch.no_grad():
            if self.params:
                torch._foreach_copy_(self.params, self.meta_params)
            for b, mb in zip(self._buffers, self.meta_buffers):
                b.copy_(mb)

    def features(self, x, body_params=None, train=True, buffers=None):
        """Features of ``x``: the scratch backbone, or the meta backbone run
        functionally with ``body_params`` (tensors that may carry a graph).

        In training mode the BatchNorm layers normalise with the batch's
        statistics and record them (in the scratch buffers, or in
        ``buffers`` when given); in evaluation mode they use the recorded
        ones.
        """
        if body_params is None:
            if self.scratch.training != train:
                self.scratch.train(train)
            with self.autocast():
                feats = self.scratch(x)
        else:
            body = self._body
            tensors = dict(zip(self._param_names, body_params))
            tensors.update(zip(self._buffer_names,
                               self._buffers if buffers is None else buffers))
            was_training = body.training
            body.train(train)
            try:
                with self.autocast():
                    feats = torch.func.functional_call(body, tensors, (x,))
            finally:
                body.train(was_training)
        return feats if self._autocast_dtype is None else feats.float()

    def logits(self, feats, head):
        """``feats @ weight.T + bias``."""
        return F.linear(feats, *head)

    def support_loss(self, x, y, mode="scratch"):
        """The support loss as a function of the parameters, for :func:`inner_loop`.

        Parameters
        ----------
        x, y : torch.Tensor
            Support inputs (features with ``mode="head"``) and targets.
        mode : {"scratch", "functional", "head"}, default="scratch"
            What the parameters are: ``"scratch"``, the scratch backbone's
            own parameters followed by the head's two tensors;
            ``"functional"``, tensors for the meta backbone in the same order
            (they may carry a graph to ``theta``); ``"head"``, the head alone
            on the fixed features ``x``.

        Returns
        -------
        loss : callable
            ``loss(params)``, a scalar tensor.
        """
        if mode == "head":
            return lambda params: self.loss_fn(self.logits(x, params), y)
        if mode not in ("scratch", "functional"):
            raise ValueError(f"mode={mode!r} is not 'scratch', 'functional' or 'head'.")
        functional = mode == "functional"

        def loss(params):
            feats = self.features(x, params[:-2] if functional else None)
            return self.loss_fn(self.logits(feats, params[-2:]), y)

        return loss

    def start(self, x_support, y_support, n_classes, with_loss=False):
        """Reset the scratch copy to ``theta``; return the initial head.

        The head is built from the support features at ``theta`` (training
        mode, so the scratch BatchNorm layers now hold the support
        statistics at ``theta``).

        Parameters
        ----------
        x_support, y_support : torch.Tensor
            The support set.
        n_classes : int
            Outputs of the task head.
        with_loss : bool, default=False
            Also return the support loss at ``theta`` with its graph, from
            the same forward pass (the first inner step reuses it).

        Returns
        -------
        head : list of torch.Tensor
            ``[weight, bias]``, leaf tensors requiring grad.
        loss : torch.Tensor or None
            With ``with_loss``, else None.
        """
        self.reset()
        with torch.set_grad_enabled(bool(with_loss)):
            feats = self.features(x_support)
            head = list(self.meta_model.initial_head(feats, y_support, n_classes))
            if not with_loss:
                return head, None
            return head, self.loss_fn(self.logits(feats, head), y_support)

    def prototype_head_graph(self, x_support, y_support, n_classes):
        """Prototype head at ``theta``, differentiable with respect to ``theta``.

        The meta backbone runs on the support set: the prototypes
        :meth:`start` built, with a graph to ``theta``. With
        :attr:`statistics_gradient` (training mode) the graph also runs
        through the support's BatchNorm statistics; without, they are held
        constant (evaluation mode with the statistics :meth:`start` recorded).

        Returns
        -------
        weight, bias : torch.Tensor
            With a graph to ``meta_model.backbone``'s parameters.
        """
        # Clones: the scratch buffers change in the inner loop, before the
        # backward pass through this graph (and training mode records).
        stats = [b.detach().clone() for b in self._buffers]
        with torch.enable_grad():
            feats = self.features(x_support, self.meta_params, train=self.statistics_gradient,
                                  buffers=stats)
            return self.meta_model.head_with_graph(feats, y_support, n_classes)

    def start_with_head_graph(self, x_support, y_support, n_classes, with_loss=False,
                              with_graph=True):
        """:meth:`start` and :meth:`prototype_head_graph` in one (with
        ``with_graph``, the rule's answer to going through the prototypes;
        False: :meth:`start` alone, and None for the graph).

        With :attr:`statistics_gradient` both run the same forward pass (the
        support set at ``theta`` in training mode), so it runs once, on the
        meta backbone functionally: the head, the first support loss and the
        head with its graph all come from it, and the scratch BatchNorm
        layers record the support statistics as :meth:`start` does. The first
        loss is then returned as ``(loss, theta and the head)`` for
        :func:`inner_loop`, whose first gradient is taken at ``theta``
        (the scratch copy holds the same values). Without, the two methods
        are called one after the other.

        Returns
        -------
        head : list of torch.Tensor
            As :meth:`start`'s.
        loss : torch.Tensor, tuple or None
            The first support loss (with ``with_loss``), for
            :func:`inner_loop`'s ``first_loss``.
        head_graph : tuple of torch.Tensor or None
            As :meth:`prototype_head_graph`'s.
        """
        if not with_graph:
            return (*self.start(x_support, y_support, n_classes, with_loss=with_loss), None)
        if not self.statistics_gradient:
            head, first = self.start(x_support, y_support, n_classes, with_loss=with_loss)
            return head, first, self.prototype_head_graph(x_support, y_support, n_classes)
        self.reset()
        with torch.enable_grad():
            feats = self.features(x_support, self.meta_params, train=True, buffers=self._buffers)
            head = list(self.meta_model.initial_head(feats, y_support, n_classes))
            head_graph = self.meta_model.head_with_graph(feats, y_support, n_classes)
            first = None
            if with_loss:
                first = (self.loss_fn(self.logits(feats, head), y_support),
                         self.meta_params + head)
        return head, first, head_graph

    def adapt(self, x_support, y_support, n_classes, n_steps, *, proximal=None, lr=None):
        """SGD on the body and head from ``theta``, on the scratch copy.

        Afterwards the scratch backbone holds the adapted body and its
        BatchNorm layers the support statistics at the adapted weights.

        Parameters
        ----------
        x_support, y_support : torch.Tensor
            The support set, labels coded ``0 .. n_classes-1``.
        n_classes : int
            Number of outputs of the task head.
        n_steps : int
            Inner steps.
        proximal : float or None, default=None
            iMAML's ``lam``: pull the parameters towards their start.
        lr : float, list of torch.Tensor, callable or None, default=None
            The step size (see :func:`inner_loop`); None takes the
            configuration's ``inner_lr``.

        Returns
        -------
        head : list of torch.Tensor
            ``[weight, bias]``, the adapted head (leaf tensors).
        """
        head, first = self.start(x_support, y_support, n_classes, with_loss=n_steps > 0)
        self.adapt_from(head, x_support, y_support, n_steps, proximal=proximal,
                        first_loss=first, lr=lr)
        return head

    def adapt_from(self, head, x_support, y_support, n_steps, *, proximal=None,
                   first_loss=None, lr=None):
        """The inner loop of :meth:`adapt`, from the current scratch state
        (``first_loss``: the support loss there, if already computed)."""
        params = self.params + head
        if proximal is not None:
            proximal = (proximal, [p.detach().clone() for p in params])
        inner_loop(self.support_loss(x_support, y_support), params, n_steps,
                   self.config.inner_lr if lr is None else lr, proximal=proximal,
                   first_loss=first_loss)
        if self.has_support_norm and n_steps > 0:
            # Record the support statistics at the adapted weights.
            with torch.no_grad():
                self.features(x_support)

    def adapt_head(self, x_support, y_support, n_classes, n_steps):
        """SGD on the head alone from its initialisation; the body stays at ``theta``."""
        self.reset()
        with torch.no_grad():
            feats = self.features(x_support)
        head = list(self.meta_model.initial_head(feats, y_support, n_classes))
        inner_loop(self.support_loss(feats, y_support, mode="head"), head, n_steps,
                   self.config.inner_lr)
        return head

    def query_features(self, x, x_support=None, body_params=None, transductive=None):
        """Features of the queries ``x`` at the adapted weights.

        Queries are normalised with the support statistics, or with their own
        batch statistics when ``transductive`` (default: the configuration's
        setting). With ``x_support`` given, gradients enabled and
        :attr:`statistics_gradient`, the support statistics are computed
        again inside the graph (the support set and
        the queries in one pass, :func:`~fomaml_sklearn.backbones.support_rows`):
        the same features as the recorded statistics give, but the query
        loss's gradient also runs through the statistics into the weights.
        Meta-training passes it; test time need not.

        Parameters
        ----------
        x : torch.Tensor
            The queries.
        x_support : torch.Tensor or None, default=None
            The task's support inputs.
        body_params : list of torch.Tensor or None, default=None
            As in :meth:`features`: None for the scratch backbone, else
            tensors for the meta backbone run functionally.
        transductive : bool or None, default=None
            None takes the configuration's.
        """
        transductive = self.config.transductive if transductive is None else transductive
        if transductive:
            return self.features(x, body_params, train=True)
        if x_support is None or not self.statistics_gradient or not torch.is_grad_enabled():
            return self.features(x, body_params, train=False)
        n = len(x_support)
        with support_rows(self.scratch if body_params is None else self._body, n):
            return self.features(torch.cat([x_support, x]), body_params, train=False)[n:]

    def query_logits(self, x, head, transductive=None, x_support=None):
        """Logits of the adapted network (the scratch backbone) on ``x``
        (features from :meth:`query_features`, which says what
        ``transductive`` and ``x_support`` do)."""
        return self.logits(self.query_features(x, x_support, transductive=transductive), head)

    def meta_gradients(self, grads, n_classes):
        """``{meta-parameter: gradient}`` from the gradients of a task's body
        parameters (the scratch copy's or theta's, in order) followed by its
        head's weight and bias, which pass to the meta-head rows they were
        copied from (:meth:`~fomaml_sklearn.heads.MetaModel.head_gradients`)."""
        result = dict(zip(self.meta_params, grads[:-2]))
        result.update(self.meta_model.head_gradients(n_classes, *grads[-2:]))
        return result

    def total_gradients(self, loss):
        """``{meta-parameter: gradient}`` of ``loss`` through its whole graph
        (second-order rules); parameters it does not reach get zeros."""
        meta_params = list(self.meta_model.parameters())
        grads = torch.autograd.grad(loss, meta_params, allow_unused=True)
        return {p: (torch.zeros_like(p) if g is None else g)
                for p, g in zip(meta_params, grads)}

    def task_model(self, head):
        """Freeze the current adaptation into a stand-alone :class:`TaskModel`."""
        body = copy.deepcopy(self.scratch).eval()
        body.requires_grad_(False)
        return TaskModel(body, head[0].detach(), head[1].detach()).eval()
