"""Implicit MAML (Rajeswaran, Finn, Kakade and Levine, 2019).

Inner problem: ``phi* = argmin_phi L_support(phi) + lam/2 ||phi - theta||^2``,
solved approximately by ``n_inner_steps`` gradient steps from ``theta``
(:func:`~fomaml_sklearn.algorithms.runner.inner_loop` with its proximal
term). At an exact solution, ``d phi* / d theta = (I + H / lam)^-1`` with
``H`` the Hessian of ``L_support`` at ``phi*``, so the meta-gradient is

    g = (I + H / lam)^-1 grad L_query(phi*).

It is solved by conjugate gradient with Hessian-vector products (double
backward at ``phi*``): the inner trajectory is never stored, so memory does
not grow with the number of inner steps, unlike MAML's.

With a head built from ``theta`` (the prototype head) the anchor of the head
is ``h0(theta)``, and the chain rule adds ``(d h0 / d theta)^T g_head``
(exact, through the support BatchNorm statistics as in FOMAML; option
``prototype_gradient``). The query loss at ``phi*`` normalises the queries
with the support statistics inside the graph, as FOMAML's does. Test-time
adaptation solves the same proximal problem.
"""

import numbers
import warnings

import torch

from ._base import MetaAlgorithm, PrototypeGradientOption, TaskResult, n_correct
from .runner import first_gradient

__all__ = ["IMAML", "conjugate_gradient", "proximal_descent"]


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


