"""ANIL, almost no inner loop (Raghu et al., 2020).

Only the head adapts in the inner loop, on support features computed once
at ``theta``; the body is meta-learned through the query loss. Second order
differentiates through the head's SGD steps and the head's initialisation
(cheap: the body is not in the inner loop); first order drops the
derivatives of the head's steps, so the adapted head moves with its
initialisation (a meta-learned head row gets the query gradient), while the
prototype head, built from support features held constant, passes nothing to
the body: the body then learns through the query features only. Test-time
adaptation also adapts the head alone.
"""

import torch

from ._base import MetaAlgorithm, TaskResult, n_correct
from .runner import inner_loop

__all__ = ["ANIL"]


class ANIL(MetaAlgorithm):
    """ANIL: adapt the head only, in training and at test time.

    Parameters
    ----------
    first_order : bool, default=False
        Drop the derivatives through the head's inner steps (``"fo-anil"``).

    Examples
    --------
    >>> from fomaml_sklearn import FOMAMLClassifier
    >>> from fomaml_sklearn.algorithms import ANIL
    >>> clf = FOMAMLClassifier(algorithm=ANIL(first_order=True))   # = "fo-anil"
    """

    concurrent_tasks = True  # no state across tasks: tasks may run on threads

    def __init__(self, first_order=False):
        self.first_order = first_order

    def validate(self):
        if not isinstance(self.first_order, bool):
            raise ValueError(
                f"first_order={self.first_order!r} is not supported by ANIL; use True "
                "or False."
            )

    def task_meta_gradient(self, runner, x_support, y_support, x_query, y_query, n_classes):
        meta, config = runner.meta_model, runner.config
        runner.reset()
        feats = runner.features(x_support, runner.meta_params)
        head = list(meta.head_with_graph(feats, y_support, n_classes))
        if self.first_order:
            feats = feats.detach()
            head = [h.detach().requires_grad_(True) for h in head]
        head = inner_loop(runner.support_loss(feats, y_support, "head"), head,
                          config.n_inner_steps, config.inner_lr,
                          create_graph=not self.first_order)
        feats_q = runner.query_features(x_query, x_support, runner.meta_params)
        logits = runner.logits(feats_q, head)
        loss = runner.loss_fn(logits, y_query)
        if self.first_order:
            g = torch.autograd.grad(loss, runner.meta_params + head)
            grads = runner.meta_gradients(g, n_classes)
        else:
            grads = runner.total_gradients(loss)
        return TaskResult(grads, loss.detach(), n_correct(logits, y_query))

    def adapt(self, runner, x_support, y_support, n_classes):
        return runner.adapt_head(x_support, y_support, n_classes,
                                 runner.config.n_inner_steps_test)
