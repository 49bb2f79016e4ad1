"""Reptile (Nichol et al., 2018).

Each task takes ``n_inner_steps`` full-batch SGD steps on all its examples
(support and query) from ``theta``; the direction ``theta - phi`` is handed
to the meta-optimizer as the task's gradient. Test-time adaptation is the
plain inner loop on the support set.
"""

import torch

from ._base import MetaAlgorithm, TaskResult, n_correct

__all__ = ["Reptile"]


class Reptile(MetaAlgorithm):
    """Reptile: step along ``theta - phi``.

    Examples
    --------
    >>> from fomaml_sklearn import FOMAMLClassifier
    >>> clf = FOMAMLClassifier(algorithm="reptile")
    """

    concurrent_tasks = True  # no state across tasks: tasks may run on threads

    def task_meta_gradient(self, runner, x_support, y_support, x_query, y_query, n_classes):
        meta = runner.meta_model
        x_all, y_all = torch.cat([x_support, x_query]), torch.cat([y_support, y_query])
        head = runner.adapt(x_all, y_all, n_classes, runner.config.n_inner_steps)
        with torch.no_grad():
            grads = {m: m - p for m, p in zip(runner.meta_params, runner.params)}
            if meta.has_head_parameters:
                rows = meta.head_rows(n_classes)
                grads.update(meta.head_gradients(
                    n_classes, meta.head_weight[rows] - head[0], meta.head_bias[rows] - head[1]))
            logits = runner.query_logits(x_query, head)
            loss = runner.loss_fn(logits, y_query)
        return TaskResult(grads, loss, n_correct(logits, y_query))
