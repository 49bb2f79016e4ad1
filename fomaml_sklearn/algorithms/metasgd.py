"""Meta-SGD (Li et al., 2017): learned inner rates.

The inner step is ``phi = theta - alpha * grad L_s(theta)`` with ``alpha``
a meta-learned tensor of the parameter's shape (elementwise product), one
per meta-parameter, initialised to the estimator's ``inner_lr``. The
meta-gradient with respect to ``theta`` and ``alpha`` is taken through the
inner steps, as in the paper (second order, MAML's graph with the rates in
it). With ``first_order=True`` the inner steps' Jacobians are the identity
for ``theta`` (FOMAML's direction) and a rate's gradient is
``-grad L_s(phi_j) * grad L_q(phi)`` summed over the steps ``j`` it scales
(elementwise; exact for one inner step, where ``phi`` is linear in
``alpha``).

The rates are the rule's own meta-parameters
(:meth:`~fomaml_sklearn.algorithms.MetaAlgorithm.meta_parameters`): they
live in ``meta_model.rule_state``, the meta-optimizer trains them beside the
network, model files keep them, and ``get_params`` does not show them.

Coarser rates: ``granularity="tensor"`` gives one rate per parameter tensor,
and ``per_step=True`` one set per inner step of meta-training (test-time
steps beyond those use the last step's); the two together are MAML++'s
learned per-layer, per-step rates (LSLR, Antoniou et al., 2019).

The task head's rows are built per task (one per class, any number of
classes), so its weight's rates are one per feature, shared by the rows,
and its bias has one rate.
"""

import torch

from ._base import MetaAlgorithm, PrototypeGradientOption, TaskResult, n_correct
from .maml import second_order_task_gradient
from .runner import first_gradient

__all__ = ["MetaSGD"]

GRANULARITIES = ("parameter", "tensor")


