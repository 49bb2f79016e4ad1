"""Accuracy after a fixed number of meta-steps: compare training variants at
equal work, independent of the machine's speed.

Meta-trains ``FOMAMLClassifier`` on the Omniglot MAML split (1200
characters x 4 rotations, Conv-4, 28x28) for exactly ``--steps`` meta-steps,
then scores N-way K-shot episodes (15 queries per class) of the 423 unseen
characters with 0, 1 and 3 test-time inner steps. It prints one line with
the seconds per meta-step and the three accuracies (mean +- 95% CI).

Examples
--------
python benchmarks/fixed_steps.py --data-home ../shared/data --steps 600
python benchmarks/fixed_steps.py --data-home ../shared/data --steps 600 --ways 10 \
    --meta-batch-size 8
python benchmarks/fixed_steps.py --data-home ../shared/data --steps 600 --precision bfloat16
"""

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fomaml_sklearn import FOMAMLClassifier  # noqa: E402

from few_shot import load_omniglot  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--steps", type=int, default=600, help="meta-steps (multiple of 50)")
    parser.add_argument("--ways", type=int, default=5, help="classes per training task")
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--meta-batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--inner-lr", default="auto")
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--head", default="prototype")
    parser.add_argument("--test-ways", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--task-batching", default="auto")
    parser.add_argument("--precision", default="auto",
                        choices=["auto", "float32", "bfloat16", "float16"],
                        help="bfloat16 also runs, slowly, on CPUs without native bf16; "
                             "float16 on GPUs only")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data_args = argparse.Namespace(data_home=args.data_home, offline=True)
    try:
        X_train, y_train, X_test, y_test = load_omniglot(data_args)
    except OSError as exc:
        parser.exit(2, f"error: {exc}\n")
    inner_lr = args.inner_lr if args.inner_lr == "auto" else float(args.inner_lr)
    clf = FOMAMLClassifier(
        "conv4", n_ways=args.ways, k_shot=args.shots, n_query=args.queries,
        meta_batch_size=args.meta_batch_size, lr=args.lr, inner_lr=inner_lr,
        n_inner_steps=args.inner_steps, head=args.head,
        max_epochs=max(1, args.steps // 50), meta_batches_per_epoch=min(50, args.steps),
        task_batching=args.task_batching, precision=args.precision, adapt_on_fit=False,
        random_state=args.seed,
        verbose=0,
    )
    t0 = time.perf_counter()
    clf.fit(X_train, y_train)
    seconds = time.perf_counter() - t0
    scores = []
    for k in (0, 1, 3):
        clf.set_params(n_inner_steps_test=k)
        r = clf.evaluate(X_test, y_test, n_ways=args.test_ways, k_shot=args.shots,
                         n_query=15, n_episodes=args.episodes, random_state=args.seed)
        scores.append(f"{k} steps {100 * r.mean:.2f} +- {100 * r.ci95:.2f}")
    print(f"{clf.n_meta_steps_} meta-steps of {args.meta_batch_size} {args.ways}-way tasks, "
          f"{seconds / clf.n_meta_steps_:.3f} s each ({clf.precision_}, {args.threads} "
          "threads); "
          f"{args.test_ways}-way {args.shots}-shot accuracy on {args.episodes} episodes, "
          "test-time inner steps: " + "; ".join(scores) + " %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
