"""
Where the first-order approximation breaks: MAML vs FOMAML on a quadratic
=========================================================================

On a 2-D quadratic task loss f(x) = 1/2 (x - 1/2)^T C (x - 1/2) + g^T x, MAML's
meta-gradient is U'(x)^T grad f_query(phi) with U'(x) = (I - alpha C)^k for k
inner steps, while FOMAML drops the Jacobian: grad f_query(phi). With no
curvature (C = 0) they coincide; as the curvature grows the Jacobian shrinks
and rotates the gradient, and the first-order field drifts away from the
exact one.

Both fields are computed with the library's own update rules
(``fomaml_sklearn.algorithms.meta_gradient``): the "network" has no features,
so its output is its head bias, which is the point x itself.
"""

# %%
import os
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from fomaml_sklearn.algorithms import meta_gradient  # noqa: E402
from fomaml_sklearn.heads import MetaModel  # noqa: E402

# Smoke mode: FOMAML_EXAMPLES_SMOKE=1 (set by the test suite) runs the same code
# on a coarser grid, to check in seconds that the script works.
SMOKE = os.environ.get("FOMAML_EXAMPLES_SMOKE") == "1"
N_GRID = 5 if SMOKE else 11  # grid points per axis


class NoFeatures(nn.Module):
    """A body with zero output features: the head's output is its bias."""

    out_features = 0

    def forward(self, x):
        return x.new_zeros(len(x), 0)


def quadratic(C):
    C = torch.tensor(C, dtype=torch.float32)

    def loss(out, g):  # out: (1, 2), the point x; g: the task's linear term
        z = out[0] - 0.5
        return 0.5 * z @ C @ z + g @ out[0]

    return loss


alpha, k = 0.25, 3
g_support, g_query = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
curvatures = {"no curvature (C = 0)": np.zeros((2, 2)),
              "mild (C = diag(1, 0.5))": np.diag([1.0, 0.5]),
              "strong (C = [[4, 1.5], [1.5, 2]])": np.array([[4.0, 1.5], [1.5, 2.0]])}
grid = np.linspace(-1, 1, N_GRID)

fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
for ax, (title, C) in zip(axes, curvatures.items()):
    with warnings.catch_warnings():  # initialising the empty weight is a no-op
        warnings.simplefilter("ignore", UserWarning)
        meta = MetaModel(NoFeatures(), 1, head="fixed", n_rows=2)
    task = [(torch.zeros(1, 1), g_support, torch.zeros(1, 1), g_query)]
    fields = {"maml": [], "fomaml": []}
    for x1 in grid:
        for x2 in grid:
            with torch.no_grad():
                meta.head_bias.copy_(torch.tensor([x1, x2]))
            for algorithm in fields:
                grads, _, _ = meta_gradient(meta, task, 2, algorithm, inner_lr=alpha,
                                            n_inner_steps=k, loss=quadratic(C))
                fields[algorithm].append(grads[1].numpy())  # the bias = x
    maml, fomaml = (np.array(fields[a]) for a in ("maml", "fomaml"))
    error = np.linalg.norm(fomaml - maml, axis=1).mean() / np.linalg.norm(maml, axis=1).mean()
    X1, X2 = np.meshgrid(grid, grid, indexing="ij")
    # One scale for both fields: the longest arrow spans 0.18 units.
    scale = max(np.linalg.norm(maml, axis=1).max(), np.linalg.norm(fomaml, axis=1).max()) / 0.18
    style = dict(angles="xy", scale_units="xy", scale=scale, width=0.006)
    ax.quiver(X1, X2, -maml[:, 0], -maml[:, 1], color="tab:blue", label="MAML (exact)",
              **style)
    ax.quiver(X1, X2, -fomaml[:, 0], -fomaml[:, 1], color="tab:orange", alpha=0.7,
              label="FOMAML", **style)
    ax.set_title(f"{title}\nrelative error of FOMAML: {100 * error:.0f}%", fontsize=10)
    ax.set_aspect("equal")
    print(f"{title}: mean |g_FOMAML - g_MAML| / mean |g_MAML| = {error:.3f}")
axes[0].legend(loc="lower left", fontsize=8)
fig.suptitle(f"Negative meta-gradient fields, alpha = {alpha}, {k} inner steps")
fig.tight_layout()
fig.savefig("curvature.png", dpi=100)
print("saved curvature.png")
