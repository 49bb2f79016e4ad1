"""FOMAMLClassifier: the scikit-learn contract, adaptation, errors, persistence."""

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch.callbacks import Callback

from fomaml_sklearn import FewShotResult, FOMAMLClassifier
from fomaml_sklearn.algorithms import FOMAML

FAST = dict(max_epochs=2, meta_batches_per_epoch=10, n_eval_episodes=10, device="cpu")


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def fitted(digits):
    X, y = digits
    base = y < 6
    return FOMAMLClassifier(n_ways=3, k_shot=1, n_query=5, random_state=0, **FAST).fit(
        X[base], y[base]
    )


def _support(X, y, classes, shots=1):
    idx = np.concatenate([np.flatnonzero(y == c)[:shots] for c in classes])
    return X[idx], y[idx]


def _state(est):
    return {k: v.clone() for k, v in est.meta_model_.state_dict().items()}


def test_issue_example_runs_end_to_end(digits):
    X, y = digits
    base, novel = y < 6, y >= 6
    clf = FOMAMLClassifier(module="mlp", n_ways=3, k_shot=1, n_query=10, random_state=0, **FAST)
    assert clf.fit(X[base], y[base]) is clf
    score = clf.score(X[novel], y[novel])
    assert 0.0 <= score <= 1.0
    Xs, ys = _support(X, y, [6, 7, 8, 9])
    assert clf.adapt(Xs, ys) is clf
    pred = clf.predict(X[novel][:50])
    proba = clf.predict_proba(X[novel][:50])
    assert set(pred) <= {6, 7, 8, 9}
    assert proba.shape == (50, 4)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(1)], pred)

    search = GridSearchCV(
        clf, {"inner_lr": [0.1, 0.4], "n_inner_steps": [1, 3]}, cv=GroupKFold(3)
    ).fit(X, y, groups=y)
    assert set(search.cv_results_["params"][0]) == {"inner_lr", "n_inner_steps"}
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))
    scores = cross_val_score(
        make_pipeline(StandardScaler(), clf), X, y, cv=GroupKFold(3), groups=y
    )
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))


def test_fit_sets_fitted_attributes_and_classes(fitted, digits):
    X, y = digits
    np.testing.assert_array_equal(fitted.classes_, np.arange(6))
    assert fitted.n_features_in_ == 64
    assert fitted.episode_shape_.n_ways == 3
    assert len(fitted.history_) == FAST["max_epochs"]
    assert {"train_loss", "train_query_acc", "dur"} <= set(fitted.history_[-1])
    assert set(fitted.predict(X[:30])) <= set(range(6))


def test_string_labels_and_4d_images(digits):
    X, y = digits
    names = np.array(["zero", "one", "two", "three", "four", "five"])
    keep = y < 6
    images = X[keep].reshape(-1, 1, 8, 8)
    clf = FOMAMLClassifier("conv4", n_filters=8, n_ways=3, random_state=0, **FAST)
    clf.fit(images, names[y[keep]])
    assert clf.input_shape_ == (1, 8, 8)
    assert set(clf.predict(images[:20])) <= set(names)
    np.testing.assert_array_equal(clf.classes_, np.sort(names))
    # Rows work as well as images once fitted (what pipelines pass).
    np.testing.assert_array_equal(clf.predict(images[:20]), clf.predict(X[keep][:20]))


def test_adapt_replaces_task_and_keeps_meta_parameters(fitted, digits):
    X, y = digits
    clf = copy.deepcopy(fitted)
    before = _state(clf)
    Xs, ys = _support(X, y, [7, 9])
    clf.adapt(Xs, ys)
    np.testing.assert_array_equal(clf.classes_, [7, 9])
    assert set(clf.predict(X[:40])) <= {7, 9}
    Xs, ys = _support(X, y, [6, 7, 8, 9, 0], shots=2)
    clf.adapt(Xs, ys)
    np.testing.assert_array_equal(clf.classes_, [0, 6, 7, 8, 9])
    assert clf.predict_proba(X[:5]).shape == (5, 5)
    for k, v in _state(clf).items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_adapt_learns_the_support_set(fitted, digits):
    X, y = digits
    clf = copy.deepcopy(fitted)
    Xs, ys = _support(X, y, [6, 7, 8, 9], shots=3)
    clf.adapt(Xs, ys)
    assert np.mean(clf.predict(Xs) == ys) >= 0.9


