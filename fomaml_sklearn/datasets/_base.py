"""Where the data sets live: the data home."""

import os
from pathlib import Path

__all__ = ["get_data_home"]


def get_data_home(data_home=None, *, create=True):
    """Folder of the data sets: ``data_home``, else ``$FOMAML_SKLEARN_DATA``,
    else scikit-learn's data home (``$SCIKIT_LEARN_DATA`` or
    ``~/scikit_learn_data``).

    Parameters
    ----------
    data_home : str or path-like or None
        Explicit folder.
    create : bool, default=True
        Create the folder if missing (``False``: only say where it is).

    Returns
    -------
    path : pathlib.Path

    Raises
    ------
    NotADirectoryError
        If the path exists and is not a folder.
    """
    if data_home is None:
        data_home = os.environ.get("FOMAML_SKLEARN_DATA")
    if data_home is None:
        # scikit-learn's data home, as sklearn.datasets.get_data_home finds it.
        data_home = os.environ.get("SCIKIT_LEARN_DATA",
                                   os.path.join("~", "scikit_learn_data"))
    path = Path(data_home).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"data_home={os.fspath(data_home)!r} is a file, not a folder; pass the folder "
            "that holds (or will hold) omniglot/."
        )
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
