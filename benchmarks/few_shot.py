"""The main job: meta-train FOMAML, then few-shot accuracy on unseen classes
next to baselines fit on the same support sets.

Omniglot (default): the MAML-paper protocol (1200 characters, rotated by
0/90/180/270 degrees, for meta-training; the other 423 characters for
testing; 28x28 images; Conv-4). The data is fetched once into the data home
(``--data-home``, else ``$FOMAML_SKLEARN_DATA`` or scikit-learn's data home);
``--offline`` never downloads.

Digits (``--dataset digits``): scikit-learn's 8x8 digits, meta-train on 0-5,
test on 6-9; runs in seconds offline. Digits has too few classes for
meta-learning to pay: expect pixel nearest-neighbour to win there.

Examples
--------
python benchmarks/few_shot.py                                # Omniglot, 5 min
python benchmarks/few_shot.py --data-home ../shared/data --offline --minutes 10
python benchmarks/few_shot.py --dataset digits                # 30 s, offline
"""

import argparse
import os
import sys
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from fomaml_sklearn import FOMAMLClassifier, presets
from fomaml_sklearn.callbacks import TimeCosineLR, TimeLimit
from fomaml_sklearn.episodes import EpisodeShape
from fomaml_sklearn.evaluation import (
    baseline_accuracies,
    confidence_interval,
    sample_episodes,
)
from fomaml_sklearn.names import PROTOTYPE_HEADS

# Published Omniglot accuracies (%, mean +- 95% CI) by (ways, shots).
PUBLISHED = {
    (5, 1): ("98.3 +- 0.5", "98.7 +- 0.4", "95.39"),
    (5, 5): ("99.2 +- 0.2", "99.9 +- 0.1", "98.90"),
    (20, 1): ("89.4 +- 0.5", "95.8 +- 0.3", "88.14"),
    (20, 5): ("97.9 +- 0.1", "98.9 +- 0.2", "96.65"),
}


def load_omniglot(args):
    """MAML split: 1200 characters (x4 rotations) to meta-train, 423 to test.

    The split of ``fomaml-sklearn train/evaluate omniglot``: its seed is
    fixed (``fetch_omniglot_maml``'s default), independent of ``--seed``.
    Returns ``(X_train, y_train, X_test, y_test)``.
    """
    from fomaml_sklearn.datasets import fetch_omniglot_maml

    data = fetch_omniglot_maml(args.data_home, image_size=28,
                               download_if_missing=not args.offline)
    return data.X_train, data.y_train, data.X_test, data.y_test


def load_digits_split():
    """Digits 0-5 to meta-train, 6-9 to test (the command line's split)."""
    from fomaml_sklearn import datasets

    data = datasets.load_digits_split()
    return data.X_train, data.y_train, data.X_test, data.y_test


