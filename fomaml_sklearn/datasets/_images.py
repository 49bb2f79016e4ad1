"""Folders of images and loose image files, and the ink of their strokes.

Folders of images in class subfolders are read by :func:`load_image_folder`,
loose image files by :func:`load_images` (both through torchvision's readers),
and :func:`apply_ink` makes their strokes bright on a dark background, as in
Omniglot and digits.
"""

import os
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

__all__ = ["load_image_folder", "load_images", "apply_ink"]


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
