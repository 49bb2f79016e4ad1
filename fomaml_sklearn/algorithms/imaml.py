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


def conjugate_gradient(matvec, b, n_steps, tol=1e-12, return_info=False, warn=True):
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
    return_info : bool, default=False
        Also return ``(iterations, negative_curvature)``.
    warn : bool, default=True
        Warn (``RuntimeWarning``) where ``A`` shows negative curvature.

    Returns
    -------
    x : list of torch.Tensor
        The solution; where ``A`` shows negative curvature along a search
        direction, the iterate reached before it (``b`` itself if that
        happens at once), as truncated CG does.
    info : tuple (int, bool)
        With ``return_info``: the iterations taken, and whether it stopped
        on negative curvature.
    """
    x = [torch.zeros_like(t) for t in b]
    r = [t.clone() for t in b]
    p = [t.clone() for t in b]
    rs = _dot(r, r)
    stop = tol * rs
    steps_done, negative = 0, False
    for _ in range(n_steps):
        if rs <= stop:
            break
        ap = matvec(p)
        curvature = _dot(p, ap)
        if not curvature > 0:
            # A is not positive definite along p: stop, as truncated CG does,
            # keeping the progress so far (the right-hand side if none).
            negative = True
            if warn:
                warnings.warn(
                    "iMAML's conjugate gradient met negative curvature (I + H/lam is not "
                    "positive definite along a search direction) and stopped early; a "
                    "larger lam avoids this.", RuntimeWarning, stacklevel=2)
            if steps_done == 0:
                x = [t.clone() for t in b]
            break
        steps_done += 1
        alpha = rs / curvature
        x = [xi + alpha * pi for xi, pi in zip(x, p)]
        r = [ri - alpha * api for ri, api in zip(r, ap)]
        rs_new = _dot(r, r)
        p = [ri + (rs_new / rs) * pi for ri, pi in zip(r, p)]
        rs = rs_new
    return (x, (steps_done, negative)) if return_info else x


class IMAML(PrototypeGradientOption, MetaAlgorithm):
    """Implicit MAML: the implicit gradient of a proximal inner problem.

    The implicit gradient is exact only where the proximal problem is
    solved. Gradient descent at rate ``inner_lr`` shrinks the distance to
    its solution by at most ``1 - inner_lr * lam`` per step (along the
    directions where the support loss is flat), so ``inner_lr * lam`` and the
    number of inner steps go together; the ``"auto"`` defaults pick a pair
    that solves it (docs/algorithms.md).

    Parameters
    ----------
    lam : float or "auto", default="auto"
        Strength of the proximal term ``lam/2 ||phi - theta||^2``: large
        values keep ``phi*`` close to ``theta``. ``"auto"``: 1.0 for
        classification (cross-entropy), ``0.1 / inner_lr`` for regression
        (10 at the regressor's ``inner_lr=0.01``: with ``lam=1`` the MSE
        problem needs hundreds of steps). ``inner_lr * lam >= 2`` makes the
        inner steps diverge and is refused at the first meta-step.
    cg_steps : int, default=5
        Conjugate-gradient iterations, each one Hessian-vector product.
    n_inner_steps : int or "auto", default="auto"
        Inner steps on the proximal problem in meta-training. An integer
        takes precedence over the estimator's ``n_inner_steps``. ``"auto"``
        takes the estimator's ``n_inner_steps``, except its default 1, which
        does not solve the proximal problem (the implicit gradient then falls
        back to FOMAML's, see docs/algorithms.md): that becomes 5 steps for
        classification and 20 for regression. Test-time adaptation always
        takes the estimator's ``n_inner_steps_test``.
    prototype_gradient : {"auto", True, False}, default="auto"
        With ``head="prototype"``: carry the head's meta-gradient back
        through the prototypes (the chain rule through the head's anchor),
        as FOMAML's option of the same name; ``"auto"`` as there.

    Attributes
    ----------
    lam_ : float
        The strength used (``lam`` with ``"auto"`` decided), set at the
        first meta-step of a fit.
    n_inner_steps_ : int
        The inner steps used in meta-training, set at the first meta-step.
    n_cg_solves_ : int
        Conjugate-gradient solves (one per task) since the rule was resolved
        (per fit, on the estimator's ``algorithm_``).
    n_cg_fallbacks_ : int
        Of those, the solves that met negative curvature and stopped early
        (truncated CG; at the first iteration it returns the right-hand
        side, FOMAML's gradient). The first meta-batch that has any warns
        with their count.
    inner_residual_ : float
        Mean over the tasks so far of ``|grad L_s(phi) + lam (phi - theta)|
        / |grad L_s(phi)|`` at the end of the inner steps: 0 where the
        proximal problem is solved, about 1 where ``phi`` has barely moved.
        Above 0.5 on the first meta-batch, a warning says so.

    Examples
    --------
    >>> from fomaml_sklearn import FOMAMLClassifier
    >>> from fomaml_sklearn.algorithms import IMAML
    >>> clf = FOMAMLClassifier(algorithm=IMAML(lam=2.0, cg_steps=5))
    >>> clf.set_params(algorithm__lam=0.5).algorithm.lam
    0.5
    """

    #: ``n_inner_steps="auto"`` in place of the estimator's default 1.
    AUTO_INNER_STEPS = {"classification": 5, "regression": 20}
    #: ``lam="auto"`` for regression is ``AUTO_LAM_RATE / inner_lr``.
    AUTO_LAM_RATE = 0.1
    #: ``lam="auto"`` for classification.
    AUTO_LAM_CLASSIFICATION = 1.0

    def __init__(self, lam="auto", cg_steps=5, n_inner_steps="auto",
                 prototype_gradient="auto"):
        self.lam = lam
        self.cg_steps = cg_steps
        self.n_inner_steps = n_inner_steps
        self.prototype_gradient = prototype_gradient

    def validate(self):
        lam = self.lam
        if lam != "auto" and (isinstance(lam, bool) or not isinstance(lam, numbers.Real)
                              or not (0 < lam < float("inf"))):
            raise ValueError(
                f"lam={lam!r} is not supported by IMAML; use 'auto' or a finite number "
                "> 0, such as 1.0."
            )
        steps = self.cg_steps
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise ValueError(
                f"cg_steps={steps!r} is not supported by IMAML; use an integer >= 1, "
                "such as 5."
            )
        steps = self.n_inner_steps
        if steps != "auto" and (isinstance(steps, bool) or not isinstance(
                steps, numbers.Integral) or steps < 1):
            raise ValueError(
                f"n_inner_steps={steps!r} is not supported by IMAML; use 'auto' or an "
                "integer >= 1, such as 5."
            )
        self._validate_prototype_gradient()

    def resolve(self, meta_model):
        rule = super().resolve(meta_model)
        rule.n_cg_solves_, rule.n_cg_fallbacks_, rule.inner_residual_ = 0, 0, 0.0
        return rule

    def settings(self, config, regression):
        """``(lam, n_inner_steps)`` for a configuration, ``"auto"`` decided.

        Parameters
        ----------
        config : MetaConfig
            Its ``inner_lr`` and ``n_inner_steps`` (the estimator's).
        regression : bool
            Real-valued targets (MSE) rather than class labels.

        Returns
        -------
        lam : float
        n_inner_steps : int
            Meta-training's inner steps.
        """
        if self.lam != "auto":
            lam = float(self.lam)
        elif regression:
            lam = self.AUTO_LAM_RATE / float(config.inner_lr)
        else:
            lam = self.AUTO_LAM_CLASSIFICATION
        if self.n_inner_steps != "auto":
            steps = int(self.n_inner_steps)
        elif config.n_inner_steps == 1:
            steps = self.AUTO_INNER_STEPS["regression" if regression else "classification"]
        else:
            steps = int(config.n_inner_steps)
        return lam, steps

    def _check(self, config, lam, steps):
        rate = float(config.inner_lr) * lam
        if rate >= 2:
            raise ValueError(
                f"IMAML(lam={self.lam!r}) with inner_lr={config.inner_lr!r}: inner_lr * lam "
                f"= {rate:.3g} >= 2, so the proximal inner steps diverge. Use lam < "
                f"{2 / float(config.inner_lr):.3g} (or a smaller inner_lr); "
                "docs/algorithms.md explains the choice."
            )

    def meta_gradient(self, runner, batch, batched=False):
        regression = bool(getattr(batch, "per_task_targets", False))
        if not regression:
            regression = next(iter(batch))[3].is_floating_point()
        lam, steps = self.settings(runner.config, regression)
        self._check(runner.config, lam, steps)
        self.lam_, self.n_inner_steps_ = lam, steps
        solves, fallbacks, residual = self._counts()
        result = super().meta_gradient(runner, batch, batched=batched)
        new_solves, new_fallbacks, new_residual = self._counts()
        if solves == 0:  # the first meta-batch of this fit
            n = new_solves
            if new_fallbacks:
                warnings.warn(
                    f"iMAML's conjugate gradient met negative curvature in {new_fallbacks} "
                    f"of {n} tasks of the first meta-batch (I + H/lam is not positive "
                    "definite there: the proximal problem is not solved) and stopped early, "
                    "keeping FOMAML's gradient where it had made no progress; more inner "
                    "steps or a larger lam avoid this. The fitted estimator's "
                    "algorithm_.n_cg_fallbacks_ counts them.", RuntimeWarning, stacklevel=2)
            if new_residual > 0.5:
                warnings.warn(
                    f"iMAML's proximal inner problem is not solved: after {steps} inner "
                    f"steps at inner_lr={runner.config.inner_lr:g} with lam={lam:g}, the "
                    f"proximal gradient is still {new_residual:.2f} of the support "
                    "gradient (0 when solved), so the implicit gradient is inaccurate. "
                    "Use more inner steps (IMAML(n_inner_steps=...)) or a larger lam "
                    "(inner_lr * lam of about 0.1 solves it in about 20 steps).",
                    RuntimeWarning, stacklevel=2)
        return result

    def _counts(self):
        return (getattr(self, "n_cg_solves_", 0), getattr(self, "n_cg_fallbacks_", 0),
                getattr(self, "inner_residual_", 0.0))

    def task_meta_gradient(self, runner, x_support, y_support, x_query, y_query, n_classes):
        lam, steps = self.settings(runner.config, y_query.is_floating_point())
        head, head0, anchors = self._adapt(runner, x_support, y_support, n_classes, lam,
                                           steps)
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

        g, (_, negative) = conjugate_gradient(
            matvec, [t.detach() for t in v], int(self.cg_steps), return_info=True, warn=False)
        g = [t.detach() for t in g]
        self._record(negative, grad_s, params, anchors, lam)
        grads = runner.meta_gradients(g, n_classes)
        self.add_through_prototypes(runner, grads, head0, g[-2:])
        return TaskResult(grads, loss.detach(), n_correct(logits, y_query))

    def _record(self, negative, grad_s, params, anchors, lam):
        """Count a CG solve, and the inner residual of its task."""
        with torch.no_grad():
            prox = [gs + lam * (p - a) for gs, p, a in zip(grad_s, params, anchors)]
            residual = float(torch.sqrt(_dot(prox, prox) / _dot(grad_s, grad_s).clamp_min(
                torch.finfo(grad_s[0].dtype).tiny)))
        solves, fallbacks, mean = self._counts()
        self.n_cg_solves_, self.n_cg_fallbacks_ = solves + 1, fallbacks + int(negative)
        self.inner_residual_ = mean + (residual - mean) / (solves + 1)

    def _adapt(self, runner, x_support, y_support, n_classes, lam, n_steps):
        """The proximal inner steps from ``theta`` on the scratch copy (the
        sequence of :meth:`adapt_with_head_graph`, keeping the anchors).

        Returns
        -------
        head : list of torch.Tensor
            The adapted head.
        head_graph : tuple of torch.Tensor or None
            As :meth:`adapt_with_head_graph`'s.
        anchors : list of torch.Tensor
            ``theta``: the body's meta-parameters and the initial head.
        """
        head, first = runner.start(x_support, y_support, n_classes, with_loss=n_steps > 0)
        head_graph = None
        if self.through_prototypes(runner.meta_model):
            head_graph = runner.prototype_head_graph(x_support, y_support, n_classes)
        anchors = runner.meta_params + [h.detach().clone() for h in head]
        runner.adapt_from(head, x_support, y_support, n_steps, proximal=lam, first_loss=first)
        return head, head_graph, anchors

    def adapt(self, runner, x_support, y_support, n_classes):
        lam, _ = self.settings(runner.config, y_support.is_floating_point())
        return runner.adapt(x_support, y_support, n_classes, runner.config.n_inner_steps_test,
                            proximal=lam)
