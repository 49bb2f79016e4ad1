"""Meta-training throughput (tasks/s): this package vs the naive loop (and
learn2learn where it is installed).

Workload (issue "fastest there is"): Conv-4 (64 filters), Omniglot-sized
28x28 inputs, 5-way 1-shot, meta-batch of 32 tasks, 1 or 15 queries per
class, 1 or 5 inner steps. Before timing, every implementation's FOMAML
meta-gradient is checked against this package's loop (in float32; the
batched path in float64, see the comment at the check).

- ``naive``: deepcopy the model per task, SGD on the support set, query loss
  ``.backward()`` at the adapted weights, accumulate (what most tutorials do).
- ``l2l``: ``learn2learn.algorithms.MAML(model, lr, first_order=True)``;
  ``clone()`` / ``adapt()`` per task. Only if ``import learn2learn`` works
  (install it in a separate venv: see ../shared/notes/learn2learn-peer.md).
- ``fomaml_sklearn``: FOMAML's per-task loop, the tasks on threads (one
  intra-op thread each, ``task_batching="threads"``) and its batched path
  (all tasks at once, ``torch.func.vmap`` over the backbone: one grouped
  convolution per layer), through the public
  ``fomaml_sklearn.algorithms.meta_gradient`` (threads: as fit runs them),
  in float32, and what the estimator's ``precision="auto"`` and
  ``task_batching="auto"`` resolve to on this machine (asked of a fitted
  estimator).

Like-for-like: naive and learn2learn normalise the queries with the support
statistics held constant, so every column of ours computes that meta-gradient
(``statistics_gradient=False``) but ``thrS``: the threads path with the
gradient through the support statistics, what the estimator computes for a
convolutional backbone since 2026-12-05 (``MetaConfig.statistics_gradient``,
``docs/design.md``); ``thrS/thr`` is its speed relative to ``thr32``.

The last columns give the ratio to learn2learn and the fraction of this
machine's measured matmul peak (for the precision used) that the fastest
float32 / auto path reaches, from the FLOPs torch counts for one meta-step.

The implementations are timed round-robin (see ``time_interleaved``).

Usage: python benchmarks/throughput.py [--repeats 5] [--threads 2]
"""

import argparse
import copy
import os
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fomaml_sklearn import FOMAMLClassifier
from fomaml_sklearn._config import resolve_precision
from fomaml_sklearn.algorithms import meta_gradient
from fomaml_sklearn.algorithms.runner import MetaBatch
from fomaml_sklearn.backbones import Conv4Backbone
from fomaml_sklearn.heads import MetaModel

WAYS, META_BATCH, ALPHA = 5, 32, 0.4


def _tasks(queries, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(WAYS, 1, 28, 28, generator=g), torch.arange(WAYS),
             torch.rand(WAYS * queries, 1, 28, 28, generator=g),
             torch.arange(WAYS).repeat_interleave(queries)) for _ in range(META_BATCH)]


def _plain_model(meta):
    """The same network as an ordinary nn.Sequential: body + N-way linear head."""
    body = copy.deepcopy(meta.backbone)
    head = nn.Linear(meta.feature_dim, WAYS)
    with torch.no_grad():
        head.weight.copy_(meta.head_weight)
        head.bias.copy_(meta.head_bias)
    return nn.Sequential(body, head)


def naive_meta_gradient(model, tasks, steps):
    grads = [torch.zeros_like(p) for p in model.parameters()]
    for xs, ys, xq, yq in tasks:
        learner = copy.deepcopy(model)
        opt = torch.optim.SGD(learner.parameters(), lr=ALPHA)
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(learner(xs), ys).backward()
            opt.step()
        with torch.no_grad():
            learner(xs)  # support statistics at the adapted weights
        learner.eval()
        opt.zero_grad()
        F.cross_entropy(learner(xq), yq).backward()
        for g, p in zip(grads, learner.parameters()):
            g += p.grad
    return [g / len(tasks) for g in grads]


def l2l_meta_gradient(maml, tasks, steps):
    maml.zero_grad()
    for xs, ys, xq, yq in tasks:
        learner = maml.clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(xs), ys))
        with torch.no_grad():
            learner(xs)
        learner.eval()
        (F.cross_entropy(learner(xq), yq) / len(tasks)).backward()
    return [p.grad for p in maml.parameters()]


class _Stacked:
    """The tasks as the estimator's MetaBatch: stacked tensors, shared labels."""

    def __init__(self, tasks):
        self.x_support = torch.stack([t[0] for t in tasks])
        self.x_query = torch.stack([t[2] for t in tasks])
        self.y_support, self.y_query = tasks[0][1], tasks[0][3]
        self.n_classes = WAYS

    def __len__(self):
        return len(self.x_support)

    def __iter__(self):
        for xs, xq in zip(self.x_support, self.x_query):
            yield xs, self.y_support, xq, self.y_query


