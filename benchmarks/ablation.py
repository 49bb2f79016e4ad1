"""Ablation of the accuracy levers at a fixed number of meta-steps, on a
validation split of the meta-training characters.

Every variant meta-trains ``FOMAMLClassifier`` (Conv-4, 64 filters, 28x28)
from the same seed for exactly ``--steps`` meta-steps on the Omniglot MAML
split's 1200 training characters minus ``--n-val`` held-out ones (with their
four rotations), then scores 5-way 1-shot (and ``--eval`` more settings)
episodes of the held-out characters, unrotated, 15 queries per class. The
423 test characters are never touched: this is where levers are chosen
(issue #15); ``benchmarks/omniglot.py`` reports test figures once per
configuration.

A variant is a name and the estimator parameters it changes from ``base``
(``VARIANTS`` below). The figures depend on the number of meta-steps, not on
the machine's speed; seconds per meta-step are printed too.

Examples
--------
python benchmarks/ablation.py --data-home ../shared/data --steps 600 \
    --variants base queries15 ways20 --threads 1 | tee -a benchmarks/results/ablation.txt

A score is printed as ``<setting>/<test-time inner steps>``: ``5w5s/0`` is
5-way 5-shot with no inner step at test time (the meta-learned body and the
prototype head as they are).
"""

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fomaml_sklearn import FOMAMLClassifier, presets  # noqa: E402
from fomaml_sklearn.callbacks import meta_steps_per_epoch  # noqa: E402

from few_shot import load_omniglot, parse_setting  # noqa: E402
from maml_plus_plus import LSLR, MultiStepLossFOMAML  # noqa: E402
from throughput import cpu_model  # noqa: E402

# The reference point: the fixed_steps.py settings (16 tasks per meta-step).
BASE = dict(module="conv4", n_ways=5, k_shot=1, n_query=5, meta_batch_size=16, lr=1e-3,
            n_inner_steps=1, n_inner_steps_test=3, head="prototype")

VARIANTS = {
    "base": {},
    "queries15": dict(n_query=15),
    "ways10": dict(n_ways=10),
    "ways20": dict(n_ways=20),
    "ways20-q15": dict(n_ways=20, n_query=15),
    "inner3": dict(n_inner_steps=3),
    "inner0": dict(n_inner_steps=0, n_inner_steps_test=0),
    "lr3e-3": dict(lr=3e-3),
    "inner-lr0.1": dict(inner_lr=0.1),
    "inner-lr0.02": dict(inner_lr=0.02),
    "inner-lr0.01": dict(inner_lr=0.01),
    "cosine": dict(lr_schedule="cosine"),
    "cosine-lr3e-3": dict(lr_schedule="cosine", lr=3e-3),
    "shots5": dict(k_shot=5),
    "ways10-cosine": dict(n_ways=10, lr_schedule="cosine"),
    "ways10-lr3e-3": dict(n_ways=10, lr=3e-3),
    "ways10-lr3e-3-cosine": dict(n_ways=10, lr=3e-3, lr_schedule="cosine"),
    "ways20-lr3e-3-cosine": dict(n_ways=20, lr=3e-3, lr_schedule="cosine"),
    # On top of ways10-lr3e-3 (the main job's training tasks):
    "ways20-lr3e-3": dict(n_ways=20, lr=3e-3),
    "ways10-lr3e-3-shift1": dict(n_ways=10, lr=3e-3, augment_shift=1),
    "ways10-lr3e-3-shift2": dict(n_ways=10, lr=3e-3, augment_shift=2),
    "ways10-lr3e-3-shift3": dict(n_ways=10, lr=3e-3, augment_shift=3),
    "ways10-lr3e-3-lslr": dict(n_ways=10, lr=3e-3, algorithm=LSLR),
    "ways10-lr3e-3-inner3": dict(n_ways=10, lr=3e-3, n_inner_steps=3),
    "ways10-lr3e-3-inner3-msl": dict(n_ways=10, lr=3e-3, n_inner_steps=3,
                                     algorithm=MultiStepLossFOMAML()),
    "ways10-lr3e-3-inner3-lslr": dict(n_ways=10, lr=3e-3, n_inner_steps=3,
                                      algorithm=LSLR),
    "ways10-lr3e-3-mb32": dict(n_ways=10, lr=3e-3, meta_batch_size=32),
    # On top of ways10-lr3e-3-shift2 (the 30-minute runs' configuration):
    "ways10-lr3e-3-shift2-cosine": dict(n_ways=10, lr=3e-3, augment_shift=2,
                                        lr_schedule="cosine"),
    "ways20-lr3e-3-shift2": dict(n_ways=20, lr=3e-3, augment_shift=2),
    "ways20-lr3e-3-shift2-cosine": dict(n_ways=20, lr=3e-3, augment_shift=2,
                                        lr_schedule="cosine"),
    # fomaml_sklearn.presets.OMNIGLOT, read from there (the budget is --steps;
    # test-time shifts are a scoring option, not a training one).
    "preset": {k: v for k, v in presets.OMNIGLOT.items()
               if k not in ("max_epochs", "meta_batches_per_epoch", "test_shift")},
}


