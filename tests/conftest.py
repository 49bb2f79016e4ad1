"""Shared fixtures: small synthetic few-shot data, an Omniglot slice, a fake
Omniglot cache and folders of images."""

import os
from pathlib import Path

import numpy as np
import pytest

from fomaml_sklearn.datasets import make_subspace_classes  # noqa: F401 (tests import it from here)

REPO = Path(__file__).resolve().parents[1]

# fit runs fewer threads while other processes keep the cores busy
# (fomaml_sklearn/_threads.py), and the thread count can change a result's
# last bits; tests that compare fits bit for bit need the same count whatever
# the load, so the suite keeps it (tests/test_threads.py turns it back on).
os.environ.setdefault("FOMAML_SKLEARN_FIT_THREADS", "keep")
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
def omniglot_slice_105():
    """The first 80 characters x 20 drawers of Omniglot at 105x105, float32
    (ink = 1), and their labels; or skip."""
    path = SHARED_OMNIGLOT / "images_background.npz"
    if not path.exists():
        pytest.skip(f"Omniglot copy not found at {SHARED_OMNIGLOT} (set FOMAML_TEST_OMNIGLOT)")
    with np.load(path) as data:
        images = data["images"][:80]
    ink = (~images).astype(np.float32).reshape(-1, 1, 105, 105)
    return ink, np.repeat(np.arange(80), 20)


@pytest.fixture(scope="session")
def omniglot_slice(omniglot_slice_105):
    """80 characters x 20 drawers of Omniglot at 28x28 (ink = 1), or skip."""
    import torch
    from torch.nn import functional as F

    ink, y = omniglot_slice_105
    X = F.interpolate(torch.from_numpy(ink), size=(28, 28), mode="area").numpy()
    return X, y


# The fake Omniglot: character k (0..1622 under subset="all") is drawn as the
# 11 bits of k, one 7x7 block of ink per set bit along the top row, plus a
# corner block that makes its rotations differ. At image_size=15 each block is
# one pixel: X[..., 0, 0, :11] holds the bits of the label.
FAKE_OMNIGLOT_BITS = 11


def write_fake_omniglot(home, n_drawers=2):
    """Write ``home/omniglot/images_{background,evaluation}.npz`` (964 + 659
    characters x ``n_drawers``) in the cache format of ``fetch_omniglot``."""
    folder = Path(home) / "omniglot"
    folder.mkdir(parents=True, exist_ok=True)
    first = 0
    for name, n_chars in (("images_background", 964), ("images_evaluation", 659)):
        images = np.ones((n_chars, n_drawers, 105, 105), dtype=bool)  # True: paper
        for c in range(n_chars):
            for bit in range(FAKE_OMNIGLOT_BITS):
                if (first + c) >> bit & 1:
                    images[c, :, :7, 7 * bit: 7 * bit + 7] = False
        images[:, :, -7:, :7] = False
        labels = np.repeat(np.arange(n_chars), n_drawers).reshape(n_chars, n_drawers)
        np.savez_compressed(folder / f"{name}.npz", images=images, labels=labels)
        first += n_chars
    return Path(home)


@pytest.fixture(scope="session")
def fake_omniglot_home(tmp_path_factory):
    """A data home with a small stand-in for Omniglot (1623 characters x 2)."""
    return write_fake_omniglot(tmp_path_factory.mktemp("fake_omniglot_home"))


def write_image_folder(root, classes, n_per_class, size=10, seed=0, flat=False):
    """Class-specific stroke patterns, dark ink on white, as PNG files."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for k, name in enumerate(classes):
        folder = root if flat else root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            ink = np.zeros((size, size), dtype=bool)
            if k % 3 == 0:
                ink[size // 2] = True             # horizontal bar
            elif k % 3 == 1:
                ink[:, size // 2] = True          # vertical bar
            else:
                np.fill_diagonal(ink, True)       # diagonal
            ink ^= rng.random((size, size)) < 0.05
            pixels = np.where(ink, 0, 255).astype(np.uint8)
            path = folder / f"{name}_{i}.png"
            Image.fromarray(pixels, mode="L").save(path)
            paths.append(path)
    return paths
