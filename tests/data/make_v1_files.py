"""How the v1_* model files here were made (kept for the record; do not re-run).

They were written by fomaml_sklearn at commit 5147671, before estimators owned
their saved state (issue 28), to test that files in that layout still load:
    OMP_NUM_THREADS=1 python tests/data/make_v1_files.py tests/data
The .npy files hold what the saved models predicted then, on the inputs below.
"""
import os
import sys

import numpy as np
from sklearn.datasets import load_digits

from fomaml_sklearn import FOMAMLClassifier, FOMAMLRegressor
from fomaml_sklearn.algorithms import IMAML

out = sys.argv[1]
X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
tr = y < 6
FAST = dict(k_shot=1, n_query=4, meta_batch_size=2, max_epochs=1,
            meta_batches_per_epoch=3, n_eval_episodes=5, precision="float32",
            device="cpu", random_state=0)
labels = np.array([f"digit {v}" for v in y])
clf = FOMAMLClassifier(n_ways=3, hidden_layer_sizes=(8,), algorithm=IMAML(lam=2.0, cg_steps=3),
                       optimizer_params={"eps": 1e-7}, **FAST).fit(X[tr], labels[tr])
clf.save(os.path.join(out, "v1_classifier.fomaml"))
np.save(os.path.join(out, "v1_classifier_proba.npy"), clf.predict_proba(X[~tr][:20]))
rng = np.random.default_rng(0)
groups = np.repeat(np.arange(20), 10)
amp = rng.uniform(0.5, 2, 20)[groups]
Xr = rng.uniform(-3, 3, (200, 1)).astype(np.float32)
yr = amp * np.sin(Xr[:, 0])
reg = FOMAMLRegressor(hidden_layer_sizes=(8,), **FAST).fit(Xr, yr, groups=groups)
reg.adapt(Xr[:10], yr[:10])
reg.save(os.path.join(out, "v1_regressor.fomaml"))
np.save(os.path.join(out, "v1_regressor_pred.npy"), reg.predict(Xr[10:30]))
