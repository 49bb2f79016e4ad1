"""The FOMAML update rules as plain torch code (no scikit-learn here).

Notation: ``theta`` are the meta-parameters (a backbone plus the head
initialisation), ``phi = U(theta)`` the parameters after ``k`` SGD steps with
rate ``alpha`` on a task's support loss. FOMAML's meta-gradient of one task is
``grad L_query(phi)``: the Jacobian ``U'(theta)`` of MAML is replaced by the
identity, so no graph is kept through the inner loop.

Heads. A task with ``n`` classes needs ``n`` rows of output weights; the
meta-learned head initialisation provides them:

- ``"shared"``: one meta-learned row (and bias) copied for every class. The
  inner loop's first step breaks the symmetry. Because every task row starts
  as the same meta-parameter, the meta-gradient of that row is the sum of the
  task rows' gradients (the identity Jacobian of the copy). Serves any number
  of classes.
- ``"fixed"``: ``n_rows`` meta-learned rows, the classic N-way head of the
  MAML paper; task class ``j`` starts from row ``j % n_rows``.
- ``"prototype"``: rows built from the support embeddings at ``theta``
  (``w_j = 2 mu_j``, ``b_j = -|mu_j|^2``, as in Proto-MAML), no head
  meta-parameters.

First order with a head built from ``theta``. ``phi = U(theta)`` starts from
the initial head ``h0(theta)``; FOMAML sets the Jacobian of the inner SGD
steps to the identity, not that of ``h0``. For the ``"shared"``/``"fixed"``
heads ``h0`` copies rows (its Jacobian sums the task rows' gradients). For
the prototype head the query gradient of the head flows back through the
prototypes into the body, as in fo-Proto-MAML (Triantafillou et al., 2020):
``g = grad_body L(phi) + (d h0 / d theta)^T grad_head L(phi)``. The
prototypes are differentiated with the support BatchNorm statistics held
constant, as the queries are (:meth:`TaskRunner.prototype_head_graph`). On
Omniglot 5-way 1-shot (Conv-4) this took accuracy after 600 meta-steps from
88.8 % (prototypes as constants) to 94.9 %; with an MLP whose BatchNorm
statistics come from 5 support examples it cost 30 points
(``docs/design.md``), so it can be switched off
(``TaskRunner(prototype_gradient=False)``; :func:`resolve_prototype_gradient`).
"""

import copy
import contextlib

import torch
from torch import nn
from torch.nn import functional as F

from .backbones import SupportBatchNorm

__all__ = [
    "ALGORITHMS",
    "HEADS",
    "MetaModel",
    "TaskModel",
    "TaskRunner",
    "meta_gradient",
    "fomaml_meta_gradient",
    "prototype_head",
    "resolve_prototype_gradient",
]

HEADS = ("shared", "fixed", "prototype")


def _feature_dim(backbone, n_features):
    out = getattr(backbone, "out_features", None)
    if isinstance(out, int):
        return out
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            param = next(backbone.parameters(), None)
            device = param.device if param is not None else "cpu"
            z = backbone(torch.zeros(2, n_features, device=device))
    finally:
        backbone.train(was_training)
    if z.dim() != 2 or z.shape[0] != 2:
        raise ValueError(
            "A backbone module must map a batch of shape (n_samples, n_features) to "
            f"features of shape (n_samples, n_outputs); got shape {tuple(z.shape)}. "
            "Reshape inside the module's forward."
        )
    return int(z.shape[1])


