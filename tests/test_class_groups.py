"""fit(X, y, groups) of the classifier: each meta-training task takes its
classes from one group (harder tasks, issue #27's within-alphabet lever)."""

import warnings

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback

from fomaml_sklearn import FOMAMLClassifier
from fomaml_sklearn.episodes import EpisodeSampler, EpisodeShape


def test_sampler_draws_each_task_from_one_eligible_group():
    y = np.repeat(np.arange(12), 3)
    groups = np.array([0] * 5 + [1] * 4 + [2] * 3)  # group 2 is smaller than n_ways
    sampler = EpisodeSampler(y, EpisodeShape(4, 1, 1), np.random.default_rng(0), groups)
    classes = sampler.draw_classes(2000)
    assert all(len(set(groups[row])) == 1 for row in classes)
    assert all(len(set(row)) == 4 for row in classes)
    drawn = np.bincount(groups[classes[:, 0]], minlength=3)
    assert drawn[2] == 0
    # In proportion to the groups' classes: 5/9 and 4/9.
    assert abs(drawn[0] / 2000 - 5 / 9) < 0.04
    # Without groups, tasks mix the groups.
    plain = EpisodeSampler(y, EpisodeShape(4, 1, 1), np.random.default_rng(0))
    assert any(len(set(groups[row])) > 1 for row in plain.draw_classes(50))


def test_sampler_refuses_groups_that_cannot_hold_a_task():
    y = np.repeat(np.arange(6), 3)
    with pytest.raises(ValueError, match=r"no group has n_ways=4 classes \(the largest "
                                         r"has 3\).*lower n_ways or pass larger groups"):
        EpisodeSampler(y, EpisodeShape(4, 1, 1), np.random.default_rng(0),
                       np.array([0, 0, 0, 1, 1, 1]))
    with pytest.raises(ValueError, match=r"one group per class \(6\)"):
        EpisodeSampler(y, EpisodeShape(2, 1, 1), np.random.default_rng(0), np.zeros(5, int))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.random((240, 64), dtype=np.float32)
    y = np.repeat(np.arange(40), 6)
    return X, y, np.where(y < 20, "left", "right")


FAST = dict(hidden_layer_sizes=(16,), n_ways=4, k_shot=1, n_query=2, meta_batch_size=3,
            meta_batches_per_epoch=4, max_epochs=1, device="cpu", adapt_on_fit=False,
            random_state=0, verbose=0)


def test_fit_with_groups_draws_tasks_inside_groups(data, monkeypatch):
    X, y, groups = data
    seen = []
    original = EpisodeSampler.draw_classes

    def spy(self, n_tasks):
        classes = original(self, n_tasks)
        seen.append((self.class_groups, classes))
        return classes

    monkeypatch.setattr(EpisodeSampler, "draw_classes", spy)
    clf = FOMAMLClassifier(**FAST).fit(X, y, groups)
    assert seen and all(cg is not None and all(len(set(cg[row])) == 1 for row in classes)
                        for cg, classes in seen)
    # Nothing of the groups stays in the fitted estimator.
    assert clf.net_.iterator_train__class_groups is None
    # A warm-started fit without groups draws from all classes again.
    seen.clear()
    clf.set_params(warm_start=True).fit(X, y)
    assert seen and all(cg is None for cg, _ in seen)


def test_groups_change_the_tasks_and_are_reproducible(data):
    X, y, groups = data
    a = FOMAMLClassifier(**FAST).fit(X, y, groups)
    b = FOMAMLClassifier(**FAST).fit(X, y, groups=groups)
    c = FOMAMLClassifier(**FAST).fit(X, y)
    pa, pb, pc = (list(m.meta_model_.parameters()) for m in (a, b, c))
    assert all(torch.equal(u, v) for u, v in zip(pa, pb))
    assert not all(torch.equal(u, v) for u, v in zip(pa, pc))


