"""Second-order MAML (Finn et al., 2017).

A task's meta-gradient is ``U'(theta)^T grad L_query(phi)``: the inner SGD
steps run with ``create_graph=True``, so the query loss is differentiated
through them (about 2-3x the cost of FOMAML, and memory that grows with the
number of inner steps). The head starts from ``h0(theta)`` with its graph,
so the prototype head is differentiated through as well. BatchNorm
statistics recorded on the support set and used for the queries are
treated as constants. Test-time adaptation is the plain inner loop.
"""

import torch

from ._base import MetaAlgorithm, TaskResult, n_correct
from .runner import inner_loop

__all__ = ["MAML", "second_order_task_gradient"]


class MAML(MetaAlgorithm):
    """Second-order MAML: differentiate through the inner steps.

    Examples
    --------
    >>> from fomaml_sklearn import FOMAMLClassifier
    >>> from fomaml_sklearn.algorithms import MAML
    >>> clf = FOMAMLClassifier(algorithm=MAML())
    """

    concurrent_tasks = True  # no state across tasks: tasks may run on threads

    def task_meta_gradient(self, runner, x_support, y_support, x_query, y_query, n_classes):
        return second_order_task_gradient(runner, x_support, y_support, x_query, y_query,
                                          n_classes, runner.config.inner_lr)


def second_order_task_gradient(runner, x_support, y_support, x_query, y_query, n_classes,
                               rate):
    """One task's exact second-order meta-gradient: the inner steps at
    ``rate`` (a number, per-tensor rates, or ``step -> rates`` as
    :func:`~fomaml_sklearn.algorithms.runner.inner_loop` takes; with its graph
    when the rates are meta-learned tensors, as Meta-SGD's) run with
    ``create_graph=True`` and the query loss is differentiated through them."""
    meta, config = runner.meta_model, runner.config
    theta = runner.meta_params
    runner.reset()
    feats = runner.features(x_support, theta)
    head = list(meta.head_with_graph(feats, y_support, n_classes))
    # The inner steps start from aliases of theta: their gradient is the
    # partial derivative of the support loss (the head held fixed), as at
    # test time, while the head's own dependence on theta stays in the
    # graph for the meta-gradient.
    body = [t.view_as(t) for t in theta]
    params = inner_loop(runner.support_loss(x_support, y_support, "functional"),
                        body + head, config.n_inner_steps, rate, create_graph=True)
    if runner.has_support_norm and config.n_inner_steps > 0:
        with torch.no_grad():  # support statistics at the adapted weights
            runner.features(x_support, [p.detach() for p in params[:-2]])
    feats_q = runner.query_features(x_query, x_support, params[:-2])
    logits = runner.logits(feats_q, params[-2:])
    loss = runner.loss_fn(logits, y_query)
    return TaskResult(runner.total_gradients(loss), loss.detach(), n_correct(logits, y_query))
