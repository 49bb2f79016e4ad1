"""A fit sharded over processes with torch.distributed (gloo, loopback).

Each test starts the ranks as separate processes running
``tests/dist_worker.py`` (a user's script that initialises the process group
and calls ``fit`` unchanged) and compares them with one process.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fomaml_sklearn import FOMAMLClassifier
from fomaml_sklearn.distributed import (
    all_reduce_sum,
    check_env,
    init_from_env,
    ordered_sum,
    shard,
    world,
)

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")

WORKER = Path(__file__).with_name("dist_worker.py")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(scenario, world_size, out, timeout=120):
    """Run the ranks; return (returncodes, stderrs, seconds)."""
    out.mkdir(parents=True, exist_ok=True)
    port = str(_free_port())
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(r), str(world_size), port,
                               scenario, str(out)], env=env, stderr=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
             for r in range(world_size)]
    errs = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError(f"{scenario}: a rank did not end within {timeout} s")
        errs.append(err)
    return [p.returncode for p in procs], errs, time.perf_counter() - start


def _load(out, rank, world_size):
    with np.load(out / f"rank{rank}_of{world_size}.npz") as f:
        return dict(f)


def _params(result):
    return [result[k] for k in sorted((k for k in result if k.startswith("param_")),
                                      key=lambda k: int(k.split("_")[1]))]


def test_shard_covers_the_tasks_once_with_uneven_slices():
    for n in (1, 4, 5, 7):
        for w in (1, 2, 3, 8):
            slices = [shard(n, r, w) for r in range(w)]
            covered = [i for lo, hi in slices for i in range(lo, hi)]
            assert covered == list(range(n))
            assert max(hi - lo for lo, hi in slices) - min(hi - lo for lo, hi in slices) <= 1
    assert world() == (0, 1)


def test_two_processes_give_the_one_process_meta_gradient(tmp_path):
    """5 tasks over 2 ranks (2 + 3): one SGD step at rate 1 moves every rank's
    parameters by exactly the same -g as one process's."""
    codes, errs, _ = _run("grad", 1, tmp_path)
    assert codes == [0], errs
    codes, errs, _ = _run("grad", 2, tmp_path)
    assert codes == [0, 0], errs
    X = np.zeros((12, 64), dtype=np.float32)
    init = FOMAMLClassifier(n_ways=3, k_shot=1, n_query=4, precision="float32",
                            device="cpu", random_state=0, max_epochs=0,
                            adapt_on_fit=False).fit(X, np.repeat(np.arange(6), 2) % 3)
    init = [p.detach().numpy() for p in init.meta_model_.parameters()]
    one = _params(_load(tmp_path, 0, 1))
    for rank in (0, 1):
        two = _params(_load(tmp_path, rank, 2))
        for a, b in zip(one, two):
            assert torch.equal(torch.from_numpy(b), torch.from_numpy(a))
        assert any(not np.allclose(p0, b) for p0, b in zip(init, two))


def test_two_processes_end_with_the_one_process_parameters_and_predictions(tmp_path):
    codes, errs, _ = _run("steps", 1, tmp_path)
    assert codes == [0], errs
    codes, errs, _ = _run("steps", 2, tmp_path)
    assert codes == [0, 0], errs
    one, ranks = _load(tmp_path, 0, 1), [_load(tmp_path, r, 2) for r in (0, 1)]
    assert one["n_meta_steps"] == ranks[0]["n_meta_steps"] == 8
    for two in ranks:  # bitwise the same (the same additions in the same order)
        for a, b in zip(_params(one), _params(two)):
            np.testing.assert_array_equal(b, a)
        np.testing.assert_array_equal(two["proba"], one["proba"])
        np.testing.assert_array_equal(two["history_train_loss"], one["history_train_loss"])
    # Every rank holds the same estimator and the same history.
    for a, b in zip(_params(ranks[0]), _params(ranks[1])):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ranks[0]["history_train_query_acc"],
                                  ranks[1]["history_train_query_acc"])


def test_validation_early_stopping_and_checkpoint_behave_as_in_one_process(tmp_path):
    codes, errs, _ = _run("validation", 1, tmp_path / "one")
    assert codes == [0], errs
    codes, errs, _ = _run("validation", 2, tmp_path / "two")
    assert codes == [0, 0], errs
    one = _load(tmp_path / "one", 0, 1)
    ranks = [_load(tmp_path / "two", r, 2) for r in (0, 1)]
    # EarlyStopping stopped at the same epoch, on the same validation scores.
    for two in ranks:
        assert two["n_meta_steps"] == one["n_meta_steps"] < 18
        np.testing.assert_array_equal(two["history_valid_loss"], one["history_valid_loss"])
        np.testing.assert_array_equal(two["history_valid_acc"], one["history_valid_acc"])
        np.testing.assert_array_equal(two["event_cp"], one["event_cp"])
        for a, b in zip(_params(one), _params(two)):
            np.testing.assert_array_equal(b, a)
    # Only rank 0 wrote to the checkpoint folder the user gave.
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == sorted(
        p.name for p in (tmp_path / "one" / "checkpoints").iterdir())


