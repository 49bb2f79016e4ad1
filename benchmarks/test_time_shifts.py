"""Test-time shifts on the Omniglot validation split: does adapting on
shifted copies of the support images, or averaging each query's
probabilities over shifted copies of it, raise few-shot accuracy?

One ``FOMAMLClassifier`` meta-trains for ``--steps`` meta-steps on the
training characters minus ``--n-val`` held-out ones (``ablation.py``'s split
and settings, 10-way 1-shot tasks at meta rate 3e-3, shifts of up to 2 px in
training); then the same validation episodes are scored with each way of
using shifts at test time. Still non-transductive: the support set is the
only labelled data, BatchNorm normalises with statistics of the (shifted)
support images alone, and each query is classified on its own.

Offsets: ``plus`` is the image and its four 1-pixel neighbours (5 copies,
the estimator's ``test_shift=1``), ``3x3`` every offset in ``-1..1`` x
``-1..1`` (9 copies), ``diamond2`` every offset with ``|dy| + |dx| <= 2``
(13 copies, ``test_shift=2``).

Examples
--------
python benchmarks/test_time_shifts.py --data-home ../shared/data --steps 700 --threads 2
python benchmarks/test_time_shifts.py --data-home ../shared/data --steps 1500 --threads 2 \
    --eval 20w1s --combinations none/none plus/plus 3x3/3x3 diamond2/diamond2
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fomaml_sklearn import FOMAMLClassifier  # noqa: E402
from fomaml_sklearn.augmentation import ShiftEnsemble, shifted_copies  # noqa: E402
from fomaml_sklearn.episodes import EpisodeShape  # noqa: E402
from fomaml_sklearn.evaluation import (  # noqa: E402
    confidence_interval,
    episodic_accuracies,
    sample_episodes,
)

from ablation import BASE, load_validation_split  # noqa: E402
from few_shot import parse_setting  # noqa: E402
from throughput import cpu_model  # noqa: E402

OFFSETS = {
    "none": [(0, 0)],
    "plus": ShiftEnsemble(1, (1, 1, 1)).offsets.tolist(),        # test_shift=1
    "3x3": [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
    "diamond2": ShiftEnsemble(2, (1, 1, 1)).offsets.tolist(),    # test_shift=2
}

# (support offsets, query offsets)
COMBINATIONS = [("none", "none"), ("plus", "none"), ("none", "plus"), ("plus", "plus"),
                ("3x3", "3x3"), ("diamond2", "diamond2")]


class OffsetShifts(ShiftEnsemble):
    """Test-time shifts with their own offsets for the support set and for
    the queries (``ShiftEnsemble`` uses the same ones for both): an
    ``augment`` for :func:`fomaml_sklearn.evaluation.episodic_accuracies`."""

    def __init__(self, support_offsets, query_offsets, image_shape):
        super().__init__(0, image_shape)
        self.offsets = torch.as_tensor(query_offsets)           # log_proba's copies
        self.support_offsets = torch.as_tensor(support_offsets)

    def support(self, x, y):
        return (shifted_copies(x, self.support_offsets, self.image_shape),
                y.repeat(len(self.support_offsets)))

    def __repr__(self):
        return (f"OffsetShifts({self.support_offsets.tolist()}, {self.offsets.tolist()}, "
                f"{self.image_shape})")


def accuracies(clf, X, episodes, support_offsets, query_offsets):
    """Per-episode query accuracy with the support set expanded by
    ``support_offsets`` and each query's probabilities averaged over
    ``query_offsets``."""
    shape = tuple(clf.input_shape_)
    shape = shape if len(shape) == 3 else (1,) + shape
    augment = OffsetShifts(support_offsets, query_offsets, shape)
    return episodic_accuracies(clf._runner(), X, episodes, augment=augment)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--n-val", type=int, default=200)
    parser.add_argument("--eval", nargs="+", default=["5w1s", "20w1s"])
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--test-steps", type=int, default=3)
    parser.add_argument("--ways", type=int, default=10, help="training ways (default: 10)")
    parser.add_argument("--train-shift", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--combinations", nargs="+", metavar="SUPPORT/QUERIES",
                        default=[f"{s}/{q}" for s, q in COMBINATIONS],
                        help="offsets of the support set and of the queries, each one of "
                             f"{', '.join(OFFSETS)} (default: every row of the table, "
                             "e.g. none/none plus/plus 3x3/3x3 diamond2/diamond2)")
    args = parser.parse_args(argv)
    combinations = [tuple(c.split("/")) for c in args.combinations]
    for c in combinations:
        if len(c) != 2 or not set(c) <= set(OFFSETS):
            parser.error(f"--combinations: {'/'.join(c)!r} is not SUPPORT/QUERIES with "
                         f"each one of {', '.join(OFFSETS)}, e.g. plus/plus")
    torch.set_num_threads(args.threads)
    X_tr, y_tr, X_val, y_val = load_validation_split(args.data_home, args.n_val)
    print(f"# {cpu_model()}, {args.threads} threads; {args.steps} meta-steps of "
          f"{args.ways}-way tasks, training shifts {args.train_shift}, seed {args.seed}; "
          f"{args.test_steps} test-time steps", flush=True)
    epochs = max(1, args.steps // 50)
    params = {**BASE, "n_ways": args.ways, "lr": 3e-3, "augment_shift": args.train_shift,
              "n_inner_steps_test": args.test_steps}
    clf = FOMAMLClassifier(max_epochs=epochs, meta_batches_per_epoch=args.steps // epochs,
                           adapt_on_fit=False, random_state=args.seed, verbose=0, **params)
    t0 = time.perf_counter()
    clf.fit(X_tr, y_tr)
    print(f"# meta-trained {clf.n_meta_steps_} steps in {time.perf_counter() - t0:.0f} s "
          f"({clf.precision_})", flush=True)
    X_val_t = torch.as_tensor(X_val.reshape(len(X_val), -1), dtype=torch.float32)
    _, codes = np.unique(y_val, return_inverse=True)
    for setting in args.eval:
        ways, shots = parse_setting(setting)
        episodes = sample_episodes(codes, EpisodeShape(ways, shots, 15), args.episodes,
                                   args.seed)
        check = clf.evaluate(X_val, y_val, n_ways=ways, k_shot=shots, n_query=15,
                             n_episodes=args.episodes, random_state=args.seed)
        print(f"{setting} clf.evaluate (the same episodes) {check}", flush=True)
        for support, query in combinations:
            t0 = time.perf_counter()
            acc = accuracies(clf, X_val_t, episodes, OFFSETS[support], OFFSETS[query])
            mean, ci = confidence_interval(acc)
            print(f"{setting} support {support:<8s} queries {query:<8s} "
                  f"{100 * mean:.2f} +- {100 * ci:.2f} %  ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
