"""
MNIST: meta-train an MLP on six digits, adapt to the four others
================================================================

The "meta-train on some classes, adapt to new ones" tutorial on MNIST, read
through torchvision's loader from a local folder
(:func:`fomaml_sklearn.datasets.load_mnist`): ``$FOMAML_MNIST_ROOT``, else
``<data home>/mnist``, must hold ``MNIST/raw/`` with the IDX files
(``torchvision.datasets.MNIST(root, download=True)`` puts them there where
there is internet). Without them the script says where it looked and stops.

An MLP meta-trains on 5,000 training images of the digits 0-5, then
3-way 1-shot episodes of the unseen digits 6-9 (test images) are scored next
to 1-nearest neighbour on pixels, on the same episodes. MNIST has only ten
classes: six are too few for meta-learning to beat nearest neighbour on
pixels, and the printed numbers say so honestly. Omniglot, with 1,623
classes, is where meta-learning pays (``benchmarks/omniglot.py``).
"""

# %%
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402

from fomaml_sklearn import FOMAMLClassifier  # noqa: E402
from fomaml_sklearn.datasets import get_data_home, load_mnist  # noqa: E402
from fomaml_sklearn.evaluation import baseline_accuracies, sample_episodes  # noqa: E402

# Smoke mode: FOMAML_EXAMPLES_SMOKE=1 (set by the test suite) runs the same code
# with tiny budgets, to check in seconds that the script works; its numbers
# then mean nothing. It still needs the MNIST files.
SMOKE = os.environ.get("FOMAML_EXAMPLES_SMOKE") == "1"
N_BASE = 500 if SMOKE else 5000  # meta-training images
MAX_EPOCHS = 1 if SMOKE else 10
META_BATCHES = 5 if SMOKE else 50  # meta-batches of 8 tasks per epoch
N_EPISODES = 20 if SMOKE else 300  # test episodes

# Needs data: mnist. Where it is missing, the documentation build shows this
# example without running it and the test suite skips it.
root = Path(os.environ.get("FOMAML_MNIST_ROOT", Path(get_data_home()) / "mnist"))
try:
    X_train, y_train = load_mnist(root, train=True, return_X_y=True)
    X_test, y_test = load_mnist(root, train=False, return_X_y=True)
except OSError as exc:
    print(f"MNIST is not available locally: {exc}")
    sys.exit(0)

rng = np.random.default_rng(0)
base = np.flatnonzero(y_train < 6)
base = rng.choice(base, size=min(N_BASE, len(base)), replace=False)
novel = y_test >= 6
X_base, y_base = X_train[base].reshape(len(base), -1), y_train[base]
X_novel, y_novel = X_test[novel].reshape(novel.sum(), -1), y_test[novel]

# %%
clf = FOMAMLClassifier("mlp", hidden_layer_sizes=(128, 64), n_ways=3, k_shot=1,
                       n_query=10, meta_batch_size=8, max_epochs=MAX_EPOCHS,
                       meta_batches_per_epoch=META_BATCHES, random_state=0)
clf.fit(X_base, y_base)
result = clf.evaluate(X_novel, y_novel, n_episodes=N_EPISODES)
episodes = sample_episodes(y_novel, result.shape, N_EPISODES, clf.random_state)
knn = baseline_accuracies(KNeighborsClassifier(1), X_novel, episodes)
print(f"3-way 1-shot on the unseen digits 6-9 ({len(X_base)} meta-training images):")
print(f"  FOMAML (MLP, meta-trained)   {result}")
print(f"  1-nearest neighbour, pixels  {100 * knn.mean():.2f}% on the same episodes")
if result.mean <= knn.mean():
    print("  As expected with six training classes, nearest neighbour on pixels wins.")

# %%
# Per-episode accuracies of both methods on the same episodes.
fig, ax = plt.subplots(figsize=(6, 3.5))
bins = np.linspace(0, 1, 11)
ax.hist([result.accuracies, knn], bins=bins, label=["FOMAML", "1-NN on pixels"])
ax.set_xlabel("query accuracy of an episode")
ax.set_ylabel("episodes")
ax.legend()
fig.tight_layout()
fig.savefig("mnist_episodes.png", dpi=100)
