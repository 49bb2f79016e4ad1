"""
FOMAML, MAML, Reptile, ANIL and iMAML on an Omniglot slice
==========================================================

The same Conv-4 network (32 filters), the same episodes (5-way 1-shot, 5
queries per class), the same number of meta-steps: only ``algorithm``
changes. iMAML's implicit gradient assumes a solved inner problem, so its
rule takes 5 safeguarded proximal steps of its own in meta-training where the
estimator says 1 (its ``n_inner_steps="auto"``), with ``lam="auto"``; it is
given as an instance, where its options (the proximal strength ``lam``, the
conjugate-gradient steps) can be set. Meta-training uses 80
characters of Omniglot's background set; the accuracy is measured on 20
other characters, over 300 episodes. The table and the figure put accuracy
next to meta-training wall time.

Omniglot comes from the data home (``fetch_omniglot``; set
``FOMAML_SKLEARN_DATA`` or edit ``DATA_HOME``).
"""

# %%
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fomaml_sklearn import FOMAMLClassifier  # noqa: E402
from fomaml_sklearn.algorithms import IMAML  # noqa: E402
from fomaml_sklearn.datasets import fetch_omniglot  # noqa: E402

# Smoke mode: FOMAML_EXAMPLES_SMOKE=1 (set by the test suite) runs the same code
# with tiny budgets, to check in seconds that the script works; its numbers
# then mean nothing.
SMOKE = os.environ.get("FOMAML_EXAMPLES_SMOKE") == "1"
N_CHARACTERS, N_TRAIN = (20, 15) if SMOKE else (100, 80)  # characters used, for training
N_STEPS = 3 if SMOKE else 300  # meta-steps of 4 tasks
N_EPISODES = 10 if SMOKE else 300  # test episodes

# Needs data: omniglot. Where it is missing, the documentation build shows this
# example without running it and the test suite skips it (neither downloads).
DATA_HOME = os.environ.get("FOMAML_SKLEARN_DATA")
X, y = fetch_omniglot(DATA_HOME, subset="background", return_X_y=True)
keep = y < N_CHARACTERS
X, y = X[keep], y[keep]
train = y < N_TRAIN

results = {}
rules = {"fomaml": "fomaml", "maml": "maml", "reptile": "reptile", "anil": "anil",
         "fo-anil": "fo-anil", "imaml": IMAML(cg_steps=5), None: "fomaml"}
for algorithm, rule in rules.items():
    clf = FOMAMLClassifier(
        "conv4", n_filters=32, algorithm=rule, n_ways=5, k_shot=1,
        n_query=5, meta_batch_size=4, max_epochs=0 if algorithm is None else 1,
        meta_batches_per_epoch=N_STEPS, adapt_on_fit=False, random_state=0,
    )
    start = time.perf_counter()
    clf.fit(X[train], y[train])
    seconds = time.perf_counter() - start
    result = clf.evaluate(X[~train], y[~train], n_query=5, n_episodes=N_EPISODES,
                          random_state=0)
    name = algorithm or "random init"
    results[name] = (result, seconds)
    print(f"{name:<12} {100 * result.mean:6.2f} +- {100 * result.ci95:4.2f} %"
          f"   meta-training {seconds:5.1f} s")

# %%
fig, ax = plt.subplots(figsize=(6, 4))
for name, (result, seconds) in results.items():
    ax.errorbar(seconds, 100 * result.mean, yerr=100 * result.ci95, fmt="o", capsize=3)
    ax.annotate(name, (seconds, 100 * result.mean), textcoords="offset points",
                xytext=(6, 4))
ax.set_xlabel(f"meta-training wall time (s), {N_STEPS} meta-steps of 4 tasks")
ax.set_ylabel("5-way 1-shot accuracy on unseen characters (%)")
ax.set_title("Omniglot slice, Conv-4 (32 filters), 2 CPU cores")
fig.tight_layout()
fig.savefig("algorithms_omniglot.png", dpi=100)
print("saved algorithms_omniglot.png")
