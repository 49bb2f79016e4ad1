"""Omniglot (Lake et al., 2015): download, verified cache and few-shot splits.

Omniglot is kept in the data home as two compressed numpy files,
``<data_home>/omniglot/images_background.npz`` and ``images_evaluation.npz``:
``images`` (bool, ``(n_characters, 20, 105, 105)``, True = white background)
and ``labels`` (the character index within the file, taken from the upstream
file names ``XXXX_YY.png``). When a file is missing it is downloaded once from
the upstream repository (torchvision's download code, MD5-checked), converted,
and written atomically; a ``SHA256SUMS`` file beside the cache, where present,
is checked on every load. The images are returned with bright ink (1) on a
dark background (0), as MNIST's.

:func:`fetch_omniglot_maml` is the MAML paper's split with a fixed split seed,
shared by the command line and the benchmarks so that both see the same
characters.
"""

import hashlib
import numbers
import os
import re
import tempfile
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._base import get_data_home

__all__ = ["fetch_omniglot", "omniglot_split", "rotate_classes", "fetch_omniglot_maml",
           "MAML_SPLIT_SEED", "OMNIGLOT_URL", "OMNIGLOT_MD5"]

OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
OMNIGLOT_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
_N_BACKGROUND = 964
MAML_SPLIT_SEED = 0  # the Omniglot class split of the command line and the benchmarks


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sums(path):
    sums = path.parent / "SHA256SUMS"
    if not sums.exists():
        return
    expected = dict(line.split()[::-1] for line in sums.read_text().splitlines() if line.strip())
    if path.name in expected and _sha256(path) != expected[path.name]:
        raise OSError(
            f"{path} does not match its checksum in {sums}: the file is corrupted or "
            "truncated. Delete it (and fetch again) or restore the original copy."
        )


def _convert_upstream(folder, out_path):
    """PNG tree ``<Alphabet>/<characterNN>/<XXXX_YY>.png`` -> the npz cache."""
    from PIL import Image

    files = sorted(Path(folder).rglob("*.png"))
    if not files:
        raise OSError(f"no PNG images found under {folder}")
    pattern = re.compile(r"(\d+)_(\d+)\.png$")
    entries = []
    for f in files:
        match = pattern.search(f.name)
        if match is None:
            raise OSError(f"unexpected file name {f} in the Omniglot archive")
        entries.append((int(match.group(1)), int(match.group(2)), f))
    chars = sorted({c for c, _, _ in entries})
    drawers = sorted({d for _, d, _ in entries})
    index = {c: i for i, c in enumerate(chars)}
    images = np.ones((len(chars), len(drawers), 105, 105), dtype=bool)
    alphabets = np.empty(len(chars), dtype=object)
    for c, d, f in entries:
        with Image.open(f) as img:
            images[index[c], drawers.index(d)] = np.asarray(img.convert("1"), dtype=bool)
        alphabets[index[c]] = f.parent.parent.name
    labels = np.repeat(np.arange(len(chars)), len(drawers)).reshape(len(chars), -1)
    _atomic_savez(out_path, images=images, labels=labels, alphabets=alphabets.astype(str))


def _atomic_savez(path, **arrays):
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.part")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _download(name, folder, url, md5):
    from torchvision.datasets.utils import download_and_extract_archive

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        try:
            download_and_extract_archive(f"{url}/{name}.zip", tmp, filename=f"{name}.zip",
                                         md5=md5)
        except Exception as exc:  # the partial download goes with the temp folder
            raise OSError(
                f"Downloading {url}/{name}.zip failed ({exc}). Nothing was kept; retry, or "
                f"place {name}.npz in {folder} and pass data_home."
            ) from exc
        _convert_upstream(Path(tmp) / name, folder / f"{name}.npz")