class MetaSGD(PrototypeGradientOption, MetaAlgorithm):
    """Meta-SGD: meta-learn the inner rates with the initialisation.

    Parameters
    ----------
    first_order : bool, default=False
        Drop the second-order terms: ``theta`` gets FOMAML's direction and
        the rates ``-grad L_s * grad L_q`` (exact for one inner step).
    granularity : {"parameter", "tensor"}, default="parameter"
        One rate per element of every parameter (Meta-SGD), or one per
        parameter tensor (LSLR's per-layer rates).
    per_step : bool, default=False
        One set of rates per inner step of meta-training (LSLR); test-time
        ``n_inner_steps_test`` is capped at ``n_inner_steps`` (below).
    prototype_gradient : {"auto", True, False}, default="auto"
        With ``first_order=True`` and ``head="prototype"``, as
        :class:`~fomaml_sklearn.algorithms.FOMAML`'s. Second order
        differentiates through the prototypes exactly, as MAML does.

    The learned rates are the fitted estimator's ``meta_model_.rule_state``
    (``"body-<parameter>"``, ``"head-weight"``, ``"head-bias"``).

    The rates are learned for the ``n_inner_steps`` steps of meta-training,
    so adapting to a new task takes at most that many steps:
    ``n_inner_steps_test`` is capped at ``n_inner_steps``. Beyond them the
    learned rates overshoot (on sinusoids, 10 test steps at rates learned
    for one diverged in a third of the tasks).

    Examples
    --------
    >>> from fomaml_sklearn import FOMAMLClassifier
    >>> clf = FOMAMLClassifier(algorithm="metasgd")
    >>> from fomaml_sklearn.algorithms import MetaSGD
    >>> lslr = FOMAMLClassifier(algorithm=MetaSGD(first_order=True, granularity="tensor",
    ...                                           per_step=True), n_inner_steps=3)
    """

    concurrent_tasks = True  # no state across tasks: tasks may run on threads

    def __init__(self, first_order=False, granularity="parameter", per_step=False,
                 prototype_gradient="auto"):
        self.first_order = first_order
        self.granularity = granularity
        self.per_step = per_step
        self.prototype_gradient = prototype_gradient

    def validate(self):
        for name in ("first_order", "per_step"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(
                    f"{name}={value!r} is not supported by MetaSGD; use True or False.")
        if self.granularity not in GRANULARITIES:
            raise ValueError(
                f"granularity={self.granularity!r} is not supported by MetaSGD; use one of "
                f"{GRANULARITIES}.")
        self._validate_prototype_gradient()

    # ------------------------------------------------------------- the rates
    @staticmethod
    def _names(meta_model):
        """Rate names, in the order of the runner's body parameters and the
        task head's weight and bias."""
        body = [f"body-{name.replace('.', '-')}" for name, _ in
                meta_model.backbone.named_parameters()]
        return body + ["head-weight", "head-bias"]

    def meta_parameters(self, meta_model, config):
        like = next(meta_model.parameters(), None)
        options = ({} if like is None else {"dtype": like.dtype, "device": like.device})
        per_tensor = self.granularity == "tensor"
        shapes = [() if per_tensor else tuple(p.shape)
                  for p in meta_model.backbone.parameters()]
        shapes += [() if per_tensor else (meta_model.feature_dim,), ()]
        lead = (max(1, int(config.n_inner_steps)),) if self.per_step else ()
        return {name: torch.full(lead + shape, float(config.inner_lr), **options)
                for name, shape in zip(self._names(meta_model), shapes)}

    def rates(self, runner):
        """The rates as tensors, in the order of ``runner.params + head``
        (with the per-step axis first when ``per_step``)."""
        state = runner.rule_parameters
        names = self._names(runner.meta_model)
        missing = [n for n in names if n not in state]
        if missing:
            raise ValueError(
                f"MetaSGD's rates {missing[:3]} are not in the meta-model; it holds "
                f"{sorted(state)}. The meta-model was not prepared for this rule "
                "(fomaml_sklearn.algorithms.runner.attach_rule_parameters).")
        return [state[n] for n in names]

    def _at_step(self, rates, detach=False):
        """``step -> rates of that step``, for :func:`inner_loop`."""
        if detach:
            rates = [r.detach() for r in rates]
        if not self.per_step:
            return lambda step: rates
        return lambda step: [r[min(step, len(r) - 1)] for r in rates]

    # ------------------------------------------------------------ meta-step
    def task_meta_gradient(self, runner, x_support, y_support, x_query, y_query, n_classes):
        if self.first_order:
            return self._first_order(runner, x_support, y_support, x_query, y_query, n_classes)
        # MAML's second-order step, with the rates (tensors in the graph) as
        # the inner rate: the rates get their exact gradient with theta's.
        return second_order_task_gradient(runner, x_support, y_support, x_query, y_query,
                                          n_classes, self._at_step(self.rates(runner)))

    def _first_order(self, runner, x_support, y_support, x_query, y_query, n_classes):
        rates = self.rates(runner)
        at_step = self._at_step(rates, detach=True)
        n_steps = runner.config.n_inner_steps
        head, first, head0 = runner.start_with_head_graph(
            x_support, y_support, n_classes, with_loss=n_steps > 0,
            with_graph=self.through_prototypes(runner.meta_model))
        params = runner.params + head
        support_loss = runner.support_loss(x_support, y_support)
        support_grads = []
        with torch.enable_grad():
            for step in range(n_steps):
                if step == 0:
                    _, grads = first_gradient(first, params)
                else:
                    grads = torch.autograd.grad(support_loss(params), params)
                with torch.no_grad():
                    for p, g, a in zip(params, grads, at_step(step)):
                        p.sub_(a * g)
                support_grads.append(grads)
        if runner.has_support_norm and n_steps > 0:
            with torch.no_grad():
                runner.features(x_support)
        logits = runner.query_logits(x_query, head, x_support=x_support)
        loss = runner.loss_fn(logits, y_query)
        g = torch.autograd.grad(loss, params)
        grads = runner.meta_gradients(g, n_classes)
        self.add_through_prototypes(runner, grads, head0, g[-2:])
        with torch.no_grad():
            rate_grads = [torch.zeros_like(r) for r in rates]
            for step, g_s in enumerate(support_grads):
                for total, gs, gq in zip(rate_grads, g_s, g):
                    term = -(gs * gq)
                    if self.per_step:
                        row = total[min(step, len(total) - 1)]
                        row += term.sum_to_size(row.shape)
                    else:
                        total += term.sum_to_size(total.shape)
        grads.update(zip(rates, rate_grads))
        return TaskResult(grads, loss.detach(), n_correct(logits, y_query))

    # ------------------------------------------------------------- test time
    def adapt(self, runner, x_support, y_support, n_classes):
        config = runner.config
        n_steps = min(config.n_inner_steps_test, config.n_inner_steps)
        return runner.adapt(x_support, y_support, n_classes, n_steps,
                            lr=self._at_step(self.rates(runner), detach=True))
