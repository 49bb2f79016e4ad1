"""Two of MAML++'s levers (Antoniou et al., 2019) as experimental FOMAML rules,
for ``benchmarks/ablation.py`` (issue #15): measured here first, and moved
into :mod:`fomaml_sklearn.algorithms` only if they pay.

- :class:`LSLRFOMAML`: learned per-layer, per-step inner rates (LSLR, as in
  Meta-SGD). Every parameter tensor of the body and the head's weight and
  bias get one rate per inner step, initialised at ``inner_lr`` and learned
  with their own Adam. First order, like FOMAML: with
  ``phi_{j+1} = phi_j - a_j * g_s(phi_j)`` and the later steps' Jacobians
  taken as the identity, ``dL_q/da_{j,l} = -<grad_l L_q(phi_K), g_s,l(phi_j)>``.
  Test-time steps beyond the trained ones use the last trained step's rates.
- :class:`MultiStepLossFOMAML`: the multi-step loss. The meta-objective is
  the mean of the query losses after each of the ``n_inner_steps`` steps,
  so the first-order meta-gradient is the mean of the query gradients at
  ``phi_1 .. phi_K``. (With one inner step it is FOMAML itself.)

Both run the per-task loop only (no batched path), on one process.
"""

import torch

from fomaml_sklearn.algorithms import FOMAML
from fomaml_sklearn.algorithms._base import TaskResult, n_correct

__all__ = ["LSLRFOMAML", "MultiStepLossFOMAML"]


class LSLRFOMAML(FOMAML):
    """FOMAML with learned per-layer, per-step inner rates (first order).

    Parameters
    ----------
    prototype_gradient : {"auto", True, False}, default="auto"
        As :class:`~fomaml_sklearn.algorithms.FOMAML`.
    rate_lr : float, default=1e-3
        Adam's learning rate for the inner rates.
    """

    def __init__(self, prototype_gradient="auto", rate_lr=1e-3):
        self.prototype_gradient = prototype_gradient
        self.rate_lr = rate_lr

    def supports_batched(self, meta_model):
        return False

    def _init_rates(self, runner):
        if getattr(self, "rates_", None) is None:
            n_tensors = len(runner.params) + 2
            n_steps = max(1, runner.config.n_inner_steps)
            self.rates_ = torch.nn.Parameter(
                torch.full((n_steps, n_tensors), float(runner.config.inner_lr)))
            self.optimizer_ = torch.optim.Adam([self.rates_], lr=self.rate_lr)
            self.rate_grad_ = torch.zeros_like(self.rates_)
            self.n_tasks_ = 0

    def _inner(self, runner, head, x_support, y_support, n_steps, first, record):
        """SGD at the learned rates on the scratch copy; the support
        gradients of every step if ``record``."""
        params = runner.params + head
        loss_fn = runner.support_loss(x_support, y_support)
        trained = self.rates_.shape[0]
        recorded = []
        with torch.enable_grad():
            for step in range(n_steps):
                loss = first if step == 0 and first is not None else loss_fn(params)
                grads = torch.autograd.grad(loss, params)
                rates = self.rates_[min(step, trained - 1)].detach().clamp_min(0).tolist()
                with torch.no_grad():
                    torch._foreach_add_(params, torch._foreach_mul(grads, rates), alpha=-1.0)
                if record:
                    recorded.append(grads)
        if runner.has_support_norm and n_steps > 0:
            with torch.no_grad():
                runner.features(x_support)
        return recorded

    def task_meta_gradient(self, runner, x_support, y_support, x_query, y_query, n_classes):
        self._init_rates(runner)
        n_steps = runner.config.n_inner_steps
        head, first = runner.start(x_support, y_support, n_classes, with_loss=n_steps > 0)
        head0 = None
        if self.through_prototypes(runner.meta_model):
            head0 = runner.prototype_head_graph(x_support, y_support, n_classes)
        support_grads = self._inner(runner, head, x_support, y_support, n_steps, first, True)
        logits = runner.query_logits(x_query, head)
        loss = runner.loss_fn(logits, y_query)
        g = torch.autograd.grad(loss, runner.params + head)
        with torch.no_grad():
            for step, gs in enumerate(support_grads):
                dots = torch.stack([(a * b).sum() for a, b in zip(g, gs)])
                self.rate_grad_[step] -= dots
        self.n_tasks_ += 1
        grads = runner.meta_gradients(g, n_classes)
        self.add_through_prototypes(runner, grads, head0, g[-2:])
        return TaskResult(grads, loss.detach(), n_correct(logits, y_query))

    def meta_gradient(self, runner, batch, batched=False):
        result = super().meta_gradient(runner, batch, batched=False)
        # The rates' own step, from the mean over the meta-batch's tasks.
        self.rates_.grad = self.rate_grad_ / max(1, self.n_tasks_)
        self.optimizer_.step()
        with torch.no_grad():
            self.rates_.clamp_(min=0.0)
        self.rate_grad_.zero_()
        self.n_tasks_ = 0
        return result

    def adapt(self, runner, x_support, y_support, n_classes):
        self._init_rates(runner)
        n_steps = runner.config.n_inner_steps_test
        head, first = runner.start(x_support, y_support, n_classes, with_loss=n_steps > 0)
        self._inner(runner, head, x_support, y_support, n_steps, first, False)
        return head

    def describe(self):
        """The learned rates per step: min / median / max over the tensors."""
        rates = self.rates_.detach()
        return "; ".join(f"step {j}: {r.min():.4f} / {r.median():.4f} / {r.max():.4f}"
                         for j, r in enumerate(rates))


class MultiStepLossFOMAML(FOMAML):
    """FOMAML whose meta-objective is the mean query loss after every inner step."""

    def supports_batched(self, meta_model):
        return False

    def task_meta_gradient(self, runner, x_support, y_support, x_query, y_query, n_classes):
        n_steps = runner.config.n_inner_steps
        if n_steps <= 1:
            return super().task_meta_gradient(runner, x_support, y_support, x_query,
                                              y_query, n_classes)
        head, first = runner.start(x_support, y_support, n_classes, with_loss=True)
        head0 = None
        if self.through_prototypes(runner.meta_model):
            head0 = runner.prototype_head_graph(x_support, y_support, n_classes)
        params = runner.params + head
        total = None
        for step in range(n_steps):
            runner.adapt_from(head, x_support, y_support, 1,
                              first_loss=first if step == 0 else None)
            logits = runner.query_logits(x_query, head)
            loss = runner.loss_fn(logits, y_query)
            g = torch.autograd.grad(loss, params)
            total = list(g) if total is None else [t + gi for t, gi in zip(total, g)]
        total = [t / n_steps for t in total]
        grads = runner.meta_gradients(total, n_classes)
        self.add_through_prototypes(runner, grads, head0, total[-2:])
        return TaskResult(grads, loss.detach(), n_correct(logits, y_query))
