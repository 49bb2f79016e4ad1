"""The meta-batch sharded over processes with ``torch.distributed``.

Every process (rank) draws the *same* meta-batch from the same seeds; rank
``r`` of ``W`` computes the meta-gradients of its contiguous slice of the
tasks, and every rank receives every task's meta-gradient (an all-gather in
column buckets) and adds them in float64 in task order, as one process
does (:func:`ordered_sum`). Which tasks make up a meta-batch, and the
arithmetic of their mean, therefore do not depend on the number of
processes: with the same ``random_state`` and the same threads per
process, 1, 2 or 4 processes end with bitwise the same parameters. (The
grouped path, ``task_batching="grouped"``, computes a slice at once and
all-reduces the slices' sums: the same to float rounding only.)

A fit joins the process group that is already initialised (by the user's
script) or, under ``torchrun`` (the variables of :data:`ENV_VARIABLES`),
checks the environment (:func:`check_env`) and initialises it: gloo on
CPUs, NCCL on GPUs (one process per GPU, ``cuda:LOCAL_RANK``). The group's
timeout bounds how long a rank waits for a dead or hung peer; for a group
this module creates it is ``FOMAML_SKLEARN_DIST_TIMEOUT`` seconds (default
300).
"""

import datetime
import math
import os
import socket

import torch

__all__ = [
    "DEFAULT_TIMEOUT",
    "all_reduce_sum",
    "ENV_VARIABLES",
    "broadcast_ints",
    "check_env",
    "init_from_env",
    "ordered_sum",
    "rank_note",
    "shard",
    "world",
]

#: Seconds a rank waits in a collective before it fails (groups created here).
DEFAULT_TIMEOUT = 300.0
_BUCKET_BYTES = 25 * 1024 * 1024  # as DistributedDataParallel's default bucket


def _dist():
    if not torch.distributed.is_available():
        return None
    return torch.distributed


def world():
    """``(rank, world_size)`` of the current process group; ``(0, 1)`` without one.

    Examples
    --------
    >>> from fomaml_sklearn.distributed import world
    >>> world()
    (0, 1)
    """
    dist = _dist()
    if dist is None or not dist.is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


#: The environment variables a fit reads, and what each may hold (the
#: errors and docs/user_guide/scaling.rst say the same).
ENV_VARIABLES = {
    "WORLD_SIZE": "a positive integer, the number of processes (torchrun sets it)",
    "RANK": "an integer from 0 to WORLD_SIZE - 1, this process's rank",
    "LOCAL_RANK": "an integer from 0 to WORLD_SIZE - 1, the rank on this machine "
                  "(with device='cuda', below the number of visible GPUs)",
    "MASTER_ADDR": "the host name or address of rank 0's machine",
    "MASTER_PORT": "a TCP port number from 1 to 65535 on rank 0's machine",
    "FOMAML_SKLEARN_DIST_TIMEOUT": "a positive number of seconds (default "
                                   f"{DEFAULT_TIMEOUT:g})",
}


def _env_int(name, low, high, problems, note=""):
    """``int(os.environ[name])`` if it lies in ``[low, high]``; else note why not."""
    raw = os.environ[name]
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        problems.append(f"{name}={raw!r} is not {ENV_VARIABLES[name]}{note}")
        return None
    return value


def _env_timeout(problems):
    """``FOMAML_SKLEARN_DIST_TIMEOUT`` as a timedelta (the default when unset)."""
    raw = os.environ.get("FOMAML_SKLEARN_DIST_TIMEOUT")
    if raw is None:
        return datetime.timedelta(seconds=DEFAULT_TIMEOUT)
    try:
        seconds = float(raw)
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError
        return datetime.timedelta(seconds=seconds)
    except (ValueError, OverflowError):
        problems.append(f"FOMAML_SKLEARN_DIST_TIMEOUT={raw!r} is not "
                        f"{ENV_VARIABLES['FOMAML_SKLEARN_DIST_TIMEOUT']}")
        return None


