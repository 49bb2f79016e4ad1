"""The FOMAML rule (algorithms/fomaml.py), checked against independent computations."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fomaml_sklearn._config import MetaConfig
from fomaml_sklearn.algorithms import FOMAML, TaskRunner, meta_gradient
from fomaml_sklearn.backbones import MLPBackbone, SupportBatchNorm, build_backbone
from fomaml_sklearn.heads import MetaModel, resolve_prototype_gradient
from fomaml_sklearn.names import PROTOTYPE_HEADS

from conftest import make_tasks

_tasks = make_tasks


def _reference_meta_gradient(meta, tasks, n_ways, alpha, steps, transductive=False,
                             through_prototypes=True, statistics=False):
    """Copy the model per task, SGD on the support set with torch.optim.SGD,
    gradient of the query loss at the adapted weights, averaged over tasks.

    BatchNorm: the queries are normalised with the support statistics at the
    adapted weights, held constant (a copy in evaluation mode), or with
    ``statistics`` as a function of those weights (a hand-written forward of
    support and queries, the statistics from the support rows).

    Prototype head: plus the head's gradient carried back through the
    prototypes at theta, the support statistics at theta held constant (a
    second copy of the body in evaluation mode) or with ``statistics``
    inside the graph (in training mode)."""
    total = {name: torch.zeros_like(p) for name, p in meta.named_parameters()}
    for xs, ys, xq, yq in tasks:
        body = copy.deepcopy(meta.backbone).train()
        head = nn.Linear(meta.feature_dim, n_ways)
        with torch.no_grad():
            if meta.head in PROTOTYPE_HEADS:
                body(xs)  # records the support statistics at theta
                at_theta = copy.deepcopy(body).train(statistics)
                with torch.enable_grad():
                    f0 = at_theta(xs)
                    protos = torch.stack([f0[ys == c].mean(0) for c in range(n_ways)])
                    w0, b0 = 2 * protos, -(protos**2).sum(1)
                head.weight.copy_(w0)
                head.bias.copy_(b0)
            else:
                rows = torch.arange(n_ways) % meta.head_weight.shape[0]
                head.weight.copy_(meta.head_weight[rows])
                head.bias.copy_(meta.head_bias[rows])
        opt = torch.optim.SGD(list(body.parameters()) + list(head.parameters()), lr=alpha)
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(head(body(xs)), ys).backward()
            opt.step()
        opt.zero_grad()
        if transductive:
            feats = body.train()(xq)
        elif statistics:
            feats = _normalised_by_support(body, xs, xq)
        else:
            with torch.no_grad():
                body(xs)  # support statistics at the adapted weights
            feats = body.eval()(xq)
        F.cross_entropy(head(feats), yq).backward()
        for (name, _), p in zip(meta.backbone.named_parameters(), body.parameters()):
            total["backbone." + name] += p.grad
        if meta.head in PROTOTYPE_HEADS and through_prototypes:
            through = torch.autograd.grad((w0, b0), list(at_theta.parameters()),
                                          (head.weight.grad, head.bias.grad))
            for (name, _), gp in zip(meta.backbone.named_parameters(), through):
                total["backbone." + name] += gp
        elif meta.head not in PROTOTYPE_HEADS:
            rows = torch.arange(n_ways) % meta.head_weight.shape[0]
            total["head_weight"].index_add_(0, rows, head.weight.grad)
            total["head_bias"].index_add_(0, rows, head.bias.grad)
    return {name: g / len(tasks) for name, g in total.items()}


def _normalised_by_support(body, xs, xq):
    """An MLP backbone's query features, each BatchNorm layer normalising with
    the mean and biased variance of the support rows, written out by hand."""
    h, n = torch.cat([xs, xq]), len(xs)
    for layer in body.layers:
        if isinstance(layer, SupportBatchNorm):
            mean, var = h[:n].mean(0), h[:n].var(0, unbiased=False)
            h = (h - mean) / torch.sqrt(var + layer.eps) * layer.weight + layer.bias
        else:
            h = layer(h)
    return h[n:]


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("head", ["fixed", "shared", "prototype"])
@pytest.mark.parametrize("transductive, statistics",
                         [(False, False), (False, True), (True, False)])
def test_meta_gradient_matches_per_task_copies(steps, head, transductive, statistics):
    torch.manual_seed(0)
    n_ways = 4
    meta = MetaModel(MLPBackbone(6, (8, 5)), 6, head=head, n_rows=3 if head == "fixed" else 1)
    if head == "shared":  # make the shared row non-zero so its copies matter
        with torch.no_grad():
            meta.head_weight.normal_()
            meta.head_bias.normal_()
    tasks = _tasks(3, n_ways, 2, 3, 6, seed=1)
    grads, loss, acc = meta_gradient(meta, tasks, n_ways, FOMAML(prototype_gradient=True),
                                     inner_lr=0.3, n_inner_steps=steps,
                                     transductive=transductive, statistics_gradient=statistics)
    expected = _reference_meta_gradient(meta, tasks, n_ways, 0.3, steps, transductive,
                                        statistics=statistics)
    names = [name for name, _ in meta.named_parameters()]
    assert len(grads) == len(names)
    for name, g in zip(names, grads):
        torch.testing.assert_close(g, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    # (A bias before BatchNorm has no gradient when the statistics move with it.)
    assert all(g.abs().sum() > 0 for n, g in zip(names, grads)
               if n.startswith("backbone") and (n.endswith("weight") or not statistics))
    assert 0.0 <= acc <= 1.0 and loss > 0


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("transductive", [False, True])
def test_cosine_head_meta_gradient_matches_per_task_copies(steps, transductive):
    """head="cosine": the prototype head on features scaled to a learnt norm.
    The scale is one more parameter of the body, adapted in the inner loop and
    meta-learnt, with the gradient through the prototypes at theta."""
    torch.manual_seed(0)
    meta = MetaModel(MLPBackbone(6, (8, 5)), 6, head="cosine")
    assert meta.backbone.log_scale.item() == pytest.approx(np.log(3.0))
    with torch.no_grad():
        meta.backbone.log_scale.fill_(0.4)  # not the default, so that the scale matters
    tasks = _tasks(3, 4, 2, 3, 6, seed=1)
    grads, _, _ = meta_gradient(meta, tasks, 4, FOMAML(prototype_gradient=True), inner_lr=0.3,
                                n_inner_steps=steps, transductive=transductive,
                                statistics_gradient=False)
    expected = _reference_meta_gradient(meta, tasks, 4, 0.3, steps, transductive)
    names = [name for name, _ in meta.named_parameters()]
    assert "backbone.log_scale" in names and len(grads) == len(names)
    for name, g in zip(names, grads):
        torch.testing.assert_close(g, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    assert abs(grads[names.index("backbone.log_scale")]) > 1e-4


@pytest.mark.parametrize("through", [True, False])
def test_prototype_gradient_switch(through):
    torch.manual_seed(0)
    meta = MetaModel(MLPBackbone(6, (8, 5)), 6, head="prototype")
    tasks = _tasks(3, 4, 2, 3, 6, seed=1)
    grads, _, _ = meta_gradient(meta, tasks, 4, FOMAML(prototype_gradient=through),
                                inner_lr=0.3, n_inner_steps=1)
    expected = _reference_meta_gradient(meta, tasks, 4, 0.3, 1, through_prototypes=through)
    other = _reference_meta_gradient(meta, tasks, 4, 0.3, 1, through_prototypes=not through)
    for (name, _), g in zip(meta.named_parameters(), grads):
        torch.testing.assert_close(g, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(not torch.allclose(g, other[name]) for (name, _), g in
               zip(meta.named_parameters(), grads))


@pytest.mark.parametrize("layers, expected", [
    # BatchNorm over flat features and no convolution: off.
    ([nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU()], False),
    # No BatchNorm at all: on.
    ([nn.Linear(6, 8), nn.ReLU()], True),
    # A convolution with BatchNorm: on.
    ([nn.Unflatten(1, (1, 2, 3)), nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4), nn.Flatten()], True),
])
def test_prototype_gradient_auto_on_user_backbones(layers, expected):
    backbone = build_backbone(nn.Sequential(*layers), 6)  # converts BatchNorm layers
    assert resolve_prototype_gradient("auto", backbone) is expected
    assert resolve_prototype_gradient(True, backbone) is True
    assert resolve_prototype_gradient(False, backbone) is False


def test_meta_gradient_leaves_meta_parameters_and_their_grads_untouched():
    torch.manual_seed(0)
    meta = MetaModel(MLPBackbone(5, (7,)), 5, head="fixed", n_rows=3)
    before = copy.deepcopy(meta.state_dict())
    meta_gradient(meta, _tasks(2, 3, 1, 2, 5, seed=0), 3, inner_lr=0.5, n_inner_steps=2)
    for k, v in meta.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert all(p.grad is None for p in meta.parameters())


def test_first_order_gradient_by_hand_linear_model_squared_loss():
    """f(x) = w.x + b, L = mean (f(x) - t)^2: FOMAML's gradient in closed form."""
    rng = np.random.default_rng(0)
    d, alpha, steps = 3, 0.1, 2
    w0, b0 = rng.normal(size=d), 0.5
    xs, ts = rng.normal(size=(4, d)), rng.normal(size=4)
    xq, tq = rng.normal(size=(5, d)), rng.normal(size=5)

    w, b = w0.copy(), b0
    for _ in range(steps):  # SGD on the support loss, by hand
        r = xs @ w + b - ts
        w, b = w - alpha * 2 * xs.T @ r / len(r), b - alpha * 2 * r.mean()
    r = xq @ w + b - tq
    expected_w, expected_b = 2 * xq.T @ r / len(r), 2 * r.mean()

    body = nn.Identity()
    body.out_features = d
    meta = MetaModel(body, d, head="fixed", n_rows=1)
    with torch.no_grad():
        meta.head_weight.copy_(torch.tensor(w0[None], dtype=torch.float32))
        meta.head_bias.fill_(b0)

    def squared(out, target):
        return ((out[:, 0] - target) ** 2).mean()

    t = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    grads, loss, _ = meta_gradient(meta, [(t(xs), t(ts), t(xq), t(tq))], 1, loss=squared,
                                   inner_lr=alpha, n_inner_steps=steps)
    by_name = dict(zip([n for n, _ in meta.named_parameters()], grads))
    np.testing.assert_allclose(by_name["head_weight"].numpy()[0], expected_w, rtol=1e-5)
    np.testing.assert_allclose(by_name["head_bias"].numpy()[0], expected_b, rtol=1e-5)
    np.testing.assert_allclose(loss, (r**2).mean(), rtol=1e-5)