def _row(name, accuracies, seconds=None):
    mean, ci = confidence_interval(accuracies)
    extra = f"  ({seconds:.0f} s)" if seconds is not None else ""
    print(f"  {name:<38s} {100 * mean:6.2f} +- {100 * ci:4.2f} %{extra}")
    return mean


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["omniglot", "digits"], default="omniglot")
    parser.add_argument("--data-home", default=None,
                        help="folder holding omniglot/ (default: $FOMAML_SKLEARN_DATA "
                             "or scikit-learn's data home)")
    parser.add_argument("--offline", action="store_true",
                        help="never download; fail with a clear message if the data is absent")
    parser.add_argument("--minutes", type=float, default=None,
                        help="meta-training time budget (default: 5; digits: 0.5)")
    parser.add_argument("--steps", type=int, default=None,
                        help="meta-training budget in meta-steps (a multiple of 50) "
                             "instead of minutes; --minutes then only caps it")
    parser.add_argument("--continue-to", type=int, default=None, metavar="STEPS",
                        help="after the evaluation, continue meta-training (warm start, "
                             "new episodes) up to this many meta-steps and evaluate the "
                             "model again, e.g. --steps 3000 --continue-to 6000")
    parser.add_argument("--ways", type=int, default=None, help="N (default: 5, digits: 3)")
    parser.add_argument("--train-ways", type=int, default=None,
                        help="classes per meta-training task (default: at least 10 on "
                             "Omniglot, the best of benchmarks/ablation.py, else N)")
    parser.add_argument("--shots", type=int, default=1, help="K (default: 1)")
    parser.add_argument("--also", default="",
                        help="more test settings for the same meta-trained model, "
                             "comma-separated WAYSwSHOTSs, e.g. 5w5s,20w1s (model only, "
                             "no baselines)")
    parser.add_argument("--train-shots", type=int, default=None,
                        help="support examples per class in meta-training tasks "
                             "(default: 1 on Omniglot, where 1-shot training also scored "
                             "best on 5-shot tests, else K)")
    parser.add_argument("--queries", type=int, default=None,
                        help="query examples per class in meta-training (default: the "
                             "preset's)")
    parser.add_argument("--meta-batch-size", type=int, default=None,
                        help="tasks per meta-step (default: the preset's)")
    parser.add_argument("--augment-shift", type=int, default=None, metavar="PX",
                        help="shift meta-training images by up to PX pixels (default: 2 "
                             "on Omniglot, where it paid at 3000 meta-steps, else 0)")
    parser.add_argument("--test-shift", type=int, default=None, metavar="PX",
                        help="also score every test setting with test-time shifts "
                             "(the estimator's test_shift=PX: adapt on the support "
                             "images and copies shifted by up to PX pixels, average "
                             "each query over its copies; default: 1 on Omniglot, "
                             "where it paid on the validation split, else 0)")
    parser.add_argument("--episodes", type=int, default=600,
                        help="test episodes (default: 600)")
    parser.add_argument("--algorithm", default="fomaml",
                        help="fomaml, maml, reptile, anil or fo-anil (default: fomaml)")
    parser.add_argument("--head", default=None,
                        help="prototype, cosine, shared or fixed (the MAML paper's) head "
                             "(default: the preset's)")
    parser.add_argument("--inner-lr", default=None, help="alpha (default: the preset's)")
    parser.add_argument("--inner-steps", type=int, default=None)
    parser.add_argument("--inner-steps-test", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None,
                        help="meta learning rate (Adam; default: 3e-3 on Omniglot, the "
                             "best of benchmarks/ablation.py, else 1e-3)")
    parser.add_argument("--lr-schedule", default=None, choices=["constant", "cosine"],
                        help="cosine: anneal the meta rate to 0 over the --steps budget, "
                             "or else over the --minutes budget (default: cosine on "
                             "Omniglot, where it paid at 3000 meta-steps, else constant)")
    parser.add_argument("--transductive", action="store_true",
                        help="query-batch BatchNorm statistics, as in the MAML paper")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch threads (default: all cores)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initialisation, the training and the test "
                             "episodes; the Omniglot class split is fixed (default: 0)")
    parser.add_argument("--save", metavar="FILE", default=None,
                        help="write the meta-trained model to FILE (FOMAMLClassifier.save) "
                             "before evaluating it, to score it again later with "
                             "'python -m fomaml_sklearn evaluate FILE ...'")
    return parser