def validation_split(X, y, n_val, seed=0):
    """Hold out ``n_val`` of the training characters (all their rotations):
    meta-train on the rest, validate on the held-out characters unrotated.

    ``y`` codes a rotated class as ``character * 4 + rotation``
    (:func:`fomaml_sklearn.datasets.rotate_classes`).
    """
    chars = y // 4
    held = np.random.default_rng(seed).permutation(np.unique(chars))[:n_val]
    val = np.isin(chars, held)
    keep = val & (y % 4 == 0)
    return X[~val], y[~val], X[keep], y[keep]


def load_validation_split(data_home, n_val):
    """Omniglot's training characters (offline from ``data_home``), split by
    :func:`validation_split`: ``(X_train, y_train, X_val, y_val)``."""
    X, y, _, _ = load_omniglot(argparse.Namespace(data_home=data_home, offline=True))
    return validation_split(X, y, n_val)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--n-val", type=int, default=200,
                        help="held-out training characters (default: 200)")
    parser.add_argument("--variants", nargs="+", default=["base"],
                        help=f"any of {', '.join(VARIANTS)}")
    parser.add_argument("--eval", nargs="+", default=["5w1s"],
                        help="validation settings, e.g. 5w1s 5w5s 20w1s")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--test-steps", type=int, nargs="+", default=[0, 3],
                        help="test-time inner steps to score with (default: 0 3)")
    parser.add_argument("--curve", action="store_true",
                        help="also score 100 validation episodes (of the training "
                             "episodes' shape) after every 50 meta-steps and print the curve")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    torch.set_num_threads(args.threads)
    X_tr, y_tr, X_val, y_val = load_validation_split(args.data_home, args.n_val)
    print(f"# {cpu_model()}, {args.threads} threads; "
          f"{len(np.unique(y_tr))} training classes, {len(np.unique(y_val))} validation "
          f"characters; {args.steps} meta-steps, seed {args.seed}", flush=True)
    for name in args.variants:
        params = {**BASE, **VARIANTS[name]}
        epochs = max(1, args.steps // 50)
        clf = FOMAMLClassifier(max_epochs=epochs, meta_batches_per_epoch=args.steps // epochs,
                               adapt_on_fit=False, random_state=args.seed, **params)
        t0 = time.perf_counter()
        clf.fit(X_tr, y_tr, **(dict(X_val=X_val, y_val=y_val) if args.curve else {}))
        seconds = time.perf_counter() - t0
        scores = []
        for setting in args.eval:
            ways, shots = parse_setting(setting)
            for steps in args.test_steps:
                clf.set_params(n_inner_steps_test=steps)
                r = clf.evaluate(X_val, y_val, n_ways=ways, k_shot=shots, n_query=15,
                                 n_episodes=args.episodes, random_state=args.seed)
                scores.append(f"{setting}/{steps} {100 * r.mean:.2f} +- {100 * r.ci95:.2f}")
        print(f"{name:<14s} {clf.n_meta_steps_} steps, {seconds / clf.n_meta_steps_:.3f} "
              f"s/step ({clf.precision_}); validation: " + "; ".join(scores) + " %",
              flush=True)
        if args.curve:
            steps = np.cumsum(meta_steps_per_epoch(clf.history_))
            acc = clf.history_[:, "valid_acc"]
            print(f"{'':<14s} validation curve (meta-steps: accuracy of "
                  f"{clf.episode_shape_.n_ways}-way {clf.episode_shape_.k_shot}-shot "
                  "episodes, %): " + ", ".join(f"{n}: {100 * a:.1f}"
                                               for n, a in zip(steps, acc)), flush=True)
        state = getattr(clf.meta_model_, "rule_state", None)
        if state:  # a rule's own meta-learned tensors, e.g. the learned inner rates
            flat = torch.cat([r.detach().flatten().cpu() for r in state.values()])
            print(f"{'':<14s} learned inner rates (min / median / max over "
                  f"{len(flat)}): {flat.min():.4f} / {flat.median():.4f} / {flat.max():.4f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
