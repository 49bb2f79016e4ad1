"""Handwritten digits: scikit-learn's 8x8 digits split by class, and MNIST."""

from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

__all__ = ["load_digits_split", "load_mnist"]

_DIGITS_TRAIN_MAX = 5  # load_digits_split: meta-train on 0-5, test on 6-9


def load_digits_split():
    """scikit-learn's 8x8 digits split by class: 0-5 to meta-train, 6-9 to test.

    The split of the command line's ``digits`` data set and of the
    benchmarks. Six training classes are too few for meta-learning to pay;
    it is a quick, offline smoke test.

    Returns
    -------
    data : Bunch
        ``X_train``, ``X_test``: float32 rows of 64 pixels in [0, 1] (the
        8x8 images flattened); ``y_train`` (digits 0-5), ``y_test`` (digits
        6-9); ``DESCR``.

    Examples
    --------
    >>> import numpy as np
    >>> from fomaml_sklearn.datasets import load_digits_split
    >>> data = load_digits_split()
    >>> data.X_train.shape[1], np.unique(data.y_train), np.unique(data.y_test)
    (64, array([0, 1, 2, 3, 4, 5]), array([6, 7, 8, 9]))
    """
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    train = y <= _DIGITS_TRAIN_MAX
    return Bunch(X_train=X[train], y_train=y[train], X_test=X[~train], y_test=y[~train],
                 DESCR="scikit-learn's digits (8x8, scaled to [0, 1]): 0-5 to meta-train, "
                       "6-9 to test.")


def load_mnist(root, *, train=True, return_X_y=False):
    """MNIST from a local folder, through ``torchvision.datasets.MNIST``.

    Nothing is downloaded: ``root`` must hold ``MNIST/raw/`` with the
    uncompressed IDX files (``train-images-idx3-ubyte``, ...), as
    torchvision's own download leaves them.

    Parameters
    ----------
    root : str or path-like
        Folder containing ``MNIST/``.
    train : bool, default=True
        The 60,000 training images, else the 10,000 test images.
    return_X_y : bool, default=False
        Return ``(X, y)`` instead of a Bunch.

    Returns
    -------
    data : Bunch or tuple
        ``data``: float32 ``(n, 1, 28, 28)`` in [0, 1]; ``target``: int64 digits.
    """
    from torchvision.datasets import MNIST

    try:
        dataset = MNIST(root, train=train, download=False)
    except RuntimeError as exc:
        raise OSError(
            f"MNIST not found under {Path(root) / 'MNIST' / 'raw'} ({exc}); put the IDX "
            "files there (torchvision.datasets.MNIST(root, download=True) does it where "
            "there is internet)."
        ) from exc
    X = (dataset.data.numpy().astype(np.float32) / 255.0)[:, None]
    y = dataset.targets.numpy().astype(np.int64)
    if return_X_y:
        return X, y
    return Bunch(data=X, images=X, target=y, DESCR="MNIST handwritten digits (LeCun et al.)")