def run(args, data=None):
    """Meta-train, evaluate and print the table; return the figures.

    ``data``: ``(X_train, y_train, X_test, y_test)`` already loaded, or None.
    """
    torch.set_num_threads(args.threads)
    if args.save and not os.path.isdir(os.path.dirname(os.path.abspath(args.save))):
        # Checked now, not after meta-training, which may take an hour.
        raise SystemExit(f"--save {args.save!r}: its folder does not exist; create it "
                         "or give a path in an existing folder")
    args.minutes_given = args.minutes is not None
    if args.minutes is None:
        args.minutes = 5.0 if args.dataset == "omniglot" else 0.5
    start = time.perf_counter()
    if data is None:
        data = load_omniglot(args) if args.dataset == "omniglot" else load_digits_split()
    X_train, y_train, X_test, y_test = data
    if args.dataset == "omniglot":
        module, ways = presets.OMNIGLOT["module"], args.ways or 5
    else:
        module, ways = presets.TABULAR["module"], args.ways or presets.TABULAR["n_ways"]
    print(f"{args.dataset}: {len(np.unique(y_train))} meta-training classes "
          f"({len(y_train)} images), {len(np.unique(y_test))} unseen test classes "
          f"({len(y_test)} images); loaded in {time.perf_counter() - start:.1f} s; "
          f"{args.threads} torch threads")

    # Every default not given on the command line is the preset's
    # (fomaml_sklearn.presets, the best measured configuration; digits runs
    # the tabular one), else the estimator's own.
    omniglot = args.dataset == "omniglot"
    preset = {**FOMAMLClassifier().get_params(),
              **(presets.OMNIGLOT if omniglot else presets.TABULAR)}
    for option, name in [("queries", "n_query"), ("meta_batch_size", "meta_batch_size"),
                         ("head", "head"), ("inner_lr", "inner_lr"),
                         ("inner_steps", "n_inner_steps"),
                         ("inner_steps_test", "n_inner_steps_test"), ("lr", "lr"),
                         ("augment_shift", "augment_shift"), ("test_shift", "test_shift"),
                         ("lr_schedule", "lr_schedule")]:
        if getattr(args, option) is None:
            setattr(args, option, preset[name])
    inner_lr = args.inner_lr if args.inner_lr == "auto" else float(args.inner_lr)
    # At least the preset's ways in training (more than at test time paid on
    # Omniglot: docs/performance.md, "Accuracy levers").
    train_ways = args.train_ways or max(ways, preset["n_ways"])
    train_shots = args.train_shots or (preset["k_shot"] if omniglot else args.shots)
    # Without a step budget for the estimator's schedule to count, a cosine
    # anneals over the time budget instead (callbacks.TimeCosineLR).
    over_time = args.lr_schedule == "cosine" and args.steps is None
    common = dict(n_ways=train_ways, k_shot=train_shots, n_query=args.queries,
                  meta_batch_size=args.meta_batch_size, precision=args.precision,
                  augment_shift=args.augment_shift,
                  algorithm=args.algorithm, head=args.head, inner_lr=inner_lr, lr=args.lr,
                  n_inner_steps=args.inner_steps, n_inner_steps_test=args.inner_steps_test,
                  transductive=args.transductive,
                  lr_schedule="constant" if over_time else args.lr_schedule,
                  adapt_on_fit=False, random_state=args.seed)
    if args.continue_to and (args.lr_schedule != "constant" or args.steps is None):
        raise SystemExit("--continue-to needs --steps and a constant meta rate: add "
                         "--steps N --lr-schedule constant")
    try:  # checked before the long part
        also_settings = [parse_setting(t) for t in filter(None, args.also.split(","))]
    except ValueError:
        raise SystemExit(f"--also {args.also!r}: give settings like 5w5s,20w1s") from None
    if args.test_shift and not omniglot:
        raise SystemExit("--test-shift shifts images: use it with --dataset omniglot")
    max_epochs = (100_000 if args.steps is None
                  else max(1, args.steps // preset["meta_batches_per_epoch"]))
    limit = [TimeLimit(args.minutes)] if args.steps is None or args.minutes_given else []
    if over_time:
        limit.append(TimeCosineLR(args.minutes))
    clf = FOMAMLClassifier(module, max_epochs=max_epochs,
                           meta_batches_per_epoch=preset["meta_batches_per_epoch"],
                           callbacks=limit, verbose=1, **common)
    t0 = time.perf_counter()
    clf.fit(X_train, y_train)
    train_seconds = time.perf_counter() - t0
    n_steps = clf.n_meta_steps_
    if args.save:
        clf.save(args.save)
        print(f"Saved the meta-trained model to {args.save}", flush=True)

    shape = EpisodeShape(ways, args.shots, _test_queries(args))
    schedule = args.lr_schedule
    if schedule != "constant":
        schedule += f" over {args.minutes:g} min" if over_time else f" over {args.steps} steps"
    through = (getattr(clf.algorithm_, "prototype_gradient", "n/a")
               if args.head in PROTOTYPE_HEADS else "n/a")
    print(f"\n{ways}-way {args.shots}-shot accuracy on {args.episodes} episodes of "
          f"unseen classes ({shape.n_query} queries per class), 95% CI; "
          f"meta-training: {n_steps} meta-steps of {args.meta_batch_size} {train_ways}-way "
          f"{train_shots}-shot "
          f"tasks (lr {args.lr:g}, {schedule}, shifts <= {args.augment_shift} px) in "
          f"{train_seconds / 60:.1f} min, {clf.precision_}, gradient through the "
          f"prototypes: {through}:")

    t0 = time.perf_counter()
    result = _evaluate(clf, args, X_test, y_test, shape.n_ways, shape.k_shot)
    fomaml = _row(f"{args.algorithm.upper()} ({module}, meta-trained)", result.accuracies,
                  time.perf_counter() - t0)
    # The same episodes as evaluate() drew (same labels, shape and seed).
    episodes = sample_episodes(y_test, result.shape, args.episodes, args.seed)

    t0 = time.perf_counter()
    scratch = FOMAMLClassifier(module, max_epochs=0, **common).fit(X_train, y_train)
    acc = scratch.evaluate(X_test, y_test, n_ways=shape.n_ways, k_shot=shape.k_shot,
                           n_query=shape.n_query, n_episodes=args.episodes,
                           random_state=args.seed).accuracies
    baselines = {f"same {module}, random initialisation": _row(
        f"same {module}, random initialisation", acc, time.perf_counter() - t0)}
    for name, est in [
        ("1-nearest neighbour on pixels", KNeighborsClassifier(1)),
        ("logistic regression on pixels", LogisticRegression(max_iter=1000)),
    ]:
        t0 = time.perf_counter()
        acc = baseline_accuracies(est, X_test, episodes)
        baselines[name] = _row(name, acc, time.perf_counter() - t0)
    also = _evaluate_also(clf, args, X_test, y_test, also_settings)
    settings = [(ways, args.shots)] + also_settings
    shifted = _evaluate_test_shift(clf, args, X_test, y_test, settings)
    if args.continue_to:
        # Warm start: the meta-parameters and Adam's state go on; a new seed
        # draws new episodes (the same seed would replay the first run's).
        extra = max(1, (args.continue_to - n_steps) // 50)
        clf.set_params(warm_start=True, max_epochs=extra, random_state=args.seed + 1)
        t0 = time.perf_counter()
        clf.fit(X_train, y_train)
        more_seconds = time.perf_counter() - t0
        print(f"\nContinued to {clf.n_meta_steps_} meta-steps ({more_seconds / 60:.1f} min "
              f"more, {(train_seconds + more_seconds) / 60:.1f} min in all):")
        _row(f"{ways}-way {args.shots}-shot",
             _evaluate(clf, args, X_test, y_test, ways, args.shots).accuracies)
        _evaluate_also(clf, args, X_test, y_test, also_settings)
        _evaluate_test_shift(clf, args, X_test, y_test, settings)
    best_name = max(baselines, key=baselines.get)
    margin = 100 * (fomaml - baselines[best_name])
    print(f"\n{args.algorithm.upper()} minus the best baseline ({best_name}): "
          f"{margin:+.2f} points")
    if args.dataset == "omniglot" and (ways, args.shots) in PUBLISHED:
        fo, so, rep = PUBLISHED[(ways, args.shots)]
        print(f"Published, {ways}-way {args.shots}-shot: FOMAML {fo} % (Nichol et al. 2018, "
              f"transductive), MAML {so} % (Finn et al. 2017), Reptile {rep} % (Nichol et "
              "al. 2018, non-transductive).")
    if args.dataset == "digits" and margin <= 0:
        print("As expected on digits: 6 training classes are too few for meta-learning "
              "to beat pixel-space baselines; Omniglot (964+ classes) is where it pays.")
    return dict(result=result, also=also, test_shift=shifted, train_seconds=train_seconds,
                n_steps=n_steps,
                baselines=baselines, best_baseline=best_name, margin=margin,
                precision=clf.precision_)


def parse_setting(text):
    """``"20w5s"`` -> ``(20, 5)``: ways and shots of a test setting."""
    ways, shots = text.lower().split("w")
    return int(ways), int(shots.rstrip("s"))


def _test_queries(args):
    """Queries per class of a test episode: 15 on Omniglot (the standard), else 10."""
    return 15 if args.dataset == "omniglot" else 10


def _evaluate(clf, args, X_test, y_test, ways, shots):
    """``clf`` on ``args.episodes`` test episodes of ``ways``-way ``shots``-shot
    (the benchmark's query count and seed)."""
    return clf.evaluate(X_test, y_test, n_ways=ways, k_shot=shots, n_query=_test_queries(args),
                        n_episodes=args.episodes, random_state=args.seed)


def _evaluate_also(clf, args, X_test, y_test, settings):
    """The ``--also`` settings, ``[(ways, shots), ...]``, on the same model;
    their results by name (``"20w5s"``)."""
    also = {}
    for w, k in settings:
        t0 = time.perf_counter()
        res = _evaluate(clf, args, X_test, y_test, w, k)
        also[f"{w}w{k}s"] = res
        _row(f"{w}-way {k}-shot, the same model", res.accuracies, time.perf_counter() - t0)
    return also


def _evaluate_test_shift(clf, args, X_test, y_test, settings):
    """The test settings again with ``test_shift=args.test_shift`` (if set);
    their results by name. The estimator is left with ``test_shift=0``."""
    if not args.test_shift:
        return {}
    results = {}
    clf.set_params(test_shift=args.test_shift)
    try:
        for w, k in settings:
            t0 = time.perf_counter()
            res = _evaluate(clf, args, X_test, y_test, w, k)
            results[f"{w}w{k}s"] = res
            _row(f"{w}-way {k}-shot, test-time shifts <= {args.test_shift} px",
                 res.accuracies, time.perf_counter() - t0)
    finally:
        clf.set_params(test_shift=0)
    return results


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dataset == "omniglot":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from throughput import machine_line

        torch.set_num_threads(args.threads)
        print(machine_line(), flush=True)
    try:
        run(args)
    except OSError as exc:
        parser.exit(2, f"error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