class MetaModel(nn.Module):
    """Meta-parameters: a backbone and the initialisation of the task head.

    Parameters
    ----------
    backbone : torch.nn.Module
        Feature extractor, ``(n, n_features) -> (n, d)``.
    n_features : int
        Flattened input size (used to infer ``d`` when the backbone does not
        say it in ``out_features``).
    head : {"shared", "fixed", "prototype"}
        How task heads are initialised (see the module docstring).
    n_rows : int
        Number of meta-learned head rows for ``head="fixed"``.
    """

    def __init__(self, backbone, n_features, head="shared", n_rows=1):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head={head!r} is not one of {HEADS}.")
        self.backbone = backbone
        self.head = head
        self.feature_dim = _feature_dim(backbone, n_features)
        if head == "prototype":
            self.head_weight = None
            self.head_bias = None
        else:
            rows = 1 if head == "shared" else int(n_rows)
            linear = nn.Linear(self.feature_dim, rows)
            if head == "shared":
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)
            self.head_weight = nn.Parameter(linear.weight.detach().clone())
            self.head_bias = nn.Parameter(linear.bias.detach().clone())

    def forward(self, x):
        return self.backbone(x)

    def head_rows(self, n_classes):
        """Row of the meta-head that initialises each of ``n_classes`` classes."""
        rows = self.head_weight.shape[0]
        return torch.arange(n_classes, device=self.head_weight.device) % rows

    def initial_head(self, support_features, y_support, n_classes):
        """Task head ``(W0, b0)`` as fresh leaf tensors requiring grad.

        ``support_features`` is ``(..., n, d)``: with leading task axes (the
        grouped path), every task gets its own head, ``(..., n_classes, d)``
        and ``(..., n_classes)``.
        """
        weight, bias = _initial_head_with_graph(
            self, support_features.detach().float(), y_support, n_classes)
        return (weight.detach().clone().requires_grad_(True),
                bias.detach().clone().requires_grad_(True))


def resolve_prototype_gradient(value, backbone):
    """Resolve the ``prototype_gradient`` parameter.

    ``"auto"`` is False only for a backbone that batch-normalises flat
    features (a :class:`SupportBatchNorm` and no convolution), True
    otherwise. The gradient through the prototypes holds the support
    statistics constant; where each statistic comes from the few support
    examples alone (an MLP's BatchNorm in 1-shot: one example per class),
    that approximation hurt. Measured (``benchmarks/prototype_gradient.py``,
    ``docs/design.md``): Conv-4 on Omniglot +6 points, MLP without BatchNorm
    +9 points, MLP with BatchNorm -30 points in 1-shot and no change in
    5-shot.

    Parameters
    ----------
    value : {"auto", True, False}
        The requested setting.
    backbone : torch.nn.Module
        The meta-model's body, after :func:`~fomaml_sklearn.backbones.build_backbone`
        (which converts ``nn.BatchNorm*`` layers to :class:`SupportBatchNorm`).

    Returns
    -------
    through : bool
        Whether the meta-gradient goes through the prototypes.
    """
    if value == "auto":
        modules = list(backbone.modules())
        has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in modules)
        has_norm = any(isinstance(m, SupportBatchNorm) for m in modules)
        return has_conv or not has_norm
    return bool(value)


class TaskModel(nn.Module):
    """An adapted network: the task's backbone and its linear head.

    Parameters
    ----------
    backbone : torch.nn.Module
        The adapted feature extractor (in evaluation mode its BatchNorm layers
        use the support statistics).
    weight, bias : torch.Tensor
        The adapted head, ``(n_classes, d)`` and ``(n_classes,)``.
    """

    def __init__(self, backbone, weight, bias):
        super().__init__()
        self.backbone = backbone
        # skip_init: no random initialisation (it would draw from the global RNG).
        self.head = torch.nn.utils.skip_init(
            nn.Linear, weight.shape[1], weight.shape[0], device=weight.device
        )
        with torch.no_grad():
            self.head.weight.copy_(weight)
            self.head.bias.copy_(bias)

    def forward(self, x):
        return self.head(self.backbone(x))


