"""Meta-SGD (Li et al., 2017): learned inner rates as the rule's own
meta-parameters. Its meta-gradient against an independent functional
reference (torch.func, float64), and its rates through fit, save/load,
get_params and adapt."""

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from fomaml_sklearn import FOMAMLClassifier
from fomaml_sklearn._config import MetaConfig
from fomaml_sklearn.algorithms import MetaSGD, meta_gradient
from fomaml_sklearn.algorithms.runner import attach_rule_parameters
from fomaml_sklearn.backbones import init_parameters
from fomaml_sklearn.heads import MetaModel

from conftest import make_subspace_classes, make_tasks


def _meta(rule, steps, lr=0.3, n_features=5, seed=0):
    """A tiny float64 tanh MLP with a 2-row "fixed" head (3-way tasks reuse
    row 0), and the rule's rates set to random values in [0.1, 0.5]."""
    g = torch.Generator().manual_seed(seed)
    body = nn.Sequential(nn.Linear(n_features, 6), nn.Tanh(), nn.Linear(6, 4))
    init_parameters(body, g)
    meta = MetaModel(body.double(), n_features, head="fixed", n_rows=2, generator=g).double()
    attach_rule_parameters(meta, MetaConfig(algorithm=rule, inner_lr=lr, n_inner_steps=steps))
    with torch.no_grad():
        for rate in meta.rule_state.values():
            rate.copy_(0.1 + 0.4 * torch.rand(rate.shape, generator=g, dtype=rate.dtype))
    return meta


def _tasks(seed=0):
    return [tuple(t.double() if t.is_floating_point() else t for t in task)
            for task in make_tasks(2, 3, 2, 4, 5, seed=seed)]


def _reference(meta, tasks, n_classes, steps, per_step):
    """Meta-SGD written out with torch.func: the mean query loss after
    ``steps`` steps ``phi <- phi - alpha * grad L_s(phi)``, differentiated
    with respect to every meta-parameter (rates included). Also the
    first-order direction: ``grad L_q(phi)`` for theta (head rows summed)
    and ``-sum_j grad L_s(phi_j) * grad L_q(phi)`` for the rates."""
    values = {n: p.detach().clone() for n, p in meta.named_parameters()}
    body_names = [n for n, _ in meta.backbone.named_parameters()]
    rows = torch.arange(n_classes) % meta.head_weight.shape[0]

    def rates(values, step):
        def at(name):
            r = values[f"rule_state.{name}"]
            return r[min(step, len(r) - 1)] if per_step else r
        return ({n: at("body-" + n.replace(".", "-")) for n in body_names},
                at("head-weight"), at("head-bias"))

    def task_loss(values, xs, ys, xq, yq, record=None):
        def loss(body, w, b, x, y):
            return F.cross_entropy(F.linear(functional_call(meta.backbone, body, (x,)), w, b), y)

        body = {n: values["backbone." + n] for n in body_names}
        w, b = values["head_weight"][rows], values["head_bias"][rows]
        for step in range(steps):
            gb, gw, gbias = torch.func.grad(loss, argnums=(0, 1, 2))(body, w, b, xs, ys)
            if record is not None:
                record.append(([gb[n] for n in body_names], gw, gbias))
            rb, rw, rbias = rates(values, step)
            body = {n: body[n] - rb[n] * gb[n] for n in body_names}
            w, b = w - rw * gw, b - rbias * gbias
        if record is not None:
            return body, w, b
        return loss(body, w, b, xq, yq)

    def objective(values):
        return sum(task_loss(values, *task) for task in tasks) / len(tasks)

    second = torch.func.grad(objective)(values)

    first = {n: torch.zeros_like(v) for n, v in values.items()}
    for xs, ys, xq, yq in tasks:
        support = []
        body, w, b = task_loss(values, xs, ys, xq, yq, record=support)
        gq = torch.func.grad(
            lambda body, w, b: F.cross_entropy(
                F.linear(functional_call(meta.backbone, body, (xq,)), w, b), yq),
            argnums=(0, 1, 2))(body, w, b)
        for n in body_names:
            first["backbone." + n] += gq[0][n] / len(tasks)
        first["head_weight"].index_add_(0, rows, gq[1] / len(tasks))
        first["head_bias"].index_add_(0, rows, gq[2] / len(tasks))
        names = ["body-" + n.replace(".", "-") for n in body_names] + ["head-weight",
                                                                       "head-bias"]
        q = [gq[0][n] for n in body_names] + [gq[1], gq[2]]
        for step, (gb, gw, gbias) in enumerate(support):
            for name, gs, gqi in zip(names, gb + [gw, gbias], q):
                total = first[f"rule_state.{name}"]
                target = total[min(step, len(total) - 1)] if per_step else total
                target += (-(gs * gqi)).sum_to_size(target.shape) / len(tasks)
    return second, first


def _by_name(meta, grads):
    return dict(zip([n for n, _ in meta.named_parameters()], grads))


