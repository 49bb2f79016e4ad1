"""
Watching meta-training: validation on unseen classes, early stopping, best checkpoint
=====================================================================================

Meta-training holds out whole classes for validation (``validation_fraction``):
after every epoch the meta-learned initialisation adapts to fixed episodes of
those unseen classes and records their few-shot accuracy as ``valid_acc`` in
the skorch history. skorch's own callbacks then use it: ``EarlyStopping``
ends training when it stops improving and ``Checkpoint(load_best=True)``
restores the best epoch's parameters at the end.

``fomaml_sklearn.plotting`` draws the learning curves and a task adapted
after training (support images and predicted query labels). The synthetic
data has many classes living in a shared low-dimensional subspace, where
meta-learning pays (see ``tests/conftest.py``), shown here as 8x8 images.
"""

# %%
import os
import tempfile

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from skorch.callbacks import Checkpoint, EarlyStopping  # noqa: E402

from fomaml_sklearn import FOMAMLClassifier  # noqa: E402
from fomaml_sklearn.plotting import plot_episode, plot_history  # noqa: E402

# Smoke mode: FOMAML_EXAMPLES_SMOKE=1 (set by the test suite) runs the same code
# with tiny budgets, to check in seconds that the script works; its numbers
# and curves then mean nothing.
SMOKE = os.environ.get("FOMAML_EXAMPLES_SMOKE") == "1"
MAX_EPOCHS = 3 if SMOKE else 40
META_BATCHES = 5 if SMOKE else 25  # meta-batches of 8 tasks per epoch
N_EVAL_EPISODES = 10 if SMOKE else 100  # validation episodes per epoch
N_EPISODES = 20 if SMOKE else 300  # test episodes

# 80 classes of 20 examples whose means share a 4-dimensional subspace of 64 features.
rng = np.random.default_rng(0)
basis, _ = np.linalg.qr(rng.normal(size=(64, 64)))
means = rng.normal(size=(80, 4))
z = means[:, None, :] + 0.25 * rng.normal(size=(80, 20, 4))
noise = 2.0 * rng.normal(size=(80, 20, 60))
X = (z @ basis[:, :4].T + noise @ basis[:, 4:].T).reshape(-1, 64).astype(np.float32)
y = np.repeat(np.arange(80), 20)
base, novel = y < 60, y >= 60

# %%
# Meta-train with validation on 20% of the base classes, early stopping on
# the validation few-shot accuracy, and the best epoch restored at the end.
with tempfile.TemporaryDirectory() as tmp:
    clf = FOMAMLClassifier(
        "mlp", head="shared", n_ways=5, k_shot=1, n_query=5, meta_batch_size=8,
        max_epochs=MAX_EPOCHS, meta_batches_per_epoch=META_BATCHES,
        n_eval_episodes=N_EVAL_EPISODES,
        validation_fraction=0.2, random_state=0,
        callbacks=[
            EarlyStopping(monitor="valid_acc", lower_is_better=False, patience=5),
            Checkpoint(monitor="valid_acc_best", dirname=tmp, load_best=True),
        ],
    )
    clf.fit(X[base], y[base])

valid = clf.history_[:, "valid_acc"]
best = int(np.argmax(valid))
print(f"{len(clf.history_)} epochs ({clf.n_meta_steps_} meta-steps); best validation "
      f"few-shot accuracy {100 * valid[best]:.1f}% at epoch {best + 1}, restored.")
result = clf.evaluate(X[novel], y[novel], n_episodes=N_EPISODES)
print(f"5-way 1-shot on the 20 unseen test classes: {result}")

fig = plot_history(clf)
fig.savefig("training_curves.png", dpi=100)

# %%
# Adapt to a new task (3 unseen classes, one example each) and look at it.
support = np.concatenate([np.flatnonzero(y == c)[:1] for c in (60, 61, 62)])
query = np.concatenate([np.flatnonzero(y == c)[1:5] for c in (60, 61, 62)])
clf.adapt(X[support], y[support])
fig = plot_episode(clf, X[support], y[support], X[query], y[query], image_shape=(8, 8))
fig.savefig("adapted_task.png", dpi=100)
print(f"query accuracy of this task: {np.mean(clf.predict(X[query]) == y[query]):.2f}")
