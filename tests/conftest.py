"""Shared fixtures: small synthetic few-shot data and an Omniglot slice."""

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_OMNIGLOT = Path(
    os.environ.get("FOMAML_TEST_OMNIGLOT", REPO.parent / "shared" / "data" / "omniglot")
)


def make_subspace_classes(n_classes=60, n_per_class=20, n_features=40, n_informative=4,
                          noise=2.0, random_state=0):
    """Classes whose means live in a shared low-dimensional subspace.

    Every class mean lies in the same ``n_informative``-dimensional subspace;
    all other directions carry noise of scale ``noise``. A meta-learner can
    learn the subspace from the training classes and use it on new ones,
    which pixel-space nearest neighbour cannot.
    """
    rng = np.random.default_rng(random_state)
    basis, _ = np.linalg.qr(rng.normal(size=(n_features, n_features)))
    informative, rest = basis[:, :n_informative], basis[:, n_informative:]
    means = rng.normal(scale=1.0, size=(n_classes, n_informative))
    z = means[:, None, :] + 0.25 * rng.normal(size=(n_classes, n_per_class, n_informative))
    nz = noise * rng.normal(size=(n_classes, n_per_class, n_features - n_informative))
    X = z @ informative.T + nz @ rest.T
    y = np.repeat(np.arange(n_classes), n_per_class)
    return X.reshape(-1, n_features).astype(np.float32), y


def make_tasks(n_tasks, n_ways, n_support, n_query, n_features, seed):
    """Random few-shot tasks ``(x_support, y_support, x_query, y_query)``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    tasks = []
    for _ in range(n_tasks):
        xs = torch.randn(n_ways * n_support, n_features, generator=g)
        xq = torch.randn(n_ways * n_query, n_features, generator=g)
        tasks.append((xs, torch.arange(n_ways).repeat_interleave(n_support),
                      xq, torch.arange(n_ways).repeat_interleave(n_query)))
    return tasks


@pytest.fixture(scope="session")
def subspace_data():
    return make_subspace_classes()


@pytest.fixture(scope="session")
def omniglot_slice():
    """40 characters x 20 drawers of Omniglot at 28x28 (ink = 1), or skip."""
    path = SHARED_OMNIGLOT / "images_background.npz"
    if not path.exists():
        pytest.skip(f"Omniglot copy not found at {SHARED_OMNIGLOT} (set FOMAML_TEST_OMNIGLOT)")
    import torch
    from torch.nn import functional as F

    with np.load(path) as data:
        images = data["images"][:80]
    ink = torch.from_numpy(~images).float().reshape(-1, 1, 105, 105)
    X = F.interpolate(ink, size=(28, 28), mode="area").numpy()
    y = np.repeat(np.arange(80), 20)
    return X, y