def test_bad_groups_are_clear_errors_and_change_nothing(data):
    X, y, groups = data
    clf = FOMAMLClassifier(**FAST).fit(X, y)
    before = [p.clone() for p in clf.meta_model_.parameters()]
    mixed = groups.copy()
    mixed[1] = "right"  # class 0 now in both groups
    with pytest.raises(ValueError, match=r"groups puts class 0 in 2 groups \('left', "
                                         r"'right'\); each class must lie in one group"):
        clf.fit(X, y, mixed)
    with pytest.raises(ValueError, match=r"groups must be 1-D with one group label per "
                                         r"sample \(240\); got shape \(239,\)"):
        clf.fit(X, y, groups[1:])
    with pytest.raises(ValueError, match=r"groups has 1 missing group label"):
        clf.fit(X, y, np.where(np.arange(240) == 7, np.nan, (y < 20).astype(float)))
    with pytest.raises(ValueError, match=r"no group has n_ways=4 classes"):
        clf.fit(X, y, y // 3 * 3 // 3)  # groups of 1 class
    assert all(torch.equal(u, v) for u, v in zip(before, clf.meta_model_.parameters()))


def test_fit_warns_when_small_groups_leave_classes_out_of_every_task(data):
    X, y, groups = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # groups of 20 classes: every class is drawn
        FOMAMLClassifier(**FAST).fit(X, y, groups)
    uneven = np.where(y < 3, "tiny", np.where(y < 5, "pair", groups))  # 3 and 2 classes
    with pytest.warns(UserWarning, match=r"groups: 2 of 4 groups hold fewer than n_ways=4 "
                                         r"of the meta-training classes, so their 5 classes "
                                         r"\(of 40\) are in no meta-training task"):
        FOMAMLClassifier(**FAST).fit(X, y, uneven)


def test_groups_still_learn_on_an_omniglot_slice(omniglot_slice):
    """The within-alphabet lever (docs/performance.md) as an estimator
    option: tasks from groups of 10 consecutive characters still learn."""
    X, y = omniglot_slice
    train = y < 60

    def make():
        return FOMAMLClassifier("conv4", n_filters=32, n_ways=5, k_shot=1, n_query=5,
                                meta_batch_size=4, max_epochs=5, meta_batches_per_epoch=50,
                                device="cpu", adapt_on_fit=False, random_state=0)

    meta = make().fit(X[train], y[train], groups=y[train] // 10)
    scratch = make().set_params(max_epochs=0).fit(X[train], y[train])
    shape = dict(n_ways=5, k_shot=1, n_query=5, n_episodes=200, random_state=0)
    learned = meta.evaluate(X[~train], y[~train], **shape).mean
    random_init = scratch.evaluate(X[~train], y[~train], **shape).mean
    assert learned > random_init + 0.15, (learned, random_init)


def test_metadata_routing_gives_groups_to_the_splitter_unless_fit_asks(data):
    from sklearn import config_context
    from sklearn.model_selection import GridSearchCV, GroupKFold

    X, y, _ = data
    with config_context(enable_metadata_routing=True):
        # The documented class-disjoint search: groups=y splits the classes
        # and does not reach fit (one class per group could not hold a task).
        search = GridSearchCV(FOMAMLClassifier(**FAST), {"inner_lr": [0.1]},
                              cv=GroupKFold(2)).fit(X, y, groups=y)
        assert np.isfinite(search.best_score_)
        # Asked for, families of classes reach fit too.
        families = y // 10
        clf = FOMAMLClassifier(**FAST).set_fit_request(groups=True)
        search = GridSearchCV(clf, {"inner_lr": [0.1]}, cv=GroupKFold(2)).fit(
            X, y, groups=families)
        assert np.isfinite(search.best_score_)
        with pytest.raises(ValueError, match="no group has n_ways=4 classes"):
            GridSearchCV(clf, {"inner_lr": [0.1]}, cv=GroupKFold(2), error_score="raise"
                         ).fit(X, y, groups=y)


def test_a_class_in_two_groups_is_named_whatever_the_label_type(data):
    X, y, groups = data
    labels = np.array([f"c{v}" for v in y], dtype=object)
    mixed = groups.copy()
    mixed[1] = "right"
    with pytest.raises(ValueError, match=r"groups puts class 'c0' in 2 groups"):
        FOMAMLClassifier(**FAST).fit(X, labels, mixed)


class _ValidationSpy(Callback):
    """Records the validation classes (the first feature of each row holds
    its class here) and the validation sampler's groups and ways."""

    def __init__(self):
        self.classes, self.groups, self.n_ways = None, None, None

    def on_epoch_end(self, net, dataset_valid=None, **kwargs):
        self.classes = np.unique(dataset_valid.X[:, 0].cpu().numpy()).astype(int)
        sampler = net.get_iterator(dataset_valid, training=False).sampler
        self.groups, self.n_ways = sampler.class_groups, sampler.shape.n_ways


def _spy_of(clf):
    """The spy the fit used (fit works on a copy of the callbacks)."""
    return next(cb for _, cb in clf.net_.callbacks_ if isinstance(cb, _ValidationSpy))


def _class_rows(data):
    X, y, _ = data
    X = X.copy()
    X[:, 0] = y  # each row names its class
    return X, y


def test_validation_fraction_with_groups_holds_out_whole_groups(data):
    X, y = _class_rows(data)
    groups = y // 5  # 8 groups of 5 classes
    clf = FOMAMLClassifier(**{**FAST, "validation_fraction": 0.25},
                           callbacks=[_ValidationSpy()])
    spy = _spy_of(clf.fit(X, y, groups))
    held = set(spy.classes.tolist())
    held_groups = {c // 5 for c in held}
    assert len(held_groups) == 2  # 0.25 of 8 groups
    assert held == {c for c in range(40) if c // 5 in held_groups}  # whole groups
    # Validation tasks take their classes from one held-out group.
    np.testing.assert_array_equal(spy.groups, np.repeat([0, 1], 5))
    assert np.isfinite(clf.history_[-1, "valid_acc"])
    # Without groups, classes are held out one by one.
    spy = _spy_of(FOMAMLClassifier(**{**FAST, "validation_fraction": 0.25},
                                   callbacks=[_ValidationSpy()]).fit(X, y))
    assert spy.groups is None and len(spy.classes) == 10
    assert len({c // 5 for c in spy.classes}) > 2


def test_validation_tasks_shrink_to_the_largest_held_out_group(data):
    X, y = _class_rows(data)
    # 5 groups of 4 classes and 4 of 5; n_ways=5 fits the groups of 5 only.
    groups = np.where(y < 20, y // 4, 5 + (y - 20) // 5)
    shrunk = 0
    for seed in range(6):
        clf = FOMAMLClassifier(**{**FAST, "n_ways": 5, "validation_fraction": 0.1,
                                  "random_state": seed}, callbacks=[_ValidationSpy()])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            spy = _spy_of(clf.fit(X, y, groups))
        said = [str(w.message) for w in caught if "held out for validation" in str(w.message)]
        if spy.n_ways == 5:  # a group of 5 classes held out: no shrinking
            assert len(spy.classes) == 5 and not said
            continue
        assert spy.n_ways == 4 and len(spy.classes) == 4
        assert len(said) == 1 and "n_ways=5 shrunk to 4: the largest group held out for " \
            "validation has 4 classes" in said[0]
        shrunk += 1
    assert 0 < shrunk < 6


def test_validation_fraction_with_groups_names_what_cannot_be_held_out(data):
    X, y, _ = data
    clf = FOMAMLClassifier(**{**FAST, "validation_fraction": 0.9})
    with pytest.raises(ValueError, match=r"validation_fraction=0.9 with groups holds out "
                                         r"whole groups: all 2 groups, leaving none"):
        clf.fit(X, y, y // 20)
    with pytest.raises(ValueError, match=r"1 of the 40 groups, with 1 class; validation "
                                         r"episodes need at least 2 classes"):
        FOMAMLClassifier(**{**FAST, "validation_fraction": 0.01}).fit(X, y, y)
