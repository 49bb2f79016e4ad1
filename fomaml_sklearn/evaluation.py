"""Episodic few-shot evaluation: adapt on each episode's support set, score
its queries, summarise as a mean with a 95% confidence interval."""

from dataclasses import dataclass

import numpy as np
import torch

from .episodes import EpisodeShape

__all__ = [
    "FewShotResult",
    "FewShotRegressionResult",
    "adapted_query_logits",
    "confidence_interval",
    "episodic_accuracies",
    "episodic_regression_errors",
]


@dataclass(frozen=True)
class FewShotResult:
    """Few-shot accuracy over a set of episodes.

    Attributes
    ----------
    mean : float
        Mean query accuracy over the episodes.
    ci95 : float
        Half-width of the 95% confidence interval of the mean
        (``1.96 * std / sqrt(n_episodes)``, as in the MAML papers).
    accuracies : ndarray of shape (n_episodes,)
        Query accuracy of each episode.
    shape : EpisodeShape
        The episode shape used (after shrinking to what the data allows).
    """

    mean: float
    ci95: float
    accuracies: np.ndarray
    shape: EpisodeShape

    def __str__(self):
        s = self.shape
        return (
            f"{100 * self.mean:.2f} +- {100 * self.ci95:.2f}% "
            f"({s.n_ways}-way {s.k_shot}-shot, {len(self.accuracies)} episodes)"
        )


@dataclass(frozen=True)
class FewShotRegressionResult:
    """Few-shot regression errors over a set of episodes (one task each).

    Attributes
    ----------
    mse, mse_ci95 : float
        Mean query mean squared error over the episodes, and the half-width
        of its 95% confidence interval.
    r2, r2_ci95 : float
        Mean query R^2 (``sklearn.metrics.r2_score`` of each episode's
        queries, outputs averaged uniformly) and its 95% half-width; nan
        with a single query per episode, where R^2 is undefined.
    mses, r2s : ndarray of shape (n_episodes,)
        Per-episode values.
    shape : EpisodeShape
        The episode shape used (``n_ways=1``: one task per episode).
    """

    mse: float
    mse_ci95: float
    r2: float
    r2_ci95: float
    mses: np.ndarray
    r2s: np.ndarray
    shape: EpisodeShape

    def __str__(self):
        return (
            f"MSE {self.mse:.4g} +- {self.mse_ci95:.2g}, R^2 {self.r2:.3f} +- "
            f"{self.r2_ci95:.3f} ({self.shape.k_shot}-shot, {len(self.mses)} episodes)"
        )


def confidence_interval(accuracies):
    """Mean and 95% confidence half-width of per-episode accuracies.

    Parameters
    ----------
    accuracies : array-like of float

    Returns
    -------
    mean, half_width : float
    """
    acc = np.asarray(accuracies, dtype=float)
    if len(acc) < 2:
        return float(acc.mean()), float("nan")
    return float(acc.mean()), float(1.96 * acc.std(ddof=1) / np.sqrt(len(acc)))


def episodic_accuracies(runner, X, episodes, augment=None):
    """Query accuracy of each episode after adapting on its support set.

    Parameters
    ----------
    runner : TaskRunner
        The meta-model and its configuration; each episode is adapted to
        with the configuration's rule (its test-time adaptation).
    X : torch.Tensor
        All examples, on the runner's device.
    episodes : EpisodeBatch
        The episodes (indices into ``X``).
    augment : ShiftEnsemble or None, default=None
        Test-time augmentation (see :func:`adapted_query_logits`).

    Returns
    -------
    accuracies : ndarray of shape (n_episodes,)
    """
    device = X.device
    y_s = torch.as_tensor(episodes.support_y, device=device)
    y_q = torch.as_tensor(episodes.query_y, device=device)
    n_classes = episodes.classes.shape[1]
    sup = torch.as_tensor(episodes.support_idx, device=device)
    qry = torch.as_tensor(episodes.query_idx, device=device)
    accuracies = np.empty(len(episodes))
    for t in range(len(episodes)):
        logits = adapted_query_logits(runner, X[sup[t]], y_s, X[qry[t]], n_classes,
                                      augment=augment)
        accuracies[t] = (logits.argmax(1) == y_q).float().mean().item()
    return accuracies


