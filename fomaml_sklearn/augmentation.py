"""Image augmentation by whole-pixel shifts, for meta-training and at test time.

- :class:`RandomShift` moves each meta-training image by a random offset
  (``augment_shift``), with randomness from the episodes' generator;
- :func:`distorted_copies` makes extra training drawings: random affine
  distortions made at the drawings' own resolution, then resized;
- :class:`ShiftEnsemble` is test-time augmentation (``test_shift``): adapt
  on the support images and shifted copies of them, and average each
  query's class probabilities over its shifted copies. It stays
  non-transductive: every query is classified on its own.

Both take images as rows of ``channels * height * width`` features, the
layout the estimators work in.
"""

import math

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["RandomAffine", "RandomShift", "ShiftEnsemble", "distorted_copies", "shift_images",
           "shifted_copies"]


def shift_images(x, shifts, image_shape):
    """Move each image by its own whole number of pixels, repeating the border.

    Parameters
    ----------
    x : torch.Tensor of shape (..., channels * height * width)
        Images as rows (any leading axes).
    shifts : torch.Tensor of shape (n_images, 2), integer
        ``(dy, dx)`` of each image, in the order of ``x``'s rows flattened
        over the leading axes; positive moves down and right.
    image_shape : tuple of int
        ``(channels, height, width)`` of one image.

    Returns
    -------
    torch.Tensor
        Of ``x``'s shape: output pixel ``(i, j)`` is input pixel
        ``(i - dy, j - dx)``, clamped to the image.
    """
    c, h, w = image_shape
    lead = x.shape[:-1]
    images = x.reshape(-1, c, h, w)
    n = len(images)
    shifts = torch.as_tensor(shifts, device=x.device).long()
    s = int(shifts.abs().max()) if n else 0
    if s == 0:
        return x
    padded = F.pad(images, (s, s, s, s), mode="replicate")
    # Input pixel (i - dy, j - dx) is row s - dy + i of the padded image.
    rows = (s - shifts[:, :1]) + torch.arange(h, device=x.device)
    cols = (s - shifts[:, 1:]) + torch.arange(w, device=x.device)
    picked = padded[torch.arange(n, device=x.device)[:, None, None], :,
                    rows[:, :, None], cols[:, None, :]]      # (n, h, w, c)
    return picked.permute(0, 3, 1, 2).reshape(lead + (c * h * w,))


def shifted_copies(x, offsets, image_shape):
    """Every image moved by each of the offsets.

    Parameters
    ----------
    x : torch.Tensor of shape (n, channels * height * width)
        Images as rows.
    offsets : array-like of shape (k, 2), integer
        The ``(dy, dx)`` shifts, as in :func:`shift_images`.
    image_shape : tuple of int
        ``(channels, height, width)`` of one image.

    Returns
    -------
    torch.Tensor of shape (k * n, channels * height * width)
        Offset-major: the first ``n`` rows are ``x`` moved by ``offsets[0]``.
    """
    offsets = torch.as_tensor(offsets, device=x.device)
    shifts = offsets.repeat_interleave(len(x), dim=0)
    return shift_images(x.repeat(len(offsets), 1), shifts, image_shape)


class RandomShift:
    """Shift every image by a random whole number of pixels (augmentation of
    the meta-training episodes).

    Each image moves by ``(dy, dx)``, drawn uniformly from ``-max_shift ..
    max_shift`` per image and per axis; the pixels that come in repeat the
    image's border (so it works for white and for black backgrounds alike).

    Parameters
    ----------
    max_shift : int
        The largest shift, in pixels.
    image_shape : tuple of int
        ``(channels, height, width)`` of one image; inputs are rows of
        ``channels * height * width`` features.

    Examples
    --------
    >>> import numpy as np, torch
    >>> x = torch.arange(9.0).reshape(1, 9)           # one 3x3 image
    >>> RandomShift(1, (1, 3, 3))(x, np.random.default_rng(0)).shape
    torch.Size([1, 9])
    """

    def __init__(self, max_shift, image_shape):
        self.max_shift = int(max_shift)
        self.image_shape = tuple(int(s) for s in image_shape)

    def __call__(self, x, rng):
        """Shifted copies of the rows of ``x`` (any leading axes), shifts drawn
        from the :class:`numpy.random.Generator` ``rng``."""
        s = self.max_shift
        if s == 0 or x.numel() == 0:
            return x
        n = x[..., 0].numel()
        shifts = torch.as_tensor(rng.integers(-s, s + 1, size=(n, 2)), device=x.device)
        return shift_images(x, shifts, self.image_shape)

    def __repr__(self):
        return f"RandomShift(max_shift={self.max_shift}, image_shape={self.image_shape})"


