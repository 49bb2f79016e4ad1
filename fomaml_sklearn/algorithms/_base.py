"""What every meta-learning rule shares: the one inner loop, the task runner
that adapts on a scratch copy of the network, and the interface of a rule.

Notation: ``theta`` are the meta-parameters (a backbone and the head
initialisation), ``phi = U(theta)`` the parameters after ``k`` SGD steps at
rate ``alpha`` on a task's support loss (:func:`inner_loop`). A rule
(:class:`MetaAlgorithm`) says how a task's query loss at ``phi`` becomes a
meta-gradient, and how a new task is adapted to at test time.
"""

import contextlib
import copy

import torch
from sklearn.base import BaseEstimator
from torch.nn import functional as F

from ..backbones import SupportBatchNorm
from ..heads import TaskModel, resolve_prototype_gradient

__all__ = [
    "MetaAlgorithm",
    "MetaGradient",
    "PrototypeGradientOption",
    "TaskBatch",
    "TaskResult",
    "TaskRunner",
    "inner_loop",
    "meta_gradient",
]


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
    lr : float
        Step size alpha.
    create_graph : bool, default=False
        Keep the graph of the steps, for derivatives through them.
    proximal : tuple (lam, anchors) or None, default=None
        Add ``lam / 2 * ||params - anchors||^2`` to the loss (iMAML's inner
        problem); ``anchors`` are constants.
    first_loss : torch.Tensor or None, default=None
        ``support_loss(params)`` at the starting point, when the caller has
        already computed it (its forward pass also built the task head), so
        the first step reuses it instead of a second forward pass.

    Returns
    -------
    params : list of torch.Tensor
        The parameters after the steps.
    """
    with torch.enable_grad():  # also when called under torch.no_grad()
        for step in range(n_steps):
            loss = first_loss if step == 0 and first_loss is not None else support_loss(params)
            grads = torch.autograd.grad(loss, params, create_graph=create_graph)
            if proximal is not None:
                lam, anchors = proximal
                grads = [g + lam * ((p if create_graph else p.detach()) - a)
                         for g, p, a in zip(grads, params, anchors)]
            if create_graph:
                params = [p - lr * g for p, g in zip(params, grads)]
            else:
                with torch.no_grad():
                    torch._foreach_add_(params, grads, alpha=-lr)
    return params


class TaskResult:
    """A task's meta-gradient contributions, keyed by meta-parameter.

    Parameters
    ----------
    grads : dict
        ``{meta_parameter: gradient}``; missing parameters count as zero.
    loss : torch.Tensor
        The query loss after adaptation (no graph).
    n_correct : torch.Tensor or None
        Correct query predictions (None for real-valued targets).
    """

    __slots__ = ("grads", "loss", "n_correct")

    def __init__(self, grads, loss, n_correct):
        self.grads, self.loss, self.n_correct = grads, loss, n_correct


class MetaGradient:
    """The meta-gradient of a meta-batch, and how its tasks went.

    Attributes
    ----------
    grads : list of torch.Tensor
        One tensor per meta-parameter, in ``meta_model.parameters()`` order.
    loss : float
        Mean query loss after adaptation.
    accuracy : float
        Query accuracy after adaptation (nan for real-valued targets).
    """

    __slots__ = ("grads", "loss", "accuracy")

    def __init__(self, grads, loss, accuracy):
        self.grads, self.loss, self.accuracy = grads, loss, accuracy

    def __iter__(self):  # grads, loss, accuracy = ...
        return iter((self.grads, self.loss, self.accuracy))


def n_correct(logits, y):
    """Number of correct argmax predictions, None for real-valued targets."""
    if y.is_floating_point():
        return None
    return (logits.detach().argmax(-1) == y).sum()


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
    """

    def __init__(self, meta_model, config=None):
        from .._config import MetaConfig

        self.meta_model = meta_model
        self.config = MetaConfig() if config is None else config
        self.loss_fn = self.config.loss
        self.scratch = copy.deepcopy(meta_model.backbone)
        self.scratch.requires_grad_(True)
        self.params = list(self.scratch.parameters())
        self.meta_params = list(meta_model.backbone.parameters())
        self._buffers = list(self.scratch.buffers())
        self._meta_buffers = list(meta_model.backbone.buffers())
        # Names for functional calls of the meta backbone (read once: a hot path).
        self._param_names = [n for n, _ in meta_model.backbone.named_parameters()]
        self._buffer_names = [n for n, _ in meta_model.backbone.named_buffers()]
        self.has_support_norm = any(
            isinstance(m, SupportBatchNorm) for m in self.scratch.modules()
        )
        self._autocast_dtype = self.config.autocast_dtype  # read once: a hot path

    @property
    def algorithm(self):
        """The rule of the configuration."""
        return self.config.algorithm

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
            for b, mb in zip(self._buffers, self._meta_buffers):
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
            body = self.meta_model.backbone
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

        The meta backbone runs in evaluation mode with the support statistics
        the scratch backbone has just recorded (held constant, as for the
        queries). Call it right after :meth:`start`.

        Returns
        -------
        weight, bias : torch.Tensor
            With a graph to ``meta_model.backbone``'s parameters.
        """
        # Clones: the scratch buffers change in the inner loop, before the
        # backward pass through this graph.
        stats = [b.detach().clone() for b in self._buffers]
        with torch.enable_grad():
            feats = self.features(x_support, self.meta_params, train=False, buffers=stats)
            return self.meta_model.head_with_graph(feats, y_support, n_classes)

    def adapt(self, x_support, y_support, n_classes, n_steps, *, proximal=None):
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
            Inner steps, at the configuration's ``inner_lr``.
        proximal : float or None, default=None
            iMAML's ``lam``: pull the parameters towards their start.

        Returns
        -------
        head : list of torch.Tensor
            ``[weight, bias]``, the adapted head (leaf tensors).
        """
        head, first = self.start(x_support, y_support, n_classes, with_loss=n_steps > 0)
        self.adapt_from(head, x_support, y_support, n_steps, proximal=proximal,
                        first_loss=first)
        return head

    def adapt_from(self, head, x_support, y_support, n_steps, *, proximal=None,
                   first_loss=None):
        """The inner loop of :meth:`adapt`, from the current scratch state
        (``first_loss``: the support loss there, if already computed)."""
        params = self.params + head
        if proximal is not None:
            proximal = (proximal, [p.detach().clone() for p in params])
        inner_loop(self.support_loss(x_support, y_support), params, n_steps,
                   self.config.inner_lr, proximal=proximal, first_loss=first_loss)
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

    def query_logits(self, x, head, transductive=None):
        """Logits of the adapted network (the scratch backbone) on ``x``.

        Queries are normalised with the recorded support statistics, or with
        their own batch statistics when ``transductive`` (default: the
        configuration's setting).
        """
        transductive = self.config.transductive if transductive is None else transductive
        return self.logits(self.features(x, train=transductive), head)

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