@pytest.mark.parametrize("granularity, per_step, steps", [
    ("parameter", False, 1), ("parameter", False, 3), ("tensor", True, 2),
    ("parameter", True, 2)])
def test_meta_gradient_matches_functional_reference(granularity, per_step, steps):
    rule = MetaSGD(granularity=granularity, per_step=per_step)
    meta = _meta(rule, steps)
    tasks = _tasks()
    result = meta_gradient(meta, tasks, 3, rule, inner_lr=0.3, n_inner_steps=steps)
    got = _by_name(meta, result.grads)
    expected, _ = _reference(meta, tasks, 3, steps, per_step)
    assert set(got) == set(expected) and any(n.startswith("rule_state.") for n in got)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    # The rates' gradients are not zero: they are learned.
    assert all(got[n].abs().sum() > 0 for n in got if n.startswith("rule_state."))


@pytest.mark.parametrize("granularity, per_step, steps", [
    ("parameter", False, 1), ("parameter", False, 3), ("tensor", True, 2)])
def test_first_order_meta_gradient(granularity, per_step, steps):
    rule = MetaSGD(first_order=True, granularity=granularity, per_step=per_step)
    meta = _meta(rule, steps)
    tasks = _tasks(seed=1)
    got = _by_name(meta, meta_gradient(meta, tasks, 3, rule, inner_lr=0.3,
                                       n_inner_steps=steps).grads)
    second, first = _reference(meta, tasks, 3, steps, per_step)
    for name in first:
        np.testing.assert_allclose(got[name], first[name], rtol=1e-9, atol=1e-12,
                                   err_msg=name)
    rates = [n for n in got if n.startswith("rule_state.")]
    if steps == 1:  # phi is linear in alpha: the rates' first-order gradient is exact
        for name in rates:
            np.testing.assert_allclose(got[name], second[name], rtol=1e-9, atol=1e-12)
    else:
        assert not all(torch.allclose(got[n], second[n]) for n in rates)


def test_uniform_rates_first_order_is_fomaml():
    rule = MetaSGD(first_order=True, prototype_gradient=False)
    meta = _meta(rule, 2)
    with torch.no_grad():
        for rate in meta.rule_state.values():
            rate.fill_(0.3)
    tasks = _tasks(seed=2)
    got = _by_name(meta, meta_gradient(meta, tasks, 3, rule, inner_lr=0.3,
                                       n_inner_steps=2).grads)
    plain = copy.deepcopy(meta)
    del plain.rule_state  # FOMAML has no rates of its own (and refuses foreign ones)
    fomaml = _by_name(plain, meta_gradient(plain, tasks, 3, "fomaml", inner_lr=0.3,
                                           n_inner_steps=2).grads)
    assert set(got) - set(fomaml) == {n for n in got if n.startswith("rule_state.")}
    for name, g in fomaml.items():
        np.testing.assert_allclose(got[name], g, rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="needs meta-learned tensors of its own: none"):
        meta_gradient(meta, tasks, 3, "fomaml")


def test_options_are_checked():
    X, y = make_subspace_classes(n_classes=12, n_per_class=8, random_state=0)
    for option, value in (("granularity", "layer"), ("per_step", 1), ("first_order", "yes")):
        with pytest.raises(ValueError, match=f"{option}={value!r} is not supported by MetaSGD"):
            FOMAMLClassifier(algorithm=MetaSGD(**{option: value}), device="cpu").fit(X, y)


@pytest.fixture(scope="module")
def fitted():
    X, y = make_subspace_classes(n_classes=30, n_per_class=6, noise=1.0, random_state=0)
    train = y < 20
    clf = FOMAMLClassifier(algorithm="metasgd", n_ways=3, k_shot=1, n_query=3,
                           hidden_layer_sizes=(16,), max_epochs=2, meta_batches_per_epoch=10,
                           inner_lr=0.05, device="cpu", random_state=0)
    clf.fit(X[train], y[train])
    return clf, X[~train], y[~train]


def test_rates_are_trained_kept_and_hidden_from_get_params(fitted, tmp_path):
    clf, X, y = fitted
    rates = {n: r.detach().clone() for n, r in clf.meta_model_.rule_state.items()}
    assert rates and not any(torch.allclose(r, torch.full_like(r, 0.05)) for r in rates.values())
    assert not any("rule_state" in k or "rate" in k for k in clf.get_params(deep=True))
    options = FOMAMLClassifier(algorithm=MetaSGD()).get_params(deep=True)
    assert {k for k in options if k.startswith("algorithm__")} == {
        "algorithm__first_order", "algorithm__granularity", "algorithm__per_step",
        "algorithm__prototype_gradient"}
    # The meta-optimizer holds the rates beside the network's parameters.
    held = {id(p) for group in clf.net_.optimizer_.param_groups for p in group["params"]}
    assert {id(r) for r in clf.meta_model_.rule_state.values()} <= held

    clf.adapt(X[:9], y[:9])
    before = clf.predict_proba(X)
    loaded = FOMAMLClassifier.load(clf.save(tmp_path / "metasgd.fomaml"))
    for name, rate in rates.items():
        assert torch.equal(loaded.meta_model_.rule_state[name].detach().cpu(), rate)
    np.testing.assert_array_equal(loaded.predict_proba(X), before)
    loaded.adapt(X[:9], y[:9])
    np.testing.assert_allclose(loaded.predict_proba(X), before, rtol=1e-6, atol=1e-7)


