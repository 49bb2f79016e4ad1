"""The data sets named on the command line: ``digits``, ``omniglot`` or a folder."""

from pathlib import Path

from ._digits import load_digits_split
from ._images import apply_ink, load_image_folder
from ._omniglot import fetch_omniglot_maml

__all__ = ["DATA_SETS", "load_data"]

PARTS = ("train", "test")


def _digits(part, **_):
    data = load_digits_split()
    if part == "train":
        return data.X_train, data.y_train, "digits 0-5"
    return data.X_test, data.y_test, "digits 6-9"


def _omniglot(part, *, data_home, offline, image_size):
    data = fetch_omniglot_maml(data_home, subset=part, image_size=image_size,
                               download_if_missing=not offline)
    if part == "train":
        return (data.X_train, data.y_train,
                "omniglot (1200 characters x 4 rotations, MAML split)")
    return data.X_test, data.y_test, "omniglot (423 test characters, MAML split)"


# name: (loader, what train and evaluate use of it)
_NAMED = {
    "digits": (_digits, "scikit-learn's 8x8 digits, embedded: train uses 0-5, evaluate "
                        "6-9"),
    "omniglot": (_omniglot, "the MAML split: train uses 1200 characters x 4 rotations, "
                            "evaluate the other 423"),
}
#: The data set names :func:`load_data` knows, each with what ``train`` and
#: ``evaluate`` use of it (any other name is a folder of images).
DATA_SETS = {name: text for name, (_, text) in _NAMED.items()}


def load_data(spec, part, *, data_home=None, offline=False, image_size=28, channels=1,
              ink="auto"):
    """Load a data set named as on the command line.

    The few-shot splits are those of :func:`load_digits_split` and
    :func:`fetch_omniglot_maml`, shared with the benchmarks; a folder is read
    by :func:`load_image_folder` and its ink set by :func:`apply_ink`.

    Parameters
    ----------
    spec : str
        A name of ``DATA_SETS`` (``"digits"``, ``"omniglot"``) or a folder
        of images in class subfolders.
    part : {"train", "test"}
        Digits: 0-5 or 6-9; Omniglot: the MAML split's training characters
        (with rotations) or its test characters; a folder: all its classes.
    data_home : str or None, default=None
        Omniglot's data home (see :func:`get_data_home`).
    offline : bool, default=False
        Never download Omniglot.
    image_size : int, default=28
        Image side for Omniglot and folders (digits are rows of 8x8 pixels).
    channels : {1, 3}, default=1
        Channels of folder images.
    ink : {"auto", "dark", "light"}, default="auto"
        How folder images are normalised (see :func:`apply_ink`).

    Returns
    -------
    X : ndarray
        Rows (digits) or ``(n, channels, image_size, image_size)`` images.
    y : ndarray of shape (n_samples,)
        Labels.
    description : str
        What was loaded, for messages.

    Raises
    ------
    ValueError
        If ``part`` is not "train" or "test", or ``spec`` is neither a name
        nor a folder.

    Examples
    --------
    >>> from fomaml_sklearn.datasets import load_data
    >>> X, y, description = load_data("digits", "test")
    >>> X.shape, description
    ((714, 64), 'digits 6-9')
    """
    if part not in PARTS:
        raise ValueError(f"part={part!r} is not 'train' or 'test'; pass 'train' for the "
                         "meta-training classes or 'test' for the unseen ones.")
    if spec in _NAMED:
        load, _ = _NAMED[spec]
        return load(part, data_home=data_home, offline=offline, image_size=image_size)
    if not Path(spec).is_dir():
        names = ", ".join(map(repr, _NAMED))
        raise ValueError(f"data set {spec!r} is not {names} or a folder of images in class "
                         "subfolders; pass one of those (write ./NAME for a folder named "
                         "like a data set)")
    X, y = load_image_folder(spec, image_size=image_size, channels=channels,
                             return_X_y=True)
    X, inverted = apply_ink(X, ink)
    note = ", inverted to light ink on dark" if inverted else ""
    return X, y, f"{spec} ({image_size}x{image_size}{note})"
