"""iMAML (algorithms/imaml.py): the proximal inner solution and the implicit
meta-gradient against closed forms, and its relation to MAML."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fomaml_sklearn._config import MetaConfig
from fomaml_sklearn.algorithms import IMAML, TaskRunner, meta_gradient
from fomaml_sklearn.algorithms.imaml import conjugate_gradient, proximal_descent
from fomaml_sklearn.heads import MetaModel

from conftest import make_tasks

D = torch.float64


def _quadratic(d=3, lam=0.7, seed=0):
    """theta = (w, b), the head of an identity body on inputs I_d, so the
    outputs are z = M theta with M = [I | 1]; L(z) = 1/2 (z - c)^T A (z - c)."""
    rng = np.random.default_rng(seed)
    body = nn.Identity()
    body.out_features = d
    meta = MetaModel(body, d, head="fixed", n_rows=1).to(D)
    theta = rng.normal(size=d + 1)
    with torch.no_grad():
        meta.head_weight.copy_(torch.tensor(theta[None, :d]))
        meta.head_bias.fill_(theta[d])
    B = rng.normal(size=(d, d))
    A = B @ B.T + np.eye(d)
    A_t = torch.tensor(A)

    def loss(out, c):
        r = out[:, 0] - c
        return 0.5 * r @ A_t @ r

    M = np.hstack([np.eye(d), np.ones((d, 1))])
    H = M.T @ A @ M
    # Gradient descent on the proximal problem converges for lr < 2 / (|H| + lam).
    lr = 1.0 / (np.linalg.eigvalsh(H).max() + lam)
    c_s, c_q = rng.normal(size=d), rng.normal(size=d)
    x = torch.eye(d, dtype=D)
    task = (x, torch.tensor(c_s), x, torch.tensor(c_q))
    return meta, loss, task, dict(M=M, A=A, H=H, theta=theta, c_s=c_s, c_q=c_q, lr=lr)


def test_inner_solution_and_meta_gradient_match_the_closed_form():
    lam = 0.7
    meta, loss, task, q = _quadratic(lam=lam)
    M, A, H, theta = q["M"], q["A"], q["H"], q["theta"]
    n = len(theta)
    # phi* = argmin L_s(phi) + lam/2 |phi - theta|^2 = (H + lam I)^-1 (M^T A c + lam theta)
    phi_star = np.linalg.solve(H + lam * np.eye(n), M.T @ A @ q["c_s"] + lam * theta)
    grad_q = M.T @ A @ (M @ phi_star - q["c_q"])
    expected = np.linalg.solve(np.eye(n) + H / lam, grad_q)

    rule = IMAML(lam=lam, cg_steps=n)  # CG is exact after n steps
    settings = dict(inner_lr=q["lr"], n_inner_steps=400, n_inner_steps_test=400, loss=loss)
    grads, _, _ = meta_gradient(meta, [task], 1, rule, **settings)
    got = np.concatenate([grads[0].numpy()[0], grads[1].numpy()])
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10)

    runner = TaskRunner(meta, MetaConfig(algorithm=rule, **settings))
    head = rule.adapt(runner, task[0], task[1], 1)  # test time: the same proximal problem
    adapted = np.concatenate([head[0].detach().numpy()[0], head[1].detach().numpy()])
    np.testing.assert_allclose(adapted, phi_star, rtol=1e-8, atol=1e-10)

    # Not the first-order gradient at phi*, nor MAML's: the (I + H/lam)^-1 is there.
    assert np.linalg.norm(expected - grad_q) > 1e-2 * np.linalg.norm(grad_q)


def test_too_few_inner_steps_are_visible():
    """With 1 inner step phi is far from phi*, and so is the gradient: the
    implicit gradient assumes a solved inner problem (docs/algorithms.md)."""
    lam = 0.7
    meta, loss, task, q = _quadratic(lam=lam)
    many = meta_gradient(meta, [task], 1, IMAML(lam=lam, cg_steps=4, n_inner_steps=400),
                         inner_lr=q["lr"], loss=loss).grads
    one = meta_gradient(meta, [task], 1, IMAML(lam=lam, cg_steps=4, n_inner_steps=1),
                        inner_lr=q["lr"], loss=loss).grads
    assert not torch.allclose(many[0], one[0], rtol=1e-3)


def test_conjugate_gradient_solves_a_spd_system():
    rng = np.random.default_rng(1)
    B = rng.normal(size=(6, 6))
    A = torch.tensor(B @ B.T + 0.5 * np.eye(6))
    b = torch.tensor(rng.normal(size=6))
    x = conjugate_gradient(lambda v: [A @ v[0]], [b], n_steps=6)[0]
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-9, atol=1e-10)


def _tanh_net(seed=0):
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4), nn.Tanh())
    return MetaModel(body, 5, head="fixed", n_rows=3).to(D)


def test_imaml_approaches_maml_as_lam_grows():
    """The statement tested. With alpha = 1/lam, iMAML's exact inner solution
    satisfies phi* = theta - alpha grad L_s(phi*), so phi* = phi_1 + O(alpha^2)
    where phi_1 is MAML's one-step point, and

        (I + alpha H(phi*))^-1 grad L_q(phi*) = (I - alpha H(theta)) grad L_q(phi_1) + O(alpha^2),

    the right-hand side being MAML's one-step meta-gradient. So
    |g_iMAML - g_MAML| = O(1/lam^2), while FOMAML's gap to MAML,
    |alpha H grad L_q|, is only O(1/lam): iMAML keeps the second-order term."""
    meta = _tanh_net()
    tasks = [(xs.to(D), ys, xq.to(D), yq) for xs, ys, xq, yq in make_tasks(2, 3, 2, 4, 5, 0)]
    errors, gaps = [], []
    for lam in (8.0, 32.0, 128.0):
        alpha = 1.0 / lam
        maml = meta_gradient(meta, tasks, 3, "maml", inner_lr=alpha, n_inner_steps=1).grads
        fomaml = meta_gradient(meta, tasks, 3, "fomaml", inner_lr=alpha,
                               n_inner_steps=1).grads
        # The proximal problem has curvature >= lam - |H|: rate 1/(2 lam) converges.
        imaml = meta_gradient(meta, tasks, 3, IMAML(lam=lam, cg_steps=30),
                              inner_lr=0.5 / lam, n_inner_steps=400).grads

        def dist(a, b):
            return float(torch.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(a, b))))

        errors.append(dist(imaml, maml))
        gaps.append(dist(fomaml, maml))
    for k in range(2):  # lam x4: the error falls ~16x, the first-order gap ~4x
        assert errors[k] / errors[k + 1] > 10, errors
        assert 2.5 < gaps[k] / gaps[k + 1] < 6, gaps
    assert errors[-1] < 0.05 * gaps[-1], (errors, gaps)


def test_memory_of_the_meta_gradient_does_not_keep_the_inner_trajectory():
    """iMAML's graph at the end holds one support pass, whatever the number
    of inner steps: the autograd graph of its Hessian-vector products is
    the same size after 1 and after 20 steps (MAML's grows)."""
    meta = _tanh_net()
    tasks = [(xs.to(D), ys, xq.to(D), yq) for xs, ys, xq, yq in make_tasks(1, 3, 2, 4, 5, 0)]

    def graph_nodes(rule, steps):
        calls = []
        original = torch.autograd.grad

        def counting(outputs, *args, **kwargs):
            roots = outputs if isinstance(outputs, (list, tuple)) else [outputs]
            stack = [r.grad_fn for r in roots if getattr(r, "grad_fn", None) is not None]
            seen, n = set(), 0
            while stack:
                fn = stack.pop()
                if fn is None or fn in seen:
                    continue
                seen.add(fn)
                n += 1
                stack.extend(f for f, _ in fn.next_functions)
            calls.append(n)
            return original(outputs, *args, **kwargs)

        torch.autograd.grad = counting
        try:
            meta_gradient(meta, tasks, 3, rule, inner_lr=0.05, n_inner_steps=steps)
        finally:
            torch.autograd.grad = original
        return max(calls)

    assert graph_nodes(IMAML(lam=2.0), 20) == graph_nodes(IMAML(lam=2.0), 1)
    assert graph_nodes("maml", 20) > 5 * graph_nodes("maml", 1)


@pytest.mark.parametrize("bad, match", [
    (dict(lam=0), "lam=0 is not supported by IMAML"),
    (dict(lam="big"), "lam='big'"),
    (dict(cg_steps=0), "cg_steps=0 is not supported by IMAML"),
    (dict(n_inner_steps=0), "n_inner_steps=0 is not supported by IMAML; use 'auto'"),
    (dict(n_inner_steps=2.5), "n_inner_steps=2.5 is not supported"),
    (dict(prototype_gradient="yes"), "prototype_gradient='yes'"),
])
def test_options_are_validated(bad, match):
    with pytest.raises(ValueError, match=match):
        IMAML(**bad).validate()


def test_options_are_searchable_parameters():
    from sklearn.base import clone
    from sklearn.model_selection import ParameterGrid

    from fomaml_sklearn import FOMAMLClassifier

    clf = FOMAMLClassifier(algorithm=IMAML(lam=2.0))
    assert clf.get_params()["algorithm__lam"] == 2.0
    for params in ParameterGrid({"algorithm__lam": [0.5, 4.0], "algorithm__cg_steps": [2]}):
        other = clone(clf).set_params(**params)
        assert (other.algorithm.lam, other.algorithm.cg_steps) == (
            params["algorithm__lam"], 2)
    assert clf.algorithm.lam == 2.0  # clones, not the original, were changed


def test_imaml_loss_is_cross_entropy_on_the_queries():
    meta = _tanh_net()
    tasks = [(xs.to(D), ys, xq.to(D), yq) for xs, ys, xq, yq in make_tasks(1, 3, 2, 4, 5, 0)]
    rule = IMAML(lam=1.0)
    result = meta_gradient(meta, tasks, 3, rule, inner_lr=0.1, n_inner_steps=3)
    runner = TaskRunner(meta, MetaConfig(algorithm=rule, inner_lr=0.1, n_inner_steps_test=3))
    xs, ys, xq, yq = tasks[0]
    head = rule.adapt(runner, xs, ys, 3)
    with torch.no_grad():
        expected = F.cross_entropy(runner.query_logits(xq, head), yq)
    assert result.loss == pytest.approx(float(expected), rel=1e-9)


def test_conjugate_gradient_stops_on_negative_curvature():
    A = torch.diag(torch.tensor([-1.0, 2.0], dtype=D))
    b = [torch.tensor([1.0, 0.0], dtype=D)]
    with pytest.warns(RuntimeWarning, match="negative curvature"):
        x = conjugate_gradient(lambda v: [A @ v[0]], b, n_steps=5)[0]
    torch.testing.assert_close(x, b[0])  # no progress possible: the right-hand side


# ------------------------------------------------- defaults that solve the inner problem
def _tasks(n, seed=0):
    return [(xs.to(D), ys, xq.to(D), yq) for xs, ys, xq, yq in make_tasks(n, 3, 2, 4, 5, seed)]


def test_inner_steps_and_lam_auto_and_their_precedence():
    """'auto' replaces the estimator's default single step (which leaves the
    proximal problem unsolved) and decides lam by task type; integers win."""
    cls = MetaConfig(inner_lr=0.01, n_inner_steps=1)
    assert IMAML().settings(cls, regression=False) == (pytest.approx(20.0), 5)
    assert IMAML().settings(cls, regression=True) == (pytest.approx(10.0), 10)
    assert IMAML().settings(MetaConfig(inner_lr=0.05, n_inner_steps=3), True) == (
        pytest.approx(2.0), 3)  # the estimator's steps when not its default 1
    assert IMAML(lam=0.5, n_inner_steps=2).settings(cls, regression=True) == (0.5, 2)
    # The steps taken are the rule's: 20 steps move phi further than 1 would.
    meta = _tanh_net()
    tasks = _tasks(1)
    runner = TaskRunner(meta, MetaConfig(algorithm=IMAML(lam=1.0), inner_lr=0.05))
    xs, ys, *_ = tasks[0]
    moved = {}
    for steps in (1, 5):
        head, _, anchors, _ = IMAML(lam=1.0, n_inner_steps=steps)._adapt(runner, xs, ys, 3,
                                                                        1.0, steps)
        moved[steps] = float(torch.sqrt(sum(((p.detach() - a) ** 2).sum() for p, a in zip(
            runner.params + head, anchors))))
    rule = IMAML(lam=1.0).resolve(meta)
    rule.meta_gradient(runner, _batch(tasks))
    assert (rule.lam_, rule.n_inner_steps_) == (1.0, 5)
    assert moved[5] > 3 * moved[1], moved


def _batch(tasks):
    from fomaml_sklearn.algorithms import MetaBatch
    return MetaBatch.from_tasks(tasks, 3)


def test_a_diverging_proximal_rate_is_refused_at_the_first_step():
    meta = _tanh_net()
    rule = IMAML(lam=300.0).resolve(meta)
    runner = TaskRunner(meta, MetaConfig(algorithm=rule, inner_lr=0.01))
    before = [p.detach().clone() for p in meta.parameters()]
    with pytest.raises(ValueError, match=r"IMAML\(lam=300.0\) with inner_lr=0.01: inner_lr "
                       r"\* lam = 3 >= 2.*Use lam < 200"):
        rule.meta_gradient(runner, _batch(_tasks(1)))
    assert all(torch.equal(a, b) for a, b in zip(before, meta.parameters()))


def test_meta_gradient_matches_an_exact_solve_and_differs_from_fomaml():
    """Independent reference: at the inner solution phi (400 proximal steps,
    float64), the Hessian of the support loss from torch.func.hessian and
    (I + H/lam) x = grad L_q(phi) solved exactly. iMAML's CG gives x; FOMAML's
    gradient (grad L_q at its own adapted point) is far from it."""
    lam, lr = 2.0, 0.1
    meta = _tanh_net()
    tasks = _tasks(1, seed=3)
    xs, ys, xq, yq = tasks[0]
    n_params = sum(p.numel() for p in meta.parameters())
    rule = IMAML(lam=lam, cg_steps=n_params, n_inner_steps=400).resolve(meta)
    runner = TaskRunner(meta, MetaConfig(algorithm=rule, inner_lr=lr))
    result = rule.meta_gradient(runner, _batch(tasks))
    assert rule.n_cg_fallbacks_ == 0 and rule.inner_residual_ < 1e-8

    # phi: the same proximal problem, solved again on a fresh runner.
    ref_runner = TaskRunner(meta, MetaConfig(algorithm=rule, inner_lr=lr))
    head, _, _, _ = rule._adapt(ref_runner, xs, ys, 3, lam, 400)
    phi = [p.detach() for p in ref_runner.params + head]
    shapes = [p.shape for p in phi]
    names = [n for n, _ in meta.backbone.named_parameters()]

    def unflat(flat):
        out, i = [], 0
        for shape in shapes:
            k = int(np.prod(shape))
            out.append(flat[i:i + k].reshape(shape))
            i += k
        return out

    def loss(flat, x, y):
        params = unflat(flat)
        feats = torch.func.functional_call(meta.backbone, dict(zip(names, params[:-2])), (x,))
        return F.cross_entropy(F.linear(feats, *params[-2:]), y)

    flat = torch.cat([p.reshape(-1) for p in phi])
    H = torch.func.hessian(loss)(flat, xs, ys)
    system = torch.eye(len(flat), dtype=D) + H / lam
    assert torch.linalg.eigvalsh(system).min() > 0  # solved: positive definite
    g_q = torch.func.grad(loss)(flat, xq, yq)
    expected = torch.linalg.solve(system, g_q)
    by_param = dict(zip(meta.parameters(), result.grads))
    order = list(meta.backbone.parameters()) + [meta.head_weight, meta.head_bias]
    got = torch.cat([by_param[p].reshape(-1) for p in order])  # phi's order
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)  # CG tol 1e-12 (squared)

    fomaml = meta_gradient(meta, tasks, 3, "fomaml", inner_lr=lr, n_inner_steps=1).grads
    fomaml = dict(zip(meta.parameters(), fomaml))
    fomaml = torch.cat([fomaml[p].reshape(-1) for p in order])
    assert torch.linalg.norm(got - fomaml) > 0.05 * torch.linalg.norm(fomaml)
    assert torch.linalg.norm(got - g_q) > 0.05 * torch.linalg.norm(g_q)


