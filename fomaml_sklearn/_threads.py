"""Intra-op threads of a fit on a shared machine.

torch's CPU kernels run on OpenMP threads (libgomp in the Linux wheels).
Between parallel regions those threads spin-wait for a while before they
sleep. With as many threads as cores and another busy process on the same
cores, the spinning threads and the other process take turns on the cores,
and a fit with 2 threads on 2 cores was measured 4-15x slower than alone
(not 2x). With no more threads than idle cores, nobody spins on a core that
another process needs.

The wait policy is not a run-time setting: libgomp reads ``OMP_WAIT_POLICY``
and ``GOMP_SPINCOUNT`` once, when it is loaded (with ``import torch``), and
neither torch nor the OpenMP API has a call that changes it afterwards
(Intel's runtime has ``kmp_set_blocktime``, libgomp nothing alike). So a fit
cannot rely on it; what a fit can change is the number of threads.

:func:`fit_threads` does that: at the start of a fit on the CPU it counts the
threads of *other* processes that are running right now (a few samples of
``/proc/loadavg``'s running count, minus this process's own running threads,
over about 10 ms) and, when fewer cores than torch's thread count are idle,
runs the fit with as many threads as there are idle cores (at least 1). The
training loop calls :func:`recheck` once per meta-step, which counts again
at most every :data:`RECHECK_SECONDS` and follows a neighbour that starts or
ends during the fit. The count never exceeds the caller's, and the caller's
``torch.get_num_threads()`` is put back when the fit ends, also when it
fails. Set the environment variable ``FOMAML_SKLEARN_FIT_THREADS=keep`` to
turn it off (for benchmarks that must run a fixed number of threads, say).

Where ``/proc`` is missing (not Linux), and in a distributed fit (several
ranks, whose bitwise agreement needs the same threads per process), nothing
changes.
"""

import concurrent.futures
import contextlib
import os
import queue
import threading
import time

import torch

__all__ = ["ENV_VARIABLE", "RECHECK_SECONDS", "TaskThreads", "fit_thread_count",
           "fit_threads", "other_running_threads", "recheck"]

#: The environment variable that turns the adjustment off (value ``keep``).
ENV_VARIABLE = "FOMAML_SKLEARN_FIT_THREADS"
_POLICIES = ("auto", "keep")
#: Seconds between two counts during a fit (:func:`recheck`).
RECHECK_SECONDS = 2.0
_active = threading.local()  # the running fit's budget, per calling thread


def _running_total():
    """Runnable scheduling entities of the whole system, now (``/proc/loadavg``'s
    fourth field, ``running/total``)."""
    with open("/proc/loadavg") as f:
        return int(f.read().split()[3].split("/")[0])


def _own_running():
    """This process's threads in state R (running or runnable), now."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended meanwhile
            continue
        # The state follows the command name, which is in parentheses.
        if stat[stat.rindex(")") + 2] == "R":
            count += 1
    return count


def other_running_threads(samples=5, interval=0.002):
    """The number of threads of other processes running now (Linux).

    The median over ``samples`` readings ``interval`` seconds apart of the
    system's running count minus this process's running threads (the reading
    thread itself is one of them), so a short burst of another process does
    not count, and a busy one (always runnable) does.

    Returns
    -------
    n : int or None
        None where ``/proc`` cannot be read.
    """
    counts = []
    try:
        for i in range(samples):
            if i:
                time.sleep(interval)
            # Own threads counted before and after the total, the larger
            # count subtracted: a thread of ours that starts or stops waiting
            # in between is never taken for another process's (an error, if
            # any, is towards fewer busy cores, that is towards no change).
            own = _own_running()
            total = _running_total()
            counts.append(max(0, total - max(own, _own_running())))
    except (OSError, ValueError, IndexError):
        return None
    counts.sort()
    return counts[len(counts) // 2]


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def fit_thread_count(current=None, others=None, cores=None, host=None):
    """The intra-op threads for a fit: ``current`` (default
    ``torch.get_num_threads()``), or fewer when other processes keep cores busy.

    Parameters
    ----------
    current : int or None
        The thread count the caller runs with.
    others : int or None
        Threads of other processes running now; ``None`` measures it
        (:func:`other_running_threads`); unknown leaves ``current``.
    cores : int or None
        Cores this process may run on (``os.sched_getaffinity``).
    host : int or None
        Cores of the whole machine (``os.cpu_count()`` when ``cores`` is
        measured, else ``cores``). ``/proc/loadavg`` counts the threads of
        the whole machine: in a container pinned to a few of a busy host's
        cores, up to ``host - cores`` of the others are taken to run on the
        cores this process may not use.

    Returns
    -------
    n : int
        ``min(current, max(1, cores - others))``, where ``others`` first
        loses the ``host - cores`` threads that may run elsewhere.

    Examples
    --------
    >>> fit_thread_count(current=2, others=1, cores=2)
    1
    >>> fit_thread_count(current=2, others=0, cores=2)
    2
    >>> fit_thread_count(current=4, others=9, cores=8)
    1
    >>> fit_thread_count(current=2, others=60, cores=2, host=64)  # a pinned container
    2
    """
    current = torch.get_num_threads() if current is None else current
    if others is None:
        others = other_running_threads()
        if others is None:
            return current
    if cores is None:
        cores = _cores()
        host = os.cpu_count() or cores if host is None else host
    host = cores if host is None else host
    others = max(0, others - max(0, host - cores))
    return max(1, min(current, cores - others))


def _policy():
    value = os.environ.get(ENV_VARIABLE, "auto").strip().lower() or "auto"
    if value not in _POLICIES:
        raise ValueError(
            f"The environment variable {ENV_VARIABLE}={os.environ[ENV_VARIABLE]!r} is not "
            f"supported; use one of {', '.join(map(repr, _POLICIES))} ('keep' runs fit "
            "with torch.get_num_threads() as it is), or unset it.")
    return value


def _distributed():
    """Whether this process is one rank of several: their bitwise agreement
    across world sizes needs the same threads per process, so no change."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _Budget:
    """The thread count a fit started with, and when to count again."""

    def __init__(self, before):
        self.before = before
        self.next_check = time.monotonic() + RECHECK_SECONDS