def _load_file(folder, name, download_if_missing, url, md5):
    path = folder / f"{name}.npz"
    if not path.exists():
        if not download_if_missing:
            raise OSError(
                f"Omniglot file {path} not found and download_if_missing=False. Pass "
                "data_home=DIR where DIR/omniglot/ holds images_background.npz and "
                "images_evaluation.npz, or allow the download."
            )
        folder.mkdir(parents=True, exist_ok=True)
        _download(name, folder, url, md5)
    _check_sums(path)
    try:
        with np.load(path) as data:
            images, labels = data["images"], data["labels"]
            alphabets = data["alphabets"] if "alphabets" in data.files else None
    except Exception as exc:
        raise OSError(
            f"{path} cannot be read ({exc}); it is corrupted or truncated. Delete it "
            "and fetch again."
        ) from exc
    if images.ndim != 4 or images.shape[2:] != (105, 105) or labels.shape != images.shape[:2]:
        raise OSError(f"{path} does not hold Omniglot arrays; delete it and fetch again.")
    return images, labels, alphabets


def fetch_omniglot(data_home=None, *, subset="all", image_size=28,
                   download_if_missing=True, return_X_y=False, _url=OMNIGLOT_URL,
                   _md5=None):
    """Load the Omniglot handwritten characters (1623 classes x 20 drawers).

    Parameters
    ----------
    data_home : str or path-like or None, default=None
        Data folder (see :func:`get_data_home`); files live in its
        ``omniglot/`` sub-folder.
    subset : {"all", "background", "evaluation"}, default="all"
        ``"background"``: the 964 characters of the 30 background alphabets;
        ``"evaluation"``: the 659 of the 20 evaluation alphabets (labels
        964..1622 under ``"all"``); ``"all"``: both.
    image_size : int or None, default=28
        Side of the returned images, resized from 105 by area averaging;
        None or 105 keeps the original resolution.
    download_if_missing : bool, default=True
        Download the upstream zips when the cache is missing.
    return_X_y : bool, default=False
        Return ``(X, y)`` instead of a Bunch.

    Returns
    -------
    data : Bunch or tuple
        ``data`` / ``images``: float32 ``(n, 1, image_size, image_size)``,
        ink = 1 and background = 0 (like MNIST); ``target``: int64 character
        labels; ``character``: the index within its file; ``subset_of``:
        "background" or "evaluation" per sample; ``alphabet``: per-sample
        alphabet names where the cache has them, else None; ``DESCR``.

    See Also
    --------
    omniglot_split : Class-disjoint train / validation / test masks.
    rotate_classes : Rotated copies as new classes (the MAML augmentation).

    Examples
    --------
    >>> from fomaml_sklearn.datasets import fetch_omniglot
    >>> data = fetch_omniglot(subset="background")  # doctest: +SKIP
    >>> data.images.shape, data.target.max()  # doctest: +SKIP
    ((19280, 1, 28, 28), np.int64(963))
    """
    if subset not in ("all", "background", "evaluation"):
        raise ValueError(
            f"subset={subset!r} is not one of 'all', 'background', 'evaluation'."
        )
    names = {"all": ["images_background", "images_evaluation"],
             "background": ["images_background"],
             "evaluation": ["images_evaluation"]}[subset]
    if image_size is not None and (isinstance(image_size, bool)
                                   or not isinstance(image_size, numbers.Integral)
                                   or image_size < 1):
        raise ValueError(
            f"image_size must be an integer >= 1 (the side of the square images in "
            f"pixels, e.g. 28) or None (105, the original); got {image_size!r}."
        )
    # Nothing is created on disk unless a download may happen.
    folder = get_data_home(data_home, create=download_if_missing) / "omniglot"
    parts = []
    for name in names:
        md5 = (_md5 or OMNIGLOT_MD5)[name]
        images, labels, alphabets = _load_file(folder, name, download_if_missing, _url, md5)
        offset = _N_BACKGROUND if (name == "images_evaluation" and subset == "all") else 0
        parts.append((name.split("_")[1], images, labels, alphabets, offset))

    X = np.concatenate([p[1].reshape(-1, 105, 105) for p in parts])
    character = np.concatenate([p[2].ravel() for p in parts]).astype(np.int64)
    target = np.concatenate([p[2].ravel() + p[4] for p in parts]).astype(np.int64)
    subset_of = np.concatenate([np.full(p[2].size, p[0]) for p in parts])
    alphabet = None
    if all(p[3] is not None for p in parts):
        alphabet = np.concatenate([p[3][p[2].ravel()] for p in parts])
    X = _to_float_images(X, image_size)
    if return_X_y:
        return X, target
    return Bunch(data=X, images=X, target=target, character=character, subset_of=subset_of,
                 alphabet=alphabet, DESCR=__doc__)