def test_cg_fallbacks_are_counted_and_warned_once():
    """An unsolved inner problem (1 step) with a small lam: I + H/lam is
    indefinite, CG stops; the counts and one warning per fit say so."""
    meta = _tanh_net()
    rule = IMAML(lam=0.01, n_inner_steps=1).resolve(meta)
    runner = TaskRunner(meta, MetaConfig(algorithm=rule, inner_lr=0.01))
    tasks = _tasks(4)
    with pytest.warns(RuntimeWarning, match=r"negative curvature in [1-4] of 4 tasks"):
        rule.meta_gradient(runner, _batch(tasks))
    first = rule.n_cg_fallbacks_
    assert rule.n_cg_solves_ == 4 and 1 <= first <= 4
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second meta-batch does not warn again
        rule.meta_gradient(runner, _batch(tasks))
    assert rule.n_cg_solves_ == 8 and rule.n_cg_fallbacks_ == 2 * first


def test_an_unsolved_inner_problem_is_reported():
    meta = _tanh_net()
    rule = IMAML(lam=0.1, n_inner_steps=2).resolve(meta)
    runner = TaskRunner(meta, MetaConfig(algorithm=rule, inner_lr=0.01))
    with pytest.warns(RuntimeWarning, match="proximal inner problem is not solved: after 2 "
                      "inner steps at inner_lr=0.01 with lam=0.1"):
        rule.meta_gradient(runner, _batch(_tasks(2)))
    assert rule.inner_residual_ > 0.9