class TaskRunner:
    """Run inner loops on one scratch copy of the backbone.

    Adapting a task copies ``theta`` into the scratch backbone in place, so no
    module is allocated per task.

    Parameters
    ----------
    meta_model : MetaModel
        The meta-parameters (never modified here).
    autocast_dtype : torch.dtype or None
        Run forward passes under ``torch.autocast`` with this dtype; parameters
        and the SGD updates stay float32.
    loss_fn : callable, default=torch.nn.functional.cross_entropy
        ``loss_fn(outputs, targets)``, a scalar mean over the examples.
    prototype_gradient : bool, default=True
        With the prototype head, FOMAML carries the head's query gradient
        back through the prototypes into the body; False treats the
        prototypes as constants.
    """

    def __init__(self, meta_model, autocast_dtype=None, loss_fn=F.cross_entropy,
                 prototype_gradient=True):
        self.meta_model = meta_model
        self.prototype_gradient = prototype_gradient
        self.loss_fn = loss_fn
        self.scratch = copy.deepcopy(meta_model.backbone)
        self.scratch.requires_grad_(True)
        self._params = list(self.scratch.parameters())
        self._meta_params = list(meta_model.backbone.parameters())
        self._buffers = list(self.scratch.buffers())
        self._meta_buffers = list(meta_model.backbone.buffers())
        self.has_support_norm = any(
            isinstance(m, SupportBatchNorm) for m in self.scratch.modules()
        )
        self.autocast_dtype = autocast_dtype
        self.initial_head_graph = None

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        device = self._params[0].device.type if self._params else "cpu"
        return torch.autocast(device_type=device, dtype=self.autocast_dtype)

    def _logits(self, x, weight, bias):
        with self._autocast():
            feats = self.scratch(x)
        return F.linear(feats.float(), weight, bias), feats

    def reset(self):
        """Copy ``theta`` (parameters and buffers) into the scratch backbone."""
        with torch.no_grad():
            if self._params:
                torch._foreach_copy_(self._params, self._meta_params)
            for b, mb in zip(self._buffers, self._meta_buffers):
                b.copy_(mb)

    def prototype_head_graph(self, x_support, y_support, n_classes):
        """Prototype head at ``theta``, differentiable with respect to ``theta``.

        The backbone runs with the meta-parameters themselves and, in its
        BatchNorm layers, the support statistics the scratch backbone has
        just recorded (held constant, as for the queries). Call it while the
        scratch statistics are those at ``theta``.

        Returns
        -------
        weight, bias : torch.Tensor
            ``(n_classes, d)`` and ``(n_classes,)``, with a graph to
            ``meta_model.backbone``'s parameters.
        """
        body = self.meta_model.backbone
        tensors = dict(body.named_parameters())
        tensors.update({name: b.detach().clone() for name, b in
                        zip((n for n, _ in body.named_buffers()), self._buffers)})
        was_training = body.training
        body.eval()
        try:
            with torch.enable_grad():
                with self._autocast():
                    feats = torch.func.functional_call(body, tensors, (x_support,))
                return _initial_head_with_graph(self.meta_model, feats.float(), y_support,
                                                n_classes)
        finally:
            body.train(was_training)

    def adapt(self, x_support, y_support, n_classes, inner_lr, n_steps, adapt_body=True,
              prototype_graph=False):
        """Adapt from ``theta`` on a support set; return the task head.

        The scratch backbone holds the adapted body afterwards, and its
        BatchNorm layers hold the support statistics at the adapted weights.

        Parameters
        ----------
        x_support, y_support : torch.Tensor
            The support set, labels coded ``0 .. n_classes-1``.
        n_classes : int
            Number of classes of the task.
        inner_lr : float
            SGD rate.
        n_steps : int
            SGD steps (0: the initial head, the body at theta).
        adapt_body : bool, default=True
            If False, only the head is trained (ANIL); the body stays at theta.
        prototype_graph : bool, default=False
            Also keep the prototype head at ``theta`` with its graph in
            ``initial_head_graph`` (see :meth:`prototype_head_graph`), for
            the first-order gradient through the prototypes.

        Returns
        -------
        weight, bias : torch.Tensor
            The adapted head (leaf tensors).
        """
        self.reset()
        self.scratch.train()
        if not adapt_body:
            with torch.no_grad(), self._autocast():
                feats = self.scratch(x_support).float()
            weight, bias = self.meta_model.initial_head(feats, y_support, n_classes)
            for _ in range(n_steps):
                loss = self.loss_fn(F.linear(feats, weight, bias), y_support)
                grads = torch.autograd.grad(loss, [weight, bias])
                with torch.no_grad():
                    torch._foreach_add_([weight, bias], grads, alpha=-inner_lr)
            return weight, bias
        weight = bias = None
        for step in range(max(n_steps, 1)):
            grad_enabled = n_steps > 0
            with torch.set_grad_enabled(grad_enabled):
                with self._autocast():
                    feats = self.scratch(x_support)
                if weight is None:
                    weight, bias = self.meta_model.initial_head(feats, y_support, n_classes)
                    if prototype_graph:
                        self.initial_head_graph = self.prototype_head_graph(
                            x_support, y_support, n_classes)
                if not grad_enabled:
                    break
                logits = F.linear(feats.float(), weight, bias)
                loss = self.loss_fn(logits, y_support)
            leaves = self._params + [weight, bias]
            grads = torch.autograd.grad(loss, leaves)
            with torch.no_grad():
                torch._foreach_add_(leaves, grads, alpha=-inner_lr)
        if self.has_support_norm and n_steps > 0:
            # Record the support statistics at the adapted weights.
            with torch.no_grad(), self._autocast():
                self.scratch(x_support)
        return weight, bias

    def query_logits(self, x, weight, bias, transductive=False):
        """Logits of the adapted network (the scratch backbone) on ``x``."""
        self.scratch.train(transductive)
        logits, _ = self._logits(x, weight, bias)
        return logits

    def task_model(self, weight, bias):
        """Freeze the current adaptation into a stand-alone :class:`TaskModel`."""
        body = copy.deepcopy(self.scratch).eval()
        body.requires_grad_(False)
        return TaskModel(body, weight.detach(), bias.detach()).eval()


