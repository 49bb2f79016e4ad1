"""Few-shot sinusoid regression (Finn et al., 2017, section 5.1).

For K = 5, 10 and 20 support points, meta-trains ``FOMAMLRegressor`` (MLP
1 -> 40 -> 40 -> 1, ReLU, inner rate 0.01, one inner step, Adam 1e-3, 10
tasks per meta-step) with FOMAML, MAML and iMAML (its regression defaults:
``lam = 0.1 / inner_lr``, 10 proximal inner steps) for ``--steps``
meta-steps on waves of :func:`fomaml_sklearn.datasets.make_sinusoid_tasks`,
then reports the query MSE (10 points per wave) on 600 new waves after
adapting on K points with 1 and with 10 inner steps (mean +- 95% CI), next
to two baselines adapted the same way:

- ``pretrained``: the same network trained on all tasks pooled (the same
  estimator with no inner step in meta-training: the gradient of the loss at
  theta, averaged over the tasks), the MAML paper's "pretrained" baseline;
- ``random``: the same network at its random initialisation.

It prints the meta-training time of each row, the machine and the threads.

Usage::

    python benchmarks/sinusoid.py --steps 10000 --threads 1 | tee benchmarks/results/sinusoid.txt
"""

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from fomaml_sklearn import FOMAMLRegressor
from fomaml_sklearn.algorithms import IMAML
from fomaml_sklearn.datasets import make_sinusoid_tasks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import cpu_model  # noqa: E402

METHODS = {
    "FOMAML": dict(algorithm="fomaml"),
    "MAML": dict(algorithm="maml"),
    "iMAML": dict(algorithm="imaml"),
    "pretrained": dict(n_inner_steps=0),
    "random": dict(max_epochs=0),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10000, help="meta-steps per model")
    parser.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--methods", nargs="+", default=list(METHODS),
                        choices=list(METHODS))
    parser.add_argument("--imaml-inner-steps", type=int, default=None,
                        help="inner steps of iMAML's proximal problem in meta-training "
                             "(default: the rule's 'auto', 10 for regression)")
    parser.add_argument("--n-train-tasks", type=int, default=20000)
    parser.add_argument("--test-waves", type=int, default=600)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    per_epoch = min(100, args.steps)
    X, y, groups = make_sinusoid_tasks(args.n_train_tasks, 40, random_state=args.seed)
    X_test, y_test, g_test = make_sinusoid_tasks(args.test_waves, 40,
                                                 random_state=args.seed + 1)
    print(f"# {cpu_model()}, {args.threads} torch threads; {args.steps} meta-steps of 10 "
          f"tasks per model; {args.n_train_tasks} training waves, {args.test_waves} new "
          f"test waves, 10 query points each; seed {args.seed}", flush=True)
    print(f"{'K':>3} {'method':<11} {'MSE, 1 step':>18} {'MSE, 10 steps':>18} "
          f"{'meta-training':>14}", flush=True)
    for k in args.shots:
        for name in args.methods:
            params = dict(k_shot=k, n_query=10, max_epochs=args.steps // per_epoch,
                          meta_batches_per_epoch=per_epoch, device="cpu",
                          adapt_on_fit=False, random_state=args.seed)
            params.update(METHODS[name])
            if name == "iMAML" and args.imaml_inner_steps is not None:
                params["algorithm"] = IMAML(n_inner_steps=args.imaml_inner_steps)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="iMAML's")
                reg = FOMAMLRegressor(**params).fit(X, y, groups=groups)
            seconds = time.perf_counter() - t0
            cells = []
            for steps in (1, 10):
                reg.set_params(n_inner_steps_test=steps)
                r = reg.evaluate(X_test, y_test, g_test, k_shot=k, n_query=10,
                                 n_episodes=args.test_waves, random_state=args.seed)
                cells.append(f"{r.mse:8.3f} +- {r.mse_ci95:5.3f}")
            print(f"{k:>3} {name:<11} {cells[0]:>18} {cells[1]:>18} {seconds / 60:11.1f} min",
                  flush=True)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