def test_a_failing_rank_ends_every_rank_with_an_error_naming_it(tmp_path):
    codes, errs, seconds = _run("raise", 2, tmp_path, timeout=90)
    assert codes[0] != 0 and codes[1] != 0
    assert "simulated failure" in errs[1] and "rank 1 of 2" in errs[1]
    assert "rank 0 of 2: the all-gather of the meta-gradient failed" in errs[0], errs[0][-2000:]
    assert seconds < 60  # within the 20 s process-group timeout, plus start-up


def test_all_reduce_sum_packs_tensors_into_few_buckets():
    """In a one-rank gloo group: tensors of 2 dtypes are summed in flat
    buckets of at most ``bucket_bytes`` (8 bytes per float64 element)."""
    import datetime

    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
        timeout=datetime.timedelta(seconds=20))
    try:
        tensors = [torch.arange(6.0).reshape(2, 3), torch.ones(4, dtype=torch.float64),
                   torch.full((3,), 2.0), torch.zeros(1)]
        before = [t.clone() for t in tensors]
        assert all_reduce_sum(tensors) == 1
        assert all_reduce_sum(tensors, bucket_bytes=8 * 7) == 3  # [6], [4, 3], [1]
        assert all_reduce_sum(tensors, bucket_bytes=8) == 4
        for t, b in zip(tensors, before):
            assert t.dtype == b.dtype and torch.equal(t, b)  # a sum over one rank
    finally:
        torch.distributed.destroy_process_group()


def test_a_conv4_under_torchrun_ends_bitwise_as_one_process_after_30_adam_steps(tmp_path):
    """Conv-4 (8 filters) on 16x16 images, 5-way, 30 Adam meta-steps of 6 tasks
    with validation: 2 processes launched as torchrun does (fit initialises
    the group from the environment) end with exactly the parameters, losses,
    validation scores and probabilities of one process. (A float32 mean per
    slice, all-reduced, differed by 1e-8 to 1e-5 here.)"""
    codes, errs, _ = _run("env-conv4", 1, tmp_path)
    assert codes == [0], errs
    codes, errs, _ = _run("env-conv4", 2, tmp_path)
    assert codes == [0, 0], errs
    one = _load(tmp_path, 0, 1)
    assert one["n_meta_steps"] == 30
    for rank in (0, 1):
        two = _load(tmp_path, rank, 2)
        assert sorted(two) == sorted(one)
        for a, b in zip(_params(one), _params(two)):
            assert torch.equal(torch.from_numpy(b), torch.from_numpy(a))
        for key in ("proba", "history_train_loss", "history_valid_loss",
                    "history_valid_acc", "history_train_query_acc"):
            np.testing.assert_array_equal(two[key], one[key], err_msg=key)


def test_ordered_sum_adds_the_rows_in_order_in_float64():
    """(1e16 + 1) - 1e16 is 0 in float64, (1e16 - 1e16) + 1 is 1: the rows are
    added one by one in their order (as every world size does), to zeros."""
    rows = [torch.tensor([1e16, -0.0], dtype=torch.float64),
            torch.tensor([1.0, -0.0], dtype=torch.float64),
            torch.tensor([-1e16, -0.0], dtype=torch.float64)]
    total = ordered_sum(iter(rows), 3, 2, dtype=torch.float64)
    assert total.dtype == torch.float64
    assert total.tolist() == [0.0, 0.0] and not total[1].signbit()
    assert ordered_sum(iter([rows[0], rows[2], rows[1]]), 3, 2, dtype=torch.float64)[0] == 1.0


# ------------------------------------------------------------- environment
_TORCHRUN = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": "29500"}


@pytest.fixture
def torchrun_env(monkeypatch):
    """A valid torchrun environment for rank 1 of 2 (nothing listens)."""
    for name in list(_TORCHRUN) + ["FOMAML_SKLEARN_DIST_TIMEOUT"]:
        monkeypatch.delenv(name, raising=False)
    for name, value in _TORCHRUN.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