def test_shared_head_row_gradient_vanishes_under_cross_entropy():
    """Softmax is invariant to adding one vector to every row, so the shared
    row's meta-gradient (the sum over its copies) is zero."""
    torch.manual_seed(0)
    meta = MetaModel(MLPBackbone(6, (8,)), 6, head="shared")
    grads, _, _ = meta_gradient(meta, _tasks(2, 4, 2, 3, 6, seed=3), 4, inner_lr=0.4,
                                n_inner_steps=2)
    by_name = dict(zip([n for n, _ in meta.named_parameters()], grads))
    for name in ("head_weight", "head_bias"):
        zeros = torch.zeros_like(by_name[name])
        torch.testing.assert_close(by_name[name], zeros, atol=1e-6, rtol=0)
    assert by_name["backbone.layers.0.weight"].abs().sum() > 0


def test_support_batchnorm_uses_support_statistics_in_eval():
    torch.manual_seed(0)
    bn = SupportBatchNorm(3)
    support = torch.randn(10, 3) * 4 + 2
    bn.train()
    out_train = bn(support)
    bn.eval()
    torch.testing.assert_close(bn(support), out_train)
    single = bn(support[:1])
    torch.testing.assert_close(single, out_train[:1])  # no dependence on the batch


def test_adapt_with_zero_steps_returns_initial_head_and_theta():
    torch.manual_seed(0)
    meta = MetaModel(MLPBackbone(4, (5,)), 4, head="fixed", n_rows=2)
    runner = TaskRunner(meta, MetaConfig(inner_lr=0.5))
    xs, ys = torch.randn(4, 4), torch.tensor([0, 0, 1, 1])
    w, b = runner.adapt(xs, ys, 2, 0)
    torch.testing.assert_close(w, meta.head_weight.detach())
    for p, q in zip(runner.scratch.parameters(), meta.backbone.parameters()):
        torch.testing.assert_close(p, q)
