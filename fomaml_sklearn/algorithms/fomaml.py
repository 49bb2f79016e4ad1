"""First-order MAML (Finn et al., 2017; Nichol et al., 2018).

A task's meta-gradient is ``grad L_query(phi)`` with ``phi = U(theta)``: the
Jacobian ``U'(theta)`` of MAML is replaced by the identity, so no graph is
kept through the inner loop.

With a head built from ``theta``, ``phi = U(theta)`` starts from the initial
head ``h0(theta)``; only the Jacobian of the inner SGD steps is set to the
identity, not that of ``h0``. For the ``"shared"``/``"fixed"`` heads ``h0``
copies rows, so a meta-row's gradient is the sum of its task rows'. For the
prototype head the query gradient of the head flows back through the
prototypes into the body, as in fo-Proto-MAML (Triantafillou et al., 2020):
``g = grad_body L(phi) + (d h0 / d theta)^T grad_head L(phi)`` (option
``prototype_gradient``; measurements in ``docs/design.md``).

BatchNorm: the queries are normalised with the support set's statistics
(non-transductive), and those statistics are a function of the weights. With
convolutions the gradient runs through them, for the prototypes at ``theta``
and for the queries at ``phi`` (``TaskRunner.query_features``); with
BatchNorm over flat features it holds them constant
(``TaskRunner.statistics_gradient``).

Batched path: all tasks of a meta-batch at once. Each task has its own copy
of the body's parameters and BatchNorm statistics, stacked along a leading
task axis, and the backbone's own forward runs over that axis with
:func:`torch.func.vmap` (a convolution becomes one grouped convolution, a
linear layer one batched matrix product). The tasks do not interact, so the
gradient of the sum of the task losses holds every task's own gradient: the
same meta-gradient as the per-task loop, in a few large kernels instead of
many small ones (faster on a GPU; on a CPU see ``docs/performance.md``).
"""

import torch
from torch.func import functional_call, vmap
from torch.nn import functional as F

from ..backbones import is_built_in, support_rows
from ._base import MetaAlgorithm, MetaGradient, PrototypeGradientOption, TaskResult, n_correct
from .runner import inner_loop

__all__ = ["FOMAML"]


class FOMAML(PrototypeGradientOption, MetaAlgorithm):
    """First-order MAML: the query gradient at the adapted parameters.

    Parameters
    ----------
    prototype_gradient : {"auto", True, False}, default="auto"
        With ``head="prototype"``: if True, the head's query gradient also
        flows back through the prototypes into the body (fo-Proto-MAML; the
        prototypes are a function of the meta-parameters and only the inner
        steps' Jacobian is dropped); if False, the prototypes are constants.
        ``"auto"``: False for backbones that batch-normalise flat features (a
        BatchNorm layer and no convolution, as the built-in ``"mlp"``), True
        otherwise (:func:`~fomaml_sklearn.heads.resolve_prototype_gradient`;
        the measurements are in ``docs/design.md``).

    Examples
    --------
    >>> from fomaml_sklearn import FOMAMLClassifier
    >>> from fomaml_sklearn.algorithms import FOMAML
    >>> clf = FOMAMLClassifier(algorithm=FOMAML(prototype_gradient=False))
    >>> clf.get_params()["algorithm__prototype_gradient"]
    False
    """

    concurrent_tasks = True  # no state across tasks: tasks may run on threads

    def __init__(self, prototype_gradient="auto"):
        self.prototype_gradient = prototype_gradient

    def validate(self):
        self._validate_prototype_gradient()

    def supports_batched(self, meta_model):
        return is_built_in(meta_model.backbone)

    def task_meta_gradient(self, runner, x_support, y_support, x_query, y_query, n_classes):
        head, head0 = self.adapt_with_head_graph(runner, x_support, y_support, n_classes)
        logits = runner.query_logits(x_query, head, x_support=x_support)
        loss = runner.loss_fn(logits, y_query)
        g = torch.autograd.grad(loss, runner.params + head)
        grads = runner.meta_gradients(g, n_classes)
        self.add_through_prototypes(runner, grads, head0, g[-2:])
        return TaskResult(grads, loss.detach(), n_correct(logits, y_query))

    def meta_gradient(self, runner, batch, batched=False):
        if not batched:
            return super().meta_gradient(runner, batch)
        return _batched_meta_gradient(runner, batch, self.through_prototypes(runner.meta_model))


