"""Many tasks at once: the FOMAML meta-gradient of a whole meta-batch with
one kernel per layer.

The per-task loop (:func:`fomaml_sklearn.learner.meta_gradient`) runs
``meta_batch_size`` small forward/backward passes per layer. Here the ``T``
tasks of a meta-batch run together: each task has its own copy of the
parameters, stacked along a leading task axis, and

- a convolution becomes one grouped convolution (``groups=T``) over inputs
  whose channels are the tasks' images side by side, ``(n, T*C, H, W)``;
- a linear layer becomes one batched matrix product;
- BatchNorm over the ``T*C`` channels computes every task's own statistics
  (the batch axis holds one task's examples per channel group), so
  :class:`~fomaml_sklearn.backbones.SupportBatchNorm` semantics carry over:
  support statistics are recorded at the adapted weights and used for the
  queries unless ``transductive``.

Because the tasks do not interact, the gradient of the sum of the task
losses with respect to the stacked parameters holds every task's own
gradient, so the inner SGD steps and the query gradient are the per-task
loop's, computed in one pass. On a GPU this turns a meta-batch of tiny
kernels into a few large ones; on a CPU it pays only where the per-task
passes are small (see ``docs/performance.md``).

Supported: FOMAML with the built-in backbones (:class:`MLPBackbone`,
:class:`Conv4Backbone`) and every head. :func:`supports_grouped` tells.
"""

import contextlib

import torch
from torch import nn
from torch.nn import functional as F

from .backbones import Conv4Backbone, MLPBackbone, SupportBatchNorm
from .learner import prototype_head

__all__ = ["supports_grouped", "resolve_task_batching", "grouped_meta_gradient"]


def supports_grouped(meta_model, algorithm):
    """Whether :func:`grouped_meta_gradient` can run this model and algorithm."""
    return algorithm == "fomaml" and type(meta_model.backbone) in (MLPBackbone, Conv4Backbone)


def resolve_task_batching(task_batching, meta_model, algorithm, device):
    """Resolve the ``task_batching`` parameter to ``"grouped"`` or ``"loop"``.

    ``"auto"`` groups on a GPU where supported and loops elsewhere: on the
    2-core CPUs measured, the loop was 1.2x faster with 5 queries per class
    and 2x with 15; the grouped path won only with 1 (``docs/performance.md``).

    Parameters
    ----------
    task_batching : {"auto", "loop", "grouped"}
        The requested mode.
    meta_model : MetaModel
        The model to meta-train.
    algorithm : str
        The update rule.
    device : str or torch.device
        Where meta-training runs.

    Returns
    -------
    mode : {"grouped", "loop"}

    Raises
    ------
    ValueError
        If ``"grouped"`` is asked for a model or algorithm it cannot run.
    """
    supported = supports_grouped(meta_model, algorithm)
    if task_batching == "grouped" and not supported:
        raise ValueError(
            "task_batching='grouped' runs algorithm='fomaml' with the built-in 'mlp' "
            f"and 'conv4' backbones; got algorithm={algorithm!r} and a "
            f"{type(meta_model.backbone).__name__} backbone. Use task_batching="
            "'auto' (grouped on a GPU where supported) or 'loop'."
        )
    on_gpu = torch.device(device).type == "cuda"
    grouped = supported and (task_batching == "grouped"
                             or (task_batching == "auto" and on_gpu))
    return "grouped" if grouped else "loop"


def _layers(backbone):
    return list(backbone.layers if isinstance(backbone, MLPBackbone) else backbone.blocks)


def _grouped_forward(backbone, params, x, stats=None):
    """Forward of ``T`` copies of a built-in backbone.

    Parameters
    ----------
    backbone : MLPBackbone or Conv4Backbone
        Gives the architecture (its own parameters are not used).
    params : list of torch.Tensor
        The backbone's parameters in ``parameters()`` order, each with a
        leading task axis of size ``T``.
    x : torch.Tensor of shape (T, n, ...)
        ``n`` inputs per task.
    stats : list of (mean, var) or None
        BatchNorm statistics per normalisation layer, shape ``(T*C,)``; None
        normalises with the batch statistics and returns them.

    Returns
    -------
    feats : torch.Tensor of shape (n, T, d)
    stats : list of (mean, var)
        The statistics used (detached).
    """
    T, n = x.shape[:2]
    conv = isinstance(backbone, Conv4Backbone)
    if conv:
        # (T, n, C, H, W) -> (n, T*C, H, W): the tasks' images side by side.
        x = x.reshape((T, n) + backbone.input_shape).transpose(0, 1)
        x = x.reshape(n, T * backbone.input_shape[0], *backbone.input_shape[1:])
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        x = x.reshape(T, n, -1).transpose(0, 1)  # (n, T, d)
    it = iter(params)
    used, stats_iter = [], iter(stats) if stats is not None else None
    for layer in _layers(backbone):
        if isinstance(layer, nn.Conv2d):
            w, b = next(it), next(it)
            w = w.reshape(-1, *w.shape[2:]).contiguous(memory_format=torch.channels_last)
            x = F.conv2d(x, w, b.reshape(-1), padding=layer.padding, groups=T)
        elif isinstance(layer, nn.Linear):
            w, b = next(it), next(it)
            x = torch.einsum("ntd,tod->nto", x, w) + b
        elif isinstance(layer, SupportBatchNorm):
            gamma, beta = next(it), next(it)
            shape = x.shape
            flat = x.reshape(n, -1) if not conv else x
            gamma, beta = gamma.reshape(-1), beta.reshape(-1)
            if stats_iter is None:
                out, mean, rstd = torch.native_batch_norm(
                    flat, gamma, beta, None, None, True, 0.0, layer.eps)
                var = rstd.detach().pow(-2) - layer.eps
                used.append((mean.detach(), var))
            else:
                mean, var = next(stats_iter)
                out = F.batch_norm(flat, mean, var, gamma, beta, False, 0.0, layer.eps)
                used.append((mean, var))
            x = out.reshape(shape)
        elif isinstance(layer, nn.MaxPool2d):
            x = F.max_pool2d(x, layer.kernel_size, layer.stride)
        elif isinstance(layer, nn.ReLU):
            x = F.relu(x)
        else:  # pragma: no cover - supports_grouped() admits only these layers
            raise TypeError(f"grouped forward does not support {type(layer).__name__}")
    if conv:
        x = x.reshape(n, T, -1)
    return x, used