def check_env(device=None):
    """Read and check the environment a fit reads, before any connection.

    Every variable of :data:`ENV_VARIABLES` that is set must hold what is
    allowed; with ``WORLD_SIZE`` above 1 (torchrun), ``RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT`` must be set, ``RANK`` below
    ``WORLD_SIZE`` and ``MASTER_ADDR`` must resolve. A wrong value would
    otherwise surface minutes later as a socket time-out.

    Parameters
    ----------
    device : torch.device or None, default=None
        The estimator's device (a CUDA device also checks ``LOCAL_RANK``
        against the visible GPUs).

    Returns
    -------
    settings : dict or None
        ``world_size``, ``rank``, ``local_rank`` (None when unset) and
        ``timeout`` (a timedelta) when the environment asks for a
        distributed fit, else None.

    Raises
    ------
    ValueError
        Naming every variable that is missing or wrong, its value and what
        is allowed.

    Examples
    --------
    >>> from fomaml_sklearn.distributed import check_env
    >>> check_env() is None  # no WORLD_SIZE: one process
    True
    """
    problems = []
    timeout = _env_timeout(problems)
    world_size = 1
    if "WORLD_SIZE" in os.environ:
        world_size = _env_int("WORLD_SIZE", 1, None, problems)
    settings = None
    if world_size is not None and world_size > 1:
        missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            problems.append(
                f"WORLD_SIZE={os.environ['WORLD_SIZE']} asks for a distributed fit, but "
                f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set")
        settings = {"world_size": world_size, "timeout": timeout, "rank": None,
                    "local_rank": None}
    if world_size is not None and "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank = _env_int("RANK", 0, world_size - 1, problems, f" (WORLD_SIZE={world_size})")
        if settings is not None:
            settings["rank"] = rank
    if settings is not None:
        if "LOCAL_RANK" in os.environ:
            settings["local_rank"] = _env_int("LOCAL_RANK", 0, world_size - 1, problems,
                                              f" (WORLD_SIZE={world_size})")
        local = settings["local_rank"] or 0
        cuda = device is not None and torch.device(device).type == "cuda"
        if cuda and local >= torch.cuda.device_count():
            problems.append(f"LOCAL_RANK={local} asks for GPU cuda:{local}, but "
                            f"{torch.cuda.device_count()} GPU(s) are visible")
        if "MASTER_PORT" in os.environ:
            _env_int("MASTER_PORT", 1, 65535, problems)
        addr = os.environ.get("MASTER_ADDR")
        if addr is not None:
            try:
                if not addr.strip():
                    raise OSError("empty")
                socket.getaddrinfo(addr, None)
            except OSError as exc:  # socket.gaierror included
                problems.append(f"MASTER_ADDR={addr!r} does not resolve ({exc}); it must be "
                                f"{ENV_VARIABLES['MASTER_ADDR']}")
    if problems:
        fixes = []
        if any(not p.startswith("FOMAML_SKLEARN_DIST_TIMEOUT") for p in problems):
            fixes.append("launch with torchrun (python -m torch.distributed.run "
                         "--nproc-per-node N script.py), which sets WORLD_SIZE, RANK, "
                         "LOCAL_RANK, MASTER_ADDR and MASTER_PORT, or unset WORLD_SIZE for "
                         "one process")
        if any(p.startswith("FOMAML_SKLEARN_DIST_TIMEOUT") for p in problems):
            fixes.append("set FOMAML_SKLEARN_DIST_TIMEOUT to a number of seconds such as "
                         f"{DEFAULT_TIMEOUT:g}, or unset it")
        raise ValueError("The distributed environment is not usable: " + "; ".join(problems)
                         + ". To fix it, " + "; ".join(fixes) + ".")
    return settings


def init_from_env(device=None):
    """Initialise the process group from ``torchrun``'s environment, if any.

    Does nothing when a group is already initialised, or when the
    environment does not describe one (``WORLD_SIZE`` unset or 1). The
    environment is checked first (:func:`check_env`), before any socket is
    opened.

    Parameters
    ----------
    device : torch.device or None, default=None
        The estimator's device: a CUDA device selects NCCL and the process's
        ``cuda:LOCAL_RANK``, anything else gloo.

    Returns
    -------
    device : torch.device or None
        The device this rank should use (``device`` unchanged except for
        CUDA under torchrun).

    Raises
    ------
    ValueError
        When a variable the fit reads is missing or wrong (:func:`check_env`).
    """
    dist = _dist()
    if dist is not None and dist.is_initialized():
        return device  # the user's group: nothing is read from the environment
    settings = check_env(device)
    if settings is None:
        return device
    if dist is None:
        raise RuntimeError(
            f"WORLD_SIZE={settings['world_size']} asks for a distributed fit, but this "
            "build of torch has no torch.distributed; install a build with it, or unset "
            "WORLD_SIZE.")
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        device = torch.device("cuda", settings["local_rank"] or 0)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", init_method="env://",
                            rank=settings["rank"], world_size=settings["world_size"],
                            timeout=settings["timeout"])
    return device