def proximal_descent(support_loss, params, anchors, lam, n_steps, lr, first_loss=None,
                     rtol=None):
    """Gradient descent on iMAML's proximal problem that never lets it rise.

    Minimises ``F(phi) = L_s(phi) + lam/2 ||phi - theta||^2`` from
    ``phi = theta`` by ``n_steps`` attempted steps. A step that would raise
    ``F`` above the lowest value reached so far (or make it non-finite) is
    undone and the rate halved for the following steps, so where the
    support loss is too curved for ``lr`` (``lr * (curvature + lam) > 2``)
    the steps shrink instead of diverging.
    The decisions are tensor operations (no host synchronisation), so every
    attempt counts as a step, accepted or not.

    Parameters
    ----------
    support_loss : callable
        ``support_loss(params)`` returns the scalar support loss.
    params : list of torch.Tensor
        Leaf tensors that require grad, equal to ``anchors`` at the start;
        updated in place.
    anchors : list of torch.Tensor
        ``theta``, constants.
    lam : float
        Strength of the proximal term.
    n_steps : int
        Attempted steps; 0 leaves ``params`` unchanged.
    lr : float
        The first rate.
    first_loss : torch.Tensor, tuple or None, default=None
        ``support_loss(params)`` at the start, if already computed (or a
        pair, see :func:`~fomaml_sklearn.algorithms.runner.first_gradient`).
    rtol : float or None, default=None
        A rise of ``F`` up to ``rtol * |F|`` above the lowest value counts as
        rounding, not as a rise; None: 16 times the machine epsilon of the
        loss's dtype (pass a larger one when the forward passes run in a
        lower precision). ``F`` never ends more than that above its start.

    Returns
    -------
    n_halvings : torch.Tensor
        How many steps were undone (a 0-dim tensor; 0 where every step
        lowered ``F``).
    start_norm : torch.Tensor
        The norm of the support gradient at the start (where it equals the
        proximal gradient), the scale of the residual.
    lowered : torch.Tensor
        Whether ``F`` ended lower than at the start by more than rounding
        (False: ``theta`` is numerically the solution, or ``lr`` is far too
        large for every rate tried).
    """
    device = params[0].device if params else None
    n_halvings = torch.zeros((), dtype=torch.int64, device=device)
    start_norm = torch.zeros((), device=device)
    if n_steps <= 0:
        return n_halvings, start_norm, torch.zeros((), dtype=torch.bool, device=device)
    anchors = list(anchors)

    def objective(loss, detached):
        with torch.no_grad():
            norms = torch._foreach_norm(torch._foreach_sub(detached, anchors))
            dist = torch.stack(norms).to(loss.dtype).square().sum()
            return loss.detach() + 0.5 * lam * dist

    rate = torch.full((), float(lr), device=device,
                      dtype=params[0].dtype if params else None)
    with torch.enable_grad():  # also when called under torch.no_grad()
        detached = [p.detach() for p in params]  # views: they follow the in-place steps
        if first_loss is None:
            loss = support_loss(params)
            grads = torch.autograd.grad(loss, params)
        else:
            loss, grads = first_gradient(first_loss, params)
        value = objective(loss, detached)
        start_value = value
        start_norm = torch.stack(torch._foreach_norm(grads)).norm()
        if rtol is None:
            rtol = 16 * torch.finfo(value.dtype).eps
        for step in range(n_steps):
            with torch.no_grad():
                # the step: rate * (grad L_s + lam (phi - theta))
                moves = torch._foreach_sub(detached, anchors)
                torch._foreach_mul_(moves, lam)
                torch._foreach_add_(moves, grads)
                torch._foreach_mul_(moves, rate)
                torch._foreach_sub_(detached, moves)
            loss = support_loss(params)
            new_value = objective(loss, detached)
            # A rise within rounding (near the minimum) is not a divergence.
            slack = rtol * value.abs()
            accept = torch.isfinite(new_value) & (new_value <= value + slack)
            new_grads = None if step == n_steps - 1 else torch.autograd.grad(loss, params)
            with torch.no_grad():
                reject = (~accept).to(rate.dtype)
                torch._foreach_mul_(moves, reject)
                torch._foreach_add_(detached, moves)  # undone where rejected
                if new_grads is not None:
                    grads = [torch.where(accept, n, g) for n, g in zip(new_grads, grads)]
                value = torch.where(accept, torch.minimum(new_value, value), value)
                rate = rate * (1 - 0.5 * reject)
                n_halvings += (~accept).long()
    lowered = value < start_value - rtol * start_value.abs()
    return n_halvings, start_norm, lowered


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
        values keep ``phi*`` close to ``theta``. ``"auto"``: ``0.2 /
        inner_lr`` for classification (20 at ``inner_lr=0.01``), ``0.1 /
        inner_lr`` for regression (10): with ``lam=1`` at that rate the
        problem needs hundreds of steps. ``inner_lr * lam >= 2`` overshoots
        in every direction and is refused at the first meta-step.
    cg_steps : int, default=5
        Conjugate-gradient iterations, each one Hessian-vector product.
    n_inner_steps : int or "auto", default="auto"
        Inner steps on the proximal problem in meta-training. An integer
        takes precedence over the estimator's ``n_inner_steps``. ``"auto"``
        takes the estimator's ``n_inner_steps``, except its default 1, which
        does not solve the proximal problem (the implicit gradient then falls
        back to FOMAML's, see docs/algorithms.md): that becomes 5 steps for
        classification and 10 for regression. The steps never raise the
        proximal objective: one that would is undone and the rate halved
        (:func:`proximal_descent`), in meta-training and at test time. Test-time adaptation always
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
        / |grad L_s(theta)|`` at the end of the inner steps: 0 where the
        proximal problem is solved, about 1 where ``phi`` has barely moved.
        Above 0.5 on the first meta-batch, a warning says so. Tasks counted
        in ``n_inner_stalled_`` are left out.
    n_inner_halvings_ : int
        Inner steps undone (and the rate halved) because they would have
        raised the proximal objective: the support loss was too curved for
        ``inner_lr``. When more than half the steps of a meta-batch's tasks
        (stalled ones left out) are undone, fit warns once.
    n_inner_stalled_ : int
        Tasks where the inner steps could not lower the proximal objective
        beyond rounding: ``theta`` already solves them (1-shot prototype
        heads fit their support exactly).

    Examples
    --------
    >>> from fomaml_sklearn import FOMAMLClassifier
    >>> from fomaml_sklearn.algorithms import IMAML
    >>> clf = FOMAMLClassifier(algorithm=IMAML(lam=2.0, cg_steps=5))
    >>> clf.set_params(algorithm__lam=0.5).algorithm.lam
    0.5
    """

    #: ``n_inner_steps="auto"`` in place of the estimator's default 1.
    AUTO_INNER_STEPS = {"classification": 5, "regression": 10}
    #: ``lam="auto"`` is ``AUTO_LAM_RATE[kind] / inner_lr``: gradient descent
    #: then shrinks the proximal gradient by ``1 - rate`` per step where the
    #: support loss is flat, to 0.33 in 5 steps (classification) and 0.35 in
    #: 10 (regression).
    AUTO_LAM_RATE = {"classification": 0.2, "regression": 0.1}
    #: The rise of the proximal objective taken for rounding when the forward
    #: passes run in bfloat16 or float16 (their loss is that noisy on
    #: well-fitted support sets; a diverging step rises by far more).
    LOW_PRECISION_RTOL = 0.125

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
        rule.n_inner_halvings_, rule.n_inner_stalled_ = 0, 0
        rule._warned_curvature, rule._halvings_moving = False, 0
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
        kind = "regression" if regression else "classification"
        if self.lam != "auto":
            lam = float(self.lam)
        else:
            lam = self.AUTO_LAM_RATE[kind] / float(config.inner_lr)
        if self.n_inner_steps != "auto":
            steps = int(self.n_inner_steps)
        elif config.n_inner_steps == 1:
            steps = self.AUTO_INNER_STEPS[kind]
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
        before = self._moving_counts()
        result = super().meta_gradient(runner, batch, batched=batched)
        new_solves, new_fallbacks, new_residual = self._counts()
        after = self._moving_counts()
        self._warn_curvature(runner, after[0] - before[0], after[1] - before[1], steps, lam)
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

    #: Above this fraction of a meta-batch's inner steps undone, fit warns.
    HALVING_WARNING = 0.5

    def _moving_counts(self):
        """(tasks, steps undone in them) over the tasks not stalled so far."""
        return (getattr(self, "n_cg_solves_", 0) - getattr(self, "n_inner_stalled_", 0),
                getattr(self, "_halvings_moving", 0))

    def _warn_curvature(self, runner, n_tasks, n_halvings, steps, lam):
        """Warn once per fit when most inner steps of a meta-batch's tasks
        (those not stalled, where theta is not already the solution) are undone."""
        attempted = n_tasks * steps
        if getattr(self, "_warned_curvature", False) or attempted == 0:
            return
        if n_halvings > self.HALVING_WARNING * attempted:
            self._warned_curvature = True
            warnings.warn(
                f"iMAML's inner steps are mostly undone: in a meta-batch, {n_halvings} of "
                f"{attempted} steps at inner_lr={runner.config.inner_lr:g} (lam={lam:g}) "
                "would have raised the proximal objective, so the support loss has become "
                "too curved for that rate and adaptation barely moves (the meta-training "
                "is then of little use). Try a lower lr or inner_lr, or another rule "
                "(fomaml, maml); algorithm_.n_inner_halvings_ counts the steps undone.",
                RuntimeWarning, stacklevel=3)

    def _counts(self):
        return (getattr(self, "n_cg_solves_", 0), getattr(self, "n_cg_fallbacks_", 0),
                getattr(self, "inner_residual_", 0.0))

    def task_meta_gradient(self, runner, x_support, y_support, x_query, y_query, n_classes):
        lam, steps = self.settings(runner.config, y_query.is_floating_point())
        head, head0, anchors, inner = self._adapt(runner, x_support, y_support, n_classes,
                                                  lam, steps)
        params = runner.params + head
        logits = runner.query_logits(x_query, head, x_support=x_support)
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
        self._record(negative, grad_s, params, anchors, lam, inner, steps)
        grads = runner.meta_gradients(g, n_classes)
        self.add_through_prototypes(runner, grads, head0, g[-2:])
        return TaskResult(grads, loss.detach(), n_correct(logits, y_query))

    def _record(self, negative, grad_s, params, anchors, lam, inner, n_steps):
        """Count a CG solve, the inner steps undone and the inner residual of
        its task (``inner``: what :func:`proximal_descent` returned).

        A task where the steps did not lower the proximal objective beyond
        rounding has ``theta`` as its numerical solution (a 1-shot prototype
        head fits its support exactly, for one): it is counted in
        ``n_inner_stalled_`` and left out of the residual's mean."""
        halvings, start_norm, lowered = inner
        halvings = int(halvings)
        solves, fallbacks, mean = self._counts()
        self.n_cg_solves_, self.n_cg_fallbacks_ = solves + 1, fallbacks + int(negative)
        self.n_inner_halvings_ = getattr(self, "n_inner_halvings_", 0) + halvings
        if n_steps > 0 and not bool(lowered):
            self.n_inner_stalled_ = getattr(self, "n_inner_stalled_", 0) + 1
            return
        self._halvings_moving = getattr(self, "_halvings_moving", 0) + halvings
        with torch.no_grad():
            prox = [gs + lam * (p - a) for gs, p, a in zip(grad_s, params, anchors)]
            start = float(start_norm)
            residual = float(torch.sqrt(_dot(prox, prox))) / start if start > 0 else 0.0
        measured = solves - getattr(self, "n_inner_stalled_", 0)
        self.inner_residual_ = mean + (residual - mean) / (measured + 1)

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
        head, first, head_graph = runner.start_with_head_graph(
            x_support, y_support, n_classes, with_loss=n_steps > 0,
            with_graph=self.through_prototypes(runner.meta_model))
        anchors = runner.meta_params + [h.detach().clone() for h in head]
        inner = self._descend(runner, head, x_support, y_support, lam, n_steps, first)
        return head, head_graph, anchors, inner

    def _descend(self, runner, head, x_support, y_support, lam, n_steps, first_loss):
        """:func:`proximal_descent` on the scratch copy and ``head``; then the
        support statistics at the adapted weights, as the runner records them."""
        params = runner.params + head
        anchors = [p.detach().clone() for p in params]
        low = runner.config.autocast_dtype  # rounding of the forward passes
        inner = proximal_descent(runner.support_loss(x_support, y_support), params, anchors,
                                 lam, n_steps, runner.config.inner_lr, first_loss=first_loss,
                                 rtol=None if low is None else self.LOW_PRECISION_RTOL)
        if runner.has_support_norm and n_steps > 0:
            with torch.no_grad():
                runner.features(x_support)
        return inner

    def adapt(self, runner, x_support, y_support, n_classes):
        lam, _ = self.settings(runner.config, y_support.is_floating_point())
        n_steps = runner.config.n_inner_steps_test
        head, first = runner.start(x_support, y_support, n_classes, with_loss=n_steps > 0)
        self._descend(runner, head, x_support, y_support, lam, n_steps, first)
        return head