def test_predict_does_not_change_state_and_is_per_sample(digits):
    X, y = digits
    keep = y < 6
    clf = FOMAMLClassifier("conv4", n_filters=8, n_ways=3, random_state=0, **FAST)
    clf.fit(X[keep], y[keep])
    before = copy.deepcopy(clf.task_model_.state_dict())
    full = clf.predict_proba(X[:40])
    singles = np.vstack([clf.predict_proba(X[i:i + 1]) for i in range(40)])
    np.testing.assert_allclose(singles, full, rtol=1e-9, atol=1e-12)
    for k, v in clf.task_model_.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_transductive_uses_query_batch_statistics(digits):
    X, y = digits
    keep = y < 6
    clf = FOMAMLClassifier("conv4", n_filters=8, n_ways=3, random_state=0,
                           transductive=True, **FAST).fit(X[keep], y[keep])
    full = clf.predict_proba(X[:40])
    half = clf.predict_proba(X[:20])
    assert not np.allclose(full[:20], half)


def test_reproducible_and_global_rng_untouched(digits):
    X, y = digits
    keep = y < 6
    torch.manual_seed(123)
    np.random.seed(123)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    a = FOMAMLClassifier(n_ways=3, random_state=7, **FAST).fit(X[keep], y[keep])
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    b = FOMAMLClassifier(n_ways=3, random_state=7, **FAST).fit(X[keep], y[keep])
    c = FOMAMLClassifier(n_ways=3, random_state=8, **FAST).fit(X[keep], y[keep])
    for k, v in _state(a).items():
        torch.testing.assert_close(v, _state(b)[k], rtol=0, atol=0)
    assert any(not torch.equal(v, _state(c)[k]) for k, v in _state(a).items())
    assert a.score(X[~keep], y[~keep]) == b.score(X[~keep], y[~keep])
    np.testing.assert_array_equal(a.history_[:, "train_loss"], b.history_[:, "train_loss"])


def test_user_module_instance_is_copied_and_class_gets_params(digits):
    X, y = digits
    keep = y < 4
    body = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU())
    before = copy.deepcopy(body.state_dict())
    clf = FOMAMLClassifier(body, n_ways=2, random_state=0, **FAST).fit(X[keep], y[keep])
    for k, v in body.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert clf.meta_model_.feature_dim == 16
    clf = FOMAMLClassifier(torch.nn.Linear, module_params={"in_features": 64, "out_features": 5},
                           n_ways=2, random_state=0, **FAST).fit(X[keep], y[keep])
    assert clf.meta_model_.feature_dim == 5


def test_clone_get_set_params(fitted):
    params = fitted.get_params()
    assert params["hidden_layer_sizes"] == (64, 64) and params["n_ways"] == 3
    twin = clone(fitted)
    assert not hasattr(twin, "meta_model_")
    twin.set_params(hidden_layer_sizes=(32,), inner_lr=0.1)
    assert twin.get_params()["hidden_layer_sizes"] == (32,)
    assert fitted.hidden_layer_sizes == (64, 64)


@pytest.mark.parametrize("adapted", [False, True])
def test_pickle_round_trip(fitted, digits, adapted):
    X, y = digits
    clf = copy.deepcopy(fitted)
    if adapted:
        clf.adapt(*_support(X, y, [6, 8, 9]))
    loaded = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(loaded.predict_proba(X[:50]), clf.predict_proba(X[:50]))
    np.testing.assert_array_equal(loaded.classes_, clf.classes_)
    assert loaded.score(X[y >= 6], y[y >= 6]) == clf.score(X[y >= 6], y[y >= 6])
    loaded.adapt(*_support(X, y, [1, 2]))  # still adaptable


