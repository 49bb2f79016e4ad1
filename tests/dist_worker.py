"""One rank of a distributed fit, run by tests/test_distributed.py.

Usage: python dist_worker.py RANK WORLD PORT SCENARIO OUT_DIR
(WORLD=1: no process group, the single-process reference). A user's script
that initialises the process group itself, then calls fit unchanged; with a
scenario named ``env-...`` it sets torchrun's environment instead and lets
``fit`` initialise the group.
"""

import datetime
import os
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from fomaml_sklearn import FOMAMLClassifier


class RaiseOnRank(__import__("skorch").callbacks.Callback):
    """Raise on one rank after a number of meta-steps (a failing rank)."""

    def __init__(self, rank, after):
        self.rank, self.after = rank, after

    def on_batch_end(self, net, training, **kwargs):
        if training and torch.distributed.get_rank() == self.rank:
            self.count_ = getattr(self, "count_", 0) + 1
            if self.count_ == self.after:
                raise ValueError("simulated failure in a training step")


def main():
    rank, world, port, scenario, out = sys.argv[1:6]
    rank, world, out = int(rank), int(world), Path(out)
    torch.set_num_threads(1)
    if world > 1 and scenario.startswith("env-"):  # as torchrun would
        os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                          FOMAML_SKLEARN_DIST_TIMEOUT="30")
    elif world > 1:
        torch.distributed.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
            timeout=datetime.timedelta(seconds=20))
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32) / 16
    common = dict(n_ways=3, k_shot=1, n_query=4, precision="float32", device="cpu",
                  random_state=0, verbose=0)
    if scenario == "grad":  # one SGD step at rate 1: the parameters move by -g
        clf = FOMAMLClassifier(meta_batch_size=5, optimizer="sgd", lr=1.0, max_epochs=1,
                               meta_batches_per_epoch=1, adapt_on_fit=False, **common)
    elif scenario == "steps":
        clf = FOMAMLClassifier(meta_batch_size=6, max_epochs=2, meta_batches_per_epoch=4,
                               **common)
    elif scenario == "validation":
        from skorch.callbacks import Checkpoint, EarlyStopping

        clf = FOMAMLClassifier(
            meta_batch_size=4, max_epochs=6, meta_batches_per_epoch=3, n_eval_episodes=7,
            validation_fraction=0.5, callbacks=[
                EarlyStopping(monitor="valid_loss", patience=2, threshold=1.0),
                Checkpoint(monitor="valid_acc_best", dirname=str(out / "checkpoints"),
                           load_best=True)], **common)
    elif scenario == "env-conv4":
        # 16x16 random strokes, 20 classes of 4: Omniglot-like and tiny. Adam
        # for 30 meta-steps of 6 tasks (uneven slices over 4 processes).
        rng = np.random.default_rng(0)
        X = (rng.random((80, 256)) < 0.2).astype(np.float32)
        y = np.repeat(np.arange(20), 4)
        clf = FOMAMLClassifier("conv4", **{
            **common, "n_filters": 8, "input_shape": (1, 16, 16), "n_ways": 5,
            "n_query": 3, "meta_batch_size": 6, "max_epochs": 3,
            "meta_batches_per_epoch": 10, "n_eval_episodes": 5, "validation_fraction": 0.25})
        clf.fit(X, y)
        _save(clf, X[:10], out, rank, world, scenario)
        return
    elif scenario == "raise":
        clf = FOMAMLClassifier(meta_batch_size=4, max_epochs=50, meta_batches_per_epoch=5,
                               callbacks=[RaiseOnRank(1, after=3)], **common)
    else:
        raise SystemExit(f"unknown scenario {scenario}")
    clf.fit(X[y < 6], y[y < 6])
    _save(clf, X[y >= 6][:50], out, rank, world, scenario)


def _save(clf, X_test, out, rank, world, scenario):
    params = {f"param_{i}": p.detach().numpy()
              for i, p in enumerate(clf.meta_model_.parameters())}
    history = {k: np.array([row[k] for row in clf.history_ if k in row], dtype=float)
               for k in ("train_loss", "valid_loss", "valid_acc", "train_query_acc")}
    extra = {}
    if clf.task_model_ is not None:
        extra["proba"] = clf.predict_proba(X_test)
    if scenario == "validation":
        extra["event_cp"] = np.array([bool(row.get("event_cp")) for row in clf.history_])
    np.savez(out / f"rank{rank}_of{world}.npz", n_meta_steps=clf.n_meta_steps_,
             **params, **{f"history_{k}": v for k, v in history.items()}, **extra)


if __name__ == "__main__":
    main()