@contextlib.contextmanager
def fit_threads(device="cpu"):
    """Run the body with :func:`fit_thread_count` intra-op threads on a CPU
    device (followed by :func:`recheck` during the body), and restore the
    caller's ``torch.get_num_threads()`` afterwards.

    Only the calling thread's count changes (torch keeps OpenMP's count per
    thread). On other devices, with one thread, in a distributed fit (several
    ranks), or with ``FOMAML_SKLEARN_FIT_THREADS=keep``, nothing changes.

    The thread count can change the last bits of a result (a reduction split
    over threads rounds differently), so two seeded fits with 2 threads agree
    bit for bit only under the same load; ``keep`` (or one thread) makes them
    independent of it.

    Yields
    ------
    n : int
        The intra-op threads the body starts with.
    """
    before = torch.get_num_threads()
    if (torch.device(device).type != "cpu" or _policy() == "keep" or before == 1
            or _distributed()):
        yield before
        return
    outer = getattr(_active, "budget", None)
    _active.budget = _Budget(before)
    try:
        n = fit_thread_count(before)
        if n != before:
            torch.set_num_threads(n)
        yield n
    finally:
        _active.budget = outer
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def recheck():
    """Count the other processes' running threads again, at most every
    :data:`RECHECK_SECONDS`, and set this fit's threads accordingly (between
    1 and the count the fit started with). The training loop calls it once
    per meta-step; outside :func:`fit_threads` it does nothing.

    Returns
    -------
    n : int
        The intra-op threads from now on.
    """
    budget = getattr(_active, "budget", None)
    now = time.monotonic()
    if budget is None or now < budget.next_check:
        return torch.get_num_threads()
    n = fit_thread_count(budget.before, others=other_running_threads(samples=3))
    budget.next_check = time.monotonic() + RECHECK_SECONDS
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n


class TaskThreads:
    """The tasks of a meta-batch on threads, one intra-op thread each
    (``task_batching="threads"``).

    A meta-step's tasks are small: a few images through a small network,
    many short kernels each. Two intra-op threads split every kernel and
    meet after it; two threads that take one task each do not wait for each
    other (torch releases the GIL inside its operators). On the 2-core CPUs
    measured this ran 1.1-1.3x faster than the loop on 2 intra-op threads
    (``docs/performance.md``).

    Each worker thread adapts on its own fork of the runner
    (``runner.fork()``: its own scratch copy and its own module for
    functional calls). The number of workers is the
    caller's ``torch.get_num_threads()`` at each call, so :func:`fit_threads`
    and :func:`recheck` govern it as they govern the loop's threads. Every
    task runs with one intra-op thread, with one worker as with several, so
    the results (returned in task order) do not depend on the number of
    workers, nor on the load. The caller's thread count is unchanged
    afterwards. ``torch.set_num_threads(1)`` in a worker also sets torch's
    default for threads started later: after each call it is set back to the
    calling thread's count (threads another part of the program starts during
    a call begin with one intra-op thread). Each call holds its tasks'
    results until all are done (one row per task).

    Parameters
    ----------
    runner : TaskRunner
        The training loop's runner; forks are made when first needed.
    """

    def __init__(self, runner):
        self.runners = [runner]
        self._pool, self._pool_size = None, 0

    def map(self, function, items):
        """``[function(runner, item) for item in items]``, in order, the
        calls spread over up to ``torch.get_num_threads()`` threads; the
        first exception (in item order) is raised after all calls ended."""
        items = list(items)
        caller = torch.get_num_threads()
        workers = max(1, min(caller, len(items)))
        if workers == 1:
            try:
                if caller != 1:
                    torch.set_num_threads(1)
                return [function(self.runners[0], item) for item in items]
            finally:
                if caller != 1:
                    torch.set_num_threads(caller)
        # Forks only: torch.func.functional_call swaps a module's tensors
        # while it runs, so no worker may run theta through the meta-model's
        # own backbone while another reads the meta-parameters.
        while len(self.runners) < workers + 1:
            self.runners.append(self.runners[0].fork())
        if self._pool_size < workers:
            self.close()
            self._pool = concurrent.futures.ThreadPoolExecutor(
                workers, thread_name_prefix="fomaml_sklearn_task")
            self._pool_size = workers
        free = queue.SimpleQueue()
        for runner in self.runners[1:workers + 1]:
            free.put(runner)

        def job(item):
            if torch.get_num_threads() != 1:  # this worker thread's own count
                torch.set_num_threads(1)
            runner = free.get()
            try:
                return function(runner, item)
            finally:
                free.put(runner)

        futures = [self._pool.submit(job, item) for item in items]
        try:
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()
            concurrent.futures.wait(futures)
            torch.set_num_threads(caller)  # also torch's default for new threads

    def close(self):
        """End the worker threads (they also end with the interpreter)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._pool, self._pool_size = None, 0

    def __getstate__(self):
        # A pickle (skorch's Checkpoint with f_pickle) holds no threads; a
        # copy makes its own when first used.
        return dict(self.__dict__, _pool=None, _pool_size=0)
