"""Omniglot few-shot benchmark: the four standard settings next to the
published numbers.

Each setting (5-way 1-shot, 5-way 5-shot, 20-way 1-shot, 20-way 5-shot) is
its own meta-training run with the matching ``n_ways``/``k_shot``, on the
MAML split (1200 characters x 4 rotations to meta-train, 423 unseen
characters to test, 28x28, Conv-4), for a wall-clock budget; then 600 test
episodes (15 queries per class) with the baselines on the same episodes:
1-nearest neighbour and logistic regression on pixels, and the same Conv-4
adapted from a random initialisation. It prints a table per run and a
summary with the published numbers.

Setups (``--setup``):

- ``paper``: the MAML paper's Omniglot setup (Finn et al., 2017): the
  classic N-way head (``head="fixed"``), transductive BatchNorm, meta-batch
  32, inner rate 0.4 with 1 step in training and 3 at test for 5-way;
  meta-batch 16, inner rate 0.1 and 5 steps for 20-way; Adam 1e-3.
- ``default``: this package's defaults (prototype head, ``inner_lr="auto"``,
  support-set BatchNorm statistics), meta-batch 16, 5 queries per class, and
  the levers that paid in ``benchmarks/ablation.py``: at least 10 ways per
  training task, a meta rate of 3e-3 annealed to 0 along a cosine over the
  budget, and shifts of up to 2 pixels (``few_shot.py``'s Omniglot
  defaults); each setting is scored without
  and with test-time shifts (``test_shift=1``, the column "shifted").

The header gives the CPU model and the float32 (and bfloat16) matmul
GFLOP/s measured at the start of the run; with ``--steps`` the budget is a
number of meta-steps instead of minutes (both are printed either way).

Examples
--------
python benchmarks/omniglot.py --data-home ../shared/data --offline --settings 5w1s --minutes 30
python benchmarks/omniglot.py --data-home ../shared/data --offline --settings 5w1s,5w5s \
    --steps 1000
python benchmarks/omniglot.py --setup paper --settings 5w1s,20w1s --minutes 10
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from few_shot import PUBLISHED, build_parser, load_omniglot, run  # noqa: E402
from throughput import machine_line  # noqa: E402

SETTINGS = {"5w1s": (5, 1), "5w5s": (5, 5), "20w1s": (20, 1), "20w5s": (20, 5)}
# Snell et al. 2017 (ProtoNets, Conv-4, non-transductive, 60-way training) and
# Antoniou et al. 2019 (MAML++), in %.
PUBLISHED_BEST = {(5, 1): ("98.8", "99.47"), (5, 5): ("99.7", "99.93"),
                  (20, 1): ("96.0", "97.65"), (20, 5): ("98.9", "99.33")}


def setup_args(setup, ways):
    """few_shot.py options of a setup for an ``ways``-way setting."""
    if setup == "default":
        return ["--meta-batch-size", "16", "--queries", "5"]
    paper = ["--lr", "1e-3", "--lr-schedule", "constant", "--train-ways", str(ways),
             "--augment-shift", "0", "--test-shift", "0"]
    if ways == 5:
        return paper + ["--head", "fixed", "--transductive", "--meta-batch-size", "32",
                "--inner-lr", "0.4", "--inner-steps", "1", "--inner-steps-test", "3"]
    return paper + ["--head", "fixed", "--transductive", "--meta-batch-size", "16",
                    "--inner-lr", "0.1", "--inner-steps", "5", "--inner-steps-test", "5"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default="5w1s",
                        help="comma-separated from 5w1s,5w5s,20w1s,20w5s, or 'all' "
                             "(default: 5w1s)")
    parser.add_argument("--setup", choices=["default", "paper"], default="default")
    parser.add_argument("--minutes", type=float, default=30.0,
                        help="meta-training budget per setting (default: 30)")
    parser.add_argument("--steps", type=int, default=None,
                        help="budget in meta-steps per setting instead (--minutes is "
                             "then ignored)")
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--offline", action="store_true")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args, extra = parser.parse_known_args(argv)
    names = list(SETTINGS) if args.settings == "all" else args.settings.split(",")
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; choose from {list(SETTINGS)} or 'all'")

    base = ["--data-home", args.data_home] if args.data_home else []
    base += ["--offline"] if args.offline else []
    base += (["--minutes", str(args.minutes)] if args.steps is None
             else ["--steps", str(args.steps)])
    base += ["--episodes", str(args.episodes), "--seed", str(args.seed)]
    first = build_parser().parse_args(base)
    t0 = time.perf_counter()
    try:
        data = load_omniglot(first)
    except OSError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"Omniglot loaded in {time.perf_counter() - t0:.1f} s")
    print(machine_line(), flush=True)

    summary = []
    for name in names:
        ways, shots = SETTINGS[name]
        budget = (f"{args.minutes:g} min" if args.steps is None
                  else f"{args.steps} meta-steps")
        print(f"\n=== {name} ({args.setup} setup, {budget}) ===")
        run_args = build_parser().parse_args(
            base + ["--ways", str(ways), "--shots", str(shots)]
            + setup_args(args.setup, ways) + extra
        )
        out = run(run_args, data=data)
        summary.append((name, out))

    print(f"\nSummary ({args.setup} setup, {args.episodes} test episodes of the 423 unseen "
          "characters, mean +- 95% CI):")
    print(f"{'setting':<8} {'ours':>16} {'shifted':>16} {'meta-steps':>10} {'min':>5} "
          f"{'precision':>9} "
          f"{'best baseline':>16} {'margin':>7}   published FOMAML / MAML / Reptile; "
          "ProtoNets (best non-transductive) / MAML++")
    for name, out in summary:
        r = out["result"]
        fo, so, rep = PUBLISHED[SETTINGS[name]]
        proto, mamlpp = PUBLISHED_BEST[SETTINGS[name]]
        best = out["baselines"][out["best_baseline"]]
        t = out["test_shift"].get(name)
        shifted = "n/a" if t is None else f"{100 * t.mean:.2f} +- {100 * t.ci95:4.2f}"
        print(f"{name:<8} {100 * r.mean:8.2f} +- {100 * r.ci95:4.2f} {shifted:>16} "
              f"{out['n_steps']:>10d} "
              f"{out['train_seconds'] / 60:5.1f} {out['precision']:>9} "
              f"{100 * best:16.2f} {out['margin']:+7.2f}   {fo} / {so} / {rep}; "
              f"{proto} / {mamlpp}")
    print(machine_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