class MetaAlgorithm(BaseEstimator):
    """The interface of a meta-learning rule.

    A rule is a small scikit-learn-style object: its ``__init__`` stores its
    options (searchable as ``algorithm__<option>`` when an instance is given
    to an estimator), :meth:`validate` checks them and :meth:`resolve`
    returns a copy with its ``"auto"`` options decided for a given model.
    The estimators and the training loop call only the methods below.

    Subclasses implement :meth:`task_meta_gradient`; they may override
    :meth:`adapt` (test-time adaptation, by default SGD on the body and head
    from ``theta``), :meth:`meta_gradient` (a whole meta-batch, by default the
    mean over its tasks) and :meth:`supports_batched`. Register a new rule
    with :func:`fomaml_sklearn.algorithms.register_algorithm`.

    Attributes
    ----------
    adapts_body : bool
        Class attribute: whether adaptation changes the body (False: only
        the head adapts, as in ANIL).
    """

    adapts_body = True

    def validate(self):
        """Check the options; raise ``ValueError`` naming a bad one."""

    def resolve(self, meta_model):
        """A copy with every ``"auto"`` option decided for ``meta_model``."""
        self.validate()
        return copy.deepcopy(self)

    def supports_batched(self, meta_model):
        """Whether :meth:`meta_gradient` has a batched path for this model."""
        return False

    def task_meta_gradient(self, runner, x_support, y_support, x_query, y_query, n_classes):
        """One task's contribution to the meta-gradient.

        Parameters
        ----------
        runner : TaskRunner
            The meta-model, a scratch copy and the configuration.
        x_support, y_support, x_query, y_query : torch.Tensor
            The task, labels coded ``0 .. n_classes-1``.
        n_classes : int
            Number of classes (outputs) of the task.

        Returns
        -------
        result : TaskResult
        """
        raise NotImplementedError

    def meta_gradient(self, runner, batch, batched=False):
        """Mean meta-gradient over the tasks of a meta-batch.

        Parameters
        ----------
        runner : TaskRunner
            The meta-model, a scratch copy and the configuration.
        batch : MetaBatch or iterable of (x_support, y_support, x_query, y_query)
            The tasks; ``batch.n_classes`` (or the ``n_classes`` of the
            configuration's caller) gives the classes per task.
        batched : bool, default=False
            Use the rule's batched path (see :meth:`supports_batched`).

        Returns
        -------
        result : MetaGradient
        """
        n_classes = batch.n_classes
        meta_params = list(runner.meta_model.parameters())
        total = {p: torch.zeros_like(p) for p in meta_params}
        total_loss, total_correct, total_queries, n_tasks = 0.0, 0, 0, 0
        for x_s, y_s, x_q, y_q in batch:
            result = self.task_meta_gradient(runner, x_s, y_s, x_q, y_q, n_classes)
            for p, g in result.grads.items():
                total[p] += g
            total_loss += result.loss
            total_correct = total_correct + (
                float("nan") if result.n_correct is None else result.n_correct)
            total_queries += len(y_q)
            n_tasks += 1
        if n_tasks == 0:
            raise ValueError("meta_gradient needs at least one task.")
        grads = [total[p] / n_tasks for p in meta_params]
        return MetaGradient(grads, float(total_loss) / n_tasks,
                            float(total_correct) / total_queries)

    def adapt(self, runner, x_support, y_support, n_classes):
        """Test-time adaptation from ``theta`` (``adapt``, ``evaluate``,
        ``score`` and validation): ``config.n_inner_steps_test`` steps.

        Returns
        -------
        head : list of torch.Tensor
            The adapted head; the runner's scratch backbone holds the body.
        """
        return runner.adapt(x_support, y_support, n_classes, runner.config.n_inner_steps_test)


