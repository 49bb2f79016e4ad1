"""When does the gradient through the prototypes help? Fully connected
backbones on synthetic classes, with and without BatchNorm.

FOMAML with the prototype head can carry the head's query gradient back
through the prototypes (``prototype_gradient=True``), computed with the
support BatchNorm statistics held constant. This script meta-trains the same
setup as the test suite's learning test (``make_subspace_classes(noise=1.0)``:
40 training classes, 20 unseen test classes, 5-way, 600 meta-steps of 4
tasks, the default meta-batch) with the gradient on and off, for three fully connected backbones:

- ``mlp-bn``: the built-in ``"mlp"`` (Linear -> BatchNorm -> ReLU, twice),
  5-way 1-shot: each BatchNorm statistic comes from 5 support examples;
- ``mlp-nobn``: the same widths without BatchNorm, 5-way 1-shot;
- ``mlp-bn-5shot``: the built-in ``"mlp"``, 5-way 5-shot (25 examples per
  statistic).

It prints the accuracy on 100 episodes of the unseen classes for seeds 0, 1
and 2 (each seed its own data, network and episodes) and their mean.

Usage: python benchmarks/prototype_gradient.py [--threads 1]
"""

import argparse
import sys

import numpy as np
import torch
from torch import nn

from fomaml_sklearn import FOMAMLClassifier
from fomaml_sklearn.algorithms import FOMAML
from fomaml_sklearn.datasets import make_subspace_classes


class MLPWithoutBatchNorm(nn.Module):
    """Linear -> ReLU, twice, 64 units: the built-in MLP without BatchNorm."""

    def __init__(self, n_features=40, width=64):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(n_features, width), nn.ReLU(),
                                    nn.Linear(width, width), nn.ReLU())

    def forward(self, x):
        return self.layers(x)


VARIANTS = {
    "mlp-bn": dict(module="mlp", k_shot=1),
    "mlp-nobn": dict(module=MLPWithoutBatchNorm, k_shot=1),
    "mlp-bn-5shot": dict(module="mlp", k_shot=5),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("5-way accuracy on 100 episodes of 20 unseen synthetic classes, "
          f"seeds 0..{args.seeds - 1}")
    print(f"{'backbone':<13} {'through prototypes':>18}  {'per seed':<20} mean  "
          "resolved 'auto'")
    for name, variant in VARIANTS.items():
        for through in (False, True):
            accs = []
            for seed in range(args.seeds):
                X, y = make_subspace_classes(noise=1.0, random_state=seed)
                train = y < 40
                clf = FOMAMLClassifier(
                    n_ways=5, n_query=5, max_epochs=6, meta_batches_per_epoch=100,
                    device="cpu", adapt_on_fit=False, random_state=seed,
                    algorithm=FOMAML(prototype_gradient=through), **variant,
                ).fit(X[train], y[train])
                accs.append(clf.evaluate(X[~train], y[~train], n_episodes=100,
                                         random_state=seed).mean)
            auto = FOMAMLClassifier(max_epochs=0, **variant).fit(
                X[train], y[train]).algorithm_.prototype_gradient
            per_seed = " ".join(f"{100 * a:5.1f}" for a in accs)
            print(f"{name:<13} {str(through):>18}  {per_seed:<20} {100 * np.mean(accs):5.1f}"
                  f"  {auto}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