def _estimator_auto():
    """What precision="auto" and task_batching="auto" resolve to here, asked
    of a Conv-4 FOMAMLClassifier fitted for 0 epochs on the CPU."""
    X = np.random.default_rng(0).random((10, 784), dtype=np.float32)
    clf = FOMAMLClassifier("conv4", n_filters=4, n_ways=5, k_shot=1, n_query=1,
                           max_epochs=0, device="cpu", adapt_on_fit=False)
    clf.fit(X, np.repeat(np.arange(5), 2))
    return clf.precision_, clf.task_batching_


def _ours(meta, tasks, steps, batched=False, precision="float32", statistics=False):
    return meta_gradient(meta, tasks, WAYS, "fomaml", inner_lr=ALPHA, n_inner_steps=steps,
                         precision=precision, batched=batched,
                         statistics_gradient=statistics).grads


class _Threads:
    """FOMAML's meta-gradient as ``task_batching="threads"`` computes it in
    fit: the tasks on ``torch.get_num_threads()`` threads (one intra-op
    thread each, a fork of the runner each), summed in task order."""

    def __init__(self, meta, steps, precision="float32", statistics=False):
        from fomaml_sklearn._config import MetaConfig
        from fomaml_sklearn._threads import TaskThreads
        from fomaml_sklearn.algorithms import get_algorithm
        from fomaml_sklearn.algorithms.runner import TaskRunner

        self.rule = get_algorithm("fomaml").resolve(meta)
        config = MetaConfig(algorithm=self.rule, inner_lr=ALPHA, n_inner_steps=steps,
                            precision=precision, task_batching="threads",
                            statistics_gradient=statistics)
        self.pool = TaskThreads(TaskRunner(meta, config))

    def __call__(self, tasks):
        batch = MetaBatch.from_tasks(tasks, WAYS)
        parts = (batch.subset(i, i + 1) for i in range(len(batch)))
        rows = self.pool.map(lambda runner, task: self.rule.meta_gradient(runner, task).grads,
                             parts)
        return [sum(grads) / len(rows) for grads in zip(*rows)]


def _time(fn, repeats):
    return time_interleaved({"fn": fn}, repeats)["fn"]


