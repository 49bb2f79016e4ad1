"""Seconds per meta-step of a preset and of variants of it, round-robin.

Fits ``FOMAMLClassifier(**preset, **variant)`` for ``--steps`` meta-steps on
random images of the preset's shape (28x28, 400 classes of 20 images: the
cost of a meta-step does not depend on the pixels), once per variant in
turn, ``--repeats`` times after one untimed round, and prints the median
seconds per meta-step of each variant and its speed relative to the first.
Run it on a quiet machine: the ratios are what it is for.

Examples
--------
python benchmarks/preset_speed.py --preset omniglot-within-alphabet \
    --variant n_inner_steps=1 --variant n_inner_steps=0 --threads 2
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from within_alphabet import parse_set  # noqa: E402

from fomaml_sklearn import FOMAMLClassifier, presets  # noqa: E402

from throughput import machine_line  # noqa: E402


def parse_variant(text):
    """``"n_inner_steps=0,lr=0.001"`` -> ``{"n_inner_steps": 0, "lr": 0.001}``."""
    return parse_set([item for item in text.split(",") if item])


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(presets.PRESETS), default="omniglot")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=VALUE,...",
                        help="parameters changed from the preset (repeatable; default: the "
                             "preset alone)")
    parser.add_argument("--steps", type=int, default=40, help="meta-steps per timed fit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--precision", default="float32")
    return parser


def run(args):
    variants = args.variant or [""]
    changes = {v: parse_variant(v) for v in variants}  # a bad --variant fails before timing
    torch.set_num_threads(args.threads)
    print(machine_line(), flush=True)
    rng = np.random.default_rng(0)
    X = rng.random((400 * 20, 1, args.image_size, args.image_size), dtype=np.float32)
    y = np.repeat(np.arange(400), 20)
    times = {v: [] for v in variants}
    for repeat in range(args.repeats + 1):
        for v in variants:
            params = {**presets.PRESETS[args.preset], **changes[v],
                      "max_epochs": 1, "meta_batches_per_epoch": args.steps}
            clf = FOMAMLClassifier(**params, precision=args.precision, adapt_on_fit=False,
                                   random_state=repeat, verbose=0)
            t0 = time.perf_counter()
            clf.fit(X, y)
            if repeat:  # the first round warms up
                times[v].append((time.perf_counter() - t0) / args.steps)
    medians = {v: float(np.median(t)) for v, t in times.items()}
    first = medians[variants[0]]
    print(f"presets.{args.preset.upper().replace('-', '_')}, {args.steps} meta-steps per fit, "
          f"{args.threads} threads, median of {args.repeats}:")
    for v, m in medians.items():
        print(f"  {v or '(the preset)':40s} {m:.4f} s per meta-step  {first / m:.2f}x")
    return medians


def main(argv=None):
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