class PrototypeGradientOption:
    """The ``prototype_gradient`` option of a rule (a mixin before
    :class:`MetaAlgorithm`): with the prototype head, carry the head's
    meta-gradient back through the prototypes at ``theta`` into the body,
    the support statistics held constant
    (:meth:`TaskRunner.prototype_head_graph`). ``"auto"`` is decided by
    :func:`~fomaml_sklearn.heads.resolve_prototype_gradient`."""

    def _validate_prototype_gradient(self):
        value = self.prototype_gradient
        if not (isinstance(value, bool) or value == "auto"):
            raise ValueError(
                f"prototype_gradient={value!r} is not supported by {type(self).__name__}; "
                "use 'auto', True or False."
            )

    def resolve(self, meta_model):
        rule = super().resolve(meta_model)
        rule.prototype_gradient = resolve_prototype_gradient(
            self.prototype_gradient, meta_model.backbone)
        return rule

    def through_prototypes(self, meta_model):
        """Whether the meta-gradient goes through the prototypes of this model."""
        return meta_model.head == "prototype" and resolve_prototype_gradient(
            self.prototype_gradient, meta_model.backbone)

    def adapt_with_head_graph(self, runner, x_support, y_support, n_classes, proximal=None):
        """Adapt on the scratch copy with ``config.n_inner_steps`` steps; also
        keep the prototype head at ``theta`` with its graph where the option
        asks for it.

        Returns
        -------
        head : list of torch.Tensor
            The adapted head (leaf tensors).
        head_graph : tuple of torch.Tensor or None
            The initial head with a graph to ``theta``, for
            :meth:`add_through_prototypes`.
        """
        n_steps = runner.config.n_inner_steps
        head, first = runner.start(x_support, y_support, n_classes, with_loss=n_steps > 0)
        head_graph = None
        if self.through_prototypes(runner.meta_model):
            head_graph = runner.prototype_head_graph(x_support, y_support, n_classes)
        runner.adapt_from(head, x_support, y_support, n_steps, proximal=proximal,
                          first_loss=first)
        return head, head_graph

    @staticmethod
    def add_through_prototypes(runner, grads, head_graph, head_grads, scale=1.0):
        """Add ``scale * (d h0 / d theta)^T head_grads`` to ``grads`` (in place)."""
        if head_graph is None:
            return grads
        through = torch.autograd.grad(head_graph, runner.meta_params, grad_outputs=head_grads)
        for p, t in zip(runner.meta_params, through):
            grads[p] = grads[p] + scale * t
        return grads