def _batched_meta_gradient(runner, batch, through_prototypes):
    """FOMAML's meta-gradient of a meta-batch, all tasks in one pass per layer.

    ``batch`` holds ``x_support`` ``(T, n_s, ...)``, ``y_support`` ``(n_s,)``
    shared by all tasks, ``x_query`` ``(T, n_q, ...)`` and ``y_query``.
    """
    meta, config = runner.meta_model, runner.config
    if config.loss is not F.cross_entropy:
        raise ValueError("FOMAML's batched path computes the cross-entropy loss only; "
                         "use the per-task loop (batched=False) for another loss.")
    if config.autocast_dtype is not None:
        # resolve_task_batching never picks this path then; say so to direct callers.
        raise ValueError(
            f"FOMAML's batched path runs in float32 only (torch.autocast does not reach "
            f"into torch.func.vmap); got precision={config.precision!r}. Use "
            "precision='float32' or the per-task loop (batched=False).")
    body = meta.backbone
    xs, ys, xq, yq = batch.stacked()
    n_classes, T = batch.n_classes, len(xs)
    names = [n for n, _ in body.named_parameters()]
    buffer_names = [n for n, _ in body.named_buffers()]
    theta = runner.meta_params

    def stacked(tensors):
        return [t.detach().unsqueeze(0).repeat((T,) + (1,) * t.dim()) for t in tensors]

    phi = [p.requires_grad_(True) for p in stacked(theta)]
    stats = stacked(runner.meta_buffers)  # each task's BatchNorm statistics

    def features(params, x, train, buffers=None, params_batched=True):
        def one_task(p, b, x):
            tensors = {**dict(zip(names, p)), **dict(zip(buffer_names, b))}
            return functional_call(body, tensors, (x,))

        was_training = body.training
        body.train(train)
        try:
            return vmap(one_task, in_dims=(0 if params_batched else None, 0, 0))(
                params, stats if buffers is None else buffers, x)
        finally:
            body.train(was_training)

    def summed_loss(feats, head, y):
        """Sum over tasks of each task's mean loss, and the logits."""
        logits = torch.einsum("tnd,tkd->tnk", feats, head[0]) + head[1][:, None]
        k = logits.shape[-1]
        return F.cross_entropy(logits.reshape(-1, k), y.repeat(T)) * T, logits

    n_steps = config.n_inner_steps
    with torch.set_grad_enabled(bool(n_steps > 0)):  # the first inner step reuses this pass
        feats = features(phi, xs, True)
    head = list(meta.initial_head(feats, ys, n_classes))
    first = summed_loss(feats, head, ys)[0] if n_steps > 0 else None
    if through_prototypes:
        # The prototypes at theta with a graph to theta, through the support
        # statistics too (TaskRunner.prototype_head_graph).
        scratch_stats = [s.clone() for s in stats]
        head0 = meta.head_with_graph(
            features(theta, xs, runner.statistics_gradient, scratch_stats,
                     params_batched=False), ys, n_classes)
    inner_loop(lambda params: summed_loss(features(params[:-2], xs, True), params[-2:], ys)[0],
               phi + head, n_steps, config.inner_lr, first_loss=first)
    if config.transductive:
        feats_q = features(phi, xq, True)
    elif not runner.statistics_gradient:
        if n_steps > 0:
            with torch.no_grad():  # record the support statistics at the adapted weights
                features(phi, xs, True)
        feats_q = features(phi, xq, False)
    else:  # support statistics inside the graph (TaskRunner.query_features)
        n = xs.shape[1]
        with support_rows(body, n):
            feats_q = features(phi, torch.cat([xs, xq], dim=1), False)[:, n:]
    loss, logits = summed_loss(feats_q, head, yq)
    g = torch.autograd.grad(loss, phi + head)
    grads = {p: gi.mean(0) for p, gi in zip(theta, g[:-2])}
    if through_prototypes:
        FOMAML.add_through_prototypes(runner, grads, head0, g[-2:], scale=1.0 / T)
    grads.update(meta.head_gradients(n_classes, g[-2].mean(0), g[-1].mean(0)))
    correct = n_correct(logits, yq[None].expand(T, -1))
    # The step's one read from the device (a GPU sync): loss and count together.
    total, correct = torch.stack([loss.detach().double(), correct.double()]).tolist()
    meta_params = list(meta.parameters())
    return MetaGradient([grads[p] for p in meta_params], total / T, correct / (T * len(yq)))
