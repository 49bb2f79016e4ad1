"""Which task-head initialisation adapts best? Prints a table.

Compares the three heads of :class:`fomaml_sklearn.FOMAMLClassifier`
(``prototype``, ``shared``, ``fixed``) at the same meta-training budget, on
the same test episodes, on (a) a slice of Omniglot (first 100 background
characters: 80 to meta-train on, 20 unseen to test on; Conv-4 with 32
filters) and (b) synthetic classes in a shared low-dimensional subspace
(MLP). Each head runs with its ``inner_lr="auto"`` value and with 0.4, the
MAML paper's Omniglot rate.

Usage: python benchmarks/heads.py [--data-home DIR] [--steps 500]
"""

import argparse
import sys
import time

import torch

from fomaml_sklearn import FOMAMLClassifier
from fomaml_sklearn.datasets import make_subspace_classes


def omniglot_slice(data_home):
    from fomaml_sklearn.datasets import fetch_omniglot

    X, y = fetch_omniglot(data_home, subset="background", download_if_missing=False,
                          return_X_y=True)
    keep = y < 100
    return X[keep], y[keep], y[keep] < 80


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--steps", type=int, default=500, help="meta-steps per run")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    X_syn, y_syn = make_subspace_classes(noise=1.0, random_state=0)
    X_omn, y_omn, train_omn = omniglot_slice(args.data_home)
    data = {
        "omniglot": (X_omn, y_omn, train_omn, dict(module="conv4", n_filters=32)),
        "subspace": (X_syn, y_syn, y_syn < 40, dict(module="mlp")),
    }
    print(f"5-way 1-shot accuracy on {args.episodes} test episodes, {args.steps} "
          "meta-steps of 4 tasks (5 queries per class), seed 0")
    print(f"{'data':<10}{'head':<11}{'inner_lr':>9}{'accuracy':>18}{'fit s':>8}")
    for name, (X, y, train, kw) in data.items():
        for head in ["prototype", "shared", "fixed"]:
            for lr in ["auto", 0.4]:
                if head != "prototype" and lr == 0.4:
                    continue  # "auto" is 0.4 for these heads
                clf = FOMAMLClassifier(head=head, inner_lr=lr, n_ways=5, k_shot=1,
                                       n_query=5, meta_batch_size=4, max_epochs=1,
                                       meta_batches_per_epoch=args.steps,
                                       adapt_on_fit=False, random_state=0, **kw)
                t0 = time.perf_counter()
                clf.fit(X[train], y[train])
                seconds = time.perf_counter() - t0
                r = clf.evaluate(X[~train], y[~train], n_episodes=args.episodes,
                                 random_state=0)
                acc = f"{100 * r.mean:.2f} +- {100 * r.ci95:.2f}"
                print(f"{name:<10}{head:<11}{clf.inner_lr_:>9g}{acc:>18}{seconds:>8.1f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
