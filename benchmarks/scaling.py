"""Scaling out: tasks per second of one process x 2 threads against 2
processes x 1 thread (torch.distributed, gloo), Omniglot 5-way 1-shot.

The workload is the default meta-training step on the Omniglot MAML split
(Conv-4 64, 28x28, meta-batch 16, 5 queries per class, the prototype head,
``precision="auto"``). Each configuration runs ``--steps`` meta-steps; the
first ``--warmup`` are not timed. Configurations alternate round-robin
(``--rounds``) so that a drift of the machine's speed hits both. For the
distributed runs it also prints the bytes each rank receives per meta-step
(every other rank's per-task meta-gradients, float32, all-gathered so that
the sum is the same for every world size) and splits a meta-step into
compute and exchange time (the float64 sum in task order, and for
distributed runs the all-gather; the wait for the slower rank counts as
exchange time).

``--exchange`` measures what the bitwise-reproducible mean costs instead
(Conv-4 with ``--filters``, meta-batch ``--meta-batch``, no data): in one
process, a meta-batch's meta-gradient as one call of the rule against one
call per task added in float64 in task order (what fit does); over 2
processes, the all-gather of every task's gradient that makes the sum the
same for every world size against the all-reduce of per-rank sums it
replaced (bytes received per rank, median seconds, extra memory).

Usage::

    python benchmarks/scaling.py --data-home ../shared/data --steps 40 --rounds 2
    python benchmarks/scaling.py --exchange --filters 32 --meta-batch 32
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
    ordered_sum = distributed.ordered_sum

    def timed_exchange(rows, n_rows, width, dtype=torch.float32, device=None, **k):
        rows = list(rows)  # computed before the exchange, as in fit
        t0 = time.perf_counter()
        out = ordered_sum(rows, n_rows, width, dtype=dtype, device=device, **k)
        if width > 3:  # the meta-gradient, not the validation scores
            comm["seconds"].append(time.perf_counter() - t0)
            comm["bytes"] = (-(-n_rows // args.world)) * (args.world - 1) * width * 4
        return out

    distributed.ordered_sum = timed_exchange

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
        "exchange_seconds": float(np.median(comm_s)) if comm_s else 0.0,
        "received_bytes": comm["bytes"], "precision": clf.precision_,
        "tasks_per_step": clf.meta_batch_size}), flush=True)


def _conv4_tasks(args, generator):
    """A Conv-4 meta-model on 28x28 images and a meta-batch of random
    5-way 1-shot tasks with 5 queries per class."""
    import torch

    from fomaml_sklearn.backbones import build_backbone
    from fomaml_sklearn.heads import MetaModel

    body = build_backbone("conv4", 784, input_shape=(1, 28, 28), n_filters=args.filters,
                          generator=generator)
    meta = MetaModel(body, 784, head="prototype", generator=generator)
    y_s, y_q = torch.arange(5), torch.arange(5).repeat_interleave(5)
    tasks = [(torch.rand(5, 784, generator=generator), y_s,
              torch.rand(25, 784, generator=generator), y_q)
             for _ in range(args.meta_batch)]
    return meta, tasks


def exchange_worker(args):
    """One rank of ``--exchange``: time the two exchanges (JSON)."""
    import torch

    from fomaml_sklearn import distributed

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    meta, _ = _conv4_tasks(args, generator)
    width = sum(p.numel() for p in meta.parameters()) + 3
    if args.world > 1:
        torch.distributed.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank,
            world_size=args.world, timeout=datetime.timedelta(seconds=300))
    lo, hi = distributed.shard(args.meta_batch, args.rank, args.world)
    rows = [torch.randn(width, generator=generator) for _ in range(lo, hi)]
    times = {"ordered_sum": [], "all_reduce_sum": []}
    for _ in range(args.steps):
        for name in times:
            if args.world > 1:
                torch.distributed.barrier()
            t0 = time.perf_counter()
            if name == "ordered_sum":
                distributed.ordered_sum(rows, args.meta_batch, width)
            elif args.world > 1:  # the per-rank sum in float64, as before
                partial = torch.zeros(width + 1, dtype=torch.float64)
                for row in rows:
                    partial[:width].add_(row)
                distributed.all_reduce_sum([partial])
            times[name].append(time.perf_counter() - t0)
    n_max = -(-args.meta_batch // args.world)
    print(json.dumps({
        "rank": args.rank, "parameters": width - 3,
        "ordered_sum_seconds": float(np.median(times["ordered_sum"][args.warmup:])),
        "all_reduce_seconds": float(np.median(times["all_reduce_sum"][args.warmup:]))
        if args.world > 1 else 0.0,
        "gathered_bytes": (args.world - 1) * n_max * width * 4 if args.world > 1 else 0,
        "all_reduce_bytes": (width + 1) * 8 if args.world > 1 else 0,
        "held_bytes": (hi - lo + n_max * (1 + args.world)) * width * 4
        if args.world > 1 else 0}), flush=True)


def overhead(args):
    """In one process: the rule's meta-gradient of a meta-batch as one call,
    against one call per task added in float64 in task order."""
    import torch

    from fomaml_sklearn import distributed
    from fomaml_sklearn.algorithms import FOMAML, TaskRunner

    class TaskBatch(list):  # tasks with their number of classes
        def __init__(self, tasks, n_classes):
            super().__init__(tasks)
            self.n_classes = n_classes

    torch.set_num_threads(args.threads)
    meta, tasks = _conv4_tasks(args, torch.Generator().manual_seed(0))
    rule = FOMAML().resolve(meta)
    runner = TaskRunner(meta)
    width = sum(p.numel() for p in meta.parameters()) + 3

    def per_task():
        def rows():
            for task in tasks:
                grads, loss, _ = rule.meta_gradient(runner, TaskBatch([task], 5))
                yield torch.cat([g.reshape(-1) for g in grads] + [torch.tensor([loss, 0, 25])])
        return distributed.ordered_sum(rows(), len(tasks), width)

    times = {"one call": [], "per task, float64": []}
    for _ in range(args.rounds * 3):
        for name, run in (("one call", lambda: rule.meta_gradient(runner, TaskBatch(tasks, 5))),
                          ("per task, float64", per_task)):
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def exchange(args):
    """``--exchange``: the cost of the bitwise-reproducible mean."""
    one = overhead(args)
    print(f"# Conv-4 {args.filters} filters, 28x28, 5-way 1-shot 5 queries, meta-batch "
          f"{args.meta_batch}, {args.threads} thread(s) per process", flush=True)
    print(f"1 process, meta-gradient of a meta-batch: one call {one['one call']:.3f} s, "
          f"per task + float64 sum in order {one['per task, float64']:.3f} s "
          f"({one['per task, float64'] / one['one call'] - 1:+.1%})", flush=True)
    port = str(_free_port())
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, str(SCRIPT), "--exchange-worker", "--world", "2", "--port", port,
           "--threads", str(args.threads), "--steps", str(args.steps), "--warmup",
           str(args.warmup), "--filters", str(args.filters), "--meta-batch",
           str(args.meta_batch)]
    procs = [subprocess.Popen(cmd + ["--rank", str(r)], env=env, stdout=subprocess.PIPE,
                              text=True) for r in range(2)]
    outs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a rank failed: {[p.returncode for p in procs]}")
    o = outs[0]
    print(f"2 processes, {o['parameters']} meta-parameters: all-gather of every task's "
          f"gradient + ordered float64 sum "
          f"{max(x['ordered_sum_seconds'] for x in outs) * 1e3:.1f} ms "
          f"({o['gathered_bytes'] / 1e6:.2f} MB received per rank, "
          f"{o['held_bytes'] / 1e6:.2f} MB held per rank); all-reduce of per-rank sums "
          f"{max(x['all_reduce_seconds'] for x in outs) * 1e3:.1f} ms "
          f"({o['all_reduce_bytes'] / 1e6:.2f} MB); medians of {args.steps - args.warmup}")
    return 0


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
    parser.add_argument("--exchange", action="store_true",
                        help="measure the cost of the bitwise-reproducible mean instead")
    parser.add_argument("--filters", type=int, default=64, help="Conv-4 filters (--exchange)")
    parser.add_argument("--meta-batch", type=int, default=32, help="tasks (--exchange)")
    parser.add_argument("--exchange-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--port", default="0", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.exchange_worker:
        return exchange_worker(args)
    if args.exchange:
        return exchange(args)
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
            comm = max(o["exchange_seconds"] for o in outs)
            print(f"{name:<24} {16 / step:6.1f} tasks/s  ({step:.3f} s per meta-step: "
                  f"{step - comm:.3f} compute, {comm:.4f} exchange; "
                  f"{outs[0]['received_bytes'] / 1e6:.3f} MB received per rank per "
                  f"meta-step; {outs[0]['precision']})", flush=True)
    one = statistics.median(s for s, _ in results["1 process x 2 threads"])
    two = statistics.median(s for s, _ in results["2 processes x 1 thread"])
    print(f"speed of 2 processes x 1 thread relative to 1 process x 2 threads: "
          f"{one / two:.2f}x (medians of {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