def time_interleaved(fns, repeats):
    """Median seconds of each callable, timed round-robin.

    Interleaving the runs (a, b, c, a, b, c, ...) exposes every
    implementation to the same drifts of this machine's speed, which on a
    shared 2-core machine were measured at +-15 % between minutes; the
    ratios between implementations are then far steadier than when each is
    timed in its own block.
    """
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_peak(dtype, n=2048, repeats=5):
    """GFLOP/s of an n x n matmul on this machine (median)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n**3 / _time(lambda: a @ b, repeats) / 1e9


def machine_line():
    """The CPU model and its matmul GFLOP/s, measured now on the current number
    of torch threads: float32 always, bfloat16 only where the CPU runs it
    natively (AMX or AVX512-BF16). Emulated bfloat16 (AVX2) takes minutes for
    one 2048 x 2048 product, so there it is named, not timed."""
    peaks = {"float32": f"{matmul_peak(torch.float32):.0f} GFLOP/s"}
    if resolve_precision("auto", torch.device("cpu")) == "bfloat16":
        peaks["bfloat16"] = f"{matmul_peak(torch.bfloat16):.0f} GFLOP/s"
    else:
        peaks["bfloat16"] = "not native here, not timed"
    return (f"Machine: {cpu_model()}, {torch.get_num_threads()} torch threads; matmul "
            + ", ".join(f"{k} {v}" for k, v in peaks.items()))


def flops_per_task(fn, n_tasks):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / n_tasks


def _check(name, got, ref, tol=1e-3):
    """Same meta-gradient: per tensor, max |difference| <= tol * max |reference|."""
    for i, (a, b) in enumerate(zip(got, ref)):
        err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
        if not err <= tol:
            raise AssertionError(f"{name}: tensor {i} differs by {err:.2e} (relative)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    meta = MetaModel(Conv4Backbone((1, 28, 28), 64), 784, head="fixed", n_rows=WAYS)
    auto, auto_batching = _estimator_auto()
    try:
        import learn2learn as l2l
    except ImportError:
        l2l = None
        print("learn2learn not importable here: its column is skipped")
    peaks = {"float32": matmul_peak(torch.float32)}
    if auto != "float32":
        peaks[auto] = matmul_peak(getattr(torch, auto))
    print(f"Machine: {cpu_model()}; load average before: "
          + " ".join(f"{v:.2f}" for v in os.getloadavg())
          + " (above ~1.5 other processes share the cores: ratios are unreliable)")
    print(f"Conv-4 64, 5-way 1-shot, meta-batch {META_BATCH}, {args.threads} threads, "
          f"median of {args.repeats}; tasks/s (higher is better). 'auto': what "
          f"precision='auto' and task_batching='auto' resolve to here ({auto}, "
          f"{auto_batching}). Matmul peak: "
          + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()))
    print(f"{'queries':>7}{'steps':>6}{'naive':>8}{'l2l':>8}{'loop32':>8}{'thr32':>8}"
          f"{'group32':>9}"
          f"{'auto':>8}  {'fp32/l2l':>8}{'auto/l2l':>9}{'fp32 peak':>10}{'auto peak':>10}"
          f"{'thrS':>8}{'thrS/thr':>9}")
    for queries in (1, 15):
        tasks = _tasks(queries)
        stacked = _Stacked(tasks)
        for steps in (1, 5):
            # The same meta-gradient everywhere first (float32).
            few = _Stacked(tasks[:4])
            ours = _ours(meta, few, steps)
            names = [n for n, _ in meta.named_parameters()]
            by_name = dict(zip(names, ours))
            ours_plain = [by_name["backbone." + n] for n, _ in meta.backbone.named_parameters()]
            ours_plain += [by_name["head_weight"], by_name["head_bias"]]
            _check("naive", naive_meta_gradient(_plain_model(meta), tasks[:4], steps),
                   ours_plain)
            # The batched path against the loop in float64: in float32 the two
            # memory formats round differently, which can flip a max-pool's
            # argmax between near-equal values and move a gradient entry by ~1e-2.
            meta64 = copy.deepcopy(meta).double()
            few64 = _Stacked([(a.double(), b, c.double(), d) for a, b, c, d in tasks[:4]])
            _check("grouped", _ours(meta64, few64, steps, batched=True),
                   _ours(meta64, few64, steps), tol=1e-9)
            if l2l is not None:
                maml = l2l.algorithms.MAML(_plain_model(meta), lr=ALPHA, first_order=True)
                _check("l2l", l2l_meta_gradient(maml, tasks[:4], steps), ours_plain)
            # The threads path against the loop on one intra-op thread (each
            # task runs on one): the same arithmetic. Against the 2-thread
            # loop the last bits differ (kernels split their sums otherwise)
            # and 5 inner steps at rate 0.4 grow that to ~5e-3 in places.
            threads32, threads_stats = (_Threads(meta, steps, statistics=s)
                                        for s in (False, True))
            for name, pool, statistics in (("threads", threads32, False),
                                           ("threads, statistics", threads_stats, True)):
                torch.set_num_threads(1)
                ours1 = _ours(meta, few, steps, statistics=statistics)
                torch.set_num_threads(args.threads)
                _check(name, pool(tasks[:4]), ours1, tol=0.0)
            plain = _plain_model(meta)
            loop32 = lambda: _ours(meta, stacked, steps)  # noqa: E731
            fns = {
                "naive": lambda: naive_meta_gradient(plain, tasks, steps),
                "loop32": loop32,
                "thr32": lambda: threads32(tasks),
                "group32": lambda: _ours(meta, stacked, steps, batched=True),
                "thrS": lambda: threads_stats(tasks),
            }
            if l2l is not None:
                maml = l2l.algorithms.MAML(_plain_model(meta), lr=ALPHA, first_order=True)
                fns["l2l"] = lambda: l2l_meta_gradient(maml, tasks, steps)
            # precision="auto", task_batching="auto": what the estimator runs here.
            if auto != "float32" and auto_batching == "threads":
                threads_auto = _Threads(meta, steps, precision=auto)
                fns["auto"] = lambda: threads_auto(tasks)
            elif auto != "float32":
                fns["auto"] = lambda: _ours(meta, stacked, steps,
                                            batched=auto_batching == "grouped", precision=auto)
            rates = {name: META_BATCH / t
                     for name, t in time_interleaved(fns, args.repeats).items()}
            if auto == "float32":
                rates["auto"] = rates[{"loop": "loop32", "threads": "thr32",
                                       "grouped": "group32"}[auto_batching]]
            flops = flops_per_task(loop32, META_BATCH)
            best32 = max(rates["loop32"], rates["thr32"], rates["group32"])
            l2l_rate = rates.get("l2l", float("nan"))
            print(f"{queries:>7}{steps:>6}{rates['naive']:>8.1f}{l2l_rate:>8.1f}"
                  f"{rates['loop32']:>8.1f}{rates['thr32']:>8.1f}{rates['group32']:>9.1f}"
                  f"{rates['auto']:>8.1f}  "
                  f"{best32 / l2l_rate:>8.2f}{rates['auto'] / l2l_rate:>9.2f}"
                  f"{100 * best32 * flops / 1e9 / peaks['float32']:>9.1f}%"
                  f"{100 * rates['auto'] * flops / 1e9 / peaks[auto]:>9.1f}%"
                  f"{rates['thrS']:>8.1f}{rates['thrS'] / rates['thr32']:>9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