def test_defaults_no_longer_train_as_fomaml_on_digits():
    """The issue: with 1 inner step iMAML's meta-training equalled FOMAML's to
    13 digits. With 5-shot tasks (1-shot prototype heads classify their own
    support points: a flat support loss, where every rule is first order)."""
    from sklearn.datasets import load_digits

    from fomaml_sklearn import FOMAMLClassifier

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    losses = {}
    for algorithm in ("fomaml", "imaml"):
        clf = FOMAMLClassifier(n_ways=3, k_shot=5, hidden_layer_sizes=(16,), algorithm=algorithm,
                               max_epochs=1, meta_batches_per_epoch=5, device="cpu",
                               precision="float32", random_state=0).fit(X, y)
        losses[algorithm] = clf.history_[-1, "train_loss"]
    assert clf.algorithm_.n_inner_steps_ == 5 and clf.algorithm_.n_cg_solves_ > 0
    assert abs(losses["fomaml"] - losses["imaml"]) > 1e-3 * abs(losses["fomaml"]), losses


def test_proximal_descent_is_plain_descent_where_every_step_lowers_the_objective():
    """With a rate that suits the curvature, no step is undone and the result
    is that of the plain proximal gradient steps (the runner's inner loop)."""
    meta = _tanh_net()
    xs, ys, *_ = _tasks(1)[0]
    lam, lr, steps = 2.0, 0.05, 15
    plain = TaskRunner(meta, MetaConfig(inner_lr=lr))
    head = plain.adapt(xs, ys, 3, steps, proximal=lam)
    expected = [p.detach().clone() for p in plain.params + head]
    runner = TaskRunner(meta, MetaConfig(inner_lr=lr))
    head, first = runner.start(xs, ys, 3, with_loss=True)
    params = runner.params + head
    anchors = [p.detach().clone() for p in params]
    halvings, start_norm, lowered = proximal_descent(
        runner.support_loss(xs, ys), params, anchors, lam, steps, lr, first_loss=first)
    assert int(halvings) == 0 and float(start_norm) > 0 and bool(lowered)
    for got, want in zip(params, expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-10, atol=1e-12)


