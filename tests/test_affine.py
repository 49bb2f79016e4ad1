"""augmentation.RandomAffine: random affine distortions of meta-training images."""

import numpy as np
import pytest
import torch

from fomaml_sklearn.augmentation import RandomAffine


def _fixed(matrix, image_shape):
    """A RandomAffine that applies one given 2x3 matrix to every image."""
    aug = RandomAffine(1.0, image_shape)
    aug.matrices = lambda n, rng: np.repeat(np.asarray(matrix, float)[None], n, axis=0)
    return aug


def test_strength_zero_returns_the_images_unchanged():
    x = torch.rand(2, 3, 64)
    assert RandomAffine(0.0, (1, 8, 8))(x, np.random.default_rng(0)) is x


def test_identity_matrix_keeps_every_pixel():
    x = torch.rand(4, 2 * 6 * 6)
    out = _fixed([[1, 0, 0], [0, 1, 0]], (2, 6, 6))(x, None)
    torch.testing.assert_close(out, x)


def test_a_quarter_turn_matrix_rotates_like_rot90():
    """Sampling coordinates map pixel centres onto pixel centres for a quarter
    turn of a square image, so the result is exactly torch.rot90's."""
    x = torch.arange(3 * 25.0).reshape(3, 25)
    out = _fixed([[0, -1, 0], [1, 0, 0]], (1, 5, 5))(x, None)
    torch.testing.assert_close(out.reshape(3, 5, 5), torch.rot90(x.reshape(3, 5, 5), 1, (1, 2)))


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_drawn_distortions_stay_inside_the_ranges(strength):
    """Rotation alone (no shear, no scale): every angle within +-10 * strength
    degrees, and the angles spread over the range; scale alone: each axis's
    factor within 1 +- 0.2 * strength."""
    class RotationOnly(RandomAffine):
        SHEAR, SCALE = 0.0, 0.0

    m = RotationOnly(strength, (1, 8, 8)).matrices(2000, np.random.default_rng(0))
    angles = np.degrees(np.arctan2(m[:, 1, 0], m[:, 0, 0]))
    assert np.abs(angles).max() <= 10 * strength and np.abs(angles).max() > 9 * strength
    np.testing.assert_allclose(np.linalg.det(m[:, :, :2]), 1.0)
    np.testing.assert_array_equal(m[:, :, 2], 0.0)  # no translation

    class ScaleOnly(RandomAffine):
        ROTATION, SHEAR = 0.0, 0.0

    m = ScaleOnly(strength, (1, 8, 8)).matrices(2000, np.random.default_rng(1))
    diag = np.stack([m[:, 0, 0], m[:, 1, 1]])
    assert np.abs(diag - 1).max() <= 0.2 * strength
    np.testing.assert_array_equal(m[:, 0, 1], 0.0)


def test_draws_come_from_the_given_generator_only():
    """The same generator state gives the same images; another seed others;
    torch's global random state is not used."""
    x = torch.rand(5, 10, 64)
    aug = RandomAffine(1.0, (1, 8, 8))
    torch.manual_seed(0)
    a = aug(x, np.random.default_rng(3))
    torch.manual_seed(1)
    b = aug(x, np.random.default_rng(3))
    c = aug(x, np.random.default_rng(4))
    assert a.shape == x.shape
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
