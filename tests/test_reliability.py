"""Nothing lost, nothing trusted blindly: every bad call is a clear error, and
a failed call leaves a fitted estimator exactly as it was."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from skorch.callbacks import Checkpoint, EarlyStopping

from fomaml_sklearn import FOMAMLClassifier

FAST = dict(n_ways=3, n_query=3, max_epochs=1, meta_batches_per_epoch=3, n_eval_episodes=5,
            device="cpu", random_state=0)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32), y


@pytest.fixture
def fitted(digits):
    X, y = digits
    clf = FOMAMLClassifier(**FAST).fit(X[y < 6], y[y < 6])
    return clf, clf.predict_proba(X[:20]).copy(), clf.classes_.copy()


def _unchanged(clf, X, proba, classes):
    np.testing.assert_array_equal(clf.predict_proba(X[:20]), proba)
    np.testing.assert_array_equal(clf.classes_, classes)
    assert clf.n_features_in_ == X.shape[1]


@pytest.mark.parametrize("bad, match", [
    # The first case: fewer features and float labels.
    (lambda X, y: (X[:, :10], y + 0.5), "Unknown label type"),
    (lambda X, y: (X, np.array([str(v) if v % 2 else int(v) for v in y], dtype=object)),
     "mixes labels of different types"),
    (lambda X, y: (X[:, :10], y), None),  # warm start off: a new fit on new data is fine
])
def test_a_failed_refit_keeps_the_fitted_model(fitted, digits, bad, match):
    clf, proba, classes = fitted
    X, y = digits
    Xb, yb = bad(X[y < 6], y[y < 6])
    if match is None:
        clf_copy = FOMAMLClassifier(**FAST).fit(Xb, yb)
        assert clf_copy.n_features_in_ == 10
        return
    with pytest.raises(ValueError, match=match):
        clf.fit(Xb, yb)
    _unchanged(clf, X, proba, classes)


@pytest.mark.parametrize("params, match", [
    (dict(device="tpu"), "device='tpu'"),
    (dict(precision="fp8"), "precision must be one of"),
    (dict(callbacks="x"), "callbacks must be None or a list of skorch callbacks"),
    (dict(callbacks=[42]), "callbacks must be None or a list of skorch callbacks"),
    (dict(transductive="yes"), "transductive must be True or False; got 'yes'"),
    (dict(adapt_on_fit="no"), "adapt_on_fit must be True or False; got 'no'"),
    (dict(warm_start="no"), "warm_start must be True or False; got 'no'"),
    (dict(optimizer_params="x"), "optimizer_params must be None or a dict"),
    (dict(module_params="x"), "module_params must be None or a dict"),
    (dict(input_shape="abc"), "input_shape must be None or"),
    (dict(input_shape=(3, 5, 5)), r"input_shape=\(3, 5, 5\) does not fit the data"),
    (dict(random_state="abc"), "random_state must be None, an integer"),
    (dict(random_state=-1), "random_state must be None, an integer"),
    (dict(n_ways=1.5), "n_ways must be an integer >= 2; got 1.5"),
    (dict(validation_fraction=1.0), "validation_fraction must be None or a finite number"),
    (dict(callbacks=[EarlyStopping()]),
     "EarlyStopping monitors 'valid_loss'.*validation_fraction"),
    (dict(callbacks=[("best", Checkpoint(dirname="/nonexistent"))]),
     "best monitors 'valid_loss_best'"),
    (dict(module=torch.nn.Linear(10, 4)), "does not accept rows of 64 features"),
    (dict(module=42), "module must be 'mlp', 'conv4'"),
    (dict(algorithm="fomamll"), "Did you mean 'fomaml'"),
])
def test_bad_parameters_are_clear_errors_and_change_nothing(fitted, digits, params, match):
    clf, proba, classes = fitted
    X, y = digits
    clf.set_params(**params)
    with pytest.raises(ValueError, match=match):
        clf.fit(X[y < 6], y[y < 6])
    _unchanged(clf, X, proba, classes)


def test_a_failed_warm_start_keeps_the_model(fitted, digits):
    clf, proba, classes = fitted
    X, y = digits
    steps = clf.n_meta_steps_
    clf.set_params(warm_start=True)
    with pytest.raises(ValueError, match="X has 10 features"):
        clf.fit(X[y < 6][:, :10], y[y < 6])
    _unchanged(clf, X, proba, classes)
    assert clf.n_meta_steps_ == steps
    clf.fit(X[y < 6], y[y < 6])  # and it still continues
    assert clf.n_meta_steps_ == 2 * steps


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_ways=1), "n_ways must be None or an integer >= 2; got 1"),
    (dict(n_ways=1.5), "n_ways must be None or an integer >= 2; got 1.5"),
    (dict(n_ways="3"), "n_ways must be None or an integer >= 2; got '3'"),
    (dict(k_shot=0), "k_shot must be None or an integer >= 1; got 0"),
    (dict(n_query=-1), "n_query must be None or an integer >= 1; got -1"),
    (dict(n_episodes=0), "n_episodes must be None or an integer >= 1; got 0"),
    (dict(random_state="abc"), "random_state must be None or None, an integer"),
    (dict(random_state=-1), "random_state must be None or None, an integer"),
])
def test_evaluate_checks_its_arguments(fitted, digits, kwargs, match):
    clf, _, _ = fitted
    X, y = digits
    with pytest.raises(ValueError, match=match):
        clf.evaluate(X[y >= 6], y[y >= 6], **kwargs)


def test_image_layout_is_checked_against_the_fitted_one():
    rng = np.random.default_rng(0)
    X = rng.random((60, 3, 8, 8), dtype=np.float32)
    y = np.repeat(np.arange(6), 10)
    clf = FOMAMLClassifier("conv4", n_filters=4, **FAST).fit(X, y)
    proba = clf.predict_proba(X[:5])
    assert clf.input_shape_ == (3, 8, 8)
    with pytest.raises(ValueError, match=r"images of shape \(8, 8, 3\).*\(3, 8, 8\)"):
        clf.predict(X.transpose(0, 2, 3, 1))
    with pytest.raises(ValueError, match=r"images of shape \(12, 4, 4\)"):
        clf.predict(X.reshape(60, 12, 4, 4))
    with pytest.raises(ValueError, match=r"X_support holds images of shape \(8, 8, 3\)"):
        clf.adapt(X.transpose(0, 2, 3, 1)[:10], y[:10])
    np.testing.assert_array_equal(clf.predict_proba(X[:5].reshape(5, -1)), proba)  # rows: fine
    # Rows at fit: conv4 takes its shape from input_shape, and checks it too.
    rows = FOMAMLClassifier("conv4", n_filters=4, input_shape=(3, 8, 8), **FAST)
    rows.fit(X.reshape(60, -1), y)
    with pytest.raises(ValueError, match="images of shape"):
        rows.predict(X.transpose(0, 2, 3, 1))


def test_load_params_errors_leave_the_model(fitted, digits, tmp_path):
    clf, proba, classes = fitted
    X, y = digits
    other = FOMAMLClassifier(hidden_layer_sizes=(32,), **FAST).fit(X[y < 6], y[y < 6])
    other.save_params(f_params=tmp_path / "other.pt")
    before = [p.detach().clone() for p in clf.meta_model_.parameters()]
    with pytest.raises(ValueError, match="same network"):
        clf.load_params(f_params=tmp_path / "other.pt")
    for a, b in zip(before, clf.meta_model_.parameters()):
        assert torch.equal(a, b)
    _unchanged(clf, X, proba, classes)
    clf.save_params(f_params=tmp_path / "mine.pt")
    data = (tmp_path / "mine.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="load_params could not load"):
        clf.load_params(f_params=tmp_path / "cut.pt")
    with pytest.raises(FileNotFoundError, match="the folder .* does not exist"):
        clf.save_params(f_params=tmp_path / "missing" / "p.pt")


def test_a_failed_final_adaptation_keeps_the_meta_training(digits, monkeypatch):
    X, y = digits

    def boom(self, *args):
        raise MemoryError("simulated")

    monkeypatch.setattr(FOMAMLClassifier, "_adapt_codes", boom)
    with pytest.warns(UserWarning, match="final adaptation .* failed .*MemoryError"):
        clf = FOMAMLClassifier(**FAST).fit(X[y < 6], y[y < 6])
    assert clf.n_meta_steps_ == 3 and clf.task_model_ is None
    monkeypatch.undo()
    support = np.concatenate([np.flatnonzero(y == c)[:2] for c in (6, 7)])
    assert set(clf.adapt(X[support], y[support]).predict(X[:10])) <= {6, 7}


def test_the_final_adaptation_uses_a_bounded_sample(monkeypatch):
    seen = []
    real = FOMAMLClassifier._adapt_codes

    def record(self, X_t, codes, classes):
        seen.append((len(X_t), np.bincount(codes).min()))
        return real(self, X_t, codes, classes)

    monkeypatch.setattr(FOMAMLClassifier, "_adapt_codes", record)
    monkeypatch.setattr(FOMAMLClassifier, "_fit_adapt_max_samples", 40)
    rng = np.random.default_rng(0)
    X = rng.random((300, 16), dtype=np.float32)
    y = np.repeat(np.arange(6), 50)
    clf = FOMAMLClassifier(**FAST).fit(X, y)
    assert seen == [(36, 6)]  # 40 // 6 = 6 per class, every class kept
    assert list(clf.classes_) == list(range(6))
    with pytest.warns(UserWarning, match="y has 60 classes, more than the 40"):
        FOMAMLClassifier(**FAST).fit(X, np.repeat(np.arange(60), 5))


def test_a_seeded_fit_does_not_touch_the_global_generators(digits):
    X, y = digits
    torch.manual_seed(123)
    np.random.seed(123)
    state_t, state_n = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FOMAMLClassifier(**FAST).fit(X[y < 6], y[y < 6])
    assert torch.equal(torch.random.get_rng_state(), state_t)
    np.testing.assert_array_equal(np.random.get_state()[1], state_n)


def test_seeded_fits_in_threads_match_their_serial_twins(digits):
    from concurrent.futures import ThreadPoolExecutor

    X, y = digits

    def fit(seed):
        clf = FOMAMLClassifier(**{**FAST, "random_state": seed, "head": "fixed"})
        return clf.fit(X[y < 6], y[y < 6]).predict_proba(X[:20])

    serial = [fit(seed) for seed in (0, 1, 2)]
    torch.manual_seed(7)
    before = torch.random.get_rng_state()
    with ThreadPoolExecutor(3) as pool:
        parallel = list(pool.map(fit, (0, 1, 2)))
    assert torch.equal(torch.random.get_rng_state(), before)
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(serial[0], serial[1])  # the seed matters


class _UserNet(torch.nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.BatchNorm1d(width),
                                        torch.nn.ReLU(), torch.nn.Linear(width, width))

    def forward(self, x):
        return self.body(x)


def test_a_user_module_class_is_initialised_from_the_seed(digits):
    X, y = digits
    torch.manual_seed(3)
    before = torch.random.get_rng_state()
    a = FOMAMLClassifier(_UserNet, module_params={"width": 8}, **{**FAST, "max_epochs": 0})
    b = FOMAMLClassifier(_UserNet, module_params={"width": 8}, **{**FAST, "max_epochs": 0})
    a.fit(X[y < 6], y[y < 6])
    b.fit(X[y < 6], y[y < 6])
    assert torch.equal(torch.random.get_rng_state(), before)
    for p, q in zip(a.meta_model_.parameters(), b.meta_model_.parameters()):
        assert torch.equal(p, q)
    c = FOMAMLClassifier(_UserNet, **{**FAST, "max_epochs": 0, "random_state": 1})
    c.fit(X[y < 6], y[y < 6])
    assert not torch.equal(next(a.meta_model_.parameters()), next(c.meta_model_.parameters()))


def test_numpy_integers_and_no_grad_callers_work(digits):
    X, y = digits
    clf = FOMAMLClassifier(**{**FAST, "n_inner_steps": np.int64(2),
                              "n_inner_steps_test": np.int64(3)})
    clf.fit(X[y < 6], y[y < 6])
    assert clf.task_model_ is not None
    with torch.no_grad():  # a caller's no_grad does not stop the inner loop
        score = clf.score(X[y >= 6], y[y >= 6])
        support = np.concatenate([np.flatnonzero(y == c)[:2] for c in (6, 7)])
        clf.adapt(X[support], y[support])
    assert 0 <= score <= 1 and list(clf.classes_) == [6, 7]


# ------------------------------------------------------------- numeric health
REG_FAST = dict(max_epochs=1, meta_batches_per_epoch=5, k_shot=5, n_query=5,
                meta_batch_size=4, n_eval_episodes=5, device="cpu", random_state=0)


@pytest.fixture(scope="module")
def waves():
    from fomaml_sklearn.datasets import make_sinusoid_tasks

    return make_sinusoid_tasks(n_tasks=20, n_points=20, random_state=0)


def test_targets_too_large_stop_the_fit_and_say_what_to_try(waves):
    from fomaml_sklearn import FOMAMLRegressor

    X, y, g = waves
    with pytest.raises(ValueError, match=r"meta-step 1 .*training loss of inf.*scale y.*"
                       r"TransformedTargetRegressor.*StandardScaler.*lower lr \(now 0.001\) "
                       r"or inner_lr \(now 0.01\)"):
        FOMAMLRegressor(**REG_FAST).fit(X, y * 1e10, groups=g)
    # A fitted regressor refitted (or warm-started) on such targets keeps its model.
    reg = FOMAMLRegressor(**REG_FAST).fit(X, y, groups=g)
    before, steps, epochs = reg.predict(X[:20]).copy(), reg.n_meta_steps_, len(reg.history_)
    for warm in (False, True):
        reg.set_params(warm_start=warm)
        with pytest.raises(ValueError, match="not finite|training loss of inf"):
            reg.fit(X, y * 1e10, groups=g)
        np.testing.assert_array_equal(reg.predict(X[:20]), before)
        assert reg.n_meta_steps_ == steps and len(reg.history_) == epochs


def test_a_diverging_classifier_fit_stops(digits):
    X, y = digits
    with pytest.raises(ValueError, match=r"meta-step 2 .*training loss of nan.*scale X.*"
                       r"lower lr \(now 1e\+30\)"):
        FOMAMLClassifier(**{**FAST, "lr": 1e30}).fit(X[y < 6], y[y < 6])


def test_a_non_finite_meta_gradient_stops_the_step_and_keeps_the_model(fitted, digits,
                                                                        monkeypatch):
    from fomaml_sklearn.algorithms import FOMAML

    clf, proba, classes = fitted
    X, y = digits
    real = FOMAML.meta_gradient

    def poisoned(self, runner, batch, batched=False):
        result = real(self, runner, batch, batched)
        result.grads[0][0] = float("inf")  # a finite loss, an infinite gradient
        return result

    monkeypatch.setattr(FOMAML, "meta_gradient", poisoned)
    for warm in (False, True):
        clf.set_params(warm_start=warm)
        # A warm start counts on from the fit's 3 meta-steps.
        step = 4 if warm else 1
        with pytest.raises(ValueError, match=f"meta-step {step} .*meta-gradient that is not"):
            clf.fit(X[y < 6], y[y < 6])
        _unchanged(clf, X, proba, classes)


def test_non_finite_weights_after_the_last_step_are_refused(digits):
    X, y = digits
    # One plain SGD step at a huge rate: a finite loss and gradient, then
    # weights that overflow, with no further step to notice it.
    clf = FOMAMLClassifier(**{**FAST, "meta_batches_per_epoch": 1, "optimizer": "sgd",
                              "lr": 1e38, "head": "shared", "inner_lr": 0.4})
    with pytest.raises(ValueError, match="fit produced meta-parameters that are not finite "
                       r"\(.*\).*scale X"):
        clf.fit(X[y < 6], y[y < 6])
    assert not hasattr(clf, "meta_model_")


def test_a_diverging_adaptation_keeps_the_adapted_task(waves):
    from fomaml_sklearn import FOMAMLRegressor

    X, y, g = waves
    reg = FOMAMLRegressor(**REG_FAST).fit(X, y, groups=g)
    before = reg.predict(X[:20]).copy()
    with pytest.raises(ValueError, match=r"adaptation to the support set diverged.*scale y"
                       r".*lower inner_lr \(now 0.01\) or n_inner_steps_test \(now 10\)"):
        reg.adapt(X[:10], y[:10] * 1e30)
    np.testing.assert_array_equal(reg.predict(X[:20]), before)
    # In fit, the final adaptation's failure keeps the meta-training, with a warning.
    with pytest.warns(UserWarning, match="final adaptation .* failed .*diverged"):
        reg = FOMAMLRegressor(**REG_FAST).fit(X, y * 1e3, groups=g)
    with pytest.raises(NotFittedError, match="final adaptation in fit failed"):
        reg.predict(X[:5])
    # Scoring says how many of its episodes diverged, not a silent NaN.
    with pytest.warns(UserWarning, match=r"score: the adaptation diverged in \d+ of 5 "
                      r"episodes.*scale y.*lower inner_lr") as record:
        assert np.isnan(reg.score(X, y * 1e3, g))
    assert record[0].filename == __file__


# ------------------------------------------------------------ the weak cases
@pytest.fixture(scope="module")
def fitted_regressor(waves):
    from fomaml_sklearn import FOMAMLRegressor

    X, y, g = waves
    return FOMAMLRegressor(**REG_FAST).fit(X, y, groups=g)


def test_regressor_scoring_without_groups_warns_as_fit_does(fitted_regressor, waves):
    X, y, g = waves
    for method in ("score", "evaluate"):
        with pytest.warns(UserWarning, match=rf"FOMAMLRegressor\.{method} got no groups, so all"
                          r" of \(X, y\) is treated as one task.*Pass groups=") as record:
            getattr(fitted_regressor, method)(X, y)
        assert record[0].filename == __file__  # points at the user's call
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted_regressor.score(X, y, g)


@pytest.mark.parametrize("bad, match", [
    (lambda X, y, g: (X, np.array(["low", "high"] * 200), g),
     r"y must hold real-valued regression targets, but it holds 'low' \(str\)"),
    (lambda X, y, g: (X, y, np.array(["a", None] * 200, dtype=object)),
     r"groups has 200 missing task label\(s\) \(NaN or None\), the first at index 1"),
    (lambda X, y, g: (X, y, np.array(["a", 1] * 200, dtype=object)),
     r"groups mixes task labels of different types \(int, str\)"),
    (lambda X, y, g: (X, y, np.where(g < 2, np.nan, g)),
     r"groups has 40 missing task label\(s\) \(NaN or None\), the first at index 0"),
])
def test_regression_targets_and_groups_are_checked_by_name(fitted_regressor, waves, bad,
                                                          match):
    X, y, g = waves
    before = fitted_regressor.predict(X[:20]).copy()
    Xb, yb, gb = bad(X, y, g)
    with pytest.raises(ValueError, match=match):
        fitted_regressor.fit(Xb, yb, groups=gb)
    with pytest.raises(ValueError, match=match):
        fitted_regressor.evaluate(Xb, yb, gb)
    np.testing.assert_array_equal(fitted_regressor.predict(X[:20]), before)
    if isinstance(yb[0], str):
        with pytest.raises(ValueError, match=match.replace("y must", "y_support must")):
            fitted_regressor.adapt(Xb[:10], yb[:10])


def test_set_params_routes_rule_options_to_a_named_rule(digits):
    from sklearn.base import clone

    from fomaml_sklearn.algorithms import ANIL, IMAML

    clf = FOMAMLClassifier(algorithm="imaml").set_params(algorithm__lam=2.0)
    assert isinstance(clf.algorithm, IMAML) and clf.algorithm.lam == 2.0
    assert clone(clf).get_params()["algorithm__lam"] == 2.0
    # A name's own options are kept ("fo-anil" is ANIL(first_order=True)).
    anil = FOMAMLClassifier(algorithm="fo-anil").set_params(algorithm__first_order=False)
    assert type(anil.algorithm) is ANIL and anil.algorithm.first_order is False
    with pytest.raises(ValueError, match=r"Invalid parameter 'foo' for estimator IMAML"):
        FOMAMLClassifier(algorithm="imaml").set_params(algorithm__foo=1)
    with pytest.raises(ValueError, match=r"algorithm='imal' is not supported.*Did you mean "
                       r"'imaml'.*algorithm__lam sets an option of the rule"):
        FOMAMLClassifier(algorithm="imal").set_params(algorithm__lam=1.0)
    # The option is checked by fit, as any other.
    X, y = digits
    with pytest.raises(ValueError, match=r"lam=-1 is not supported by IMAML"):
        FOMAMLClassifier(**FAST).set_params(algorithm="imaml", algorithm__lam=-1).fit(
            X[y < 6], y[y < 6])


@pytest.mark.parametrize("param, value", [("augment_shift", 100), ("test_shift", 20),
                                          ("augment_shift", 7)])
def test_shifts_that_leave_nothing_of_the_images_are_refused(digits, param, value):
    X, y = digits
    clf = FOMAMLClassifier(**{**FAST, param: value, "input_shape": (8, 8)})
    with pytest.raises(ValueError, match=rf"{param}={value} moves 8x8 images by up to {value} "
                       rf"pixels, which leaves nothing of them.*{param} must be at most 6"):
        clf.fit(X[y < 6], y[y < 6])
    assert not hasattr(clf, "meta_model_")


def test_a_test_shift_set_after_fit_is_checked_and_changes_nothing(digits):
    X, y = digits
    clf = FOMAMLClassifier(**{**FAST, "input_shape": (8, 8), "test_shift": 6})
    clf.fit(X[y < 6], y[y < 6])  # 6 leaves 2 rows of an 8x8 image: allowed
    clf.set_params(test_shift=1).adapt(X[:30][y[:30] < 3], y[:30][y[:30] < 3])
    before = clf.predict_proba(X[:20])
    clf.set_params(test_shift=8)
    for call in (lambda: clf.predict_proba(X[:20]), lambda: clf.adapt(X[:30], y[:30]),
                 lambda: clf.evaluate(X[y >= 6], y[y >= 6])):
        with pytest.raises(ValueError, match=r"test_shift=8 moves 8x8 images"):
            call()
    np.testing.assert_array_equal(clf.set_params(test_shift=1).predict_proba(X[:20]), before)
