"""N-way K-shot episode sampling.

An episode (a task) draws ``n_ways`` classes, then ``k_shot`` support and
``n_query`` query examples of each, without replacement, and relabels the
chosen classes ``0 .. n_ways-1`` in random order. All randomness comes from an
explicit :class:`numpy.random.Generator`; nothing here touches global RNGs.
"""

from dataclasses import dataclass

import numpy as np

__all__ = ["EpisodeShape", "EpisodeBatch", "resolve_episode_shape", "resolve_task_shape",
           "EpisodeSampler"]


@dataclass(frozen=True)
class EpisodeShape:
    """The shape of an episode: classes, support and query examples per class."""

    n_ways: int
    k_shot: int
    n_query: int

    @property
    def n_support(self):
        """Support examples per episode, ``n_ways * k_shot``."""
        return self.n_ways * self.k_shot

    @property
    def n_queries(self):
        """Query examples per episode, ``n_ways * n_query``."""
        return self.n_ways * self.n_query


@dataclass
class EpisodeBatch:
    """Indices and relabelled targets of a batch of episodes.

    Attributes
    ----------
    support_idx : ndarray of shape (n_tasks, n_ways * k_shot)
        Row indices of the support examples, grouped by new label.
    support_y : ndarray of shape (n_ways * k_shot,)
        New labels of the support examples (the same in every task).
    query_idx : ndarray of shape (n_tasks, n_ways * n_query)
        Row indices of the query examples.
    query_y : ndarray of shape (n_ways * n_query,)
        New labels of the query examples.
    classes : ndarray of shape (n_tasks, n_ways)
        The original class codes; ``classes[t, j]`` became label ``j``.
    """

    support_idx: np.ndarray
    support_y: np.ndarray
    query_idx: np.ndarray
    query_y: np.ndarray
    classes: np.ndarray

    def __len__(self):
        return len(self.support_idx)


def _fit_examples(counts, names, k_shot, n_query, unit, item, add, what=None):
    """Support and query examples per class (or task) that the smallest one
    allows, shrinking the queries first; raise where one has fewer than 2.

    Returns ``(shots, queries, smallest size, name of the smallest)``.
    """
    if counts.min() < 2:
        small = names[counts < 2]
        listed = ", ".join(repr(c.item() if hasattr(c, "item") else c) for c in small[:5])
        raise ValueError(
            f"Every {what or unit} needs at least 2 {item}s (1 support + 1 query), but "
            f"{unit} {listed} has only {int(counts.min())} {item}"
            f"{'' if counts.min() == 1 else 's'}; add {add} or drop the {unit}."
        )
    smallest = int(counts.min())
    shots = max(1, min(int(k_shot), smallest - 1))
    queries = max(1, min(int(n_query), smallest - shots))
    name = names[int(np.argmin(counts))]
    return shots, queries, smallest, (name.item() if hasattr(name, "item") else name)


