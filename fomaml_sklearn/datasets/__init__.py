"""Few-shot data sets, loaded the scikit-learn way.

Omniglot (Lake et al., 2015) is kept in the data home as two compressed numpy
files, ``<data_home>/omniglot/images_background.npz`` and
``images_evaluation.npz``: ``images`` (bool, ``(n_characters, 20, 105,
105)``, True = white background) and ``labels`` (the character index within
the file, taken from the upstream file names ``XXXX_YY.png``). When a file is
missing it is downloaded once from the upstream repository (torchvision's
download code, MD5-checked), converted, and written atomically; a
``SHA256SUMS`` file beside the cache, where present, is checked on every load.

The few-shot splits used by the command line and the benchmarks are built
here, so that both see the same classes: :func:`fetch_omniglot_maml` (the MAML
paper's Omniglot split, with a fixed split seed) and :func:`load_digits_split`
(digits 0-5 to meta-train, 6-9 to test). Folders of images in class
subfolders are read by :func:`load_image_folder`, loose image files by
:func:`load_images`, and :func:`apply_ink` makes their strokes bright on a
dark background, as in Omniglot and digits.

torch and torchvision are imported only when a loader needs them.
"""

import hashlib
import numbers
import os
import re
import tempfile
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

__all__ = [
    "get_data_home", "fetch_omniglot", "omniglot_split", "rotate_classes",
    "fetch_omniglot_maml", "load_digits_split", "load_mnist", "load_image_folder",
    "load_images", "apply_ink", "make_subspace_classes", "make_sinusoid_tasks",
]

OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
OMNIGLOT_MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
}
_N_BACKGROUND = 964
MAML_SPLIT_SEED = 0  # the Omniglot class split of the command line and the benchmarks
_DIGITS_TRAIN_MAX = 5  # load_digits_split: meta-train on 0-5, test on 6-9


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


