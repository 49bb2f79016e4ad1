"""One support pass at theta against two (issue #26's "less work per task").

With the meta-gradient through the support BatchNorm statistics, the
prototypes' graph at theta and a task's first support loss come from the same
forward pass; ``TaskRunner.start_with_head_graph`` runs it once. This script
times that against the two-pass sequence it replaced (``start`` then
``prototype_head_graph``), round-robin in one process, after checking that
both give the same meta-gradient::

    python benchmarks/one_support_pass.py --threads 2

Conv-4 64, 28x28 random images, 5-way 1-shot, a meta-batch of 32 tasks,
FOMAML on the per-task loop (the intra-op threads), float32.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fomaml_sklearn.algorithms import TaskRunner, meta_gradient  # noqa: E402
from fomaml_sklearn.backbones import Conv4Backbone  # noqa: E402
from fomaml_sklearn.heads import MetaModel  # noqa: E402

from throughput import machine_line, time_interleaved  # noqa: E402

WAYS, META_BATCH = 5, 32
ONE_PASS = TaskRunner.start_with_head_graph


def two_passes(runner, x_support, y_support, n_classes, with_loss=False,
               with_graph=True):
    """The sequence ``start_with_head_graph`` replaced."""
    head, first = runner.start(x_support, y_support, n_classes, with_loss=with_loss)
    graph = runner.prototype_head_graph(x_support, y_support, n_classes) if with_graph else None
    return head, first, graph


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(machine_line())
    g = torch.Generator().manual_seed(0)
    meta = MetaModel(Conv4Backbone((1, 28, 28), 64), 784, head="prototype")
    print("queries per class, inner steps: s per meta-batch, two passes / one pass")
    for queries, steps in [(1, 1), (5, 1), (15, 1), (1, 5)]:
        tasks = [(torch.rand(WAYS, 784, generator=g), torch.arange(WAYS),
                  torch.rand(WAYS * queries, 784, generator=g),
                  torch.arange(WAYS).repeat_interleave(queries)) for _ in range(META_BATCH)]

        def run(start, tasks=tasks, steps=steps):
            TaskRunner.start_with_head_graph = start
            try:
                return meta_gradient(meta, tasks, WAYS, "fomaml", inner_lr=0.4,
                                     n_inner_steps=steps, statistics_gradient=True).grads
            finally:
                TaskRunner.start_with_head_graph = ONE_PASS

        for a, b in zip(run(ONE_PASS), run(two_passes)):
            if not torch.equal(a, b):
                raise SystemExit("the one-pass meta-gradient differs from the two-pass one")
        t = time_interleaved({"one": lambda: run(ONE_PASS), "two": lambda: run(two_passes)},
                             args.repeats)
        print(f"  {queries:2d}, {steps}: two {t['two']:.3f}  one {t['one']:.3f}  "
              f"speed-up {t['two'] / t['one']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