def resolve_episode_shape(class_counts, n_ways, k_shot, n_query, class_names=None):
    """Shrink the requested episode shape to what the data allows.

    Parameters
    ----------
    class_counts : array-like of int
        Number of examples of each class.
    n_ways, k_shot, n_query : int
        The requested shape.
    class_names : array-like or None
        Names of the classes, used in messages.

    Returns
    -------
    shape : EpisodeShape
        ``n_ways`` is at most the number of classes; ``k_shot + n_query`` is at
        most the size of the smallest class, shrinking the queries first and
        keeping at least one support and one query example.
    message : str or None
        What was shrunk and why, or None when the request fits.

    Raises
    ------
    ValueError
        With fewer than two classes, or a class with fewer than two examples.

    Examples
    --------
    >>> from fomaml_sklearn.episodes import resolve_episode_shape
    >>> shape, message = resolve_episode_shape([20, 20, 5], n_ways=5, k_shot=1, n_query=15)
    >>> shape
    EpisodeShape(n_ways=3, k_shot=1, n_query=4)
    >>> print(message)  # doctest: +NORMALIZE_WHITESPACE
    The data allows smaller episodes than requested: using n_ways=3, k_shot=1,
    n_query=4 instead of n_ways=5, k_shot=1, n_query=15 (3 classes; the smallest,
    2, has 5 examples).
    """
    counts = np.asarray(class_counts)
    names = np.arange(len(counts)) if class_names is None else np.asarray(class_names)
    if len(counts) < 2:
        raise ValueError(
            f"Episodes need at least 2 classes, but the data has {len(counts)} "
            "class; pass labelled examples of 2 or more classes."
        )
    shots, queries, smallest, name = _fit_examples(
        counts, names, k_shot, n_query, "class", "example", "examples")
    ways = min(int(n_ways), len(counts))
    shape = EpisodeShape(ways, shots, queries)
    if (ways, shots, queries) == (n_ways, k_shot, n_query):
        return shape, None
    message = (
        f"The data allows smaller episodes than requested: using n_ways={ways}, "
        f"k_shot={shots}, n_query={queries} instead of n_ways={n_ways}, "
        f"k_shot={k_shot}, n_query={n_query} ({len(counts)} classes; the "
        f"smallest, {name!r}, has {smallest} examples)."
    )
    return shape, message


def resolve_task_shape(task_sizes, k_shot, n_query, task_names=None):
    """The episode shape of few-shot regression, shrunk to what the data allows.

    A regression episode is one task (a group of examples): ``k_shot``
    support and ``n_query`` query examples drawn from it. It is a 1-way
    :class:`EpisodeShape`, so the class sampler draws it from task codes.

    Parameters
    ----------
    task_sizes : array-like of int
        Number of examples of each task.
    k_shot, n_query : int
        The requested support and query examples.
    task_names : array-like or None
        Names of the tasks (the ``groups`` values), used in messages.

    Returns
    -------
    shape : EpisodeShape
        ``n_ways=1``; ``k_shot + n_query`` at most the size of the smallest
        task, shrinking the queries first and keeping at least one of each.
    message : str or None
        What was shrunk and why, or None when the request fits.

    Raises
    ------
    ValueError
        Without tasks, or with a task of fewer than two examples.

    Examples
    --------
    >>> from fomaml_sklearn.episodes import resolve_task_shape
    >>> resolve_task_shape([20, 8], k_shot=5, n_query=10)[0]
    EpisodeShape(n_ways=1, k_shot=5, n_query=3)
    """
    sizes = np.asarray(task_sizes)
    names = np.arange(len(sizes)) if task_names is None else np.asarray(task_names)
    if len(sizes) == 0:
        raise ValueError("Episodes need at least one task; the data is empty.")
    shots, queries, smallest, name = _fit_examples(
        sizes, names, k_shot, n_query, "group", "sample", "samples", "task (group)")
    shape = EpisodeShape(1, shots, queries)
    if (shots, queries) == (k_shot, n_query):
        return shape, None
    message = (
        f"The data allows smaller episodes than requested: using k_shot={shots}, "
        f"n_query={queries} instead of k_shot={k_shot}, n_query={n_query} (the smallest "
        f"of the {len(sizes)} tasks, group {name!r}, has {smallest} examples)."
    )
    return shape, message