class ShiftEnsemble:
    """Test-time shifts: every image and its copies moved by each offset
    ``(dy, dx)`` with ``|dy| + |dx| <= max_shift``.

    :meth:`support` expands a support set with the shifted copies (their
    labels repeated), so the adaptation sees them as more examples;
    :meth:`log_proba` averages each query's class probabilities over its
    shifted copies. With ``max_shift=1`` that is 5 copies (the image and its
    four one-pixel neighbours), with 2, 13.

    Parameters
    ----------
    max_shift : int
        The largest shift (in pixels, summed over both axes), at least 1.
    image_shape : tuple of int
        ``(channels, height, width)`` of one image.

    Examples
    --------
    >>> import torch
    >>> ens = ShiftEnsemble(1, (1, 3, 3))
    >>> x, y = ens.support(torch.zeros(2, 9), torch.tensor([0, 1]))
    >>> x.shape, y.tolist()
    (torch.Size([10, 9]), [0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    """

    def __init__(self, max_shift, image_shape):
        self.max_shift = int(max_shift)
        self.image_shape = tuple(int(s) for s in image_shape)
        s = self.max_shift
        grid = [(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)
                if abs(dy) + abs(dx) <= s]
        self.offsets = torch.tensor(sorted(grid, key=lambda o: abs(o[0]) + abs(o[1])))

    def copies(self, x):
        """``x`` (n, d) and its shifted copies: ``(n_offsets * n, d)``,
        offset-major (the unshifted images first)."""
        return shifted_copies(x, self.offsets, self.image_shape)

    def support(self, x, y):
        """The support set with its shifted copies: ``(x', y')``."""
        return self.copies(x), y.repeat(len(self.offsets))

    def log_proba(self, forward, x):
        """Log of each row's class probabilities averaged over its copies.

        ``forward`` maps a batch of rows to logits; the result can stand
        for logits (its softmax is the averaged probabilities).
        """
        n = len(self.offsets)
        logits = forward(self.copies(x)).reshape(n, len(x), -1)
        return torch.logsumexp(logits.log_softmax(-1), dim=0) - math.log(n)

    def __repr__(self):
        return f"ShiftEnsemble(max_shift={self.max_shift}, image_shape={self.image_shape})"


class RandomAffine:
    """Small random affine distortions of every image (augmentation of the
    meta-training episodes), as Koch et al. (2015) used for Omniglot.

    Each image is rotated by an angle drawn from ``[-rotation, rotation]``
    degrees, sheared along each axis by a factor from ``[-shear, shear]``
    and scaled along each axis by a factor from ``[1 - scale, 1 + scale]``,
    about its centre, with bilinear interpolation; the pixels that come in
    repeat the border. Translations are :class:`RandomShift`'s job. At
    ``strength=1`` the ranges are Koch et al.'s (10 degrees, 0.3, 0.2);
    ``strength`` scales all three.

    Parameters
    ----------
    strength : float
        Multiplies Koch et al.'s ranges; 0 leaves the images as they are.
    image_shape : tuple of int
        ``(channels, height, width)`` of one image; inputs are rows of
        ``channels * height * width`` features.

    Examples
    --------
    >>> import numpy as np, torch
    >>> x = torch.rand(2, 64)                          # two 8x8 images
    >>> RandomAffine(1.0, (1, 8, 8))(x, np.random.default_rng(0)).shape
    torch.Size([2, 64])
    """

    #: Koch et al.'s ranges at strength 1: degrees, shear, scale.
    ROTATION, SHEAR, SCALE = 10.0, 0.3, 0.2

    def __init__(self, strength, image_shape):
        self.strength = float(strength)
        self.image_shape = tuple(int(s) for s in image_shape)

    def matrices(self, n, rng):
        """``(n, 2, 3)`` float64 affine matrices (output -> input sampling
        coordinates in ``[-1, 1]``), drawn from ``rng``."""
        s = self.strength
        angle = np.deg2rad(rng.uniform(-self.ROTATION * s, self.ROTATION * s, n))
        shear = rng.uniform(-self.SHEAR * s, self.SHEAR * s, (n, 2))
        scale = rng.uniform(1 - self.SCALE * s, 1 + self.SCALE * s, (n, 2))
        cos, sin = np.cos(angle), np.sin(angle)
        rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
        shr = np.stack([np.stack([np.ones(n), shear[:, 0]], -1),
                        np.stack([shear[:, 1], np.ones(n)], -1)], -2)
        lin = rot @ shr @ (scale[:, :, None] * np.eye(2))
        return np.concatenate([lin, np.zeros((n, 2, 1))], axis=2)

    def __call__(self, x, rng):
        """Distorted copies of the rows of ``x`` (any leading axes), the
        distortions drawn from the :class:`numpy.random.Generator` ``rng``."""
        if self.strength == 0 or x.numel() == 0:
            return x
        c, h, w = self.image_shape
        images = x.reshape(-1, c, h, w)
        theta = torch.as_tensor(self.matrices(len(images), rng), dtype=images.dtype,
                                device=x.device)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                            align_corners=False)
        return out.reshape(x.shape)

    def __repr__(self):
        return f"RandomAffine(strength={self.strength:g}, image_shape={self.image_shape})"


