"""
Quickstart: meta-train on six digits, adapt to four new ones
============================================================

``FOMAMLClassifier`` meta-trains on episodes of the digits 0-5, then adapts
to a task made of the unseen digits 6-9 from one labelled example each, and
classifies new images of them. The figure shows the support set and a few
query images with their predicted labels.

Digits has only ten classes, too few for meta-learning to beat a
nearest-neighbour classifier on pixels (the script prints both); see the
Omniglot benchmark for where meta-learning pays.
"""

# %%
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402

from fomaml_sklearn import FOMAMLClassifier  # noqa: E402
from fomaml_sklearn.evaluation import baseline_accuracies, sample_episodes  # noqa: E402

# Smoke mode: FOMAML_EXAMPLES_SMOKE=1 (set by the test suite) runs the same code
# with tiny budgets, to check in seconds that the script works; its numbers
# then mean nothing.
SMOKE = os.environ.get("FOMAML_EXAMPLES_SMOKE") == "1"
MAX_EPOCHS = 1 if SMOKE else 5  # of 100 meta-batches of 4 tasks
N_EPISODES = 20 if SMOKE else 300  # test episodes

X, y = load_digits(return_X_y=True)
X = X / 16.0
base, novel = y < 6, y >= 6

clf = FOMAMLClassifier(module="mlp", n_ways=3, k_shot=1, n_query=10, max_epochs=MAX_EPOCHS,
                       random_state=0)
clf.fit(X[base], y[base])

# %%
# Few-shot accuracy on the unseen digits, next to 1-NN on the same episodes.
result = clf.evaluate(X[novel], y[novel], n_ways=4, n_episodes=N_EPISODES)
episodes = sample_episodes(y[novel], result.shape, N_EPISODES, clf.random_state)
knn = baseline_accuracies(KNeighborsClassifier(1), X[novel], episodes)
print(f"FOMAML 4-way 1-shot on digits 6-9: {result}")
print(f"1-NN on pixels, same episodes:     {100 * knn.mean():.2f}%")

# %%
# Adapt to one example of each new digit and predict a few queries.
rng = np.random.default_rng(0)
support = np.array([rng.choice(np.flatnonzero(y == c)) for c in (6, 7, 8, 9)])
queries = rng.choice(np.setdiff1d(np.flatnonzero(novel), support), 12, replace=False)
clf.adapt(X[support], y[support])
predicted = clf.predict(X[queries])

fig, axes = plt.subplots(2, 8, figsize=(10, 3))
for ax in axes.ravel():
    ax.axis("off")
for ax, i in zip(axes[0], support):
    ax.imshow(X[i].reshape(8, 8), cmap="gray_r")
    ax.set_title(f"support {y[i]}", fontsize=8)
for ax, i, p in zip(list(axes[0, 4:]) + list(axes[1]), queries, predicted):
    ax.imshow(X[i].reshape(8, 8), cmap="gray_r")
    ax.set_title(f"pred {p}", fontsize=8, color="green" if p == y[i] else "red")
fig.suptitle("Adapted from one example per new digit")
fig.tight_layout()
fig.savefig("digits_quickstart.png", dpi=100)
print("saved digits_quickstart.png")