def test_proximal_descent_halves_the_rate_where_plain_descent_diverges():
    """The quadratic with lr * (curvature + lam) > 2: plain steps blow up,
    the safeguarded ones end at a lower objective, close to phi*."""
    lam = 0.7
    meta, loss, task, q = _quadratic(lam=lam)
    lr = 3.0 * q["lr"]  # q["lr"] = 1 / (max curvature + lam)
    xs, ys = task[0], task[1]
    config = MetaConfig(inner_lr=lr, loss=loss)
    plain = TaskRunner(meta, config)
    head = plain.adapt(xs, ys, 1, 60, proximal=lam)
    assert not torch.isfinite(head[0]).all() or head[0].abs().max() > 1e6

    runner = TaskRunner(meta, config)
    head, first = runner.start(xs, ys, 1, with_loss=True)
    params = runner.params + head
    halvings, _, _ = proximal_descent(runner.support_loss(xs, ys), params,
                                   [p.detach().clone() for p in params], lam, 400, lr,
                                   first_loss=first)
    assert int(halvings) >= 1
    M, A, H, theta = q["M"], q["A"], q["H"], q["theta"]
    phi_star = np.linalg.solve(H + lam * np.eye(len(theta)), M.T @ A @ q["c_s"] + lam * theta)
    got = np.concatenate([head[0].detach().numpy()[0], head[1].detach().numpy()])
    np.testing.assert_allclose(got, phi_star, rtol=1e-6, atol=1e-8)


