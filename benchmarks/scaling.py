"""Scaling out: tasks per second of one process x 2 threads against 2
processes x 1 thread (torch.distributed, gloo), Omniglot 5-way 1-shot.

The workload is the default meta-training step on the Omniglot MAML split
(Conv-4 64, 28x28, meta-batch 16, 5 queries per class, the prototype head,
``precision="auto"``). Each configuration runs ``--steps`` meta-steps; the
first ``--warmup`` are not timed. Configurations alternate round-robin
(``--rounds``) so that a drift of the machine's speed hits both. For the
distributed runs it also prints the bytes all-reduced per meta-step (one
float64 bucket: every meta-parameter plus 4 counters) and splits a
meta-step into compute and all-reduce time (the wait for the slower rank
counts as all-reduce time).

Usage::

    python benchmarks/scaling.py --data-home ../shared/data --steps 40 --rounds 2
"""

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(args):
    """One rank (or the single process): fit and report timings as JSON."""
    import torch
    from skorch.callbacks import Callback

    sys.path.insert(0, str(SCRIPT.parent))
    from fomaml_sklearn import FOMAMLClassifier, distributed

    from few_shot import load_omniglot

    torch.set_num_threads(args.threads)
    if args.world > 1:
        torch.distributed.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank,
            world_size=args.world, timeout=datetime.timedelta(seconds=300))
    X, y, _, _ = load_omniglot(argparse.Namespace(data_home=args.data_home, offline=True))

    comm = {"seconds": [], "bytes": 0}
    reduce = distributed.all_reduce_sum

    def timed_reduce(tensors, *a, **k):
        t0 = time.perf_counter()
        out = reduce(tensors, *a, **k)
        comm["seconds"].append(time.perf_counter() - t0)
        comm["bytes"] = 8 * sum(t.numel() for t in tensors)
        return out

    distributed.all_reduce_sum = timed_reduce

    class StepClock(Callback):
        def on_train_begin(self, net, **kwargs):
            self.ends_ = [time.perf_counter()]

        def on_batch_end(self, net, training, **kwargs):
            if training:
                self.ends_.append(time.perf_counter())

    clock = StepClock()
    clf = FOMAMLClassifier("conv4", n_ways=5, k_shot=1, n_query=5, meta_batch_size=16,
                           max_epochs=1, meta_batches_per_epoch=args.steps,
                           adapt_on_fit=False, random_state=0, callbacks=[clock])
    clf.fit(X, y)
    cb = dict(clf.net_.callbacks_)["StepClock"]
    steps = np.diff(cb.ends_)[args.warmup:]
    comm_s = comm["seconds"][args.warmup:]
    print(json.dumps({
        "rank": args.rank, "world": args.world, "threads": args.threads,
        "step_seconds": float(np.median(steps)),
        "allreduce_seconds": float(np.median(comm_s)) if comm_s else 0.0,
        "allreduce_bytes": comm["bytes"], "precision": clf.precision_,
        "tasks_per_step": clf.meta_batch_size}), flush=True)


def run_config(args, world, threads):
    port = str(_free_port())
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, str(SCRIPT), "--worker", "--world", str(world), "--port", port,
           "--threads", str(threads), "--steps", str(args.steps), "--warmup",
           str(args.warmup)]
    if args.data_home:
        cmd += ["--data-home", args.data_home]
    procs = [subprocess.Popen(cmd + ["--rank", str(r)], env=env, stdout=subprocess.PIPE,
                              text=True) for r in range(world)]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a rank failed: {[p.returncode for p in procs]}")
    return outs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--port", default="0", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    sys.path.insert(0, str(SCRIPT.parent))
    from throughput import cpu_model

    print(f"# {cpu_model()}, {os.cpu_count()} cores; Omniglot 5-way 1-shot, meta-batch 16, "
          f"{args.steps} meta-steps per run ({args.warmup} untimed), round-robin x "
          f"{args.rounds}", flush=True)
    results = {"1 process x 2 threads": [], "2 processes x 1 thread": []}
    for _ in range(args.rounds):
        for name, (world, threads) in (("1 process x 2 threads", (1, 2)),
                                       ("2 processes x 1 thread", (2, 1))):
            outs = run_config(args, world, threads)
            step = max(o["step_seconds"] for o in outs)
            results[name].append((step, outs))
            comm = max(o["allreduce_seconds"] for o in outs)
            print(f"{name:<24} {16 / step:6.1f} tasks/s  ({step:.3f} s per meta-step: "
                  f"{step - comm:.3f} compute, {comm:.4f} all-reduce; "
                  f"{outs[0]['allreduce_bytes'] / 1e6:.3f} MB all-reduced per meta-step; "
                  f"{outs[0]['precision']})", flush=True)
    one = statistics.median(s for s, _ in results["1 process x 2 threads"])
    two = statistics.median(s for s, _ in results["2 processes x 1 thread"])
    print(f"speed of 2 processes x 1 thread relative to 1 process x 2 threads: "
          f"{one / two:.2f}x (medians of {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
