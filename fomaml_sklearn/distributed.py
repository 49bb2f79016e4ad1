"""The meta-batch sharded over processes with ``torch.distributed``.

Every process (rank) draws the *same* meta-batch from the same seeds; rank
``r`` of ``W`` computes the meta-gradient of its contiguous slice of the
tasks, and one bucketed all-reduce per meta-step sums the slices' gradients,
losses and counts, so that every rank takes the same optimizer step on the
mean over all the tasks. Which tasks make up a meta-batch therefore does not
depend on the number of processes: with the same ``random_state``, 1, 2 or
4 processes end with the same parameters, to float tolerance (the sums are
taken in a different order).

A fit joins the process group that is already initialised (by the user's
script) or, under ``torchrun`` (the ``WORLD_SIZE``, ``RANK`` and
``MASTER_ADDR`` environment variables), initialises it: gloo on CPUs, NCCL
on GPUs (one process per GPU, ``cuda:LOCAL_RANK``). The group's timeout
bounds how long a rank waits for a dead or hung peer; for a group this
module creates it is ``FOMAML_SKLEARN_DIST_TIMEOUT`` seconds (default 300).
"""

import datetime
import math
import os

import torch

__all__ = [
    "DEFAULT_TIMEOUT",
    "all_reduce_sum",
    "broadcast_ints",
    "init_from_env",
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


def init_from_env(device=None):
    """Initialise the process group from ``torchrun``'s environment, if any.

    Does nothing when a group is already initialised, or when the
    environment does not describe one (``WORLD_SIZE`` unset or 1).

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
    """
    dist = _dist()
    if dist is None or dist.is_initialized():
        return device
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} asks for a distributed fit, but "
            f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; launch "
            "with torchrun (python -m torch.distributed.run --nproc-per-node N script.py), "
            "or unset WORLD_SIZE."
        )
    timeout = float(os.environ.get("FOMAML_SKLEARN_DIST_TIMEOUT", DEFAULT_TIMEOUT))
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo",
                            timeout=datetime.timedelta(seconds=timeout))
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