class EpisodeSampler:
    """Draw batches of episodes from integer-coded labels.

    Parameters
    ----------
    y : array-like of int of shape (n_samples,)
        Class codes ``0 .. n_classes-1``.
    shape : EpisodeShape
        Episode shape; it must fit the data (see :func:`resolve_episode_shape`).
    rng : numpy.random.Generator
        The source of randomness.
    class_groups : array-like of int of shape (n_classes,) or None, default=None
        A group code per class (classes that belong together, as the
        characters of one alphabet). Each task then takes all its classes
        from one group, drawn with a probability proportional to its number
        of classes; groups with fewer than ``n_ways`` classes are never
        drawn. Harder tasks, for telling apart classes that look alike.

    Examples
    --------
    >>> import numpy as np
    >>> from fomaml_sklearn.episodes import EpisodeSampler, EpisodeShape
    >>> y = np.repeat(np.arange(4), 5)            # 4 classes of 5 examples
    >>> sampler = EpisodeSampler(y, EpisodeShape(n_ways=2, k_shot=1, n_query=2),
    ...                          np.random.default_rng(0))
    >>> batch = sampler.sample(3)                  # 3 tasks
    >>> batch.support_idx.shape, batch.query_idx.shape
    ((3, 2), (3, 4))
    >>> batch.support_y, batch.query_y
    (array([0, 1]), array([0, 0, 1, 1]))
    """

    def __init__(self, y, shape, rng, class_groups=None):
        y = np.asarray(y)
        self.shape = shape
        self.rng = rng
        counts = np.bincount(y)
        self.n_classes = len(counts)
        if shape.n_ways > self.n_classes or (shape.k_shot + shape.n_query) > counts.min():
            raise ValueError(f"Episode shape {shape} does not fit class sizes {counts}.")
        self.class_groups = None
        if class_groups is not None:
            class_groups = np.asarray(class_groups)
            if class_groups.shape != (self.n_classes,):
                raise ValueError(f"class_groups needs one group per class ({self.n_classes}); "
                                 f"got shape {class_groups.shape}.")
            sizes = np.bincount(class_groups)
            eligible = sizes >= shape.n_ways
            if not eligible.any():
                raise ValueError(
                    f"groups: no group has n_ways={shape.n_ways} classes (the largest has "
                    f"{sizes.max()}), and each task takes its classes from one group; lower "
                    "n_ways or pass larger groups.")
            self.class_groups = class_groups
            # Draw a group with probability proportional to its classes.
            weights = np.where(eligible, sizes, 0).astype(float)
            self._group_p = weights / weights.sum()
        # Padded matrix of the indices of each class: members[c, :counts[c]].
        order = np.argsort(y, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        cols = np.arange(counts.max())
        valid = cols[None, :] < counts[:, None]
        self._members = np.where(valid, order[np.minimum(starts[:, None] + cols, len(y) - 1)], -1)
        self._valid = valid

    def draw_classes(self, n_tasks):
        """The class codes of ``n_tasks`` tasks, ``(n_tasks, n_ways)``: random
        classes per task (of one group, with ``class_groups``) in random
        order (the order is the relabelling).
        Subclasses that draw classes differently override this method."""
        keys = self.rng.random((n_tasks, self.n_classes))
        if self.class_groups is not None:  # only the classes of one group per task
            group = self.rng.choice(len(self._group_p), size=n_tasks, p=self._group_p)
            keys[self.class_groups[None, :] != group[:, None]] = 2.0
        return np.argsort(keys, axis=1)[:, :self.shape.n_ways]

    def sample(self, n_tasks=1):
        """Draw ``n_tasks`` episodes.

        Returns
        -------
        batch : EpisodeBatch
        """
        ways, shots, queries = self.shape.n_ways, self.shape.k_shot, self.shape.n_query
        rng = self.rng
        classes = self.draw_classes(n_tasks)
        # Random examples per chosen class, without replacement.
        keys = rng.random((n_tasks, ways, self._members.shape[1]))
        keys[~self._valid[classes]] = 2.0
        pick = np.argsort(keys, axis=2)[:, :, : shots + queries]
        idx = np.take_along_axis(self._members[classes], pick, axis=2)
        support_idx = idx[:, :, :shots].reshape(n_tasks, ways * shots)
        query_idx = idx[:, :, shots:].reshape(n_tasks, ways * queries)
        labels = np.arange(ways)
        return EpisodeBatch(
            support_idx=support_idx,
            support_y=np.repeat(labels, shots),
            query_idx=query_idx,
            query_y=np.repeat(labels, queries),
            classes=classes,
        )
