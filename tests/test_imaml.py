"""iMAML (algorithms/imaml.py): the proximal inner solution and the implicit
meta-gradient against closed forms, and its relation to MAML."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fomaml_sklearn._config import MetaConfig
from fomaml_sklearn.algorithms import IMAML, TaskRunner, meta_gradient
from fomaml_sklearn.algorithms.imaml import conjugate_gradient
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
    rule = IMAML(lam=lam, cg_steps=4)
    many = meta_gradient(meta, [task], 1, rule, inner_lr=q["lr"], n_inner_steps=400,
                         loss=loss).grads
    one = meta_gradient(meta, [task], 1, rule, inner_lr=q["lr"], n_inner_steps=1,
                        loss=loss).grads
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
