"""The multi-step loss of MAML++ (Antoniou et al., 2019) as an experimental
FOMAML rule, for ``benchmarks/ablation.py`` (issue #15): measured here first,
and moved into :mod:`fomaml_sklearn.algorithms` only if it pays.

- :class:`MultiStepLossFOMAML`: the multi-step loss. The meta-objective is
  the mean of the query losses after each of the ``n_inner_steps`` steps,
  so the first-order meta-gradient is the mean of the query gradients at
  ``phi_1 .. phi_K``. (With one inner step it is FOMAML itself.) It runs the
  per-task loop only (no batched path).

MAML++'s other lever measured here, learned per-layer, per-step inner rates
(LSLR), is a coarser Meta-SGD and is now the rule
:class:`~fomaml_sklearn.algorithms.MetaSGD` with ``granularity="tensor"``
and ``per_step=True`` (``first_order=True`` as the experiment was); see
:data:`LSLR`.
"""

import torch

from fomaml_sklearn.algorithms import FOMAML, MetaSGD, TaskResult, n_correct

__all__ = ["LSLR", "MultiStepLossFOMAML"]

#: MAML++'s learned per-layer, per-step inner rates (LSLR), first order: one
#: rate per parameter tensor and inner step, initialised at ``inner_lr`` and
#: trained by the estimator's meta-optimizer (the former experiment had an
#: Adam of its own at 1e-3 and kept the rates >= 0).
LSLR = MetaSGD(first_order=True, granularity="tensor", per_step=True)


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
