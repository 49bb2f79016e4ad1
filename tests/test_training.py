"""Meta-training experience: validation on unseen classes, skorch's early
stopping / checkpoints / resuming, warm start, interruption, persistence."""

import copy
import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.exceptions import NotFittedError
from skorch.callbacks import Checkpoint, EarlyStopping, LoadInitState
from skorch.exceptions import DeviceWarning

from fomaml_sklearn import FOMAMLClassifier
from fomaml_sklearn.callbacks import TimeCosineLR, TimeLimit

FAST = dict(n_ways=3, k_shot=1, n_query=5, max_epochs=3, meta_batches_per_epoch=5,
            n_eval_episodes=12, meta_batch_size=4, device="cpu", random_state=0)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16).astype(np.float32), y


def _state(est):
    return {k: v.clone() for k, v in est.meta_model_.state_dict().items()}


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


# ------------------------------------------------------------------ validation
def test_validation_fraction_holds_out_classes_and_records_valid_acc(digits):
    X, y = digits
    clf = FOMAMLClassifier(validation_fraction=0.25, **{**FAST, "n_ways": 10})
    with pytest.warns(UserWarning, match="n_ways=6"):  # 8 of 10 digits left, minus 2
        clf.fit(X[y < 8], y[y < 8])
    # 2 of the 8 classes are held out: training episodes have at most 6 ways.
    assert clf.episode_shape_.n_ways == 6
    valid_acc = clf.history_[:, "valid_acc"]
    assert len(valid_acc) == FAST["max_epochs"]
    assert all(0.0 <= a <= 1.0 for a in valid_acc)
    assert all(np.isfinite(clf.history_[:, "valid_loss"]))
    # Validation batches are not meta-steps.
    assert clf.n_meta_steps_ == FAST["max_epochs"] * FAST["meta_batches_per_epoch"]
    # Still adapted to all classes of y at the end, and no validation data kept.
    np.testing.assert_array_equal(clf.classes_, np.arange(8))
    assert clf.net_.train_split is None


def test_validation_episodes_are_the_same_every_epoch(digits):
    # With a zero meta learning rate the parameters never change, so the
    # validation score can only stay the same if the episodes are fixed.
    X, y = digits
    clf = FOMAMLClassifier(lr=0.0, **FAST).fit(X[y < 6], y[y < 6], X_val=X[y >= 6],
                                               y_val=y[y >= 6])
    valid_acc = clf.history_[:, "valid_acc"]
    assert len(set(valid_acc)) == 1
    assert valid_acc[0] == pytest.approx(
        clf.evaluate(X[y >= 6], y[y >= 6], n_episodes=FAST["n_eval_episodes"]).mean, abs=0.35
    )


def test_validation_arguments_are_checked(digits):
    X, y = digits
    with pytest.raises(ValueError, match="y_val is None but the other was given"):
        FOMAMLClassifier(**FAST).fit(X[y < 6], y[y < 6], X_val=X[y >= 6])
    with pytest.raises(ValueError, match="validation_fraction must be"):
        FOMAMLClassifier(validation_fraction=1.5, **FAST).fit(X, y)
    with pytest.raises(ValueError, match="leaving fewer than 2"):
        FOMAMLClassifier(validation_fraction=0.5, **FAST).fit(X[y < 3], y[y < 3])
    with pytest.raises(ValueError, match="expecting 64 features"):
        FOMAMLClassifier(**FAST).fit(X[y < 6], y[y < 6], X_val=X[y >= 6, :10],
                                     y_val=y[y >= 6])


