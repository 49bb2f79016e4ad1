"""Model selection for few-shot learning: class-disjoint splitters, episodic
scorers, and adapting composed models (pipelines, search results) to a task.

Folds must not share classes: a few-shot learner is judged on classes it did
not meta-train on. ``ClassKFold`` / ``ClassShuffleSplit`` split by the classes
in ``y`` and need no ``groups=`` argument, so they also work where routing
``groups`` is awkward (an estimator inside a ``Pipeline``).
"""

import numpy as np
from sklearn.model_selection import GroupKFold, GroupShuffleSplit
from sklearn.model_selection._split import BaseCrossValidator

__all__ = [
    "ClassKFold",
    "ClassShuffleSplit",
    "FewShotScorer",
    "few_shot_scorer",
    "adapt",
    "final_estimator",
]


class _ClassSplitter(BaseCrossValidator):
    """Run a group splitter with the classes of ``y`` as the groups."""

    def _group_splitter(self):
        raise NotImplementedError

    def split(self, X, y=None, groups=None):
        """Generate indices of class-disjoint train/test splits.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Class labels; each class lands wholly in train or in test.
        groups : None
            Ignored: the classes of ``y`` are the groups.

        Yields
        ------
        train, test : ndarray
            Indices of the training and test samples of each split.
        """
        if y is None:
            raise ValueError(
                f"{type(self).__name__} splits by the classes of y; pass y to split()."
            )
        y = np.asarray(y)
        n_classes = len(np.unique(y))
        if n_classes < 2:
            raise ValueError(f"{type(self).__name__} needs at least 2 classes in y; got 1.")
        yield from self._group_splitter().split(X, y, groups=y)

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of splits."""
        return self.n_splits


class ClassKFold(_ClassSplitter):
    """K-fold cross-validation with class-disjoint folds.

    Every class of ``y`` is in exactly one test fold; train and test never
    share a class. Equivalent to ``GroupKFold`` with ``groups=y``.

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds (at most the number of classes).
    shuffle : bool, default=False
        Shuffle the classes before assigning them to folds.
    random_state : int, RandomState instance or None, default=None
        Seed of the shuffle.

    See Also
    --------
    ClassShuffleSplit : Random class-disjoint splits.

    Examples
    --------
    >>> import numpy as np
    >>> from fomaml_sklearn import ClassKFold
    >>> X, y = np.zeros((8, 1)), np.array([0, 0, 1, 1, 2, 2, 3, 3])
    >>> for train, test in ClassKFold(2).split(X, y):
    ...     print(np.unique(y[test]).size, np.intersect1d(y[train], y[test]).size)
    2 0
    2 0
    """

    def __init__(self, n_splits=5, *, shuffle=False, random_state=None):
        self.n_splits = n_splits
        self.shuffle = shuffle
        self.random_state = random_state

    def _group_splitter(self):
        return GroupKFold(self.n_splits, shuffle=self.shuffle, random_state=self.random_state)


class ClassShuffleSplit(_ClassSplitter):
    """Random class-disjoint train/test splits.

    Parameters
    ----------
    n_splits : int, default=5
        Number of re-shuffling and splitting iterations.
    test_size : float or int, default=0.2
        Fraction (float) or number (int) of classes in the test set.
    train_size : float, int or None, default=None
        Fraction or number of classes in the training set; None: the rest.
    random_state : int, RandomState instance or None, default=None
        Seed.

    See Also
    --------
    ClassKFold : K-fold cross-validation with class-disjoint folds.

    Examples
    --------
    >>> import numpy as np
    >>> from fomaml_sklearn import ClassShuffleSplit
    >>> X, y = np.zeros((8, 1)), np.array([0, 0, 1, 1, 2, 2, 3, 3])
    >>> cv = ClassShuffleSplit(3, test_size=0.25, random_state=0)
    >>> for train, test in cv.split(X, y):
    ...     print(np.unique(y[test]).size, np.intersect1d(y[train], y[test]).size)
    1 0
    1 0
    1 0
    """

    def __init__(self, n_splits=5, *, test_size=0.2, train_size=None, random_state=None):
        self.n_splits = n_splits
        self.test_size = test_size
        self.train_size = train_size
        self.random_state = random_state

    def _group_splitter(self):
        return GroupShuffleSplit(self.n_splits, test_size=self.test_size,
                                 train_size=self.train_size, random_state=self.random_state)


def final_estimator(model, X=None):
    """The few-shot estimator inside ``model`` and ``X`` transformed up to it.

    ``model`` may be the estimator itself, a fitted ``Pipeline`` (nested too)
    whose last step is one, or a fitted search object (``best_estimator_``).

    Parameters
    ----------
    model : estimator, Pipeline or fitted search object
        The composed model.
    X : array-like or None
        Data to pass through the preprocessing steps before the final one.

    Returns
    -------
    estimator : estimator with ``adapt`` and ``evaluate``
        The final estimator.
    Xt : array-like or None
        ``X`` after the fitted transformations (None if ``X`` is None).
    """
    if hasattr(model, "best_estimator_"):
        return final_estimator(model.best_estimator_, X)
    if hasattr(model, "steps"):
        for _, step in model.steps[:-1]:
            if step is not None and step != "passthrough" and X is not None:
                X = step.transform(X)
        return final_estimator(model.steps[-1][1], X)
    if not hasattr(model, "adapt"):
        raise TypeError(
            f"{type(model).__name__} is not a few-shot estimator (it has no adapt "
            "method), nor a Pipeline or search object ending in one."
        )
    return model, X


def adapt(model, X_support, y_support):
    """Adapt a composed model to a new task, preprocessing included.

    The support set goes through the model's fitted preprocessing (pipeline
    steps before the last) and then into the final estimator's ``adapt``.
    Afterwards ``model.predict(X_query)`` returns labels among the support
    classes.

    Parameters
    ----------
    model : FOMAMLClassifier, Pipeline ending in one, or fitted search object
        The meta-trained model.
    X_support : array-like of shape (n_support, n_features)
        The new task's labelled examples, in the model's input space.
    y_support : array-like of shape (n_support,)
        Their labels.

    Returns
    -------
    model : the same object, adapted

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from fomaml_sklearn import FOMAMLClassifier, adapt
    >>> X, y = load_digits(return_X_y=True)
    >>> pipe = make_pipeline(StandardScaler(), FOMAMLClassifier(
    ...     max_epochs=1, meta_batches_per_epoch=5, random_state=0))
    >>> pipe = pipe.fit(X[y < 6], y[y < 6])
    >>> support = [list(y).index(c) for c in (6, 7, 8)]   # one example per new class
    >>> pipe = adapt(pipe, X[support], y[support])        # scaled, then adapted
    >>> pipe[-1].classes_
    array([6, 7, 8])
    >>> set(pipe.predict(X[y >= 6]).tolist()) <= {6, 7, 8}
    True
    """
    estimator, Xt = final_estimator(model, X_support)
    estimator.adapt(Xt, y_support)
    return model


def few_shot_scorer(n_ways=5, k_shot=1, n_query=15, n_episodes=100, random_state=0):
    """A scorer for ``scoring=``: mean episodic accuracy of a given shape.

    It scores any few-shot estimator, ``Pipeline`` ending in one, or search
    object on ``n_episodes`` episodes of ``(X, y)`` (fewer ways or shots where
    the data is smaller), whatever shape the estimator meta-trained with.
    Reproducible: the episodes depend only on ``(y, shape, random_state)``.

    Parameters
    ----------
    n_ways, k_shot, n_query : int
        Episode shape.
    n_episodes : int, default=100
        Number of episodes.
    random_state : int, default=0
        Seed of the episodes.

    Returns
    -------
    scorer : FewShotScorer
        ``scorer(estimator, X, y) -> float``; picklable, so search objects
        that use it can be saved.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.model_selection import cross_val_score
    >>> from fomaml_sklearn import ClassKFold, FOMAMLClassifier, few_shot_scorer
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = FOMAMLClassifier(max_epochs=1, meta_batches_per_epoch=5, random_state=0)
    >>> scores = cross_val_score(clf, X, y, cv=ClassKFold(2),
    ...                          scoring=few_shot_scorer(3, 1, n_episodes=10))
    >>> scores.shape
    (2,)
    """

    return FewShotScorer(n_ways, k_shot, n_query, n_episodes, random_state)


class FewShotScorer:
    """Mean episodic accuracy of one episode shape; see :func:`few_shot_scorer`.

    A module-level class (not a closure) so that it pickles with the search
    objects that hold it.

    Parameters
    ----------
    n_ways, k_shot, n_query : int
        Episode shape.
    n_episodes : int
        Number of episodes.
    random_state : int
        Seed of the episodes.
    """

    def __init__(self, n_ways, k_shot, n_query, n_episodes, random_state):
        self.n_ways, self.k_shot, self.n_query = n_ways, k_shot, n_query
        self.n_episodes, self.random_state = n_episodes, random_state
        self.__name__ = f"few_shot_{n_ways}w{k_shot}s"

    def __call__(self, estimator, X, y):
        final, Xt = final_estimator(estimator, X)
        result = final.evaluate(Xt, y, n_ways=self.n_ways, k_shot=self.k_shot,
                                n_query=self.n_query, n_episodes=self.n_episodes,
                                random_state=self.random_state)
        return result.mean

    def __repr__(self):
        return (f"few_shot_scorer(n_ways={self.n_ways}, k_shot={self.k_shot}, "
                f"n_query={self.n_query}, n_episodes={self.n_episodes}, "
                f"random_state={self.random_state})")