def test_the_default_classifier_fit_solves_its_inner_problem_without_warning():
    """The prototype head at inner rate 0.01: lam='auto' is 20 (0.2 / inner_lr),
    5 steps shrink the proximal gradient to about a third. 1-shot prototypes
    fit their support exactly, so theta solves those tasks (counted as
    stalled, not as unsolved)."""
    import warnings

    from sklearn.datasets import load_digits

    from fomaml_sklearn import FOMAMLClassifier

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    for k_shot, precision in ((1, "auto"), (5, "float32")):
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="iMAML's")
            clf = FOMAMLClassifier(algorithm="imaml", k_shot=k_shot, max_epochs=1,
                                   meta_batches_per_epoch=5, device="cpu",
                                   precision=precision, random_state=0).fit(X, y)
        rule = clf.algorithm_
        assert (rule.lam_, rule.n_inner_steps_) == (pytest.approx(20.0), 5)
        assert rule.inner_residual_ < 0.5, (k_shot, rule.inner_residual_)
        if k_shot == 5:
            assert rule.n_inner_stalled_ < rule.n_cg_solves_  # real inner steps taken


def test_the_regressor_does_not_diverge_where_the_support_curvature_is_large():
    """Large targets make the support MSE very curved: at inner_lr 0.05 plain
    proximal steps overshoot; the halved steps keep the fit finite and say so
    in n_inner_halvings_."""
    from fomaml_sklearn import FOMAMLRegressor
    from fomaml_sklearn.datasets import make_sinusoid_tasks

    X, y, g = make_sinusoid_tasks(60, 20, random_state=0)
    reg = FOMAMLRegressor(algorithm=IMAML(lam=10.0), inner_lr=0.05, k_shot=10, n_query=10,
                          max_epochs=1, meta_batches_per_epoch=10, device="cpu",
                          adapt_on_fit=False, random_state=0).fit(X, 5 * y, groups=g)
    assert reg.algorithm_.n_inner_halvings_ > 0
    reg.set_params(n_inner_steps_test=10)
    result = reg.evaluate(X, 5 * y, g, k_shot=10, n_query=10, n_episodes=20, random_state=0)
    assert np.isfinite(result.mse)


def test_a_support_loss_too_curved_for_the_rate_is_reported_once():
    """Most steps undone (the rate is far too large for the curvature): fit
    says so once, with the count, instead of silently not adapting."""
    import warnings

    meta = _tanh_net()
    rule = IMAML(lam=0.05, n_inner_steps=6).resolve(meta)
    runner = TaskRunner(meta, MetaConfig(algorithm=rule, inner_lr=10.0))
    tasks = _tasks(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rule.meta_gradient(runner, _batch(tasks))
        rule.meta_gradient(runner, _batch(tasks))
    messages = [str(w.message) for w in caught if "mostly undone" in str(w.message)]
    assert len(messages) == 1 and "at inner_lr=10 (lam=0.05)" in messages[0], messages
    assert rule.n_inner_halvings_ > 0.5 * 2 * 2 * 6
    quiet = IMAML(lam=0.05, n_inner_steps=6).resolve(meta)  # a suitable rate: no warning
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="iMAML's inner steps")
        quiet.meta_gradient(TaskRunner(meta, MetaConfig(algorithm=quiet, inner_lr=0.05)),
                            _batch(tasks))
