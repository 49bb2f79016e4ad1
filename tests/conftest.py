"""Shared fixtures: small synthetic few-shot data and an Omniglot slice."""

import os
from pathlib import Path

import numpy as np
import pytest

from fomaml_sklearn.datasets import make_subspace_classes  # noqa: F401 (tests import it from here)

REPO = Path(__file__).resolve().parents[1]
SHARED_OMNIGLOT = Path(
    os.environ.get("FOMAML_TEST_OMNIGLOT", REPO.parent / "shared" / "data" / "omniglot")
)


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
