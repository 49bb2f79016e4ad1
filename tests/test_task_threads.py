"""task_batching="threads": a meta-batch's tasks on threads, one intra-op
thread each, with the loop's arithmetic (bitwise) and no thread setting left
behind."""

import pickle
import threading

import numpy as np
import pytest
import torch

from fomaml_sklearn import FOMAMLClassifier
from fomaml_sklearn._config import resolve_task_batching
from fomaml_sklearn._threads import TaskThreads
from fomaml_sklearn.algorithms import get_algorithm
from fomaml_sklearn.algorithms.runner import TaskRunner
from fomaml_sklearn.backbones import Conv4Backbone, MLPBackbone
from fomaml_sklearn.heads import MetaModel

CONCURRENT = ["fomaml", "maml", "reptile", "anil", "metasgd"]


@pytest.fixture(scope="module")
def images():
    """40 classes of random 12x12 images, 6 each (the API and arithmetic,
    not learning)."""
    rng = np.random.default_rng(0)
    return rng.random((240, 144), dtype=np.float32), np.repeat(np.arange(40), 6)


@pytest.fixture
def threads():
    """Run the body with ``n`` intra-op threads, the caller's count put back."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _fit(images, task_batching, algorithm="fomaml"):
    X, y = images
    return FOMAMLClassifier(
        "conv4", n_filters=8, input_shape=(1, 12, 12), n_ways=4, k_shot=1, n_query=2,
        meta_batch_size=5, meta_batches_per_epoch=3, max_epochs=1, algorithm=algorithm,
        task_batching=task_batching, precision="float32", device="cpu",
        adapt_on_fit=False, random_state=0, verbose=0).fit(X, y)


@pytest.mark.parametrize("algorithm", CONCURRENT)
def test_threads_take_the_same_steps_as_the_one_thread_loop(images, threads, algorithm,
                                                            monkeypatch):
    monkeypatch.setenv("FOMAML_SKLEARN_FIT_THREADS", "keep")  # 2 threads even if busy
    forks = []
    fork = TaskRunner.fork
    monkeypatch.setattr(TaskRunner, "fork", lambda self: forks.append(1) or fork(self))
    threads(1)
    loop = _fit(images, "loop", algorithm)
    assert not forks
    threads(2)
    on_threads = _fit(images, "threads", algorithm)
    assert len(forks) == 2  # the tasks ran on 2 worker threads (forks), not in the loop
    assert (loop.task_batching_, on_threads.task_batching_) == ("loop", "threads")
    assert torch.get_num_threads() == 2  # the caller's count, unchanged
    for (name, a), b in zip(loop.meta_model_.named_parameters(),
                            on_threads.meta_model_.parameters()):
        assert torch.equal(a, b), name
    assert loop.history_[-1]["train_loss"] == on_threads.history_[-1]["train_loss"]


def test_threads_results_do_not_depend_on_the_number_of_threads(images, threads,
                                                                monkeypatch):
    monkeypatch.setenv("FOMAML_SKLEARN_FIT_THREADS", "keep")
    threads(1)
    one = _fit(images, "threads")
    threads(2)
    two = _fit(images, "threads")
    for a, b in zip(one.meta_model_.parameters(), two.meta_model_.parameters()):
        assert torch.equal(a, b)


def test_auto_takes_threads_on_the_cpu_where_the_rule_allows_it(images):
    X, y = images
    assert _fit(images, "auto").task_batching_ == "threads"
    meta = MetaModel(MLPBackbone(4, (8,)), 4)
    for name in CONCURRENT:
        assert get_algorithm(name).concurrent_tasks
        assert resolve_task_batching("auto", get_algorithm(name), meta, "cpu") == "threads"
    # iMAML counts its safeguards across tasks: the loop.
    imaml = get_algorithm("imaml")
    assert not imaml.concurrent_tasks
    assert resolve_task_batching("auto", imaml, meta, "cpu") == "loop"
    with pytest.raises(ValueError, match=r"task_batching='threads' cannot be used here: the "
                                         r"rule IMAML keeps state across tasks .*'loop'"):
        resolve_task_batching("threads", imaml, meta, "cpu")
    with pytest.raises(ValueError, match=r"runs tasks on CPU threads, and the device is cuda"):
        resolve_task_batching("threads", get_algorithm("fomaml"), meta, "cuda")
    # A backbone of the user's may draw random numbers (dropout): the loop,
    # unless asked for.
    custom = MetaModel(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout()), 4)
    assert resolve_task_batching("auto", get_algorithm("fomaml"), custom, "cpu") == "loop"
    assert resolve_task_batching("threads", get_algorithm("fomaml"), custom, "cpu") == "threads"
    # On a GPU "auto" keeps the batched path where there is one.
    assert resolve_task_batching("auto", get_algorithm("fomaml"), meta, "cuda") == "grouped"


def _runner():
    meta = MetaModel(Conv4Backbone((1, 8, 8), 4), 64, head="prototype")
    return TaskRunner(meta)


def test_task_threads_keep_order_and_put_the_thread_counts_back(threads):
    threads(2)
    pool = TaskThreads(_runner())
    seen = {}

    def work(runner, item):
        seen.setdefault(threading.get_ident(), set()).add(id(runner))
        assert torch.get_num_threads() == 1  # one intra-op thread per task
        return item * item

    assert pool.map(work, range(9)) == [i * i for i in range(9)]
    assert torch.get_num_threads() == 2
    # Each worker adapts on a fork of its own, never on the caller's runner.
    runners = set().union(*seen.values())
    assert id(pool.runners[0]) not in runners and len(runners) <= 2
    # torch's default for threads started afterwards is the caller's again.
    counts = []
    t = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert counts == [2]
    # A copy (skorch's Checkpoint pickles the net) holds no threads and works.
    copy = pickle.loads(pickle.dumps(pool))
    assert copy.map(lambda runner, item: item + 1, [1, 2, 3]) == [2, 3, 4]
    pool.close()
    copy.close()


def test_task_threads_raise_the_first_error_in_task_order(threads):
    threads(2)
    pool = TaskThreads(_runner())

    def work(runner, item):
        if item in (3, 5):
            raise ValueError(f"task {item} failed")
        return item

    with pytest.raises(ValueError, match="task 3 failed"):
        pool.map(work, range(8))
    assert torch.get_num_threads() == 2
    assert pool.map(lambda runner, item: item, range(4)) == [0, 1, 2, 3]
    pool.close()


def test_one_thread_runs_the_tasks_in_the_callers_thread(threads):
    threads(1)
    pool = TaskThreads(_runner())
    me = threading.get_ident()
    assert pool.map(lambda runner, item: (threading.get_ident() == me, runner is
                                          pool.runners[0]), [0, 1]) == [(True, True)] * 2
    assert torch.get_num_threads() == 1


def test_fork_has_its_own_scratch_copy_and_shares_theta():
    runner = _runner()
    fork = runner.fork()
    assert fork.meta_model is runner.meta_model and fork.config is runner.config
    assert all(a is b for a, b in zip(fork.meta_params, runner.meta_params))
    assert all(a is not b for a, b in zip(fork.params, runner.params))