def test_adaptation_uses_the_learned_rates(fitted):
    clf, X, y = fitted

    zero = copy.deepcopy(clf)
    with torch.no_grad():
        for rate in zero.meta_model_.rule_state.values():
            rate.zero_()
    zero.adapt(X[:9], y[:9])
    body = dict(zero.task_model_.backbone.named_parameters())
    for name, p in zero.meta_model_.backbone.named_parameters():
        assert torch.equal(body[name], p.detach())  # rate 0: the body stays at theta
    moved = copy.deepcopy(clf).adapt(X[:9], y[:9])
    body = dict(moved.task_model_.backbone.named_parameters())
    assert any(not torch.equal(body[n], p.detach())
               for n, p in moved.meta_model_.backbone.named_parameters())


def test_warm_start_with_another_rule_is_refused(fitted):
    clf, X, y = fitted
    clf = copy.deepcopy(clf)
    clf.adapt(X[:9], y[:9])
    before = clf.predict_proba(X)
    rates = {n: r.detach().clone() for n, r in clf.meta_model_.rule_state.items()}
    clf.set_params(warm_start=True, algorithm="fomaml")
    with pytest.raises(ValueError, match="needs meta-learned tensors of its own: none.*"
                                         "warm_start=False"):
        clf.fit(X, y)
    np.testing.assert_array_equal(clf.predict_proba(X), before)
    for name, rate in rates.items():
        assert torch.equal(clf.meta_model_.rule_state[name].detach(), rate)


def test_a_meta_model_without_rule_state_continues_with_a_rule_without_tensors():
    """A meta-model made before rules could own tensors (an estimator pickled
    by an earlier version) has no rule_state; a warm start with FOMAML, which
    owns none, continues from it instead of being refused."""
    X, y = make_subspace_classes(n_classes=12, n_per_class=8, random_state=0)
    clf = FOMAMLClassifier(n_ways=3, max_epochs=1, meta_batches_per_epoch=2,
                           meta_batch_size=2, adapt_on_fit=False, random_state=0,
                           device="cpu").fit(X, y)
    del clf.meta_model_.rule_state
    config = MetaConfig(algorithm=clf.algorithm_)
    assert attach_rule_parameters(clf.meta_model_, config, create=False) is clf.meta_model_
    assert getattr(clf.meta_model_, "rule_state", None) is None
    # A rule that owns tensors still cannot continue from it.
    with pytest.raises(ValueError, match="needs meta-learned tensors of its own"):
        attach_rule_parameters(clf.meta_model_, MetaConfig(algorithm=MetaSGD(), inner_lr=0.1),
                               create=False)


def test_adaptation_takes_at_most_the_steps_the_rates_were_learned_for():
    """n_inner_steps_test is capped at n_inner_steps: three test steps at
    rates learned for one give the one-step adaptation; a regressor with its
    default 10 test steps scores finite MSEs where ten steps diverged."""
    from fomaml_sklearn import FOMAMLRegressor
    from fomaml_sklearn.datasets import make_sinusoid_tasks

    X, y = make_subspace_classes(n_classes=12, n_per_class=8, random_state=0)
    clf = FOMAMLClassifier(algorithm="metasgd", n_ways=3, max_epochs=1,
                           meta_batches_per_epoch=3, meta_batch_size=2, adapt_on_fit=False,
                           random_state=0, device="cpu").fit(X, y)
    one = clf.set_params(n_inner_steps_test=1).adapt(X[:9], y[:9]).predict_proba(X)
    three = clf.set_params(n_inner_steps_test=3).adapt(X[:9], y[:9]).predict_proba(X)
    zero = clf.set_params(n_inner_steps_test=0).adapt(X[:9], y[:9]).predict_proba(X)
    np.testing.assert_array_equal(one, three)
    assert not np.array_equal(one, zero)

    Xs, ys, g = make_sinusoid_tasks(n_tasks=500, n_points=20, random_state=0)
    reg = FOMAMLRegressor(algorithm="metasgd", k_shot=10, max_epochs=3,
                          random_state=0, device="cpu").fit(Xs, ys, groups=g)
    Xt, yt, gt = make_sinusoid_tasks(n_tasks=50, n_points=20, random_state=1)
    assert reg.n_inner_steps_test == 10
    assert np.isfinite(reg.score(Xt, yt, groups=gt))