def shard(n_tasks, rank, world_size):
    """The contiguous slice ``[lo, hi)`` of ``n_tasks`` that ``rank`` computes.

    Slices differ in size by at most one task; a rank may get none when
    there are more ranks than tasks.

    Examples
    --------
    >>> from fomaml_sklearn.distributed import shard
    >>> [shard(5, r, 2) for r in range(2)]
    [(0, 2), (2, 5)]
    """
    return n_tasks * rank // world_size, n_tasks * (rank + 1) // world_size


def all_reduce_sum(tensors, bucket_bytes=_BUCKET_BYTES):
    """Sum tensors over all ranks in place, in flat buckets (few collectives).

    The tensors are packed into float64 buffers of at most ``bucket_bytes``
    (one per device and dtype run), each all-reduced once and unpacked.

    Parameters
    ----------
    tensors : list of torch.Tensor
        Summed in place.
    bucket_bytes : int
        Largest buffer size.

    Returns
    -------
    n_calls : int
        Number of all-reduce calls made.
    """
    dist = _dist()
    n_calls = 0
    bucket, size = [], 0
    for t in list(tensors) + [None]:
        full = t is None or (bucket and (size + t.numel() * 8 > bucket_bytes
                                         or t.device != bucket[0].device))
        if full and bucket:
            flat = torch.cat([b.reshape(-1).to(torch.float64) for b in bucket])
            dist.all_reduce(flat)
            n_calls += 1
            offset = 0
            for b in bucket:
                n = b.numel()
                b.copy_(flat[offset:offset + n].view_as(b))
                offset += n
            bucket, size = [], 0
        if t is not None:
            bucket.append(t)
            size += t.numel() * 8
    return n_calls