def test_evaluate_returns_mean_ci_and_per_episode(fitted, digits):
    X, y = digits
    novel = y >= 6
    result = fitted.evaluate(X[novel], y[novel], n_episodes=30)
    assert isinstance(result, FewShotResult)
    assert result.accuracies.shape == (30,)
    assert result.mean == pytest.approx(result.accuracies.mean())
    sem = result.accuracies.std(ddof=1) / np.sqrt(30)
    assert result.ci95 == pytest.approx(1.96 * sem)
    assert fitted.score(X[novel], y[novel]) == fitted.evaluate(X[novel], y[novel]).mean
    other = fitted.evaluate(X[novel], y[novel], n_episodes=30, random_state=5)
    assert not np.array_equal(other.accuracies, result.accuracies)
    five = fitted.evaluate(X[novel], y[novel], n_ways=4, k_shot=2, n_query=3, n_episodes=5)
    assert (five.shape.n_ways, five.shape.k_shot, five.shape.n_query) == (4, 2, 3)


def test_small_data_shrinks_episodes_with_one_warning(digits):
    X, y = digits
    idx = np.concatenate([np.flatnonzero(y == c)[:4] for c in range(3)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = FOMAMLClassifier(n_ways=5, k_shot=2, n_query=15, random_state=0, **FAST)
        clf.fit(X[idx], y[idx])
    messages = [str(w.message) for w in caught if "smaller episodes" in str(w.message)]
    assert len(messages) == 1
    assert "n_ways=3, k_shot=2, n_query=2" in messages[0]
    assert (clf.episode_shape_.n_ways, clf.episode_shape_.n_query) == (3, 2)


def test_adapt_on_fit_false_asks_for_adapt(digits):
    X, y = digits
    clf = FOMAMLClassifier(n_ways=3, random_state=0, adapt_on_fit=False, **FAST)
    clf.fit(X[y < 6], y[y < 6])
    with pytest.raises(NotFittedError, match=r"adapt\(X_support, y_support\)"):
        clf.predict(X[:3])
    clf.adapt(*_support(X, y, [6, 7]))
    assert set(clf.predict(X[:10])) <= {6, 7}


class _CountEpochs(Callback):
    def initialize(self):
        self.epochs_ = 0
        return self

    def on_epoch_end(self, net, **kwargs):
        self.epochs_ += 1


def test_skorch_callbacks_are_used_but_not_modified(digits, capsys):
    X, y = digits
    counter = _CountEpochs()
    clf = FOMAMLClassifier(n_ways=3, random_state=0, callbacks=[("count", counter)],
                           verbose=1, **FAST).fit(X[y < 6], y[y < 6])
    assert not hasattr(counter, "epochs_")
    assert dict(clf.net_.callbacks_)["count"].epochs_ == FAST["max_epochs"]
    out = capsys.readouterr().out
    assert "train_loss" in out and "train_query_acc" in out


# --------------------------------------------------------------------- errors
def _assert_unchanged(clf, X, before_proba, before_classes):
    np.testing.assert_array_equal(clf.predict_proba(X[:20]), before_proba)
    np.testing.assert_array_equal(clf.classes_, before_classes)


@pytest.mark.parametrize(
    "make_bad, match",
    [
        (lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X), y), "NaN"),
        (lambda X, y: (np.where(np.arange(X.size).reshape(X.shape) == 5, np.inf, X), y),
         "infinity"),
        (lambda X, y: (X, y[:-1]), "inconsistent numbers of samples"),
        (lambda X, y: (X[:, :10], y), "10 features, but FOMAMLClassifier is expecting 64"),
        (lambda X, y: (X, np.full(len(y), 3)), "at least 2 classes"),
    ],
)
def test_bad_support_set_is_rejected_and_state_kept(fitted, digits, make_bad, match):
    X, y = digits
    clf = copy.deepcopy(fitted)
    proba, classes = clf.predict_proba(X[:20]), clf.classes_.copy()
    Xs, ys = _support(X, y, [6, 7, 8], shots=2)
    bad_X, bad_y = make_bad(Xs, ys)
    with pytest.raises(ValueError, match=match):
        clf.adapt(bad_X, bad_y)
    _assert_unchanged(clf, X, proba, classes)


def test_predict_rejects_bad_input(fitted, digits):
    X, _ = digits
    with pytest.raises(ValueError, match="expecting 64 features"):
        fitted.predict(X[:5, :20])
    bad = X[:5].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fitted.predict_proba(bad)