class TaskBatch:
    """A list of tasks as a meta-batch: ``n_classes``, iteration and stacks.

    Parameters
    ----------
    tasks : iterable of (x_support, y_support, x_query, y_query)
        The tasks, labels coded ``0 .. n_classes-1``.
    n_classes : int
        Classes (outputs) per task.
    """

    def __init__(self, tasks, n_classes):
        self.tasks = list(tasks)
        self.n_classes = n_classes

    def __len__(self):
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)

    def _shared(self, index, name):
        first = self.tasks[0][index]
        if any(not torch.equal(t[index], first) for t in self.tasks[1:]):
            raise ValueError(f"The batched path needs the same {name} in every task.")
        return first

    @property
    def x_support(self):
        return torch.stack([t[0] for t in self.tasks])

    @property
    def y_support(self):
        return self._shared(1, "y_support")

    @property
    def x_query(self):
        return torch.stack([t[2] for t in self.tasks])

    @property
    def y_query(self):
        return self._shared(3, "y_query")


def meta_gradient(meta_model, tasks, n_classes, algorithm="fomaml", *, batched=False,
                  **settings):
    """The meta-gradient of a list of tasks under a rule, outside any estimator.

    For research code, benchmarks and tests: it builds a :class:`TaskRunner`
    and asks the rule.

    Parameters
    ----------
    meta_model : MetaModel
        The meta-parameters (not modified).
    tasks : MetaBatch or iterable of (x_support, y_support, x_query, y_query)
        The tasks, labels coded ``0 .. n_classes-1``.
    n_classes : int
        Classes (outputs) per task.
    algorithm : str or MetaAlgorithm, default="fomaml"
        The rule; its ``"auto"`` options are resolved for ``meta_model``.
    batched : bool, default=False
        Use the rule's batched path.
    **settings
        Fields of :class:`~fomaml_sklearn._config.MetaConfig`: ``inner_lr``,
        ``n_inner_steps``, ``transductive``, ``precision``, ``loss``, ...

    Returns
    -------
    result : MetaGradient
        ``grads, loss, accuracy = result`` unpacks it.

    Examples
    --------
    >>> import torch
    >>> from fomaml_sklearn.algorithms import meta_gradient
    >>> from fomaml_sklearn.backbones import MLPBackbone
    >>> from fomaml_sklearn.heads import MetaModel
    >>> meta = MetaModel(MLPBackbone(4, (8,)), 4, head="prototype")
    >>> y = torch.tensor([0, 1])
    >>> task = (torch.randn(2, 4), y, torch.randn(2, 4), y)
    >>> grads, loss, accuracy = meta_gradient(meta, [task], 2, "maml", n_inner_steps=2)
    >>> len(grads) == len(list(meta.parameters()))
    True
    """
    from .._config import MetaConfig
    from . import get_algorithm

    rule = get_algorithm(algorithm).resolve(meta_model)
    runner = TaskRunner(meta_model, MetaConfig(algorithm=rule, **settings))
    batch = tasks if hasattr(tasks, "n_classes") else TaskBatch(tasks, n_classes)
    return rule.meta_gradient(runner, batch, batched=batched)
