"""Implicit MAML (Rajeswaran, Finn, Kakade and Levine, 2019).

Inner problem: ``phi* = argmin_phi L_support(phi) + lam/2 ||phi - theta||^2``,
solved approximately by ``n_inner_steps`` gradient steps from ``theta``
(:func:`~fomaml_sklearn.algorithms._base.inner_loop` with its proximal
term). At an exact solution, ``d phi* / d theta = (I + H / lam)^-1`` with
``H`` the Hessian of ``L_support`` at ``phi*``, so the meta-gradient is

    g = (I + H / lam)^-1 grad L_query(phi*).

It is solved by conjugate gradient with Hessian-vector products (double
backward at ``phi*``): the inner trajectory is never stored, so memory does
not grow with the number of inner steps, unlike MAML's.

With a head built from ``theta`` (the prototype head) the anchor of the head
is ``h0(theta)``, and the chain rule adds ``(d h0 / d theta)^T g_head``
(exact, with the support BatchNorm statistics held constant as in FOMAML;
option ``prototype_gradient``). Test-time adaptation solves the same
proximal problem.
"""

import numbers
import warnings

import torch

from ._base import MetaAlgorithm, PrototypeGradientOption, TaskResult, n_correct

__all__ = ["IMAML", "conjugate_gradient"]


def _dot(a, b):
    return sum((x * y).sum() for x, y in zip(a, b))


def conjugate_gradient(matvec, b, n_steps, tol=1e-12):
    """Solve ``A x = b`` for a symmetric positive definite ``A``, from ``x = 0``.

    Parameters
    ----------
    matvec : callable
        ``matvec(v)`` returns ``A v``; vectors are lists of tensors.
    b : list of torch.Tensor
        The right-hand side.
    n_steps : int
        Iterations (exact after ``dim`` iterations in exact arithmetic).
    tol : float, default=1e-12
        Stop early once the squared residual norm is below ``tol`` times that
        of ``b``.

    Returns
    -------
    x : list of torch.Tensor
        The solution; where ``A`` shows negative curvature along a search
        direction, the iterate reached before it (``b`` itself if that
        happens at once), with a ``RuntimeWarning``.
    """
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rs = _dot(r, r)
    stop = tol * rs
    steps_done = 0
    for _ in range(n_steps):
        if rs <= stop:
            break
        ap = matvec(p)
        curvature = _dot(p, ap)
        if not curvature > 0:
            # I + H/lam is not positive definite along p (a non-convex support
            # loss and a small lam): stop, as truncated CG does, keeping the
            # progress so far, or the right-hand side itself if there is none.
            warnings.warn(
                "iMAML's conjugate gradient met negative curvature (I + H/lam is not "
                "positive definite along a search direction) and stopped early; a "
                "larger lam avoids this.", RuntimeWarning, stacklevel=4)
            if steps_done == 0:
                return [t.clone() for t in b]
            break
        steps_done += 1
        alpha = rs / curvature
        x = [xi + alpha * pi for xi, pi in zip(x, p)]
        r = [ri - alpha * api for ri, api in zip(r, ap)]
        rs_new = _dot(r, r)
        p = [ri + (rs_new / rs) * pi for ri, pi in zip(r, p)]
        rs = rs_new
    return x


class IMAML(PrototypeGradientOption, MetaAlgorithm):
    """Implicit MAML: the implicit gradient of a proximal inner problem.

    Parameters
    ----------
    lam : float, default=1.0
        Strength of the proximal term ``lam/2 ||phi - theta||^2``: large
        values keep ``phi*`` close to ``theta``. The inner problem should be
        solved well (enough inner steps at a small enough rate,
        ``inner_lr < 2 / (lam + curvature)``) for the implicit gradient to
        be accurate.
    cg_steps : int, default=5
        Conjugate-gradient iterations, each one Hessian-vector product.
    prototype_gradient : {"auto", True, False}, default="auto"
        With ``head="prototype"``: carry the head's meta-gradient back
        through the prototypes (the chain rule through the head's anchor),
        as FOMAML's option of the same name; ``"auto"`` as there.

    Examples
    --------
    >>> from fomaml_sklearn import FOMAMLClassifier
    >>> from fomaml_sklearn.algorithms import IMAML
    >>> clf = FOMAMLClassifier(algorithm=IMAML(lam=2.0, cg_steps=5), n_inner_steps=5)
    >>> clf.set_params(algorithm__lam=0.5).algorithm.lam
    0.5
    """

    def __init__(self, lam=1.0, cg_steps=5, prototype_gradient="auto"):
        self.lam = lam
        self.cg_steps = cg_steps
        self.prototype_gradient = prototype_gradient

    def validate(self):
        lam = self.lam
        if (isinstance(lam, bool) or not isinstance(lam, numbers.Real)
                or not (0 < lam < float("inf"))):
            raise ValueError(
                f"lam={lam!r} is not supported by IMAML; use a finite number > 0, such "
                "as 1.0."
            )
        steps = self.cg_steps
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(
                f"cg_steps={steps!r} is not supported by IMAML; use an integer >= 1, "
                "such as 5."
            )
        self._validate_prototype_gradient()

    def task_meta_gradient(self, runner, x_support, y_support, x_query, y_query, n_classes):
        lam = float(self.lam)
        head, head0 = self.adapt_with_head_graph(runner, x_support, y_support, n_classes,
                                                 proximal=lam)
        params = runner.params + head
        logits = runner.query_logits(x_query, head)
        loss = runner.loss_fn(logits, y_query)
        v = torch.autograd.grad(loss, params)

        # Hessian-vector products of the support loss at phi*.
        grad_s = torch.autograd.grad(runner.support_loss(x_support, y_support)(params),
                                     params, create_graph=True)

        def matvec(u):
            hv = torch.autograd.grad(grad_s, params, grad_outputs=u, retain_graph=True,
                                     allow_unused=True)
            return [ui + (torch.zeros_like(ui) if h is None else h) / lam
                    for ui, h in zip(u, hv)]

        g = conjugate_gradient(matvec, [t.detach() for t in v], int(self.cg_steps))
        g = [t.detach() for t in g]
        grads = runner.meta_gradients(g, n_classes)
        self.add_through_prototypes(runner, grads, head0, g[-2:])
        return TaskResult(grads, loss.detach(), n_correct(logits, y_query))

    def adapt(self, runner, x_support, y_support, n_classes):
        return runner.adapt(x_support, y_support, n_classes, runner.config.n_inner_steps_test,
                            proximal=float(self.lam))
