"""
Model selection with class-disjoint folds and few-shot scorers
==============================================================

A pipeline (scaling, PCA, ``FOMAMLClassifier``) is tuned with
``GridSearchCV`` on class-disjoint folds (``ClassKFold``: no class is in both
the training and the test part of a fold), scored by two episode shapes at
once (5-way 1-shot and 5-way 5-shot). The refitted best pipeline is then
adapted to a new task with ``fomaml_sklearn.adapt``, which sends the support
set through the fitted preprocessing first.

The data are synthetic classes whose means share a 4-dimensional subspace of
40 noisy features: meta-learning can find the subspace from the training
classes and use it on new ones.
"""

# %%
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from fomaml_sklearn import ClassKFold, FOMAMLClassifier, adapt, few_shot_scorer  # noqa: E402
from fomaml_sklearn.datasets import make_subspace_classes  # noqa: E402

# Smoke mode: FOMAML_EXAMPLES_SMOKE=1 (set by the test suite) runs the same code
# with tiny budgets, to check in seconds that the script works; its numbers
# then mean nothing.
SMOKE = os.environ.get("FOMAML_EXAMPLES_SMOKE") == "1"
MAX_EPOCHS = 1 if SMOKE else 3
META_BATCHES = 5 if SMOKE else 100  # meta-batches per epoch
N_EPISODES = 10 if SMOKE else 100  # episodes per score

# %%
# Sixty synthetic classes (the generator of the package's tests); the last ten
# are kept aside for the final adaptation.

X, y = make_subspace_classes(n_classes=60, n_per_class=20, noise=1.0, random_state=0)
new_task = y >= 50  # ten classes kept aside for the final adaptation
X_meta, y_meta = X[~new_task], y[~new_task]

# %%
# Grid search on class-disjoint folds, scored by two episode shapes; the
# refit uses the 5-way 1-shot score.

pipe = make_pipeline(
    StandardScaler(), PCA(20),
    FOMAMLClassifier(n_ways=5, k_shot=1, n_query=5, max_epochs=MAX_EPOCHS,
                     meta_batches_per_epoch=META_BATCHES, random_state=0),
)
search = GridSearchCV(
    pipe,
    {"fomamlclassifier__head": ["prototype", "shared"],
     "fomamlclassifier__n_inner_steps": [1, 3]},
    cv=ClassKFold(3),
    scoring={"5w1s": few_shot_scorer(5, 1, 5, n_episodes=N_EPISODES),
             "5w5s": few_shot_scorer(5, 5, 5, n_episodes=N_EPISODES)},
    refit="5w1s",
).fit(X_meta, y_meta)

for params, s1, s5 in zip(search.cv_results_["params"],
                          search.cv_results_["mean_test_5w1s"],
                          search.cv_results_["mean_test_5w5s"]):
    print(f"{params}: 5-way 1-shot {100 * s1:.1f}%, 5-way 5-shot {100 * s5:.1f}%")
print("best:", search.best_params_)

# %%
# Adapt the refitted best pipeline to one example of each of 5 new classes.
rng = np.random.default_rng(0)
classes = np.arange(50, 55)
support = np.array([rng.choice(np.flatnonzero(y == c)) for c in classes])
query = np.setdiff1d(np.flatnonzero(np.isin(y, classes)), support)
adapt(search, X[support], y[support])
accuracy = np.mean(search.predict(X[query]) == y[query])
print(f"new 5-way 1-shot task: {100 * accuracy:.1f}% of {len(query)} queries correct")

# %%
labels = [f"{p['fomamlclassifier__head']}\n{p['fomamlclassifier__n_inner_steps']} step(s)"
          for p in search.cv_results_["params"]]
x = np.arange(len(labels))
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.bar(x - 0.2, search.cv_results_["mean_test_5w1s"], 0.4, label="5-way 1-shot")
ax.bar(x + 0.2, search.cv_results_["mean_test_5w5s"], 0.4, label="5-way 5-shot")
ax.set_xticks(x, labels)
ax.set_ylabel("mean few-shot accuracy\n(class-disjoint 3-fold CV)")
ax.set_ylim(0, 1)
ax.legend()
fig.tight_layout()
fig.savefig("model_selection.png", dpi=100)
print("saved model_selection.png")