def _summed_loss(feats, weight, bias, y):
    """Sum over tasks of each task's mean cross-entropy, and the logits."""
    logits = torch.einsum("ntd,tkd->ntk", feats.float(), weight) + bias
    n, T, k = logits.shape
    loss = F.cross_entropy(logits.reshape(n * T, k), y.repeat_interleave(T)) * T
    return loss, logits


def grouped_meta_gradient(meta_model, batch, n_classes, inner_lr, n_steps,
                          transductive=False, autocast_dtype=None, prototype_gradient=True):
    """FOMAML meta-gradient of a meta-batch, all tasks in one pass per layer.

    The same result as :func:`fomaml_sklearn.learner.meta_gradient` with
    ``algorithm="fomaml"`` (to floating-point rounding).

    Parameters
    ----------
    meta_model : MetaModel
        The meta-parameters (not modified); its backbone must be built in
        (see :func:`supports_grouped`).
    batch : MetaBatch
        ``x_support`` ``(T, n_s, ...)``, ``y_support`` ``(n_s,)`` shared by all
        tasks, ``x_query`` ``(T, n_q, ...)``, ``y_query`` ``(n_q,)``.
    n_classes : int
        Classes per task.
    inner_lr : float
        Inner SGD rate alpha.
    n_steps : int
        Inner SGD steps.
    transductive : bool, default=False
        Normalise the queries with their own batch statistics.
    autocast_dtype : torch.dtype or None, default=None
        Mixed precision for the forward passes.
    prototype_gradient : bool, default=True
        With the prototype head, add the head's gradient carried back
        through the prototypes (as ``TaskRunner(prototype_gradient=...)``).

    Returns
    -------
    grads : list of torch.Tensor
        The meta-gradient, one tensor per parameter of ``meta_model``.
    loss : float
        Mean query loss after adaptation.
    accuracy : float
        Query accuracy after adaptation.
    """
    backbone = meta_model.backbone
    xs, ys, xq, yq = batch.x_support, batch.y_support, batch.x_query, batch.y_query
    T = xs.shape[0]
    theta = list(backbone.parameters())
    phi = [p.detach().unsqueeze(0).repeat((T,) + (1,) * p.dim()).requires_grad_(True)
           for p in theta]
    device = xs.device.type
    autocast = (contextlib.nullcontext if autocast_dtype is None else
                lambda: torch.autocast(device_type=device, dtype=autocast_dtype))

    prototypes = meta_model.head == "prototype" and prototype_gradient
    weight = bias = None
    for step in range(max(n_steps, 1)):
        with torch.set_grad_enabled(n_steps > 0):
            with autocast():
                feats, stats = _grouped_forward(backbone, phi, xs)
            if weight is None:
                # (T, N, d) and (T, N) leaves: features (n, T, d) -> task-major.
                weight, bias = meta_model.initial_head(feats.transpose(0, 1), ys, n_classes)
                if prototypes:
                    # The prototypes at theta with a graph to theta, the support
                    # statistics held constant (learner.prototype_head_graph).
                    with torch.enable_grad(), autocast():
                        expanded = [p.unsqueeze(0).expand((T,) + p.shape) for p in theta]
                        f0, _ = _grouped_forward(backbone, expanded, xs, stats)
                        w0, b0 = prototype_head(f0.float().transpose(0, 1), ys, n_classes)
            if n_steps == 0:
                break
            loss, _ = _summed_loss(feats, weight, bias, ys)
        leaves = phi + [weight, bias]
        grads = torch.autograd.grad(loss, leaves)
        with torch.no_grad():
            torch._foreach_add_(leaves, grads, alpha=-inner_lr)
    if n_steps > 0:
        # Support statistics at the adapted weights, for the queries.
        with torch.no_grad(), autocast():
            stats = _grouped_forward(backbone, phi, xs)[1]
    with autocast():
        feats_q, _ = _grouped_forward(backbone, phi, xq, None if transductive else stats)
    loss, logits = _summed_loss(feats_q, weight, bias, yq)
    g = torch.autograd.grad(loss, phi + [weight, bias])
    grads = {p: gi.mean(0) for p, gi in zip(theta, g[:-2])}
    if prototypes:
        through = torch.autograd.grad((w0, b0), theta, grad_outputs=g[-2:])
        grads = {p: gp + t / T for (p, gp), t in zip(grads.items(), through)}
    if meta_model.head != "prototype":
        rows = meta_model.head_rows(n_classes)
        grads[meta_model.head_weight] = torch.zeros_like(meta_model.head_weight).index_add_(
            0, rows, g[-2].mean(0))
        grads[meta_model.head_bias] = torch.zeros_like(meta_model.head_bias).index_add_(
            0, rows, g[-1].mean(0))
    correct = (logits.detach().argmax(2) == yq[:, None]).sum().item()
    meta_params = list(meta_model.parameters())
    return ([grads[p] for p in meta_params], loss.item() / T, correct / (T * len(yq)))