def ordered_sum(rows, n_rows, width, dtype=torch.float32, device=None,
                bucket_bytes=_BUCKET_BYTES):
    """The float64 sum of a table's rows, added one row at a time in row order.

    The table has ``n_rows`` rows; rank ``r`` holds rows
    ``shard(n_rows, r, world_size)`` (all of them in one process). Every
    rank receives every row (``all_gather``, in column buckets of at most
    ``bucket_bytes`` of gathered data) and adds them, converted to float64,
    to zeros in row order. The additions are the same, in the same order,
    whatever the number of processes: 1, 2 or 4 processes give bitwise the
    same sum (a float sum depends on its order; an all-reduce of partial
    sums would not).

    Parameters
    ----------
    rows : iterable of torch.Tensor
        This rank's rows, 1-D tensors of length ``width``. In one process
        they are consumed one at a time (never all held).
    n_rows : int
        Rows of the whole table.
    width : int
        Length of a row.
    dtype : torch.dtype, default=torch.float32
        What the rows are sent as (exact for rows of this dtype or narrower).
    device : torch.device or None, default=None
        Where the rows and the sum live.
    bucket_bytes : int
        Largest gathered buffer.

    Returns
    -------
    total : torch.Tensor
        The float64 sum, of length ``width``.

    Examples
    --------
    >>> import torch
    >>> from fomaml_sklearn.distributed import ordered_sum
    >>> ordered_sum([torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])], 2, 2)
    tensor([4., 6.], dtype=torch.float64)
    """
    rank, world_size = world()
    total = torch.zeros(width, dtype=torch.float64, device=device)
    if world_size == 1:
        for row in rows:
            total.add_(row.to(dtype))
        return total
    lo, hi = shard(n_rows, rank, world_size)
    n_max = max(1, -(-n_rows // world_size))  # the largest shard
    padded = torch.zeros((n_max, width), dtype=dtype, device=device)
    n_local = 0
    for i, row in enumerate(rows):
        padded[i] = row
        n_local = i + 1
    if n_local != hi - lo:
        raise ValueError(f"rank {rank} holds {n_local} rows of {n_rows}, not {hi - lo}.")
    columns = max(1, bucket_bytes // (world_size * n_max * padded.element_size()))
    for start in range(0, width, columns):
        part = padded[:, start:start + columns].contiguous()
        gathered = [torch.empty_like(part) for _ in range(world_size)]
        _dist().all_gather(gathered, part)
        block = total[start:start + columns]
        for r, rank_rows in enumerate(gathered):
            r_lo, r_hi = shard(n_rows, r, world_size)
            for row in rank_rows[:r_hi - r_lo]:
                block.add_(row)
    return total


def broadcast_ints(values):
    """Rank 0's integers, on every rank (seeds drawn from a global generator
    must agree for the ranks to draw the same meta-batches)."""
    rank, world_size = world()
    if world_size == 1:
        return list(values)
    buffer = torch.tensor(list(values), dtype=torch.int64)
    if _dist().get_backend() == "nccl":
        buffer = buffer.cuda()
    _dist().broadcast(buffer, src=0)
    return [int(v) for v in buffer.cpu()]


def rank_note(exc, where):
    """Add which rank failed, and where, to an exception's notes."""
    rank, world_size = world()
    if world_size > 1 and hasattr(exc, "add_note"):
        exc.add_note(f"[fomaml_sklearn] raised on rank {rank} of {world_size} during "
                     f"{where}.")
    return exc


def nan_to_zero(value):
    """``value``, or 0.0 for nan (an accuracy of real-valued targets)."""
    return 0.0 if isinstance(value, float) and math.isnan(value) else value


def launch_with_torchrun(nproc_per_node, argv, *, module="fomaml_sklearn",
                         option="--nproc-per-node"):
    """Run ``python -m module argv`` as ``nproc_per_node`` processes on this machine.

    The processes are started by ``torch.distributed.run --standalone`` (what
    ``torchrun`` runs), which sets the environment that :func:`init_from_env`
    reads; each gets ``OMP_NUM_THREADS`` = its share of the CPU cores unless
    the variable is already set. The command line's ``fomaml-sklearn train
    --nproc-per-node N`` calls this with its own arguments.

    Parameters
    ----------
    nproc_per_node : int
        Number of processes, at least 1.
    argv : list of str
        The module's arguments. ``option`` and its value (``--nproc-per-node
        N`` or ``--nproc-per-node=N``) are removed, so that the processes do
        not launch again.
    module : str, default="fomaml_sklearn"
        The module each process runs.
    option : str, default="--nproc-per-node"
        The option of ``argv`` that asked for the launch.

    Returns
    -------
    code : int
        The exit code of ``torch.distributed.run`` (0 when every process
        succeeded).
    """
    import subprocess
    import sys

    if isinstance(nproc_per_node, bool) or not isinstance(nproc_per_node, int) \
            or nproc_per_node < 1:
        raise ValueError(f"nproc_per_node={nproc_per_node!r} is not an int >= 1; pass the "
                         "number of processes to start, such as 2.")
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(f"{option}="):
            args.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc_per_node}", "-m", module, *args]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc_per_node)))
    return subprocess.call(cmd, env=env)


__all__ += ["launch_with_torchrun"]
