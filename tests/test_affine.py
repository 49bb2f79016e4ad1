"""augmentation.RandomAffine and distorted_copies: random affine distortions."""

import numpy as np
import pytest
import torch

from fomaml_sklearn.augmentation import RandomAffine, distorted_copies


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


def _strokes(n, size=35, seed=0):
    """``n`` images of random thin strokes (ink 1 on 0)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 1, size, size), dtype=np.float32)
    for image in images:
        for _ in range(3):
            r, c = rng.integers(3, size - 3, 2)
            if rng.random() < 0.5:
                image[0, r, c - 3:c + 4] = 1
            else:
                image[0, r - 3:r + 4, c] = 1
    return images


def test_distorted_copies_at_strength_zero_are_the_area_resized_originals_in_order():
    """Row i * n_copies + j is copy j of image i; without distortion each copy
    is the original averaged down as fetch_omniglot averages 105 -> 28."""
    images = _strokes(3)
    out = distorted_copies(images, 2, strength=0.0, image_size=7, random_state=0)
    expected = torch.nn.functional.interpolate(torch.as_tensor(images), size=(7, 7), mode="area")
    assert out.shape == (6, 1, 7, 7) and out.dtype == np.float32
    np.testing.assert_allclose(out, np.repeat(expected.numpy(), 2, axis=0), atol=1e-6)
    same_size = distorted_copies(images, 1, strength=0.0)
    np.testing.assert_allclose(same_size, images, atol=1e-6)


def test_distorted_copies_are_distinct_distortions_of_their_own_image():
    """Each copy differs from the original and from its sibling copies, and is
    closer to its own image than to any other; the ink is kept (the scale
    factors stay within 1 +- 0.1 at strength 0.5)."""
    images = _strokes(4, seed=1)
    out = distorted_copies(images, 3, strength=0.5, random_state=0).reshape(4, 3, -1)
    flat = images.reshape(4, -1)
    for i in range(4):
        assert not np.allclose(out[i, 0], out[i, 1])
        for j in range(3):
            assert not np.allclose(out[i, j], flat[i])
            distances = np.abs(flat - out[i, j]).sum(axis=1)
            assert distances.argmin() == i
            assert 0.7 < out[i, j].sum() / flat[i].sum() < 1.3


def test_distorted_copies_are_seeded_without_global_state():
    images = _strokes(5)
    torch.manual_seed(0)
    np.random.seed(0)
    a = distorted_copies(images, 2, random_state=7, image_size=10)
    torch.manual_seed(1)
    np.random.seed(1)
    b = distorted_copies(images, 2, random_state=7, image_size=10)
    c = distorted_copies(images, 2, random_state=8, image_size=10)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("kwargs, message", [
    (dict(images=np.zeros((2, 35, 35)), n_copies=1), "images must have shape"),
    (dict(images=np.zeros((2, 1, 9, 9)), n_copies=0), "n_copies must be an integer >= 1"),
    (dict(images=np.zeros((2, 1, 9, 9)), n_copies=2.0), "got 2.0"),
    (dict(images=np.zeros((2, 1, 9, 9)), n_copies=1, strength=-1), "strength must be"),
])
def test_distorted_copies_errors_name_the_argument_and_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        distorted_copies(**kwargs)
