"""Whole-pixel shifts: meta-training augmentation (``RandomShift``) and
test-time augmentation (``ShiftEnsemble``)."""

import numpy as np
import torch

from fomaml_sklearn.augmentation import RandomShift, ShiftEnsemble, shift_images


def _shifted_reference(image, dy, dx, s):
    """``image`` (c, h, w) moved down by dy and right by dx, edges repeated (numpy)."""
    c, h, w = image.shape
    padded = np.pad(image, ((0, 0), (s, s), (s, s)), mode="edge")
    return padded[:, s - dy: s - dy + h, s - dx: s - dx + w]


def test_random_shift_moves_every_image_by_its_drawn_offset():
    rng = np.random.default_rng(0)
    images = rng.random((7, 2, 5, 6)).astype(np.float32)
    x = torch.as_tensor(images.reshape(7, -1))
    out = RandomShift(2, (2, 5, 6))(x, np.random.default_rng(1)).numpy()
    shifts = np.random.default_rng(1).integers(-2, 3, size=(7, 2))  # what it drew
    assert out.shape == x.shape
    for i, (dy, dx) in enumerate(shifts):
        expected = _shifted_reference(images[i], dy, dx, 2)
        np.testing.assert_array_equal(out[i].reshape(2, 5, 6), expected)
    assert len({tuple(s) for s in shifts}) > 1  # a real mix of offsets was tested


def test_random_shift_keeps_leading_axes_and_zero_shift_is_the_identity():
    x = torch.rand(3, 4, 16)  # tasks x examples x (1 x 4 x 4)
    out = RandomShift(1, (1, 4, 4))(x, np.random.default_rng(0))
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    assert RandomShift(0, (1, 4, 4))(x, np.random.default_rng(0)) is x
    a = RandomShift(1, (1, 4, 4))(x, np.random.default_rng(5))
    b = RandomShift(1, (1, 4, 4))(x, np.random.default_rng(5))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_loader_shifts_support_and_query_images_of_the_drawn_episodes():
    from fomaml_sklearn._training import EpisodeLoader
    from fomaml_sklearn.episodes import EpisodeShape

    rng = np.random.default_rng(0)
    images = rng.random((40, 1, 6, 6)).astype(np.float32)
    dataset = type("D", (), {"X": torch.as_tensor(images.reshape(40, -1)),
                             "y": np.repeat(np.arange(8), 5)})()
    shape = EpisodeShape(3, 1, 2)

    def first_batch(augment):
        loader = EpisodeLoader(dataset, 2, shape, np.random.default_rng(3), n_batches=1,
                               augment=augment)
        return next(iter(loader))

    plain, shifted = first_batch(None), first_batch(RandomShift(1, (1, 6, 6)))
    # The same episodes (indices drawn before the shifts), every image moved
    # by one of the 9 offsets, and not all by (0, 0).
    for a, b in [(plain.x_support, shifted.x_support), (plain.x_query, shifted.x_query)]:
        a, b = a.reshape(-1, 1, 6, 6).numpy(), b.reshape(-1, 1, 6, 6).numpy()
        for original, moved in zip(a, b):
            assert any(np.array_equal(moved, _shifted_reference(original, dy, dx, 1))
                       for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    assert not torch.equal(plain.x_query, shifted.x_query)


def test_shift_images_moves_each_image_by_its_own_offset():
    rng = np.random.default_rng(2)
    images = rng.random((4, 1, 5, 5)).astype(np.float32)
    shifts = np.array([[0, 0], [1, -2], [-3, 0], [2, 2]])
    out = shift_images(torch.as_tensor(images.reshape(4, -1)), torch.as_tensor(shifts),
                       (1, 5, 5)).numpy()
    for i, (dy, dx) in enumerate(shifts):
        np.testing.assert_array_equal(out[i].reshape(1, 5, 5),
                                      _shifted_reference(images[i], dy, dx, 3))


def test_shift_ensemble_offsets_are_the_diamond_of_radius_max_shift():
    for s, count in [(1, 5), (2, 13)]:
        offsets = ShiftEnsemble(s, (1, 6, 6)).offsets.tolist()
        assert len(offsets) == len({tuple(o) for o in offsets}) == count
        assert offsets[0] == [0, 0]
        assert all(abs(dy) + abs(dx) <= s for dy, dx in offsets)


def test_shift_ensemble_support_holds_the_images_and_their_shifted_copies():
    rng = np.random.default_rng(0)
    images = rng.random((3, 2, 4, 5)).astype(np.float32)
    ens = ShiftEnsemble(1, (2, 4, 5))
    x, y = ens.support(torch.as_tensor(images.reshape(3, -1)), torch.tensor([0, 1, 2]))
    assert y.tolist() == [0, 1, 2] * 5
    for k, (dy, dx) in enumerate(ens.offsets.tolist()):
        for i in range(3):
            np.testing.assert_array_equal(x[3 * k + i].reshape(2, 4, 5).numpy(),
                                          _shifted_reference(images[i], dy, dx, 1))


def test_shift_ensemble_averages_probabilities_over_each_rows_copies():
    torch.manual_seed(0)
    net = torch.nn.Linear(16, 3)
    x = torch.rand(4, 16)
    ens = ShiftEnsemble(1, (1, 4, 4))
    with torch.no_grad():
        out = ens.log_proba(net, x)
        copies = ens.copies(x).reshape(5, 4, 16)
        expected = torch.stack([net(c).softmax(1) for c in copies]).mean(0)
    torch.testing.assert_close(out.exp(), expected)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(4))
    # Not the same as the unshifted rows' probabilities.
    assert not torch.allclose(out.exp(), net(x).softmax(1).detach())