class _TaskResult:
    """Gradient contributions of one task, keyed by meta-parameter."""

    __slots__ = ("grads", "loss", "n_correct")

    def __init__(self, grads, loss, n_correct):
        self.grads, self.loss, self.n_correct = grads, loss, n_correct


def _n_correct(logits, y):
    if y.is_floating_point():
        return None
    return (logits.detach().argmax(1) == y).sum()


def _head_rows_grads(meta, n_classes, grad_weight, grad_bias, grads):
    """Add task-head gradients to the meta-head rows they were copied from."""
    if meta.head == "prototype":
        return grads
    rows = meta.head_rows(n_classes)
    grads[meta.head_weight] = torch.zeros_like(meta.head_weight).index_add_(0, rows, grad_weight)
    grads[meta.head_bias] = torch.zeros_like(meta.head_bias).index_add_(0, rows, grad_bias)
    return grads


def _fomaml_task(runner, x_s, y_s, x_q, y_q, n_classes, inner_lr, n_steps, transductive):
    """FOMAML: ``grad L_query(phi)``, phi = k SGD steps on the support loss;
    with the prototype head, plus the head's gradient through the prototypes."""
    prototypes = runner.meta_model.head == "prototype" and runner.prototype_gradient
    weight, bias = runner.adapt(x_s, y_s, n_classes, inner_lr, n_steps,
                                prototype_graph=prototypes)
    logits = runner.query_logits(x_q, weight, bias, transductive)
    loss = runner.loss_fn(logits, y_q)
    params = runner._params
    g = torch.autograd.grad(loss, params + [weight, bias])
    grads = dict(zip(runner._meta_params, g[:-2]))
    grads = _head_rows_grads(runner.meta_model, n_classes, g[-2], g[-1], grads)
    if prototypes:
        w0, b0 = runner.initial_head_graph
        runner.initial_head_graph = None
        through = torch.autograd.grad((w0, b0), runner._meta_params, grad_outputs=g[-2:])
        for p, gp in zip(runner._meta_params, through):
            grads[p] = grads[p] + gp
    return _TaskResult(grads, loss.detach(), _n_correct(logits, y_q))


def _reptile_task(runner, x_s, y_s, x_q, y_q, n_classes, inner_lr, n_steps, transductive):
    """Reptile: ``theta - phi`` after k full-batch SGD steps on all the task's
    examples (support and query); the meta-optimizer takes it as a gradient."""
    x_all, y_all = torch.cat([x_s, x_q]), torch.cat([y_s, y_q])
    meta = runner.meta_model
    weight, bias = runner.adapt(x_all, y_all, n_classes, inner_lr, n_steps)
    with torch.no_grad():
        grads = {m: m - p for m, p in zip(runner._meta_params, runner._params)}
        if meta.head != "prototype":
            rows = meta.head_rows(n_classes)
            grads = _head_rows_grads(
                meta, n_classes, meta.head_weight[rows] - weight, meta.head_bias[rows] - bias,
                grads,
            )
        logits = runner.query_logits(x_q, weight, bias, transductive)
        loss = runner.loss_fn(logits, y_q)
    return _TaskResult(grads, loss, _n_correct(logits, y_q))


