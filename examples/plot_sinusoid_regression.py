"""
Few-shot regression of sine waves (the MAML paper's Figure 2)
==============================================================

:class:`~fomaml_sklearn.FOMAMLRegressor` meta-trains a small network
(1 -> 40 -> 40 -> 1, ReLU) on waves ``y = A sin(x - p)`` with amplitude in
[0.1, 5] and phase in [0, pi] (:func:`~fomaml_sklearn.datasets.make_sinusoid_tasks`),
each wave a task (``groups``). It then adapts to a new wave from K = 10 points.

The left panel shows one new wave: the true curve, the 10 support points,
and the predictions of the meta-learned network before adaptation and after
1 and 10 inner gradient steps, next to the same network trained on all waves
pooled and fine-tuned the same way (the paper's "pretrained" baseline). The
right panel shows the query MSE over 100 new waves against the number of
inner steps, for the meta-learned and the pretrained initialisations.
"""

# %%
import os
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from fomaml_sklearn import FOMAMLRegressor  # noqa: E402
from fomaml_sklearn.datasets import make_sinusoid_tasks  # noqa: E402

# Smoke mode: FOMAML_EXAMPLES_SMOKE=1 (set by the test suite) runs the same code
# with a tiny budget, to check in seconds that the script works.
SMOKE = os.environ.get("FOMAML_EXAMPLES_SMOKE") == "1"
STEPS = 100 if SMOKE else 5000  # meta-steps of 10 waves
torch.set_num_threads(1)  # a small network: one thread is fastest

X, y, groups = make_sinusoid_tasks(n_tasks=5000, n_points=20, random_state=0)
X_new, y_new, groups_new = make_sinusoid_tasks(n_tasks=100, n_points=20, random_state=1)

common = dict(k_shot=10, n_query=10, lr=3e-3, max_epochs=STEPS // 100,
              meta_batches_per_epoch=100, device="cpu", adapt_on_fit=False, random_state=0)
models = {
    "meta-learned (FOMAML)": FOMAMLRegressor(**common).fit(X, y, groups=groups),
    # No inner step in training: plain training on all waves pooled.
    "pretrained (pooled)": FOMAMLRegressor(n_inner_steps=0, **common).fit(
        X, y, groups=groups),
}

# %%
# Adapting to one new wave
# ------------------------
amplitude, phase = 3.0, 1.0
rng = np.random.default_rng(2)
x_support = rng.uniform(-5, 5, size=(10, 1)).astype(np.float32)
y_support = amplitude * np.sin(x_support[:, 0] - phase)
grid = np.linspace(-5, 5, 200, dtype=np.float32)[:, None]

fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
left.plot(grid, amplitude * np.sin(grid[:, 0] - phase), color="black", lw=2,
          label="true wave")
left.scatter(x_support, y_support, color="black", zorder=5, label="10 support points")
styles = {"meta-learned (FOMAML)": "tab:red", "pretrained (pooled)": "tab:blue"}
for name, model in models.items():
    for steps, ls in ((0, ":"), (1, "--"), (10, "-")):
        model.set_params(n_inner_steps_test=steps)
        pred = model.adapt(x_support, y_support).predict(grid)
        if name.startswith("meta") or steps == 10:
            left.plot(grid, pred, color=styles[name], ls=ls,
                      label=f"{name.split()[0]}, {steps} step{'s' if steps != 1 else ''}")
left.set_xlabel("x")
left.set_ylabel("y")
left.set_title("K = 10 points of a new wave")
left.legend(fontsize=7, loc="lower left")

# %%
# Query MSE against inner steps, over new waves
# ---------------------------------------------
step_counts = [0, 1, 2, 3, 5, 10]
for name, model in models.items():
    mses, cis = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for steps in step_counts:
            model.set_params(n_inner_steps_test=steps)
            r = model.evaluate(X_new, y_new, groups_new, n_episodes=20 if SMOKE else 100,
                               random_state=0)
            mses.append(r.mse)
            cis.append(r.mse_ci95)
    right.errorbar(step_counts, mses, yerr=cis, marker="o", color=styles[name], label=name,
                   capsize=3)
    print(f"{name}: MSE after " + ", ".join(
        f"{s} steps {m:.3f}" for s, m in zip(step_counts, mses)))
right.set_xlabel("inner gradient steps at test time")
right.set_ylabel("query MSE (100 new waves, 95% CI)")
right.set_title(f"after {STEPS} meta-steps of 10 waves")
right.legend(fontsize=8)
fig.tight_layout()
fig.savefig("sinusoid_regression.png", dpi=100)
print("saved sinusoid_regression.png")