def rotate_classes(X, y, rotations=(0, 90, 180, 270)):
    """Each (class, rotation) becomes its own class (MAML paper augmentation).

    Parameters
    ----------
    X : ndarray of shape (n, C, H, W)
        Square images.
    y : array-like of int of shape (n,)
        Labels.
    rotations : tuple of {0, 90, 180, 270}
        Counter-clockwise rotations.

    Returns
    -------
    X_rot : ndarray of shape (n * len(rotations), C, H, W)
    y_rot : ndarray of shape (n * len(rotations),)
        Label ``y * len(rotations) + k`` for rotation number ``k``.

    Examples
    --------
    >>> import numpy as np
    >>> from fomaml_sklearn.datasets import rotate_classes
    >>> X, y = np.zeros((2, 1, 28, 28)), np.array([0, 1])
    >>> X_rot, y_rot = rotate_classes(X, y)
    >>> X_rot.shape, y_rot
    ((8, 1, 28, 28), array([0, 4, 1, 5, 2, 6, 3, 7]))
    """
    y = np.asarray(y)
    if any(r % 90 for r in rotations):
        raise ValueError(f"rotations must be multiples of 90 degrees; got {rotations}.")
    X_rot = np.concatenate([np.rot90(X, r // 90, axes=(2, 3)) for r in rotations])
    y_rot = np.concatenate([y * len(rotations) + k for k in range(len(rotations))])
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


def _class_folders(path):
    """Class subfolder names of ``path`` (hidden ones skipped), at least two."""
    path = Path(path)
    if not path.is_dir():
        error = NotADirectoryError if path.exists() else FileNotFoundError
        raise error(f"{path} is not a folder; pass a folder with one subfolder of images "
                    f"per class ({path}/cat/1.png, {path}/dog/1.png, ...)")
    classes = sorted(e.name for e in os.scandir(path)
                     if e.is_dir() and not e.name.startswith("."))
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise ValueError(
            f"{path} needs at least 2 class subfolders of images (one per class, e.g. "
            f"{path}/cat/1.png, {path}/dog/1.png); found {found}"
        )
    return classes


def _image_to_array(image, size, channels):
    """A PIL image as a float32 ``(channels, size, size)`` array in [0, 1]."""
    import torch
    from torch.nn import functional as F

    image = image.convert("L" if channels == 1 else "RGB")
    t = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    t = t[None] if channels == 1 else t.permute(2, 0, 1)
    if tuple(t.shape[1:]) != (size, size):
        # Area averaging when shrinking (as fetch_omniglot does), else bilinear.
        if t.shape[1] >= size and t.shape[2] >= size:
            t = F.interpolate(t[None], size=(size, size), mode="area")[0]
        else:
            t = F.interpolate(t[None], size=(size, size), mode="bilinear",
                              align_corners=False)[0]
    return t.clamp(0.0, 1.0).numpy()


def _check_image_options(image_size, channels):
    if not (isinstance(image_size, (int, np.integer)) and image_size >= 1):
        raise ValueError(f"image_size={image_size!r} is not a positive integer; pass the "
                         "side of the square images in pixels, such as 28.")
    if channels not in (1, 3):
        raise ValueError(f"channels={channels!r} is not 1 or 3; pass 1 for grayscale "
                         "or 3 for RGB images.")


def _read_images(paths, size, channels):
    """Read image files into one float32 ``(n, channels, size, size)`` array."""
    from torchvision.datasets.folder import default_loader

    arrays = []
    for path in paths:
        try:
            image = default_loader(str(path))
        except OSError as exc:
            raise OSError(f"cannot read the image {path}: {exc}") from exc
        arrays.append(_image_to_array(image, size, channels))
    if not arrays:
        return np.zeros((0, channels, size, size), dtype=np.float32)
    return np.stack(arrays).astype(np.float32)


def load_image_folder(path, *, image_size=28, channels=1, return_X_y=False):
    """Images in class subfolders, read with torchvision's ``ImageFolder``.

    ``path/<class>/<image>``: every subfolder (except hidden ones, whose
    names start with a dot) is a class, named after the subfolder. Images
    are converted to grayscale or RGB and resized to ``image_size`` pixels
    square: area averaging when shrinking (as :func:`fetch_omniglot` does),
    bilinear when enlarging. Values are kept as stored, in [0, 1]; see
    :func:`apply_ink` to make the strokes bright.

    Parameters
    ----------
    path : str or path-like
        Folder with one subfolder of images per class, at least two.
    image_size : int, default=28
        Side of the returned images.
    channels : {1, 3}, default=1
        1: grayscale; 3: RGB.
    return_X_y : bool, default=False
        Return ``(X, y)`` instead of a Bunch, with ``y`` the class names.

    Returns
    -------
    data : Bunch or tuple
        ``data`` / ``images``: float32 ``(n_images, channels, image_size,
        image_size)``; ``target``: int64 index of each image's class in
        ``target_names``, the sorted subfolder names (ndarray of str);
        ``filenames``: the image files, in the order of ``data``; ``DESCR``.
        With ``return_X_y=True``: ``(data, target_names[target])``.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist, or a class subfolder has no image.
    ValueError
        ``path`` has fewer than two class subfolders.

    Examples
    --------
    >>> import shutil, tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from PIL import Image
    >>> from fomaml_sklearn.datasets import load_image_folder
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("cat", "dog"):
    ...     (root / name).mkdir()
    ...     Image.fromarray(np.zeros((12, 12), np.uint8)).save(root / name / "1.png")
    >>> X, y = load_image_folder(root, image_size=8, return_X_y=True)
    >>> X.shape, y.tolist()
    ((2, 1, 8, 8), ['cat', 'dog'])
    >>> shutil.rmtree(root)
    """
    from torchvision.datasets import ImageFolder

    _check_image_options(image_size, channels)
    classes = _class_folders(path)

    class _Folder(ImageFolder):
        def find_classes(self, directory):
            return classes, {c: i for i, c in enumerate(classes)}

    try:
        dataset = _Folder(str(path))
    except FileNotFoundError as exc:  # a class subfolder without images
        raise FileNotFoundError(f"{path}: {exc}") from exc
    files = [p for p, _ in dataset.samples]
    X = _read_images(files, image_size, channels)
    target = np.asarray([t for _, t in dataset.samples], dtype=np.int64)
    target_names = np.asarray(classes, dtype=str)
    if return_X_y:
        return X, target_names[target]
    return Bunch(data=X, images=X, target=target, target_names=target_names,
                 filenames=files,
                 DESCR=f"Images of {len(classes)} classes read from {path}.")


def load_images(paths, *, image_size=28, channels=1):
    """Image files, given one by one or found (recursively) in folders.

    Parameters
    ----------
    paths : str or path-like, or list of them
        Image files and/or folders. A folder is searched recursively for
        files with an image extension that torchvision reads (hidden files
        and folders skipped); it must hold at least one.
    image_size : int, default=28
        Side of the returned images (resized as in :func:`load_image_folder`).
    channels : {1, 3}, default=1
        1: grayscale; 3: RGB.

    Returns
    -------
    data : Bunch
        ``data`` / ``images``: float32 ``(n_images, channels, image_size,
        image_size)`` in [0, 1]; ``filenames``: the files read, in the order
        given, each folder's in sorted order.

    Raises
    ------
    FileNotFoundError
        A path does not exist, or a folder holds no image.

    Examples
    --------
    >>> from fomaml_sklearn.datasets import load_images
    >>> data = load_images(["queries/", "extra.png"])  # doctest: +SKIP
    >>> data.images.shape, data.filenames[-1]  # doctest: +SKIP
    ((13, 1, 28, 28), 'extra.png')
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    _check_image_options(image_size, channels)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = []
    for given in paths:
        path = Path(given)
        if path.is_file():
            files.append(str(path))
        elif path.is_dir():
            found = []
            for root, dirs, names in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found += [os.path.join(root, n) for n in names if not n.startswith(".")
                          and has_file_allowed_extension(n, IMG_EXTENSIONS)]
            if not found:
                raise FileNotFoundError(
                    f"no images found in {path} (looked for {', '.join(IMG_EXTENSIONS)})"
                )
            files += sorted(found)
        else:
            raise FileNotFoundError(f"{path} does not exist; pass image files or folders "
                                    "of images")
    X = _read_images(files, image_size, channels)
    return Bunch(data=X, images=X, filenames=files,
                 DESCR=f"{len(files)} images read from {', '.join(map(str, paths))}.")


def apply_ink(X, ink="auto"):
    """Make ink bright (1) and the background dark (0), as in Omniglot and digits.

    Parameters
    ----------
    X : ndarray
        Images with values in [0, 1].
    ink : {"auto", "dark", "light"}, default="auto"
        The ink of the images as given. ``"dark"``: dark strokes on a light
        background, inverted; ``"light"``: kept as they are; ``"auto"``:
        inverted when the mean value is above 0.5 (mostly light pixels).

    Returns
    -------
    X : ndarray
        The images, inverted or not (a new array when inverted, else ``X``).
    inverted : bool
        Whether they were inverted.

    Examples
    --------
    >>> import numpy as np
    >>> from fomaml_sklearn.datasets import apply_ink
    >>> paper = np.ones((1, 1, 3, 3)); paper[0, 0, 1] = 0.0   # a dark stroke
    >>> X, inverted = apply_ink(paper)
    >>> inverted, X[0, 0, 1].tolist(), X[0, 0, 0].tolist()
    (True, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    """
    if ink not in ("auto", "dark", "light"):
        raise ValueError(f"ink={ink!r} is not one of 'auto', 'dark', 'light'; pass 'dark' "
                         "for dark strokes on a light background, 'light' for the "
                         "reverse, or 'auto' to decide from the mean pixel value.")
    X = np.asarray(X)
    invert = ink == "dark" or (ink == "auto" and X.size > 0 and float(X.mean()) > 0.5)
    return (1.0 - X if invert else X), invert


def make_subspace_classes(n_classes=60, n_per_class=20, n_features=40, n_informative=4,
                          noise=2.0, random_state=0):
    """Synthetic classes whose means live in a shared low-dimensional subspace.

    Every class mean lies in the same ``n_informative``-dimensional subspace;
    all other directions carry noise of scale ``noise``. A meta-learner can
    learn the subspace from the training classes and use it on new ones,
    which nearest neighbour on the raw features cannot. The test suite and
    the model-selection example use it.

    Parameters
    ----------
    n_classes : int, default=60
        Number of classes.
    n_per_class : int, default=20
        Examples per class.
    n_features : int, default=40
        Dimension of the examples.
    n_informative : int, default=4
        Dimension of the subspace holding the class means.
    noise : float, default=2.0
        Scale of the noise in the other directions.
    random_state : int, default=0
        Seed of the generator.

    Returns
    -------
    X : ndarray of shape (n_classes * n_per_class, n_features), float32
    y : ndarray of shape (n_classes * n_per_class,)
        Class labels ``0 .. n_classes-1``, grouped by class.
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


def make_sinusoid_tasks(n_tasks=100, n_points=20, *, amplitude_range=(0.1, 5.0),
                        phase_range=(0.0, np.pi), x_range=(-5.0, 5.0), noise=0.0,
                        return_params=False, random_state=None):
    """Few-shot regression tasks: sine waves, in the MAML paper's distribution.

    Task ``t`` is ``y = A_t sin(x - p_t)`` with amplitude ``A_t`` uniform in
    ``amplitude_range`` and phase ``p_t`` uniform in ``phase_range``; its
    ``n_points`` inputs are uniform in ``x_range`` (Finn et al., 2017,
    section 5.1: [0.1, 5], [0, pi] and [-5, 5]).

    Parameters
    ----------
    n_tasks : int, default=100
        Number of waves.
    n_points : int, default=20
        Points per wave (support and query examples are drawn from them).
    amplitude_range, phase_range, x_range : tuple of float
        Bounds of the uniform distributions.
    noise : float, default=0.0
        Standard deviation of Gaussian noise added to ``y``.
    return_params : bool, default=False
        Also return each wave's amplitude and phase.
    random_state : int, RandomState instance or None, default=None
        Seeds the draw (a local generator; no global state is touched).

    Returns
    -------
    X : ndarray of shape (n_tasks * n_points, 1)
        Inputs, float32.
    y : ndarray of shape (n_tasks * n_points,)
        Targets, float32.
    groups : ndarray of shape (n_tasks * n_points,)
        The wave (task) of each point, ``0 .. n_tasks-1``.
    params : dict
        Only with ``return_params``: ``"amplitude"`` and ``"phase"``, arrays
        of shape ``(n_tasks,)``.

    Examples
    --------
    >>> from fomaml_sklearn.datasets import make_sinusoid_tasks
    >>> X, y, groups = make_sinusoid_tasks(n_tasks=3, n_points=5, random_state=0)
    >>> X.shape, y.shape, groups[:6]
    ((15, 1), (15,), array([0, 0, 0, 0, 0, 1]))
    """
    from sklearn.utils import check_random_state

    for name, value in (("n_tasks", n_tasks), ("n_points", n_points)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}.")
    for name, bounds in (("amplitude_range", amplitude_range), ("phase_range", phase_range),
                         ("x_range", x_range)):
        if len(bounds) != 2 or not bounds[0] <= bounds[1]:
            raise ValueError(f"{name} must be (low, high) with low <= high; got {bounds!r}.")
    if noise < 0:
        raise ValueError(f"noise must be >= 0; got {noise!r}.")
    rng = check_random_state(random_state)
    amplitude = rng.uniform(*amplitude_range, size=n_tasks)
    phase = rng.uniform(*phase_range, size=n_tasks)
    x = rng.uniform(*x_range, size=(n_tasks, n_points))
    y = amplitude[:, None] * np.sin(x - phase[:, None])
    if noise:
        y = y + rng.normal(scale=noise, size=y.shape)
    groups = np.repeat(np.arange(n_tasks), n_points)
    out = (x.reshape(-1, 1).astype(np.float32), y.reshape(-1).astype(np.float32), groups)
    if return_params:
        return out + ({"amplitude": amplitude, "phase": phase},)
    return out