def _to_float_images(images, image_size):
    import torch
    from torch.nn import functional as F

    ink = torch.from_numpy(~images).float().unsqueeze(1)
    if image_size is not None and image_size != 105:
        ink = torch.cat([F.interpolate(chunk, size=(image_size, image_size), mode="area")
                         for chunk in ink.split(4096)])
    return ink.numpy()


def omniglot_split(y, *, protocol="maml", n_train=1200, n_val=0, subset_of=None,
                   random_state=0):
    """Class-disjoint meta-train / meta-validation / meta-test masks.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Character labels.
    protocol : {"maml", "lake"}, default="maml"
        ``"maml"`` (Finn et al., 2017): characters shuffled by
        ``random_state``; the first ``n_train`` train (the last ``n_val`` of
        them held out for validation), the rest test (1200 / 423 on all
        1623). ``"lake"``: background characters train, evaluation
        characters test; ``subset_of`` is required.
    n_train, n_val : int
        Sizes for the "maml" protocol.
    subset_of : array-like or None
        Per-sample "background"/"evaluation" (``fetch_omniglot().subset_of``).
    random_state : int, default=0
        Seed of the character shuffle (a local generator).

    Returns
    -------
    train, val, test : ndarray of bool of shape (n_samples,)

    Examples
    --------
    >>> import numpy as np
    >>> from fomaml_sklearn.datasets import omniglot_split
    >>> y = np.repeat(np.arange(10), 2)               # 10 characters, 2 drawings each
    >>> train, val, test = omniglot_split(y, n_train=6, n_val=2)
    >>> [np.unique(y[mask]).size for mask in (train, val, test)]
    [4, 2, 4]
    >>> np.intersect1d(y[train], y[test]).size
    0
    """
    y = np.asarray(y)
    if protocol == "lake":
        if subset_of is None:
            raise ValueError("protocol='lake' needs subset_of=fetch_omniglot().subset_of.")
        train = np.asarray(subset_of) == "background"
        return train, np.zeros_like(train), ~train
    if protocol != "maml":
        raise ValueError(f"protocol={protocol!r} is not 'maml' or 'lake'.")
    chars = np.random.default_rng(random_state).permutation(np.unique(y))
    if not 0 <= n_val < n_train < len(chars):
        raise ValueError(
            f"n_train={n_train} and n_val={n_val} do not fit {len(chars)} characters; "
            "need 0 <= n_val < n_train < n_characters."
        )
    train = np.isin(y, chars[: n_train - n_val])
    val = np.isin(y, chars[n_train - n_val: n_train])
    return train, val, ~(train | val)


