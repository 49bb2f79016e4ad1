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
  meta-parameters. The first-order rule treats this initialisation as a
  constant.
"""

import copy
import contextlib

import torch
from torch import nn
from torch.nn import functional as F

from .backbones import SupportBatchNorm

__all__ = ["HEADS", "MetaModel", "TaskModel", "TaskRunner", "fomaml_meta_gradient"]

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
        """Task head ``(W0, b0)`` as fresh leaf tensors requiring grad."""
        if self.head == "prototype":
            feats = support_features.detach().float()
            protos = torch.zeros(n_classes, feats.shape[1], device=feats.device)
            protos.index_add_(0, y_support, feats)
            counts = torch.bincount(y_support, minlength=n_classes).clamp_min(1)
            protos /= counts[:, None]
            weight, bias = 2 * protos, -(protos**2).sum(1)
        else:
            rows = self.head_rows(n_classes)
            weight, bias = self.head_weight.detach()[rows], self.head_bias.detach()[rows]
        return weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)


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
    """

    def __init__(self, meta_model, autocast_dtype=None, loss_fn=F.cross_entropy):
        self.meta_model = meta_model
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

    def adapt(self, x_support, y_support, n_classes, inner_lr, n_steps):
        """Adapt from ``theta`` on a support set; return the task head.

        The scratch backbone holds the adapted body afterwards, and its
        BatchNorm layers hold the support statistics at the adapted weights.

        Returns
        -------
        weight, bias : torch.Tensor
            The adapted head (leaf tensors).
        """
        self.reset()
        self.scratch.train()
        weight = bias = None
        for step in range(max(n_steps, 1)):
            grad_enabled = n_steps > 0
            with torch.set_grad_enabled(grad_enabled):
                with self._autocast():
                    feats = self.scratch(x_support)
                if weight is None:
                    weight, bias = self.meta_model.initial_head(feats, y_support, n_classes)
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

    def task_gradient(self, x_support, y_support, x_query, y_query, n_classes,
                      inner_lr, n_steps, transductive=False):
        """FOMAML gradient of one task: ``grad L_query(phi)``.

        Returns
        -------
        body_grads : list of torch.Tensor
            Gradient for each backbone parameter (order of ``parameters()``).
        weight_grad, bias_grad : torch.Tensor
            Gradient of the task head, one row per class.
        loss : torch.Tensor
            The query loss (a detached scalar).
        n_correct : torch.Tensor or None
            Number of correctly classified queries (None for float targets).
        """
        weight, bias = self.adapt(x_support, y_support, n_classes, inner_lr, n_steps)
        logits = self.query_logits(x_query, weight, bias, transductive)
        loss = self.loss_fn(logits, y_query)
        grads = torch.autograd.grad(loss, self._params + [weight, bias])
        n_correct = None
        if not y_query.is_floating_point():
            n_correct = (logits.detach().argmax(1) == y_query).sum()
        return list(grads[:-2]), grads[-2], grads[-1], loss.detach(), n_correct

    def task_model(self, weight, bias):
        """Freeze the current adaptation into a stand-alone :class:`TaskModel`."""
        body = copy.deepcopy(self.scratch).eval()
        body.requires_grad_(False)
        return TaskModel(body, weight.detach(), bias.detach()).eval()


def fomaml_meta_gradient(runner, tasks, n_classes, inner_lr, n_steps, transductive=False):
    """Average FOMAML meta-gradient over a batch of tasks.

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
    meta = runner.meta_model
    body_grads = [torch.zeros_like(p) for p in meta.backbone.parameters()]
    head = meta.head != "prototype"
    if head:
        weight_grad = torch.zeros_like(meta.head_weight)
        bias_grad = torch.zeros_like(meta.head_bias)
        rows = meta.head_rows(n_classes)
    total_loss = 0.0
    total_correct = 0
    total_queries = 0
    n_tasks = 0
    for x_s, y_s, x_q, y_q in tasks:
        g_body, g_w, g_b, loss, n_correct = runner.task_gradient(
            x_s, y_s, x_q, y_q, n_classes, inner_lr, n_steps, transductive
        )
        if body_grads:
            torch._foreach_add_(body_grads, g_body)
        if head:
            # Each task row started as a copy of a meta row: sum the row grads.
            weight_grad.index_add_(0, rows, g_w)
            bias_grad.index_add_(0, rows, g_b)
        total_loss += loss
        total_correct = total_correct + (n_correct if n_correct is not None else float("nan"))
        total_queries += len(y_q)
        n_tasks += 1
    if n_tasks == 0:
        raise ValueError("fomaml_meta_gradient needs at least one task.")
    by_param = dict(zip(meta.backbone.parameters(), body_grads))
    if head:
        by_param[meta.head_weight] = weight_grad
        by_param[meta.head_bias] = bias_grad
    grads = [by_param[p] / n_tasks for p in meta.parameters()]
    return grads, float(total_loss) / n_tasks, float(total_correct) / total_queries
