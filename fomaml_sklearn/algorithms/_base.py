"""The contract of a meta-learning rule: :class:`MetaAlgorithm` (what a rule
implements), :class:`TaskResult` and :class:`MetaGradient` (what it returns),
and :func:`meta_gradient` (a rule's meta-gradient outside an estimator).

A rule is handed a :class:`~fomaml_sklearn.algorithms.runner.TaskRunner`
(the adaptation engine: a scratch copy of the network, forward passes, the
inner loop) and a :class:`~fomaml_sklearn.algorithms.runner.MetaBatch`; it
uses only the runner's documented members. Notation: ``theta`` are the
meta-parameters (a backbone and the head initialisation), ``phi = U(theta)``
the parameters after ``k`` SGD steps at rate ``alpha`` on a task's support
loss (:func:`~fomaml_sklearn.algorithms.runner.inner_loop`). A rule says how a
task's query loss at ``phi`` becomes a meta-gradient, and how a new task is
adapted to at test time.
"""

import copy

import torch
from sklearn.base import BaseEstimator

from .._config import MetaConfig
from ..heads import resolve_prototype_gradient
from ..names import PROTOTYPE_HEADS
from .runner import MetaBatch, TaskRunner, attach_rule_parameters

__all__ = [
    "MetaAlgorithm",
    "MetaGradient",
    "PrototypeGradientOption",
    "TaskResult",
    "meta_gradient",
    "n_correct",
]


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
    mean over its tasks), :meth:`supports_batched` and
    :meth:`meta_parameters` (meta-learned tensors of the rule's own, such
    as Meta-SGD's inner rates). Register a new rule with
    :func:`fomaml_sklearn.algorithms.register_algorithm`.

    Attributes
    ----------
    concurrent_tasks : bool, default=False
        Whether :meth:`task_meta_gradient` may run for several tasks at once,
        each on its own :class:`TaskRunner` (``runner.fork()``) in its own
        thread: true of a rule that keeps no state of its own between tasks
        and uses the runner only through its API. Then
        ``task_batching="auto"`` runs a meta-batch's tasks on the CPU's
        threads (``"threads"``). A rule that counts or caches across tasks
        (iMAML's safeguard counters) leaves it False; a subclass of a rule
        that sets it inherits it, so a subclass that keeps state across
        tasks sets it back to False.
    """

    concurrent_tasks = False

    def validate(self):
        """Check the options; raise ``ValueError`` naming a bad one."""

    def resolve(self, meta_model):
        """A copy with every ``"auto"`` option decided for ``meta_model``."""
        self.validate()
        return copy.deepcopy(self)

    def supports_batched(self, meta_model):
        """Whether :meth:`meta_gradient` has a batched path for this model."""
        return False

    def meta_parameters(self, meta_model, config):
        """The rule's own meta-learned tensors and their initial values.

        Called on the resolved rule when a fit starts from a new meta-model
        (and, for their names and shapes, when a model file is loaded). The
        tensors become ``meta_model.rule_state`` (a ``torch.nn.ParameterDict``,
        see :func:`~fomaml_sklearn.algorithms.runner.attach_rule_parameters`):
        parameters of the meta-model, so the meta-optimizer trains them
        beside the network's, a distributed fit all-reduces their gradients,
        and checkpoints, pickles and model files keep them. They are not
        estimator parameters (``get_params`` does not show them). The rule
        reads them as ``runner.rule_parameters`` and returns their
        meta-gradients in its :class:`TaskResult`, keyed by the parameter
        like every other meta-parameter's.

        Parameters
        ----------
        meta_model : MetaModel
            The new meta-model (possibly on the "meta" device: only names and
            shapes matter then).
        config : MetaConfig
            The resolved settings (``inner_lr``, ``n_inner_steps``, ...).

        Returns
        -------
        tensors : dict of str to torch.Tensor
            ``{name: initial value}``; names are non-empty and have no ``"."``.
            Empty (the default): the rule has no state of its own.
        """
        return {}

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
        batch : MetaBatch
            The tasks; ``batch.n_classes`` gives the classes per task.
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
    through the support's BatchNorm statistics too
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
        return meta_model.head in PROTOTYPE_HEADS and resolve_prototype_gradient(
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
        head, first, head_graph = runner.start_with_head_graph(
            x_support, y_support, n_classes, with_loss=n_steps > 0,
            with_graph=self.through_prototypes(runner.meta_model))
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


def meta_gradient(meta_model, tasks, n_classes, algorithm="fomaml", *, batched=False,
                  **settings):
    """The meta-gradient of a list of tasks under a rule, outside any estimator.

    For research code, benchmarks and tests: it builds a :class:`TaskRunner`
    and asks the rule.

    Parameters
    ----------
    meta_model : MetaModel
        The meta-parameters (not modified; a rule with meta-learned tensors
        of its own, such as Meta-SGD, adds them as ``meta_model.rule_state``
        the first time, :func:`~fomaml_sklearn.algorithms.runner.attach_rule_parameters`).
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
    from . import get_algorithm

    rule = get_algorithm(algorithm).resolve(meta_model)
    config = MetaConfig(algorithm=rule, **settings)
    attach_rule_parameters(meta_model, config)
    runner = TaskRunner(meta_model, config)
    batch = tasks if isinstance(tasks, MetaBatch) else MetaBatch.from_tasks(tasks, n_classes)
    return rule.meta_gradient(runner, batch, batched=batched)
