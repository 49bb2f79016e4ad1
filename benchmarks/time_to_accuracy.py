"""Time to accuracy: minutes of meta-training until 5-way 1-shot accuracy on
held-out Omniglot characters reaches 90%, 95% and 97%.

Every ``--eval-every`` meta-steps the meta-learned initialisation is scored
on a fixed set of test episodes (the 423 unseen characters of the MAML split,
15 queries per class); the training clock stops while it is scored. Two
implementations of the same algorithm on the same data, episodes and network:

- ``ours``: :class:`fomaml_sklearn.FOMAMLClassifier` (its ``precision`` and
  ``task_batching`` set by ``--precision`` / ``--task-batching``, "auto" by
  default);
- ``l2l``: learn2learn's ``MAML(first_order=True)`` per-task loop (install it
  in a separate venv: ../shared/notes/learn2learn-peer.md), float32.

``--setup paper`` (both implementations): the classic 5-row head, inner rate
0.4, 1 step in training and 3 at test. ``--setup default`` (ours only): the
package's defaults (prototype head, inner rate 0.05).

Usage::

    python benchmarks/time_to_accuracy.py --impl ours --setup paper --minutes 15
    .bench-venv/bin/python benchmarks/time_to_accuracy.py --impl l2l --minutes 15
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fomaml_sklearn.episodes import EpisodeSampler, EpisodeShape  # noqa: E402
from fomaml_sklearn.evaluation import (  # noqa: E402
    confidence_interval,
    episodic_accuracies,
    sample_episodes,
)

from few_shot import load_omniglot  # noqa: E402

THRESHOLDS = (0.90, 0.95, 0.97)


class Clock:
    """Training time: wall time minus the time spent scoring."""

    def __init__(self):
        self.start, self.paused = time.perf_counter(), 0.0

    def minutes(self):
        return (time.perf_counter() - self.start - self.paused) / 60

    def pause(self, fn):
        t0 = time.perf_counter()
        out = fn()
        self.paused += time.perf_counter() - t0
        return out


def report(curve, label):
    print(f"\n{label}: minutes of meta-training to reach a 5-way 1-shot accuracy")
    for threshold in THRESHOLDS:
        hit = next(((m, s) for m, s, acc in curve if acc >= threshold), None)
        text = (f"{hit[0]:6.1f} min ({hit[1]} meta-steps)" if hit
                else f"not reached in {curve[-1][0]:.1f} min ({curve[-1][1]} meta-steps)")
        print(f"  {100 * threshold:.0f}%: {text}")


def run_ours(args, data, episodes):
    from skorch.callbacks import Callback

    from fomaml_sklearn import FOMAMLClassifier
    from fomaml_sklearn.algorithms import TaskRunner
    from fomaml_sklearn.callbacks import meta_steps_per_epoch

    X_train, y_train, X_test, y_test = data
    clock, curve = Clock(), []
    setup = (dict(head="fixed", inner_lr=0.4) if args.setup == "paper"
             else dict(head="prototype", inner_lr="auto"))

    X_te = None  # the test images, on the net's device once it is known

    class Score(Callback):
        """Score the current initialisation on the fixed test episodes.

        It adapts with a TaskRunner on the net's meta-model and resolved
        configuration (rule, inner rate, test-time steps), exactly as
        ``FOMAMLClassifier.evaluate`` does after ``fit``.
        """

        def on_epoch_end(self, net, **kwargs):
            nonlocal X_te
            if X_te is None:
                X_te = torch.as_tensor(X_test.reshape(len(X_test), -1), device=net.device)
            steps = sum(meta_steps_per_epoch(net.history))
            runner = TaskRunner(net.module_, net.config)
            accs = clock.pause(lambda: episodic_accuracies(runner, X_te, episodes))
            acc = float(accs.mean())
            curve.append((clock.minutes(), steps, acc))
            print(f"  {clock.minutes():6.2f} min {steps:6d} meta-steps  {100 * acc:6.2f} %",
                  flush=True)
            if acc >= THRESHOLDS[-1] or clock.minutes() >= args.minutes:
                raise KeyboardInterrupt

    clf = FOMAMLClassifier(
        "conv4", n_ways=5, k_shot=1, n_query=args.queries, meta_batch_size=args.meta_batch_size,
        n_inner_steps=1, n_inner_steps_test=3, lr=1e-3, max_epochs=1_000_000,
        meta_batches_per_epoch=args.eval_every, precision=args.precision,
        task_batching=args.task_batching, adapt_on_fit=False, random_state=args.seed,
        callbacks=[Score()], **setup)
    clock.start = time.perf_counter()
    clf.fit(X_train, y_train)
    report(curve, f"ours ({args.setup} setup, {clf.precision_}, task batching "
                  f"{clf.task_batching_})")


def run_l2l(args, data, episodes):
    import learn2learn as l2l
    from torch import nn

    from fomaml_sklearn.backbones import Conv4Backbone

    X_train, y_train, X_test, y_test = data
    torch.manual_seed(args.seed)
    X_tr = torch.as_tensor(X_train.reshape(len(X_train), -1))
    X_te = torch.as_tensor(X_test.reshape(len(X_test), -1))
    model = nn.Sequential(Conv4Backbone((1, 28, 28), 64), nn.Linear(64, 5))
    maml = l2l.algorithms.MAML(model, lr=0.4, first_order=True)
    opt = torch.optim.Adam(maml.parameters(), lr=1e-3)
    codes = np.unique(y_train, return_inverse=True)[1]
    sampler = EpisodeSampler(codes, EpisodeShape(5, 1, args.queries),
                             np.random.default_rng(args.seed))

    def adapt(xs, ys, steps):
        learner = maml.clone()
        for _ in range(steps):
            learner.adapt(F.cross_entropy(learner(xs), ys))
        with torch.no_grad():
            learner(xs)  # support statistics at the adapted weights
        learner.eval()
        return learner

    def evaluate():
        ys = torch.as_tensor(episodes.support_y)
        yq = torch.as_tensor(episodes.query_y)
        accs = []
        for t in range(len(episodes)):
            learner = adapt(X_te[episodes.support_idx[t]], ys, 3)
            with torch.no_grad():
                pred = learner(X_te[episodes.query_idx[t]]).argmax(1)
            accs.append((pred == yq).float().mean().item())
        return confidence_interval(accs)[0]

    clock, curve, steps = Clock(), [], 0
    while True:
        for _ in range(args.eval_every):
            batch = sampler.sample(args.meta_batch_size)
            ys, yq = torch.as_tensor(batch.support_y), torch.as_tensor(batch.query_y)
            opt.zero_grad()
            for t in range(len(batch)):
                learner = adapt(X_tr[batch.support_idx[t]], ys, 1)
                loss = F.cross_entropy(learner(X_tr[batch.query_idx[t]]), yq)
                (loss / len(batch)).backward()
            opt.step()
            steps += 1
        acc = clock.pause(evaluate)
        curve.append((clock.minutes(), steps, acc))
        print(f"  {clock.minutes():6.2f} min {steps:6d} meta-steps  {100 * acc:6.2f} %",
              flush=True)
        if acc >= THRESHOLDS[-1] or clock.minutes() >= args.minutes:
            break
    report(curve, "learn2learn MAML(first_order=True), paper setup, float32")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", choices=["ours", "l2l"], default="ours")
    parser.add_argument("--setup", choices=["paper", "default"], default="paper")
    parser.add_argument("--minutes", type=float, default=15.0,
                        help="training-time budget (scoring excluded)")
    parser.add_argument("--eval-every", type=int, default=100, help="meta-steps")
    parser.add_argument("--episodes", type=int, default=200, help="fixed test episodes")
    parser.add_argument("--meta-batch-size", type=int, default=16)
    parser.add_argument("--queries", type=int, default=5)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--task-batching", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--offline", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.impl == "l2l" and args.setup != "paper":
        parser.error("learn2learn runs the paper setup only (--setup paper)")
    torch.set_num_threads(args.threads)
    data = load_omniglot(args)
    codes = np.unique(data[3], return_inverse=True)[1]
    episodes = sample_episodes(codes, EpisodeShape(5, 1, 15), args.episodes, args.seed)
    print(f"{args.impl}, {args.setup} setup: meta-batch {args.meta_batch_size}, "
          f"{args.queries} queries per class, {args.threads} threads; scoring every "
          f"{args.eval_every} meta-steps on {args.episodes} fixed test episodes")
    (run_ours if args.impl == "ours" else run_l2l)(args, data, episodes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