def test_fit_errors_name_the_problem(fitted, digits):
    X, y = digits
    clf = copy.deepcopy(fitted)
    proba, classes = clf.predict_proba(X[:20]), clf.classes_.copy()
    with pytest.raises(ValueError, match="at least 2 classes"):
        clf.fit(X[y == 1], y[y == 1])
    lonely = np.concatenate(
        [np.flatnonzero(y == 1), np.flatnonzero(y == 2), [np.flatnonzero(y == 7)[0]]]
    )
    with pytest.raises(ValueError, match=r"class 7 has only 1 example"):
        clf.fit(X[lonely], y[lonely])
    with pytest.raises(ValueError, match="n_ways must be an integer >= 2; got 1"):
        clone(clf).set_params(n_ways=1).fit(X, y)
    with pytest.raises(ValueError,
                       match="head must be one of 'prototype', 'cosine', 'shared', 'fixed'"):
        clone(clf).set_params(head="wide").fit(X, y)
    with pytest.raises(ValueError, match="prototype_gradient='yes' is not supported by FOMAML"):
        clone(clf).set_params(algorithm=FOMAML(prototype_gradient="yes")).fit(X, y)
    with pytest.raises(ValueError, match="algorithm='mamal' is not supported.*'maml'"):
        clone(clf).set_params(algorithm="mamal").fit(X, y)
    with pytest.raises(ValueError, match="optimizer='adamm' is not known"):
        clone(clf).set_params(optimizer="adamm").fit(X, y)
    with pytest.raises(ValueError, match="module='resnet' is not a known backbone"):
        clone(clf).set_params(module="resnet").fit(X, y)
    with pytest.raises(ValueError, match="input_shape"):
        clone(clf).set_params(module="conv4").fit(X[:, :60], y)
    _assert_unchanged(clf, X, proba, classes)


