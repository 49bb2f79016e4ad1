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
from fomaml_sklearn.distributed import all_reduce_sum, shard, world

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
    parameters by the same -g as one process's."""
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
        for p0, a, b in zip(init, one, two):
            np.testing.assert_allclose(p0 - b, p0 - a, rtol=1e-5, atol=1e-6)
        assert any(not np.allclose(p0, b) for p0, b in zip(init, two))


def test_two_processes_end_with_the_one_process_parameters_and_predictions(tmp_path):
    codes, errs, _ = _run("steps", 1, tmp_path)
    assert codes == [0], errs
    codes, errs, _ = _run("steps", 2, tmp_path)
    assert codes == [0, 0], errs
    one, ranks = _load(tmp_path, 0, 1), [_load(tmp_path, r, 2) for r in (0, 1)]
    assert one["n_meta_steps"] == ranks[0]["n_meta_steps"] == 8
    for two in ranks:
        for a, b in zip(_params(one), _params(two)):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(two["proba"], one["proba"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(two["history_train_loss"], one["history_train_loss"],
                                   rtol=1e-5)
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
        np.testing.assert_allclose(two["history_valid_loss"], one["history_valid_loss"],
                                   rtol=1e-4)
        np.testing.assert_allclose(two["history_valid_acc"], one["history_valid_acc"],
                                   atol=1e-6)
        np.testing.assert_array_equal(two["event_cp"], one["event_cp"])
        for a, b in zip(_params(one), _params(two)):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    # Only rank 0 wrote to the checkpoint folder the user gave.
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == sorted(
        p.name for p in (tmp_path / "one" / "checkpoints").iterdir())


def test_a_failing_rank_ends_every_rank_with_an_error_naming_it(tmp_path):
    codes, errs, seconds = _run("raise", 2, tmp_path, timeout=90)
    assert codes[0] != 0 and codes[1] != 0
    assert "simulated failure" in errs[1] and "rank 1 of 2" in errs[1]
    assert "rank 0 of 2: the all-reduce of the meta-gradient failed" in errs[0], errs[0][-2000:]
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