def _functional_body(runner, transductive_query=False):
    """Forward of the meta backbone with explicit parameters (for second order)."""
    body = runner.meta_model.backbone
    names = [n for n, _ in body.named_parameters()]
    buffers = {n: b.clone() for n, b in body.named_buffers()}

    def forward(params, x, train):
        body.train(train)
        with runner._autocast():
            out = torch.func.functional_call(body, {**dict(zip(names, params)), **buffers}, (x,))
        return out.float()

    return forward


def prototype_head(feats, y, n_classes):
    """Prototype head of support features: ``w_j = 2 mu_j``, ``b_j = -|mu_j|^2``.

    ``mu_j`` is the mean feature of class ``j``'s support examples, so the
    logits ``w_j . f + b_j = |f|^2 - |f - mu_j|^2`` rank the classes by
    squared distance to their prototype.

    Parameters
    ----------
    feats : torch.Tensor of shape (..., n, d)
        Support features, with any leading (task) axes.
    y : torch.Tensor of shape (n,)
        Class codes ``0 .. n_classes-1``, shared by the leading axes.
    n_classes : int
        Number of classes (rows of the head).

    Returns
    -------
    weight, bias : torch.Tensor
        ``(..., n_classes, d)`` and ``(..., n_classes)``, differentiable
        with respect to ``feats``.
    """
    protos = feats.new_zeros(feats.shape[:-2] + (n_classes, feats.shape[-1]))
    protos = protos.index_add(feats.dim() - 2, y, feats)
    counts = torch.bincount(y, minlength=n_classes).clamp_min(1).to(feats.dtype)
    protos = protos / counts[:, None]
    return 2 * protos, -(protos**2).sum(-1)


def _initial_head_with_graph(meta, feats, y_s, n_classes):
    """Task head at theta, differentiable with respect to theta; features
    ``(..., n, d)`` give heads with the same leading axes."""
    if meta.head == "prototype":
        return prototype_head(feats, y_s, n_classes)
    rows = meta.head_rows(n_classes)
    lead = feats.shape[:-2]
    return (meta.head_weight[rows].expand(lead + (-1, -1)),
            meta.head_bias[rows].expand(lead + (-1,)))


def _maml_task(runner, x_s, y_s, x_q, y_q, n_classes, inner_lr, n_steps, transductive):
    """Second-order MAML: ``U'(theta)^T grad L_query(phi)``, by differentiating
    through the inner SGD steps (``create_graph=True``).

    BatchNorm statistics recorded on the support set and used for the
    queries are treated as constants.
    """
    meta = runner.meta_model
    forward = _functional_body(runner)
    theta = list(meta.backbone.parameters())
    feats = forward(theta, x_s, True)
    weight, bias = _initial_head_with_graph(meta, feats, y_s, n_classes)
    params = theta + [weight, bias]
    for step in range(n_steps):
        if step > 0:
            feats = forward(params[:-2], x_s, True)
        loss = runner.loss_fn(F.linear(feats, params[-2], params[-1]), y_s)
        g = torch.autograd.grad(loss, params, create_graph=True)
        params = [p - inner_lr * gi for p, gi in zip(params, g)]
    if runner.has_support_norm and n_steps > 0:
        with torch.no_grad():
            forward([p.detach() for p in params[:-2]], x_s, True)
    logits = F.linear(forward(params[:-2], x_q, transductive), params[-2], params[-1])
    loss = runner.loss_fn(logits, y_q)
    meta_params = list(meta.parameters())
    g = torch.autograd.grad(loss, meta_params, allow_unused=True)
    grads = {p: (torch.zeros_like(p) if gi is None else gi) for p, gi in zip(meta_params, g)}
    meta.backbone.train()
    return _TaskResult(grads, loss.detach(), _n_correct(logits, y_q))


