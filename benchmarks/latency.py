"""Adaptation latency and episodic evaluation throughput.

- ``adapt`` + ``predict``: one 5-way 1-shot task (5 support images, 75
  queries), Conv-4 (64 filters) on 28x28 images, ``n_inner_steps_test=3``;
  the median of ``--repeats`` runs.
- ``evaluate``: 600 episodes of 5-way 1-shot with 15 queries per class,
  episodes per second.

The cost does not depend on the pixel values or on how long the network was
meta-trained, so random images and an untrained initialisation are used.

Usage: python benchmarks/latency.py [--repeats 20] [--threads 2]
"""

import argparse
import sys
import time

import numpy as np
import torch

from fomaml_sklearn import FOMAMLClassifier


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    X = rng.random((100 * 20, 1, 28, 28), dtype=np.float32)
    y = np.repeat(np.arange(100), 20)
    support = np.concatenate([np.flatnonzero(y == c)[:1] for c in range(5)])
    query = np.concatenate([np.flatnonzero(y == c)[1:16] for c in range(5)])
    print(f"Conv-4 64, 28x28, 5-way 1-shot, 3 inner steps, {args.threads} threads")
    auto = FOMAMLClassifier("conv4", max_epochs=0, device="cpu", adapt_on_fit=False,
                            random_state=0).fit(X[:40], y[:40]).precision_
    for precision in sorted({"float32", auto}):
        clf = FOMAMLClassifier("conv4", max_epochs=0, precision=precision, device="cpu",
                               n_inner_steps_test=3, adapt_on_fit=False,
                               random_state=0).fit(X, y)
        times = []
        for _ in range(args.repeats + 1):
            t0 = time.perf_counter()
            clf.adapt(X[support], y[support]).predict(X[query])
            times.append(time.perf_counter() - t0)
        latency = np.median(times[1:])
        t0 = time.perf_counter()
        clf.evaluate(X, y, n_ways=5, k_shot=1, n_query=15, n_episodes=args.episodes)
        rate = args.episodes / (time.perf_counter() - t0)
        print(f"  {clf.precision_:>8}: adapt + predict {1000 * latency:7.1f} ms (median of "
              f"{args.repeats}); evaluate {rate:6.1f} episodes/s ({args.episodes} episodes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