#: Copies distorted at once by :func:`distorted_copies` (bounds the memory;
#: the distortions are drawn chunk by chunk, so it is part of what a seed gives).
_COPY_CHUNK = 1024


def distorted_copies(images, n_copies, *, strength=1.0, image_size=None, random_state=None):
    """Randomly distorted copies of images, made at their own resolution and
    then resized by area averaging: extra drawings of each class to add to
    the meta-training data.

    Distorting small images directly (as :class:`RandomAffine` does on the
    fly) resamples them bilinearly and blurs their strokes, so the model
    trains on images unlike the sharp ones it is tested on. Distorting the
    originals (105x105 for Omniglot) and then averaging down to the
    training size, as the data set's own images were made, avoids that.

    Parameters
    ----------
    images : array-like of shape (n_images, channels, height, width)
        The images at full resolution.
    n_copies : int
        Distorted copies of each image, >= 1.
    strength : float, default=1.0
        :class:`RandomAffine`'s strength: multiplies Koch et al.'s ranges
        (rotation 10 degrees, shear 0.3, scale 0.2).
    image_size : int or None, default=None
        Side of the returned square images (area averaging); None keeps the
        input size.
    random_state : int, numpy.random.Generator or None, default=None
        Seeds the distortions (a generator of its own: no global random
        state is used).

    Returns
    -------
    numpy.ndarray of float32, shape (n_images * n_copies, channels, size, size)
        Row ``i * n_copies + j`` is copy ``j`` of image ``i``, so the labels
        are ``np.repeat(y, n_copies)``.

    Examples
    --------
    >>> import numpy as np
    >>> images = np.zeros((2, 1, 105, 105), dtype=np.float32)
    >>> distorted_copies(images, 3, strength=0.5, image_size=28, random_state=0).shape
    (6, 1, 28, 28)
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (n_images, channels, height, width); "
                         f"got shape {images.shape}.")
    if isinstance(n_copies, bool) or not isinstance(n_copies, (int, np.integer)) or n_copies < 1:
        raise ValueError(f"n_copies must be an integer >= 1 (distorted copies of each image); "
                         f"got {n_copies!r}.")
    if not np.isfinite(strength) or strength < 0:
        raise ValueError(f"strength must be a finite number >= 0 (0 leaves the images as they "
                         f"are, 1 is Koch et al.'s ranges); got {strength!r}.")
    n, c, h, w = images.shape
    size = (h, w) if image_size is None else (int(image_size), int(image_size))
    rng = np.random.default_rng(random_state)
    affine = RandomAffine(strength, (c, h, w))
    out = np.empty((n * n_copies, c) + size, dtype=np.float32)
    rows_per_chunk = max(1, _COPY_CHUNK // n_copies)
    for start in range(0, n, rows_per_chunk):
        chunk = torch.as_tensor(images[start:start + rows_per_chunk], dtype=torch.float32)
        chunk = chunk.repeat_interleave(n_copies, dim=0)
        copies = affine(chunk.reshape(len(chunk), -1), rng).reshape(chunk.shape)
        if size != (h, w):
            copies = F.interpolate(copies, size=size, mode="area")
        out[start * n_copies:start * n_copies + len(copies)] = copies.numpy()
    return out