def _anil_task(runner, x_s, y_s, x_q, y_q, n_classes, inner_lr, n_steps, transductive,
               second_order):
    """ANIL (Raghu et al., 2020): only the head adapts in the inner loop; the
    body is meta-learned through the query loss. Second order differentiates
    through the head's SGD steps (cheap: the support features are computed once)."""
    meta = runner.meta_model
    body = meta.backbone
    body.train()
    with runner._autocast():
        feats_s = body(x_s).float()
    weight, bias = _initial_head_with_graph(meta, feats_s, y_s, n_classes)
    if not second_order:
        feats_s = feats_s.detach()
        weight = weight.detach().requires_grad_(True)
        bias = bias.detach().requires_grad_(True)
    head = [weight, bias]
    for _ in range(n_steps):
        loss = runner.loss_fn(F.linear(feats_s, *head), y_s)
        g = torch.autograd.grad(loss, head, create_graph=second_order)
        head = [p - inner_lr * gi for p, gi in zip(head, g)]
    body.train(transductive)
    with runner._autocast():
        feats_q = body(x_q).float()
    body.train()
    logits = F.linear(feats_q, *head)
    loss = runner.loss_fn(logits, y_q)
    meta_params = list(meta.parameters())
    if second_order:
        g = torch.autograd.grad(loss, meta_params, allow_unused=True)
        grads = {p: (torch.zeros_like(p) if gi is None else gi) for p, gi in zip(meta_params, g)}
    else:
        body_params = list(body.parameters())
        g = torch.autograd.grad(loss, body_params + head)
        grads = _head_rows_grads(meta, n_classes, g[-2], g[-1], dict(zip(body_params, g[:-2])))
    return _TaskResult(grads, loss.detach(), _n_correct(logits, y_q))


def _fo_anil_task(*args):
    return _anil_task(*args, second_order=False)


def _so_anil_task(*args):
    return _anil_task(*args, second_order=True)


ALGORITHMS = {
    "fomaml": _fomaml_task,
    "maml": _maml_task,
    "reptile": _reptile_task,
    "anil": _so_anil_task,
    "fo-anil": _fo_anil_task,
}
"""Per-task update rules. ``anil``/``fo-anil`` adapt only the head, also at test time."""

HEAD_ONLY_ALGORITHMS = ("anil", "fo-anil")


def meta_gradient(runner, tasks, n_classes, inner_lr, n_steps, transductive=False,
                  algorithm="fomaml"):
    """Average meta-gradient over a batch of tasks, for any algorithm.

    Parameters
    ----------
    runner : TaskRunner
        Holds the meta-model and a scratch backbone.
    tasks : iterable of (x_support, y_support, x_query, y_query)
        The tasks of one meta-batch, labels coded ``0 .. n_classes-1``.
    n_classes : int
        Number of classes of each task.
    inner_lr : float
        Inner SGD rate alpha.
    n_steps : int
        Number of inner SGD steps.
    transductive : bool, default=False
        Normalise queries with their own batch statistics (MAML paper) instead
        of the support statistics.
    algorithm : {"fomaml", "maml", "reptile", "anil", "fo-anil"}, default="fomaml"
        The update rule (see :data:`ALGORITHMS`).

    Returns
    -------
    grads : list of torch.Tensor
        One tensor per parameter of ``runner.meta_model`` (order of
        ``parameters()``): the meta-gradient averaged over tasks.
    loss : float
        Mean query loss after adaptation.
    accuracy : float
        Mean query accuracy after adaptation (nan for float targets).
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm={algorithm!r} is not one of {sorted(ALGORITHMS)}.")
    task_fn = ALGORITHMS[algorithm]
    meta_params = list(runner.meta_model.parameters())
    total = {p: torch.zeros_like(p) for p in meta_params}
    total_loss, total_correct, total_queries, n_tasks = 0.0, 0, 0, 0
    for x_s, y_s, x_q, y_q in tasks:
        result = task_fn(runner, x_s, y_s, x_q, y_q, n_classes, inner_lr, n_steps, transductive)
        for p, g in result.grads.items():
            total[p] += g
        total_loss += result.loss
        n_correct = result.n_correct
        total_correct = total_correct + (float("nan") if n_correct is None else n_correct)
        total_queries += len(y_q)
        n_tasks += 1
    if n_tasks == 0:
        raise ValueError("meta_gradient needs at least one task.")
    grads = [total[p] / n_tasks for p in meta_params]
    return grads, float(total_loss) / n_tasks, float(total_correct) / total_queries


def fomaml_meta_gradient(runner, tasks, n_classes, inner_lr, n_steps, transductive=False):
    """FOMAML meta-gradient: :func:`meta_gradient` with ``algorithm="fomaml"``."""
    return meta_gradient(runner, tasks, n_classes, inner_lr, n_steps, transductive, "fomaml")