def rotate_classes(X, y, rotations=(0, 90, 180, 270), *, mirror=False):
    """Each (class, rotation) becomes its own class (MAML paper augmentation).

    Parameters
    ----------
    X : ndarray of shape (n, C, H, W)
        Square images.
    y : array-like of int of shape (n,)
        Labels.
    rotations : tuple of {0, 90, 180, 270}
        Counter-clockwise rotations.
    mirror : bool, default=False
        Also the left-right mirror image of each rotation, as classes of
        their own (twice the classes: a mirrored character is a new
        character). The within-alphabet preset's measurement uses it
        (``presets.OMNIGLOT_WITHIN_ALPHABET``).

    Returns
    -------
    X_rot : ndarray of shape (n * n_variants, C, H, W)
        ``n_variants = len(rotations)``, twice that with ``mirror``; the
        variants one after the other, the mirrored ones last.
    y_rot : ndarray of shape (n * n_variants,)
        Label ``y * n_variants + k`` for variant number ``k`` (rotation
        number ``k``, or ``k - len(rotations)`` mirrored).

    Examples
    --------
    >>> import numpy as np
    >>> from fomaml_sklearn.datasets import rotate_classes
    >>> X, y = np.zeros((2, 1, 28, 28)), np.array([0, 1])
    >>> X_rot, y_rot = rotate_classes(X, y)
    >>> X_rot.shape, y_rot
    ((8, 1, 28, 28), array([0, 4, 1, 5, 2, 6, 3, 7]))
    >>> rotate_classes(X, y, rotations=(0,), mirror=True)[1]
    array([0, 2, 1, 3])
    """
    y = np.asarray(y)
    if any(r % 90 for r in rotations):
        raise ValueError(f"rotations must be multiples of 90 degrees; got {rotations}.")
    variants = [np.rot90(X, r // 90, axes=(2, 3)) for r in rotations]
    if mirror:
        variants += [v[..., ::-1] for v in variants]
    X_rot = np.concatenate(variants)
    y_rot = np.concatenate([y * len(variants) + k for k in range(len(variants))])
    return np.ascontiguousarray(X_rot), y_rot


def fetch_omniglot_maml(data_home=None, *, subset="all", image_size=28,
                        split_seed=MAML_SPLIT_SEED, download_if_missing=True):
    """Omniglot's MAML split: 1200 characters x 4 rotations, and 423 unseen ones.

    The protocol of Finn et al. (2017): the 1623 characters are shuffled with
    ``split_seed``; the first 1200 are for meta-training, each rotated by 0,
    90, 180 and 270 degrees into its own class (4800 classes,
    :func:`rotate_classes`); the other 423 are the unseen test characters.
    The command line (``fomaml-sklearn train omniglot`` / ``evaluate``) and the
    benchmarks load Omniglot with this function and the default
    ``split_seed``, so they meta-train and test on the same characters
    whatever seed their training uses.

    Parameters
    ----------
    data_home : str or path-like or None, default=None
        Data folder (see :func:`get_data_home`); files live in its
        ``omniglot/`` sub-folder.
    subset : {"all", "train", "test"}, default="all"
        Which part to build: both, only the rotated meta-training
        characters, or only the test characters. The part not built is None
        in the result (``"test"`` skips the 4 rotated copies of the training
        images, about 300 MB at 28x28).
    image_size : int or None, default=28
        Side of the images (see :func:`fetch_omniglot`).
    split_seed : int, default=0
        Seed of the character shuffle (:func:`omniglot_split`). Keep the
        default to get the split of the command line and the benchmarks; it
        is independent of any training seed.
    download_if_missing : bool, default=True
        Download the upstream files when the cache is missing.

    Returns
    -------
    data : Bunch
        ``X_train``: float32 ``(n_train, 1, image_size, image_size)``, ink = 1;
        ``y_train``: int64 labels ``character * 4 + k`` for the ``k``-th
        rotation (4800 classes); ``X_test``, ``y_test``: the images and
        character labels of the 423 test characters; ``DESCR``. The entries
        of a part not in ``subset`` are None.

    See Also
    --------
    fetch_omniglot : All the characters, with their alphabets.
    omniglot_split : Other splits (validation characters, Lake's protocol).

    Examples
    --------
    >>> from fomaml_sklearn.datasets import fetch_omniglot_maml
    >>> data = fetch_omniglot_maml()  # doctest: +SKIP
    >>> data.X_train.shape, len(set(data.y_train)), len(set(data.y_test))  # doctest: +SKIP
    ((96000, 1, 28, 28), 4800, 423)
    """
    if subset not in ("all", "train", "test"):
        raise ValueError(f"subset={subset!r} is not one of 'all', 'train', 'test'.")
    X, y = fetch_omniglot(data_home, subset="all", image_size=image_size,
                          download_if_missing=download_if_missing, return_X_y=True)
    train, _, test = omniglot_split(y, protocol="maml", n_train=1200, random_state=split_seed)
    X_train = y_train = X_test = y_test = None
    if subset in ("all", "train"):
        X_train, y_train = rotate_classes(X[train], y[train])
    if subset in ("all", "test"):
        X_test, y_test = X[test], y[test]
    return Bunch(X_train=X_train, y_train=y_train, X_test=X_test, y_test=y_test,
                 DESCR=f"Omniglot, MAML split (split_seed={split_seed}): 1200 characters "
                       "x 4 rotations to meta-train, 423 characters to test.")
