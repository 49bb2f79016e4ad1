"""Episodic few-shot evaluation: adapt on each episode's support set, score
its queries, summarise as a mean with a 95% confidence interval."""

from dataclasses import dataclass

import numpy as np
import torch

from .episodes import EpisodeShape

__all__ = [
    "FewShotResult",
    "adapted_query_logits",
    "confidence_interval",
    "episodic_accuracies",
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


def episodic_accuracies(runner, X, episodes):
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
        logits = adapted_query_logits(runner, X[sup[t]], y_s, X[qry[t]], n_classes)
        accuracies[t] = (logits.argmax(1) == y_q).float().mean().item()
    return accuracies


def adapted_query_logits(runner, x_support, y_support, x_query, n_classes):
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

    Returns
    -------
    logits : torch.Tensor of shape (n_queries, n_classes)
        Computed without a graph.
    """
    head = runner.algorithm.adapt(runner, x_support, y_support, n_classes)
    with torch.no_grad():
        return runner.query_logits(x_query, head)


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
