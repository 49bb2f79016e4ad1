"""Wall time per meta-step and peak memory of each meta-learning rule,
against the number of inner steps (MAML's memory grows with them; FOMAML's,
Reptile's and iMAML's do not).

Workload: Conv-4 (64 filters) on 28x28 single-channel images, 5-way K-shot
(``--shots``, 1 by default), 15 queries per class, meta-batch of 4 tasks,
random images (the cost does not depend on the pixel values). Each algorithm
runs in its own subprocess so its peak resident memory (ru_maxrss) is its own.

Usage: python benchmarks/algorithms.py [--steps 5] [--inner-steps 1 5 10]
       [--shots 1] [--algorithms fomaml maml ...] [--precision float32] [--threads 2]
"""

import argparse
import json
import resource
import subprocess
import sys
import time


def _one(algorithm, inner_steps, steps, precision, threads, shots):
    import torch

    from fomaml_sklearn.algorithms import meta_gradient
    from fomaml_sklearn.backbones import Conv4Backbone
    from fomaml_sklearn.heads import MetaModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    meta = MetaModel(Conv4Backbone((1, 28, 28), 64), 784, head="prototype")
    ways, queries = 5, 15
    tasks = [(torch.rand(ways * shots, 1, 28, 28), torch.arange(ways).repeat_interleave(shots),
              torch.rand(ways * queries, 1, 28, 28),
              torch.arange(ways).repeat_interleave(queries)) for _ in range(4)]
    settings = dict(inner_lr=0.05, n_inner_steps=inner_steps, precision=precision)
    meta_gradient(meta, tasks, ways, algorithm, **settings)  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        meta_gradient(meta, tasks, ways, algorithm, **settings)
        times.append(time.perf_counter() - t0)
    times.sort()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"median_s": times[len(times) // 2], "peak_mib": peak / 1024,
            "delta_mib": (peak - before) / 1024}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--inner-steps", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--algorithms", nargs="+", default=None,
                        help="rules to run (default: all registered)")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_one(args.child[0], int(args.child[1]), args.steps,
                              args.precision, args.threads, args.shots)))
        return 0
    from fomaml_sklearn.algorithms import available_algorithms

    print(f"Conv-4, 5-way {args.shots}-shot, 15 queries/class, meta-batch 4, {args.precision}, "
          f"{args.threads} threads; median of {args.steps} meta-steps")
    print("peak RSS: the whole process (about 700 MiB is torch itself); growth: above the "
          "RSS after imports")
    print(f"{'algorithm':<10}{'inner steps':>12}{'s / meta-step':>15}{'peak RSS MiB':>14}"
          f"{'growth MiB':>12}")
    for inner in args.inner_steps:
        for algorithm in args.algorithms or available_algorithms():
            out = subprocess.run(
                [sys.executable, __file__, "--child", algorithm, str(inner),
                 "--steps", str(args.steps), "--precision", args.precision,
                 "--shots", str(args.shots),
                 "--threads", str(args.threads)],
                capture_output=True, text=True, check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{algorithm:<10}{inner:>12}{r['median_s']:>15.3f}{r['peak_mib']:>14.0f}"
                  f"{r['delta_mib']:>12.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