def test_prototype_gradient_auto_follows_the_backbone(digits):
    X, y = digits
    params = dict(n_ways=3, n_query=2, max_epochs=1, meta_batches_per_epoch=2,
                  device="cpu", adapt_on_fit=False, random_state=0)
    mlp = FOMAMLClassifier(**params).fit(X, y)
    conv = FOMAMLClassifier("conv4", n_filters=4, **params).fit(X, y)
    # An MLP without BatchNorm: nothing normalises flat features.
    plain = torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.ReLU())
    no_norm = FOMAMLClassifier(plain, **params).fit(X, y)
    resolved = [c.algorithm_.prototype_gradient for c in (mlp, conv, no_norm)]
    assert resolved == [False, True, True]
    assert mlp.algorithm == "fomaml"  # the parameter itself is not changed
    forced = FOMAMLClassifier(algorithm=FOMAML(prototype_gradient=True), **params).fit(X, y)
    assert forced.algorithm_.prototype_gradient is True
    assert forced.algorithm.prototype_gradient is True
    # The switch changes the meta-gradient, hence the meta-parameters.
    assert any(not torch.allclose(a, b) for a, b in
               zip(mlp.meta_model_.parameters(), forced.meta_model_.parameters()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_a_clear_error(digits):
    X, y = digits
    with pytest.raises(ValueError, match="CUDA is not available.*device='cpu'"):
        FOMAMLClassifier(device="cuda", max_epochs=1).fit(X, y)


def test_unfitted_adapt_and_evaluate_say_fit_first(digits):
    X, y = digits
    with pytest.raises(NotFittedError, match=r"call fit\(X, y\)"):
        FOMAMLClassifier().adapt(X[:4], y[:4])
    with pytest.raises(NotFittedError, match=r"call fit\(X, y\)"):
        FOMAMLClassifier().evaluate(X[:4], y[:4])


def test_test_time_steps_set_after_fit_apply_to_adapt_and_evaluate(digits):
    """``n_inner_steps_test`` is a test-time setting: changing it after fit
    changes adaptation (0 steps: the task network is the initial head on the
    meta-learned body), while the meta-parameters stay as fitted."""
    X, y = digits
    clf = FOMAMLClassifier(head="shared", random_state=0, **FAST).fit(X[y < 6], y[y < 6])
    support = np.concatenate([np.flatnonzero(y == c)[:3] for c in (6, 7, 8)])
    probas = {}
    for steps in (0, 3):
        clf.set_params(n_inner_steps_test=steps)
        probas[steps] = clf.adapt(X[support], y[support]).predict_proba(X[y >= 6][:20])
        scores = clf.evaluate(X[y >= 6], y[y >= 6], n_episodes=10).accuracies
        probas[steps, "eval"] = scores
    # A zero-initialised shared head predicts uniformly before any step.
    np.testing.assert_allclose(probas[0], 1 / 3)
    assert not np.allclose(probas[3], 1 / 3)
    # ... and in evaluate's 4-way episodes, argmax takes the first class: 1/4.
    np.testing.assert_allclose(probas[0, "eval"], 1 / 4)
    assert probas[3, "eval"].mean() > probas[0, "eval"].mean()
    with pytest.raises(ValueError, match="n_inner_steps_test"):
        clf.set_params(n_inner_steps_test=-1).adapt(X[support], y[support])


def test_cosine_lr_schedule_anneals_the_meta_learning_rate_to_zero(digits):
    X, y = digits
    params = dict(FAST, random_state=0, lr=0.01)
    constant = FOMAMLClassifier(**params).fit(X[y < 6], y[y < 6])
    cosine = FOMAMLClassifier(lr_schedule="cosine", **params).fit(X[y < 6], y[y < 6])
    assert constant.net_.optimizer_.param_groups[0]["lr"] == 0.01
    assert cosine.net_.optimizer_.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    lrs = [b["event_lr"] for epoch in cosine.history_ for b in epoch["batches"]]
    assert len(lrs) == 20 and lrs[0] == 0.01 and all(np.diff(lrs) < 0)
    np.testing.assert_allclose(lrs[10], 0.005 * (1 + np.cos(np.pi * 10 / 20)))
    with pytest.raises(ValueError, match="lr_schedule"):
        FOMAMLClassifier(lr_schedule="linear", **FAST).fit(X[y < 6], y[y < 6])


def _random_data(*shape):
    """60 random samples of ``shape`` (float32), 10 of each of 6 classes."""
    rng = np.random.default_rng(0)
    return rng.random((60, *shape)).astype(np.float32), np.repeat(np.arange(6), 10)


def test_augment_shift_trains_on_shifted_images_reproducibly():
    X, y = _random_data(1, 8, 8)
    params = {**FAST, **dict(n_filters=4, n_ways=3, n_query=2, max_epochs=1,
                             meta_batches_per_epoch=3, random_state=0)}
    a = FOMAMLClassifier("conv4", augment_shift=2, **params).fit(X, y)
    b = FOMAMLClassifier("conv4", augment_shift=2, **params).fit(X, y)
    plain = FOMAMLClassifier("conv4", **params).fit(X, y)
    for (name, pa), pb, pp in zip(a.meta_model_.named_parameters(),
                                  b.meta_model_.parameters(), plain.meta_model_.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)
    assert any(not torch.equal(pa, pp) for pa, pp in
               zip(a.meta_model_.parameters(), plain.meta_model_.parameters()))
    # predict sees the images as they are: deterministic.
    np.testing.assert_array_equal(a.predict_proba(X[:12]), a.predict_proba(X[:12]))


def _shifted_fit(**extra):
    X, y = _random_data(1, 8, 8)
    params = {**FAST, **dict(n_filters=4, n_ways=3, n_query=2, max_epochs=1,
                             meta_batches_per_epoch=3, random_state=0, adapt_on_fit=False)}
    return FOMAMLClassifier("conv4", **params, **extra).fit(X[y < 4], y[y < 4]), X, y


def test_test_shift_adapts_on_shifted_copies_and_averages_predictions():
    from fomaml_sklearn.augmentation import ShiftEnsemble

    clf, X, y = _shifted_fit(precision="float32")  # as predict, not bfloat16
    Xs, ys = X[40::5], y[40::5]  # 2 examples of classes 4 and 5
    ens = ShiftEnsemble(1, (1, 8, 8))
    copies, y_copies = ens.support(torch.as_tensor(Xs.reshape(len(Xs), -1)),
                                   torch.as_tensor(ys))
    # adapt with test_shift=1 is adapt on the support set and its copies ...
    clf.set_params(test_shift=0).adapt(copies.numpy().reshape(-1, 1, 8, 8), y_copies.numpy())
    queries = X[41:50]
    per_copy = [clf.predict_proba(c.numpy().reshape(-1, 1, 8, 8))
                for c in ens.copies(torch.as_tensor(queries.reshape(9, -1))).split(9)]
    clf.set_params(test_shift=1).adapt(Xs, ys)
    # ... and predict_proba averages over each query's copies.
    proba = clf.predict_proba(queries)
    np.testing.assert_allclose(proba, np.mean(per_copy, axis=0), rtol=1e-5, atol=1e-7)
    assert not np.allclose(proba, per_copy[0])
    np.testing.assert_array_equal(clf.predict(queries), clf.classes_[proba.argmax(1)])
    # evaluate's episodes go the same way (in float32, predict in float64).
    from fomaml_sklearn.evaluation import adapted_query_logits

    logits = adapted_query_logits(
        clf._runner(), torch.as_tensor(Xs.reshape(len(Xs), -1)),
        torch.as_tensor(np.searchsorted(clf.classes_, ys)),
        torch.as_tensor(queries.reshape(9, -1)), 2, augment=ens)
    np.testing.assert_allclose(logits.softmax(1).numpy(), proba, atol=1e-4)
    a = clf.evaluate(X[y >= 4], y[y >= 4], n_ways=2, n_episodes=5)
    b = clf.evaluate(X[y >= 4], y[y >= 4], n_ways=2, n_episodes=5)
    c = clf.set_params(test_shift=0).evaluate(X[y >= 4], y[y >= 4], n_ways=2, n_episodes=5)
    np.testing.assert_array_equal(a.accuracies, b.accuracies)
    assert not np.array_equal(a.accuracies, c.accuracies)


def test_test_shift_needs_images_and_a_bad_value_leaves_the_task_unchanged():
    X, y = _random_data(64)
    with pytest.raises(ValueError, match=r"test_shift=1 shifts images.*input_shape"):
        FOMAMLClassifier(test_shift=1, n_ways=3, n_query=2, **FAST).fit(X, y)
    clf = FOMAMLClassifier(n_ways=3, n_query=2, **FAST).fit(X, y)
    before = clf.predict_proba(X[:6])
    for value, message in [(1, "test_shift=1 shifts images"), (-1, "test_shift"),
                           (1.5, "test_shift")]:
        clf.set_params(test_shift=value)
        with pytest.raises(ValueError, match=message):
            clf.adapt(X[:12], y[:12])
    clf.set_params(test_shift=0)
    np.testing.assert_array_equal(clf.predict_proba(X[:6]), before)


def test_augment_shift_needs_images_and_a_whole_number():
    X, y = _random_data(64)
    with pytest.raises(ValueError, match=r"augment_shift=1 shifts images.*input_shape"):
        FOMAMLClassifier(augment_shift=1, n_ways=3, n_query=2, **FAST).fit(X, y)
    with pytest.raises(ValueError, match="augment_shift"):
        FOMAMLClassifier(augment_shift=-1, n_ways=3, n_query=2, **FAST).fit(X, y)
    # Rows with an input_shape are images.
    clf = FOMAMLClassifier(augment_shift=1, input_shape=(8, 8), n_ways=3, n_query=2,
                           **FAST).fit(X, y)
    assert clf.net_.iterator_train__augment.image_shape == (1, 8, 8)


def test_each_list_of_names_has_one_source_that_fit_and_errors_follow(digits):
    from fomaml_sklearn import names
    from fomaml_sklearn.backbones import build_backbone
    from fomaml_sklearn.heads import HEADS

    X, y = digits
    base = y < 4
    tiny = dict(n_ways=2, n_query=2, max_epochs=0, device="cpu", random_state=0)
    assert HEADS is names.HEADS
    # Every listed name (and alias) is accepted ...
    for head in names.HEADS:
        assert FOMAMLClassifier(head=head, **tiny).fit(X[base], y[base]).head == head
    for module in (*names.BACKBONES, *names.BACKBONE_ALIASES):
        assert build_backbone(module, 64, n_filters=4, hidden_layer_sizes=(8,))(
            torch.zeros(2, 64)).shape[0] == 2
    for precision in names.PRECISIONS[:2]:  # float16 runs on a GPU only
        assert FOMAMLClassifier(precision=precision, **tiny).fit(
            X[base], y[base]).precision_ == precision
    # ... and a wrong value is refused with the whole list.
    for param, value, allowed in [("head", "wide", names.HEADS),
                                  ("precision", "fp8", names.PRECISIONS),
                                  ("task_batching", "vmap", names.TASK_BATCHING),
                                  ("module", "resnet", names.BACKBONES)]:
        with pytest.raises(ValueError, match=param) as info:
            FOMAMLClassifier(**{**tiny, param: value}).fit(X[base], y[base])
        assert all(repr(name) in str(info.value) for name in allowed), str(info.value)


def test_the_lists_of_names_load_without_torch():
    # The command line's --help reads them, and must not wait for torch.
    import subprocess
    import sys

    code = ("import sys, fomaml_sklearn.names as n; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(n.HEADS)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "('prototype', 'cosine', 'shared', 'fixed')"


def test_cosine_head_learns_its_scale_runs_on_task_threads_and_saves(digits, tmp_path):
    """head="cosine": the features reach the head at a learnt norm (a
    parameter that starts at heads.COSINE_SCALE and that fit moves); the
    wrapped built-in Conv-4 still takes the task-threads path, which gives
    the model of the loop on one intra-op thread; a saved model predicts as
    it did."""
    from fomaml_sklearn.backbones import ScaledUnitFeatures, is_built_in
    from fomaml_sklearn.heads import COSINE_SCALE

    X, y = digits
    base, new = y < 7, y >= 7
    params = dict(module="conv4", input_shape=(1, 8, 8), n_filters=4, n_ways=3, head="cosine",
                  max_epochs=1, meta_batches_per_epoch=4, meta_batch_size=2,
                  precision="float32", adapt_on_fit=False, device="cpu", random_state=0)
    untrained = FOMAMLClassifier(**{**params, "max_epochs": 0}).fit(X[base], y[base])
    body = untrained.meta_model_.backbone
    assert isinstance(body, ScaledUnitFeatures) and is_built_in(body)
    feats = body.eval()(torch.as_tensor(X[:5], dtype=torch.float32))
    torch.testing.assert_close(feats.norm(dim=1), torch.full((5,), COSINE_SCALE))
    threads = FOMAMLClassifier(**params).fit(X[base], y[base])
    # Task threads run one intra-op thread each: the loop's steps on one thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loop = FOMAMLClassifier(**params, task_batching="loop").fit(X[base], y[base])
    finally:
        torch.set_num_threads(before)
    assert threads.task_batching_ == "threads"
    scale = threads.meta_model_.backbone.log_scale.exp().item()
    assert scale != pytest.approx(COSINE_SCALE, abs=1e-4)
    for a, b in zip(threads.meta_model_.parameters(), loop.meta_model_.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    threads.adapt(X[new][::4], y[new][::4])
    threads.save(tmp_path / "cosine.fomaml")
    again = FOMAMLClassifier.load(tmp_path / "cosine.fomaml")
    assert again.meta_model_.backbone.log_scale.exp().item() == pytest.approx(scale)
    np.testing.assert_array_equal(again.predict(X[new]), threads.predict(X[new]))


def test_statistics_gradient_parameter(digits):
    """"auto" takes the statistics into the meta-gradient for a convolutional
    backbone (the same fit as True), False holds them constant (another fit),
    and a value outside "auto", True, False is refused by name."""
    X, y = digits
    params = dict(module="conv4", input_shape=(1, 8, 8), n_filters=4, n_ways=3,
                  max_epochs=1, meta_batches_per_epoch=3, meta_batch_size=2,
                  precision="float32", task_batching="loop", adapt_on_fit=False,
                  device="cpu", random_state=0)
    fits = {v: FOMAMLClassifier(statistics_gradient=v, **params).fit(X, y)
            for v in ("auto", True, False)}
    assert fits["auto"].config_.statistics_gradient is None
    assert fits[False].config_.statistics_gradient is False

    def weights(clf):
        return torch.cat([p.detach().ravel() for p in clf.meta_model_.parameters()])

    torch.testing.assert_close(weights(fits["auto"]), weights(fits[True]), rtol=0, atol=0)
    assert not torch.allclose(weights(fits[True]), weights(fits[False]))
    with pytest.raises(ValueError, match=r"statistics_gradient must be one of 'auto' "
                                         r"or True or False; got 'yes'"):
        FOMAMLClassifier(statistics_gradient="yes", **params).fit(X, y)