def episodic_regression_errors(runner, X, Y, episodes):
    """Query MSE and R^2 of each episode after adapting on its support set.

    Parameters
    ----------
    runner : TaskRunner
        The meta-model and its configuration (its rule adapts).
    X : torch.Tensor
        All examples, on the runner's device.
    Y : torch.Tensor of shape (n_samples, n_outputs)
        Their real-valued targets.
    episodes : EpisodeBatch
        1-way episodes: each one task's support and query indices.

    Returns
    -------
    mses, r2s : ndarray of shape (n_episodes,)
        ``r2s`` is nan where an episode has a single query, and where the
        adapted predictions are not finite (a diverging inner loop, whose
        ``mses`` entry is then inf or nan).
    """
    from sklearn.metrics import r2_score

    device = X.device
    sup = torch.as_tensor(episodes.support_idx, device=device)
    qry = torch.as_tensor(episodes.query_idx, device=device)
    n_outputs = Y.shape[1]
    mses, r2s = np.empty(len(episodes)), np.full(len(episodes), np.nan)
    for t in range(len(episodes)):
        pred = adapted_query_logits(runner, X[sup[t]], Y[sup[t]], X[qry[t]], n_outputs)
        pred = pred.double().cpu().numpy()
        true = Y[qry[t]].double().cpu().numpy()
        mses[t] = float(np.mean((pred - true) ** 2))  # inf or nan if adaptation diverged
        if len(true) > 1 and np.isfinite(pred).all():
            r2s[t] = r2_score(true, pred)
    return mses, r2s


def adapted_query_logits(runner, x_support, y_support, x_query, n_classes, augment=None):
    """Adapt from the meta-parameters on one support set; logits of its queries.

    Parameters
    ----------
    runner : TaskRunner
        The meta-model and its configuration (rule, inner rate, test-time
        steps, transduction).
    x_support, y_support : torch.Tensor
        The support set, labels coded ``0 .. n_classes-1``.
    x_query : torch.Tensor
        The queries.
    n_classes : int
        Number of classes of the task.
    augment : ShiftEnsemble or None, default=None
        Test-time augmentation
        (:class:`~fomaml_sklearn.augmentation.ShiftEnsemble`): adapt on
        ``augment.support(x_support, y_support)`` and return
        ``augment.log_proba`` of the queries (log-probabilities averaged over
        their shifted copies) instead of their logits.

    Returns
    -------
    logits : torch.Tensor of shape (n_queries, n_classes)
        Computed without a graph.
    """
    if augment is not None:
        x_support, y_support = augment.support(x_support, y_support)
    head = runner.algorithm.adapt(runner, x_support, y_support, n_classes)
    with torch.no_grad():
        if augment is None:
            return runner.query_logits(x_query, head)
        return augment.log_proba(lambda x: runner.query_logits(x, head), x_query)


def sample_episodes(y, shape, n_episodes, random_state):
    """Draw ``n_episodes`` episodes from labels ``y`` with a seeded generator.

    The same ``(y, shape, n_episodes, random_state)`` always gives the same
    episodes, so different methods can be compared on identical tasks.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Labels of any type.
    shape : EpisodeShape
        Episode shape (it must fit the data).
    n_episodes : int
        Number of episodes.
    random_state : int
        Seed.

    Returns
    -------
    episodes : EpisodeBatch
    """
    from .episodes import EpisodeSampler

    _, codes = np.unique(np.asarray(y), return_inverse=True)
    sampler = EpisodeSampler(codes, shape, np.random.default_rng(random_state))
    return sampler.sample(n_episodes)


def baseline_accuracies(estimator, X, episodes):
    """Query accuracy per episode of a scikit-learn classifier fit on each support set.

    Parameters
    ----------
    estimator : scikit-learn classifier
        Cloned and fit on every episode's support set (e.g. 1-nearest
        neighbour or logistic regression on pixels).
    X : array-like of shape (n_samples, n_features)
        All examples.
    episodes : EpisodeBatch
        The episodes (indices into ``X``).
    augment : ShiftEnsemble or None, default=None
        Test-time augmentation (see :func:`adapted_query_logits`).

    Returns
    -------
    accuracies : ndarray of shape (n_episodes,)
    """
    from sklearn.base import clone

    X = np.asarray(X).reshape(len(X), -1)
    accuracies = np.empty(len(episodes))
    for t in range(len(episodes)):
        model = clone(estimator).fit(X[episodes.support_idx[t]], episodes.support_y)
        pred = model.predict(X[episodes.query_idx[t]])
        accuracies[t] = np.mean(pred == episodes.query_y)
    return accuracies
