"""Meta-training throughput (tasks/s): this package vs the naive loop (and
learn2learn where it is installed).

Workload (issue "fastest there is"): Conv-4 (64 filters), Omniglot-sized
28x28 inputs, 5-way 1-shot, meta-batch of 32 tasks, 1 or 15 queries per
class, 1 or 5 inner steps. Before timing, every implementation's FOMAML
meta-gradient is checked against this package's in float32.

- ``naive``: deepcopy the model per task, SGD on the support set, query loss
  ``.backward()`` at the adapted weights, accumulate (what most tutorials do).
- ``l2l``: ``learn2learn.algorithms.MAML(model, lr, first_order=True)``;
  ``clone()`` / ``adapt()`` per task. Only if ``import learn2learn`` works
  (install it in a separate venv: see ../shared/notes/learn2learn-peer.md).
- ``fomaml_sklearn``: ``meta_gradient`` in float32 and with the precision
  ``"auto"`` resolves to.

Usage: python benchmarks/throughput.py [--repeats 3] [--threads 2]
"""

import argparse
import copy
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

from fomaml_sklearn.backbones import Conv4Backbone
from fomaml_sklearn.classifier import _PRECISIONS, _resolve_precision
from fomaml_sklearn.learner import MetaModel, TaskRunner, meta_gradient

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


def _time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    meta = MetaModel(Conv4Backbone((1, 28, 28), 64), 784, head="fixed", n_rows=WAYS)
    auto, _ = _resolve_precision("auto", torch.device("cpu"))
    try:
        import learn2learn as l2l
    except ImportError:
        l2l = None
        print("learn2learn not importable here: its column is skipped")
    print(f"Conv-4 64, 5-way 1-shot, meta-batch {META_BATCH}, {args.threads} threads, "
          f"median of {args.repeats}; tasks/s (higher is better)")
    header = f"{'queries':>8}{'steps':>6}{'naive':>9}{'l2l':>9}{'ours fp32':>11}"
    print(header + f"{'ours ' + auto:>16}{'auto/naive':>12}{'auto/l2l':>10}")
    for queries in (1, 15):
        tasks = _tasks(queries)
        for steps in (1, 5):
            # Same meta-gradient first (float32, per-sample BatchNorm statistics).
            ours, _, _ = meta_gradient(TaskRunner(meta), tasks[:4], WAYS, ALPHA, steps)
            ref = naive_meta_gradient(_plain_model(meta), tasks[:4], steps)
            names = [n for n, _ in meta.named_parameters()]
            by_name = dict(zip(names, ours))
            ours_plain = [by_name["backbone." + n] for n, _ in meta.backbone.named_parameters()]
            ours_plain += [by_name["head_weight"], by_name["head_bias"]]
            for a, b in zip(ours_plain, ref):
                torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
            rates = {}
            plain = _plain_model(meta)
            rates["naive"] = META_BATCH / _time(
                lambda: naive_meta_gradient(plain, tasks, steps), args.repeats)
            if l2l is not None:
                maml = l2l.algorithms.MAML(_plain_model(meta), lr=ALPHA, first_order=True)
                rates["l2l"] = META_BATCH / _time(
                    lambda: l2l_meta_gradient(maml, tasks, steps), args.repeats)
            for label, precision in (("fp32", "float32"), ("auto", auto)):
                runner = TaskRunner(meta, _PRECISIONS[precision])
                rates[label] = META_BATCH / _time(
                    lambda: meta_gradient(runner, tasks, WAYS, ALPHA, steps), args.repeats)
            l2l_rate = rates.get("l2l", float("nan"))
            print(f"{queries:>8}{steps:>6}{rates['naive']:>9.1f}{l2l_rate:>9.1f}"
                  f"{rates['fp32']:>11.1f}{rates['auto']:>16.1f}"
                  f"{rates['auto'] / rates['naive']:>12.2f}{rates['auto'] / l2l_rate:>10.2f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
