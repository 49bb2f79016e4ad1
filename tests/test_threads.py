"""fit on a shared machine: fewer intra-op threads when other processes keep
the cores busy, and the caller's torch.get_num_threads() back afterwards."""

import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from skorch.callbacks import Callback

from fomaml_sklearn import FOMAMLClassifier, FOMAMLRegressor, _threads
from fomaml_sklearn._threads import (
    ENV_VARIABLE,
    fit_thread_count,
    fit_threads,
    other_running_threads,
    recheck,
)

FAST = dict(n_ways=3, k_shot=1, n_query=2, max_epochs=2, meta_batches_per_epoch=2,
            meta_batch_size=2, device="cpu", random_state=0)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    keep = y < 5
    return (X[keep] / 16).astype(np.float32), y[keep]


@pytest.fixture(autouse=True)
def adaptive(monkeypatch):
    """The default behaviour (conftest.py keeps the threads for the suite)."""
    monkeypatch.delenv(ENV_VARIABLE, raising=False)


@pytest.fixture
def two_threads():
    """The test runs with 2 intra-op threads (the suite runs with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def busy(monkeypatch):
    """Pretend that other processes keep ``n`` threads running (a list: one
    value per count, the last one repeated)."""
    def pretend(n):
        counts = list(n) if isinstance(n, list) else [n]

        def count(samples=5):
            return counts.pop(0) if len(counts) > 1 else counts[0]

        monkeypatch.setattr(_threads, "other_running_threads", count)
        monkeypatch.setattr(_threads, "_cores", lambda: 2)
    return pretend


class _RecordThreads(Callback):
    """Records torch.get_num_threads() at every meta-step in ``seen`` (a class
    attribute: the estimator fits copies of its callbacks); optionally fails."""

    seen = []

    def __init__(self, fail=False):
        self.fail = fail
        _RecordThreads.seen = []

    def on_batch_begin(self, net, **kwargs):
        _RecordThreads.seen.append(torch.get_num_threads())
        if self.fail:
            raise RuntimeError("callback failure on purpose")


@pytest.mark.parametrize("others, expected", [(0, 2), (1, 1), (3, 1)])
def test_fit_runs_with_the_idle_cores_and_restores_the_threads(
        digits, two_threads, busy, others, expected):
    busy(others)
    record = _RecordThreads()
    FOMAMLClassifier(callbacks=[record], **FAST).fit(*digits)
    assert set(record.seen) == {expected}
    assert torch.get_num_threads() == 2


def test_a_failing_fit_restores_the_threads_too(digits, two_threads, busy):
    busy(1)
    record = _RecordThreads(fail=True)
    clf = FOMAMLClassifier(callbacks=[record], **FAST)
    with pytest.raises(RuntimeError, match="callback failure on purpose"):
        clf.fit(*digits)
    assert record.seen == [1]
    assert torch.get_num_threads() == 2
    assert not hasattr(clf, "meta_model_")


def test_the_regressor_and_warm_start_restore_the_threads(two_threads, busy):
    busy(1)
    rng = np.random.default_rng(0)
    X, groups = rng.normal(size=(60, 3)).astype(np.float32), np.repeat(np.arange(6), 10)
    y = X @ rng.normal(size=3)
    record = _RecordThreads()
    reg = FOMAMLRegressor(hidden_layer_sizes=(8,), k_shot=3, n_query=3, max_epochs=1,
                          meta_batches_per_epoch=2, meta_batch_size=2, device="cpu",
                          random_state=0,
                          warm_start=True, callbacks=[record])
    reg.fit(X, y, groups=groups)
    reg.fit(X, y, groups=groups)  # warm start: continues the net
    assert record.seen and set(record.seen) == {1}
    assert torch.get_num_threads() == 2


def test_keep_turns_it_off_and_a_bad_value_names_the_variable(
        digits, two_threads, busy, monkeypatch):
    busy(1)
    monkeypatch.setenv(ENV_VARIABLE, "keep")
    record = _RecordThreads()
    FOMAMLClassifier(callbacks=[record], **FAST).fit(*digits)
    assert set(record.seen) == {2}
    monkeypatch.setenv(ENV_VARIABLE, "fewer")
    clf = FOMAMLClassifier(**FAST)
    with pytest.raises(ValueError, match=f"{ENV_VARIABLE}='fewer' is not supported; use"):
        clf.fit(*digits)
    assert torch.get_num_threads() == 2


def test_a_neighbour_that_starts_or_ends_during_fit_is_followed(
        digits, two_threads, busy, monkeypatch):
    # Counted at the start (alone), then in each meta-step: a neighbour is
    # seen in steps 2 and 3, gone in step 4. The callback records the count
    # at the start of a step, before that step's count.
    busy([0, 0, 1, 1, 0])
    monkeypatch.setattr(_threads, "RECHECK_SECONDS", 0.0)
    record = _RecordThreads()
    clf = FOMAMLClassifier(callbacks=[record], **{**FAST, "meta_batches_per_epoch": 3})
    clf.fit(*digits)
    assert record.seen == [2, 2, 1, 1, 2, 2]
    assert torch.get_num_threads() == 2


def test_recheck_outside_a_fit_changes_nothing(two_threads, busy, monkeypatch):
    busy(2)
    monkeypatch.setattr(_threads, "RECHECK_SECONDS", 0.0)
    assert recheck() == 2 and torch.get_num_threads() == 2
    with fit_threads("cpu") as n:
        assert n == 1
        busy(0)
        assert recheck() == 2 == torch.get_num_threads()  # never above the start
    assert torch.get_num_threads() == 2 and recheck() == 2


def test_other_devices_one_thread_and_distributed_fits_are_left_alone(busy, monkeypatch):
    busy(5)
    before = torch.get_num_threads()
    with monkeypatch.context() as m:  # one rank of two: same threads on every rank
        m.setattr(torch.distributed, "is_initialized", lambda: True)
        m.setattr(torch.distributed, "get_world_size", lambda *a: 2)
        torch.set_num_threads(2)
        try:
            with fit_threads("cpu") as n:
                assert n == torch.get_num_threads() == 2
        finally:
            torch.set_num_threads(before)
    with fit_threads("cuda") as n:  # no GPU needed: only the device type is read
        assert n == torch.get_num_threads() == before
    torch.set_num_threads(1)
    try:
        with fit_threads("cpu") as n:
            assert n == 1
    finally:
        torch.set_num_threads(before)


def test_fit_thread_count_never_raises_the_count():
    assert fit_thread_count(current=1, others=0, cores=8) == 1
    assert fit_thread_count(current=8, others=2, cores=8) == 6
    assert fit_thread_count(current=2, others=2, cores=2) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_busy_process_is_counted():
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert other_running_threads(samples=9) >= 1
    finally:
        child.kill()
        child.wait()


def test_the_shared_machine_benchmark_runs(monkeypatch, capsys):
    """benchmarks/shared_machine.py at tiny sizes (1 thread: old = new)."""
    import importlib.util
    import pathlib

    bench = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    spec = importlib.util.spec_from_file_location("shared_machine_bench",
                                                  bench / "shared_machine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    before = torch.get_num_threads()
    try:
        assert module.main(["--threads", "1", "--steps", "1", "--repeats", "1",
                            "--neighbours", "1", "--n-filters", "2", "--side", "8",
                            "--delay", "0.2", "--no-machine-line"]) == 0
    finally:
        torch.set_num_threads(before)
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].split()[0] == "none" and lines[-1].split()[:2] == ["1", "thread"]


def test_threads_of_a_busy_host_outside_a_pinned_container_do_not_count():
    """/proc/loadavg counts the whole machine: in a container pinned to 2 of
    64 cores, up to 62 busy threads may run elsewhere; beyond that they share
    this process's cores."""
    from fomaml_sklearn._threads import fit_thread_count

    assert fit_thread_count(current=2, others=60, cores=2, host=64) == 2
    assert fit_thread_count(current=2, others=63, cores=2, host=64) == 1
    assert fit_thread_count(current=2, others=1, cores=2) == 1  # host defaults to cores
