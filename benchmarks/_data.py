"""Data loading shared by the benchmark scripts."""

import os
from pathlib import Path

import numpy as np
import torch


def _omniglot_npz(data_home):
    """Read ``<data_home>/omniglot/images_{background,evaluation}.npz`` (the
    cache format of the shared copy) without the fetcher: X (n, 1, 28, 28)
    with ink = 1, y character labels 0..1622."""
    import torch.nn.functional as F
    from sklearn.datasets import get_data_home

    home = Path(data_home or os.environ.get("FOMAML_SKLEARN_DATA") or get_data_home())
    images = []
    for name in ("images_background", "images_evaluation"):
        path = home / "omniglot" / f"{name}.npz"
        if not path.exists():
            raise SystemExit(f"error: {path} not found; pass --data-home DIR where "
                             "DIR/omniglot/ holds the Omniglot npz files")
        with np.load(path) as data:
            images.append(data["images"])
    images = np.concatenate(images)
    ink = torch.from_numpy(~images).float().reshape(-1, 1, 105, 105)
    X = F.interpolate(ink, size=(28, 28), mode="area").numpy()
    return X, np.repeat(np.arange(len(images)), images.shape[1])



def omniglot_arrays(data_home=None, offline=False, subset="all"):
    """Omniglot at 28x28: X (n, 1, 28, 28), ink = 1, y character labels.

    Uses ``fomaml_sklearn.datasets.fetch_omniglot`` (download once into the
    data home) where the package has it, else reads the npz cache files.
    """
    try:
        from fomaml_sklearn.datasets import fetch_omniglot
    except ImportError:  # the data-home reader until the fetcher lands
        X, y = _omniglot_npz(data_home)
        if subset == "background":
            keep = y < 964
            X, y = X[keep], y[keep]
        return X, y
    return fetch_omniglot(data_home=data_home, subset=subset, image_size=28,
                          download_if_missing=not offline, return_X_y=True)