def test_early_stopping_on_validation_accuracy(digits):
    X, y = digits
    stopper = EarlyStopping(monitor="valid_acc", lower_is_better=False, patience=2)
    clf = FOMAMLClassifier(callbacks=[stopper], validation_fraction=0.3,
                           **{**FAST, "max_epochs": 60, "lr": 0.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stopping by a callback is no interruption
        clf.fit(X, y)
    # A constant score never improves: stopped after 1 + patience epochs.
    assert len(clf.history_) == 3


def test_checkpoint_restores_best_validation_parameters(digits, tmp_path):
    X, y = digits
    checkpoint = Checkpoint(monitor="valid_acc_best", dirname=str(tmp_path), load_best=True)
    clf = FOMAMLClassifier(callbacks=[checkpoint], validation_fraction=0.3,
                           **{**FAST, "max_epochs": 6})
    clf.fit(X, y)
    history = clf.history_
    best = int(np.argmax(history[:, "valid_acc"]))
    assert history[best, "valid_acc_best"] and history[best, "event_cp"]
    saved = torch.load(tmp_path / "params.pt", weights_only=True)
    _assert_same_state(saved, _state(clf))


def test_resume_from_checkpoint(digits, tmp_path):
    X, y = digits
    checkpoint = Checkpoint(monitor=None, dirname=str(tmp_path))
    first = FOMAMLClassifier(callbacks=[checkpoint], **FAST).fit(X[y < 6], y[y < 6])
    resumed = FOMAMLClassifier(callbacks=[LoadInitState(checkpoint)],
                               **{**FAST, "max_epochs": 0}).fit(X[y < 6], y[y < 6])
    _assert_same_state(_state(first), _state(resumed))
    assert len(resumed.history_) == FAST["max_epochs"]  # the history came along


# ------------------------------------------------------------------ warm start
def test_warm_start_continues_training_exactly(digits):
    X, y = digits
    base = y < 6
    cold = FOMAMLClassifier(**{**FAST, "max_epochs": 4}).fit(X[base], y[base])
    warm = FOMAMLClassifier(warm_start=True, **{**FAST, "max_epochs": 2})
    warm.fit(X[base], y[base])
    after_first = _state(warm)
    warm.fit(X[base], y[base])
    assert not all(torch.equal(after_first[k], v) for k, v in _state(warm).items())
    assert len(warm.history_) == 4
    assert warm.n_meta_steps_ == cold.n_meta_steps_ == 4 * FAST["meta_batches_per_epoch"]
    for k, v in _state(cold).items():
        torch.testing.assert_close(_state(warm)[k], v, msg=k)


def test_warm_start_follows_the_current_meta_rate_and_schedule(digits):
    # A warm fit meta-trains at the current lr, under the current lr_schedule
    # over its own meta-steps: set_params(lr=...) is not silently ignored,
    # and a cosine starts again instead of going on from where the first
    # fit's ended (at 0).
    X, y = digits
    clf = FOMAMLClassifier(**{**FAST, "lr": 0.01, "lr_schedule": "cosine"})
    clf.fit(X[y < 6], y[y < 6])
    first = np.concatenate(clf.history_[:, "batches", :, "event_lr"])
    n = FAST["max_epochs"] * FAST["meta_batches_per_epoch"]
    cosine = 0.5 * (1 + np.cos(np.pi * np.arange(n) / n))
    np.testing.assert_allclose(first, 0.01 * cosine, atol=1e-12)
    clf.set_params(warm_start=True, lr=0.002)
    clf.fit(X[y < 6], y[y < 6])
    again = np.concatenate(clf.history_[:, "batches", :, "event_lr"])
    assert len(again) == 2 * n and clf.n_meta_steps_ == 2 * n
    np.testing.assert_allclose(again[n:], 0.002 * cosine, atol=1e-12)
    # Constant: the optimizer runs at the new rate, and the schedule is gone.
    clf.set_params(lr=0.0005, lr_schedule="constant")
    before = _state(clf)
    clf.fit(X[y < 6], y[y < 6])
    assert [g["lr"] for g in clf.net_.optimizer_.param_groups] == [0.0005]
    assert "lr_schedule" not in dict(clf.net_.callbacks_)
    # ... and it moved the parameters by about that rate per step (Adam).
    moved = max(float((v - before[k]).abs().max()) for k, v in _state(clf).items()
                if v.is_floating_point() and "support_" not in k)
    assert 0 < moved <= 0.0005 * n * 1.5


def test_warm_start_needs_the_same_features(digits):
    X, y = digits
    warm = FOMAMLClassifier(warm_start=True, **FAST).fit(X[y < 6], y[y < 6])
    with pytest.raises(ValueError, match="expecting 64 features"):
        warm.fit(X[y < 6, :32], y[y < 6])


def test_without_warm_start_fit_starts_afresh(digits):
    X, y = digits
    clf = FOMAMLClassifier(**FAST)
    first = _state(clf.fit(X[y < 6], y[y < 6]))
    second = _state(clf.fit(X[y < 6], y[y < 6]))
    _assert_same_state(first, second)
    assert len(clf.history_) == FAST["max_epochs"]


# ------------------------------------------------------------------ interrupts
def test_ctrl_c_keeps_a_usable_estimator_and_says_so(digits, monkeypatch):
    # Ctrl-C arrives in the middle of the 4th meta-step's computation.
    from fomaml_sklearn.algorithms import FOMAML

    calls = []

    def interrupting(real):
        def task(*args, **kwargs):  # one call per task: the 2nd task of the 4th step
            calls.append(1)
            if len(calls) == 3 * FAST["meta_batch_size"] + 2:
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        return task

    monkeypatch.setattr(FOMAML, "task_meta_gradient", interrupting(FOMAML.task_meta_gradient))
    X, y = digits
    clf = FOMAMLClassifier(**FAST)
    with pytest.warns(UserWarning, match="interrupted .*last completed meta-step") as record:
        clf.fit(X[y < 6], y[y < 6])
    assert record[0].filename == __file__  # points at the user's fit call
    assert clf.n_meta_steps_ == 3
    assert set(clf.predict(X[:20])) <= set(range(6))
    assert 0.0 <= clf.score(X[y >= 6], y[y >= 6]) <= 1.0


def test_time_limit_stops_without_an_interrupt_warning(digits):
    X, y = digits
    clf = FOMAMLClassifier(callbacks=[TimeLimit(minutes=0.0)], **{**FAST, "max_epochs": 50})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf.fit(X[y < 6], y[y < 6])
    assert len(clf.history_) == 1


class _FakeClock:
    """Advances 6 seconds every time it is read."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 6.0
        return self.now


def test_time_cosine_lr_anneals_the_meta_rate_over_the_budget(digits):
    X, y = digits
    clock = _FakeClock()
    # 3 epochs of 5 meta-steps; each step reads the clock once (6 s), so the
    # budget of 1.2 min (72 s) ends after 12 steps: the rates fall along the
    # cosine and stay at 0 afterwards.
    clf = FOMAMLClassifier(callbacks=[TimeCosineLR(1.2, clock=clock)],
                           **{**FAST, "lr": 0.01}).fit(X[y < 6], y[y < 6])
    rates = np.concatenate(clf.history_[:, "batches", :, "event_lr"])
    assert len(rates) == clf.n_meta_steps_ == 15
    fractions = np.minimum(1.0, np.arange(1, 16) * 6.0 / 72.0)
    np.testing.assert_allclose(rates, 0.01 * 0.5 * (1 + np.cos(np.pi * fractions)), atol=1e-12)
    assert rates[0] > 0.009 and rates[-1] == 0.0
    # The optimizer ran at the last rate set.
    assert clf.net_.optimizer_.param_groups[0]["lr"] == rates[-1]
    # A warm start anneals its own budget from the original rate again,
    # not from the 0 where the first one ended.
    clf.set_params(warm_start=True, callbacks=[TimeCosineLR(1.2, clock=_FakeClock())])
    clf.fit(X[y < 6], y[y < 6])
    again = np.concatenate(clf.history_[:, "batches", :, "event_lr"])
    np.testing.assert_allclose(again[-15:], rates, atol=1e-12)


@pytest.mark.parametrize("make, error, match", [
    (lambda: TimeLimit("1"), TypeError,
     r"TimeLimit\(minutes='1'\): minutes must be a finite number >= 0 .*got '1' of type str"),
    (lambda: TimeLimit(-1), ValueError, r"TimeLimit\(minutes=-1\): .*>= 0.*got -1\."),
    (lambda: TimeLimit(float("inf")), ValueError, r"minutes must be a finite number >= 0"),
    (lambda: TimeLimit(True), TypeError, r"got True of type bool"),
    (lambda: TimeLimit(1, sink="log.txt"), TypeError, r"sink must be a callable; got str"),
    (lambda: TimeCosineLR(0), ValueError,
     r"TimeCosineLR\(minutes=0\): minutes must be a finite number > 0.*got 0\."),
    (lambda: TimeCosineLR(None), TypeError, r"got None of type NoneType"),
    (lambda: TimeCosineLR(1, clock=5), TypeError, r"clock must be a callable; got int"),
])
def test_time_callbacks_check_their_arguments_when_made(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_time_callbacks_take_numpy_numbers_and_check_set_params_at_fit(digits):
    X, y = digits
    assert TimeCosineLR(np.int64(1)).minutes == 1 and TimeLimit(np.float32(0.5)).minutes == 0.5
    limit = TimeLimit(1)
    limit.set_params(minutes=-2)  # bypasses __init__: caught when fit initialises it
    clf = FOMAMLClassifier(callbacks=[limit], **FAST)
    with pytest.raises(ValueError, match=r"TimeLimit\(minutes=-2\)"):
        clf.fit(X[y < 6], y[y < 6])


# ----------------------------------------------------------------- persistence
@pytest.fixture(scope="module")
def adapted(digits):
    X, y = digits
    clf = FOMAMLClassifier(**FAST).fit(X[y < 6], y[y < 6])
    support = np.concatenate([np.flatnonzero(y == c)[:2] for c in (6, 7, 8)])
    return clf.adapt(X[support], y[support]), support


def test_pickle_keeps_one_meta_model_and_leaves_the_original_intact(adapted, digits):
    X, _ = digits
    clf, _ = adapted
    before = clf.predict_proba(X[:30])
    loaded = pickle.loads(pickle.dumps(clf))
    assert loaded.meta_model_ is loaded.net_.module_
    assert clf.meta_model_ is clf.net_.module_
    np.testing.assert_array_equal(loaded.predict_proba(X[:30]), before)
    np.testing.assert_array_equal(clf.predict_proba(X[:30]), before)


def test_joblib_round_trip(adapted, digits, tmp_path):
    X, y = digits
    clf, _ = adapted
    joblib.dump(clf, tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    np.testing.assert_array_equal(loaded.predict(X[:40]), clf.predict(X[:40]))
    assert loaded.score(X[y >= 6], y[y >= 6]) == clf.score(X[y >= 6], y[y >= 6])


def test_save_params_load_params_round_trip(adapted, digits, tmp_path):
    X, y = digits
    clf, support = adapted
    clf.save_params(f_params=tmp_path / "p.pt", f_optimizer=tmp_path / "o.pt",
                    f_history=tmp_path / "h.json")
    other = clone(clf).set_params(max_epochs=0).fit(X[y < 6], y[y < 6])
    assert other.evaluate(X[y >= 6], y[y >= 6]).mean != clf.evaluate(X[y >= 6], y[y >= 6]).mean
    other.load_params(f_params=tmp_path / "p.pt", f_optimizer=tmp_path / "o.pt",
                      f_history=tmp_path / "h.json")
    _assert_same_state(_state(other), _state(clf))
    assert len(other.history_) == len(clf.history_)
    with pytest.raises(NotFittedError, match=r"adapt\(X_support, y_support\)"):
        other.predict(X[:3])
    other.adapt(X[support], y[support])
    np.testing.assert_array_equal(other.predict_proba(X[:40]), clf.predict_proba(X[:40]))


def test_save_params_before_fit_says_fit_first(tmp_path):
    with pytest.raises(NotFittedError, match=r"call fit\(X, y\)"):
        FOMAMLClassifier().save_params(f_params=tmp_path / "p.pt")


def test_model_from_a_gpu_machine_loads_on_a_cpu_only_machine(adapted, digits, monkeypatch):
    # Simulate a model saved on CUDA: the devices say cuda (the tensors are on
    # the CPU here, which changes nothing in the load path under test).
    X, _ = digits
    clf = copy.deepcopy(adapted[0])
    expected = clf.predict_proba(X[:30])
    clf.device_ = torch.device("cuda")
    clf.net_.device = "cuda"
    blob = pickle.dumps(clf)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(DeviceWarning, match="(?i)cuda"):  # skorch warns twice, "cuda" and "CUDA"
        loaded = pickle.loads(blob)
    assert loaded.device_ == torch.device("cpu")
    assert torch.device(loaded.net_.device) == torch.device("cpu")
    assert next(loaded.task_model_.parameters()).device.type == "cpu"
    np.testing.assert_array_equal(loaded.predict_proba(X[:30]), expected)
    loaded.adapt(X[:10], np.arange(10) % 2)  # adapts on the CPU
