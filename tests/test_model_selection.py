"""Class-disjoint splitters, few-shot scorers, adapting composed models."""

import copy
import pickle

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV, cross_val_score, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fomaml_sklearn import (
    ClassKFold,
    ClassShuffleSplit,
    FOMAMLClassifier,
    adapt,
    few_shot_scorer,
)

from conftest import make_subspace_classes

FAST = dict(max_epochs=1, meta_batches_per_epoch=10, n_eval_episodes=10, device="cpu",
            random_state=0)


@pytest.fixture(scope="module")
def data():
    return make_subspace_classes(n_classes=24, n_per_class=12, noise=1.0, random_state=0)


@pytest.mark.parametrize("splitter", [ClassKFold(3), ClassKFold(4, shuffle=True, random_state=0),
                                      ClassShuffleSplit(4, test_size=0.25, random_state=0)])
def test_splitters_are_class_disjoint(data, splitter):
    X, y = data
    splits = list(splitter.split(X, y))
    assert len(splits) == splitter.get_n_splits()
    for train, test in splits:
        assert set(y[train]).isdisjoint(y[test])
        assert len(train) + len(test) <= len(y) and len(test) > 0
    if isinstance(splitter, ClassKFold):  # every class tested exactly once
        tested = np.concatenate([np.unique(y[test]) for _, test in splits])
        np.testing.assert_array_equal(np.sort(tested), np.unique(y))


def test_splitters_need_y(data):
    X, _ = data
    with pytest.raises(ValueError, match="pass y to split"):
        next(ClassKFold(2).split(X))


def test_pipeline_adapt_equals_adapting_the_final_step_by_hand(data):
    X, y = data
    base = y < 16
    pipe = make_pipeline(StandardScaler(), PCA(10), FOMAMLClassifier(n_ways=4, **FAST))
    pipe.fit(X[base], y[base])
    support = np.concatenate([np.flatnonzero(y == c)[:2] for c in (16, 17, 18)])
    query = np.flatnonzero(np.isin(y, [16, 17, 18]))
    by_hand = copy.deepcopy(pipe)
    assert adapt(pipe, X[support], y[support]) is pipe
    Xs = by_hand[:-1].transform(X[support])
    by_hand[-1].adapt(Xs, y[support])
    expected = by_hand[-1].predict(by_hand[:-1].transform(X[query]))
    np.testing.assert_array_equal(pipe.predict(X[query]), expected)
    assert set(pipe.predict(X[query])) <= {16, 17, 18}
    nested = make_pipeline(make_pipeline(StandardScaler()), pipe[-1])
    nested.steps[0] = ("pre", by_hand[:-1])
    adapt(nested, X[support], y[support])
    np.testing.assert_array_equal(nested.predict(X[query]), expected)


def test_scorer_matches_the_estimators_own_evaluation(data):
    X, y = data
    clf = FOMAMLClassifier(n_ways=4, **FAST).fit(X[y < 16], y[y < 16])
    scorer = few_shot_scorer(n_ways=3, k_shot=2, n_query=4, n_episodes=15, random_state=3)
    own = clf.evaluate(X[y >= 16], y[y >= 16], n_ways=3, k_shot=2, n_query=4,
                       n_episodes=15, random_state=3).mean
    assert scorer(clf, X[y >= 16], y[y >= 16]) == own
    pipe = make_pipeline(StandardScaler(), clf)
    pipe.fit(X[y < 16], y[y < 16])
    assert scorer(pipe, X[y >= 16], y[y >= 16]) == pipe[-1].evaluate(
        pipe[0].transform(X[y >= 16]), y[y >= 16], n_ways=3, k_shot=2, n_query=4,
        n_episodes=15, random_state=3).mean


def test_grid_search_with_class_folds_and_two_shapes_then_adapt(data):
    X, y = data
    pipe = make_pipeline(StandardScaler(), PCA(10), FOMAMLClassifier(n_ways=4, **FAST))
    cv = ClassKFold(3)
    for train, test in cv.split(X, y):
        assert set(y[train]).isdisjoint(y[test])
    scoring = {"5w1s": few_shot_scorer(5, 1, 3, n_episodes=10),
               "5w5s": few_shot_scorer(5, 5, 3, n_episodes=10)}
    search = GridSearchCV(pipe, {"fomamlclassifier__inner_lr": [0.05, 0.4]}, cv=cv,
                          scoring=scoring, refit="5w1s").fit(X, y)
    assert {"mean_test_5w1s", "mean_test_5w5s"} <= set(search.cv_results_)
    assert np.all(np.isfinite(search.cv_results_["mean_test_5w5s"]))
    support = np.concatenate([np.flatnonzero(y == c)[:1] for c in (0, 5, 9)])
    adapt(search, X[support], y[support])
    assert set(search.predict(X[:20])) <= {0, 5, 9}
    # The whole search, scorers included, can be saved and reloaded.
    loaded = pickle.loads(pickle.dumps(search))
    np.testing.assert_array_equal(loaded.predict(X[:20]), search.predict(X[:20]))
    assert loaded.scorer_["5w1s"](loaded, X, y) == search.scorer_["5w1s"](search, X, y)


def test_cross_validate_in_a_pipeline_without_groups(data):
    X, y = data
    pipe = make_pipeline(StandardScaler(), FOMAMLClassifier(n_ways=4, **FAST))
    scores = cross_val_score(pipe, X, y, cv=ClassShuffleSplit(2, random_state=0))
    assert scores.shape == (2,)
    out = cross_validate(pipe, X, y, cv=ClassKFold(2),
                         scoring={"a": few_shot_scorer(3, 1, 2, n_episodes=5)})
    assert out["test_a"].shape == (2,)


def test_adapt_rejects_what_cannot_adapt(data):
    X, y = data
    with pytest.raises(TypeError, match="not a few-shot estimator"):
        adapt(make_pipeline(StandardScaler()), X[:4], y[:4])


def test_dataframes_and_categorical_labels(data):
    pd = pytest.importorskip("pandas")
    X, y = data
    cols = [f"f{i}" for i in range(X.shape[1])]
    frame = pd.DataFrame(X, columns=cols)
    labels = pd.Series(pd.Categorical([f"c{v}" for v in y]))
    base = y < 16
    clf = FOMAMLClassifier(n_ways=4, **FAST).fit(frame[base], labels[base])
    np.testing.assert_array_equal(clf.feature_names_in_, cols)
    support = np.concatenate([np.flatnonzero(y == c)[:2] for c in (16, 17)])
    clf.adapt(frame.iloc[support], labels.iloc[support])
    assert set(clf.predict(frame.iloc[:10])) <= {"c16", "c17"}
    with pytest.warns(UserWarning, match="feature names"):
        clf.predict(frame.iloc[:3].rename(columns={"f0": "other"}).to_numpy())
    with pytest.raises(ValueError, match="feature names"):
        clf.predict(frame.iloc[:3].rename(columns={"f0": "other"}))