@pytest.mark.parametrize("name, value, match", [
    ("RANK", "2", r"RANK='2' is not an integer from 0 to WORLD_SIZE - 1.*\(WORLD_SIZE=2\)"),
    ("RANK", "-1", r"RANK='-1' is not an integer from 0 to WORLD_SIZE - 1"),
    ("RANK", "one", r"RANK='one' is not an integer"),
    ("WORLD_SIZE", "two", r"WORLD_SIZE='two' is not a positive integer"),
    ("WORLD_SIZE", "0", r"WORLD_SIZE='0' is not a positive integer"),
    ("WORLD_SIZE", "1.5", r"WORLD_SIZE='1.5' is not a positive integer"),
    ("LOCAL_RANK", "2", r"LOCAL_RANK='2' is not an integer from 0 to WORLD_SIZE - 1"),
    ("LOCAL_RANK", "-3", r"LOCAL_RANK='-3' is not an integer"),
    ("MASTER_PORT", "http", r"MASTER_PORT='http' is not a TCP port number from 1 to 65535"),
    ("MASTER_PORT", "0", r"MASTER_PORT='0' is not a TCP port number"),
    ("MASTER_PORT", "70000", r"MASTER_PORT='70000' is not a TCP port number"),
    ("MASTER_ADDR", " ", r"MASTER_ADDR=' ' does not resolve"),
    ("FOMAML_SKLEARN_DIST_TIMEOUT", "abc",
     r"FOMAML_SKLEARN_DIST_TIMEOUT='abc' is not a positive number of seconds.*set "
     r"FOMAML_SKLEARN_DIST_TIMEOUT to a number of seconds such as 300, or unset it"),
    ("FOMAML_SKLEARN_DIST_TIMEOUT", "0", r"FOMAML_SKLEARN_DIST_TIMEOUT='0' is not a positive"),
    ("FOMAML_SKLEARN_DIST_TIMEOUT", "-5", r"FOMAML_SKLEARN_DIST_TIMEOUT='-5' is not a positive"),
    ("FOMAML_SKLEARN_DIST_TIMEOUT", "nan", r"FOMAML_SKLEARN_DIST_TIMEOUT='nan' is not a"),
    ("FOMAML_SKLEARN_DIST_TIMEOUT", "inf", r"FOMAML_SKLEARN_DIST_TIMEOUT='inf' is not a"),
    ("FOMAML_SKLEARN_DIST_TIMEOUT", "1e300", r"FOMAML_SKLEARN_DIST_TIMEOUT='1e300' is not a"),
])
def test_a_wrong_variable_is_named_before_any_socket_is_opened(torchrun_env, name, value,
                                                                match):
    torchrun_env.setenv(name, value)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        init_from_env()
    assert time.perf_counter() - start < 5  # not a connection's time-out
    assert not torch.distributed.is_initialized()


def test_missing_variables_are_all_named(torchrun_env):
    torchrun_env.delenv("RANK")
    torchrun_env.delenv("MASTER_PORT")
    with pytest.raises(ValueError, match=r"WORLD_SIZE=2 asks for a distributed fit, but "
                                         r"RANK, MASTER_PORT are not set.*launch with torchrun"):
        check_env()
    torchrun_env.setenv("RANK", "5")
    torchrun_env.setenv("FOMAML_SKLEARN_DIST_TIMEOUT", "-1")
    # Every problem at once, each with its fix.
    with pytest.raises(ValueError, match=r"FOMAML_SKLEARN_DIST_TIMEOUT='-1'.*MASTER_PORT is "
                                         r"not set.*RANK='5'.*torchrun.*or unset it"):
        check_env()


def test_a_valid_environment_is_read_without_connecting(torchrun_env):
    torchrun_env.setenv("FOMAML_SKLEARN_DIST_TIMEOUT", "12.5")
    settings = check_env()
    assert settings["world_size"] == 2 and settings["rank"] == 1
    assert settings["local_rank"] == 1 and settings["timeout"].total_seconds() == 12.5
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        torchrun_env.delenv(name)
    torchrun_env.setenv("WORLD_SIZE", "1")
    assert check_env() is None  # one process: no group


def test_a_wrong_environment_leaves_a_fitted_estimator_unchanged(torchrun_env):
    X, y = np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32), np.arange(30) % 3
    for name in list(_TORCHRUN):
        torchrun_env.delenv(name)
    clf = FOMAMLClassifier(n_ways=3, k_shot=1, n_query=2, hidden_layer_sizes=(8,),
                           max_epochs=1, meta_batches_per_epoch=2, random_state=0).fit(X, y)
    before = clf.predict_proba(X)
    state = {k: v for k, v in vars(clf).items() if k.endswith("_")}
    for name, value in _TORCHRUN.items():
        torchrun_env.setenv(name, value)
    torchrun_env.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK='2' is not an integer from 0 to WORLD_SIZE - 1"):
        clf.fit(X, y)
    torchrun_env.setenv("RANK", "1")
    torchrun_env.setenv("FOMAML_SKLEARN_DIST_TIMEOUT", "abc")
    with pytest.raises(ValueError, match="FOMAML_SKLEARN_DIST_TIMEOUT='abc'"):
        clf.set_params(warm_start=True).fit(X, y)
    assert {k: v for k, v in vars(clf).items() if k.endswith("_")}.keys() == state.keys()
    assert all(vars(clf)[k] is v for k, v in state.items())
    np.testing.assert_array_equal(clf.predict_proba(X), before)
    assert not torch.distributed.is_initialized()
