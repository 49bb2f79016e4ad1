"""Episode sampling and the shrinking of episode shapes."""

import numpy as np
import pytest

from fomaml_sklearn.episodes import EpisodeSampler, EpisodeShape, resolve_episode_shape


def _labels(counts):
    y = np.repeat(np.arange(len(counts)), counts)
    return np.random.default_rng(0).permutation(y)


def test_episodes_have_the_requested_structure():
    y = _labels([7, 9, 8, 10, 12, 7])
    shape = EpisodeShape(4, 2, 3)
    batch = EpisodeSampler(y, shape, np.random.default_rng(1)).sample(50)
    assert batch.support_idx.shape == (50, 8) and batch.query_idx.shape == (50, 12)
    np.testing.assert_array_equal(batch.support_y, np.repeat(np.arange(4), 2))
    np.testing.assert_array_equal(batch.query_y, np.repeat(np.arange(4), 3))
    for t in range(50):
        classes = batch.classes[t]
        assert len(set(classes)) == 4
        # new label j is original class classes[j], for support and query alike
        np.testing.assert_array_equal(y[batch.support_idx[t]], classes[batch.support_y])
        np.testing.assert_array_equal(y[batch.query_idx[t]], classes[batch.query_y])
        both = np.concatenate([batch.support_idx[t], batch.query_idx[t]])
        assert len(set(both)) == len(both)  # no example used twice


def test_relabelling_is_random_and_every_class_and_example_is_drawn():
    y = _labels([5] * 6)
    batch = EpisodeSampler(y, EpisodeShape(3, 1, 1), np.random.default_rng(0)).sample(400)
    assert set(np.unique(batch.classes)) == set(range(6))
    assert len({tuple(c) for c in batch.classes}) > 60  # orders vary, not just sets
    used = np.unique(np.concatenate([batch.support_idx.ravel(), batch.query_idx.ravel()]))
    np.testing.assert_array_equal(used, np.arange(len(y)))
    first = np.bincount(batch.classes[:, 0], minlength=6) / 400
    assert np.all(np.abs(first - 1 / 6) < 0.07)


def test_sampling_is_reproducible_and_leaves_global_rng_alone():
    y = _labels([6] * 5)
    np.random.seed(3)
    state = np.random.get_state()[1].copy()
    a = EpisodeSampler(y, EpisodeShape(3, 2, 2), np.random.default_rng(9)).sample(5)
    b = EpisodeSampler(y, EpisodeShape(3, 2, 2), np.random.default_rng(9)).sample(5)
    c = EpisodeSampler(y, EpisodeShape(3, 2, 2), np.random.default_rng(10)).sample(5)
    np.testing.assert_array_equal(a.support_idx, b.support_idx)
    np.testing.assert_array_equal(a.query_idx, b.query_idx)
    assert not np.array_equal(a.support_idx, c.support_idx)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


def test_resolve_keeps_a_fitting_shape():
    shape, message = resolve_episode_shape([20] * 10, 5, 1, 15)
    assert shape == EpisodeShape(5, 1, 15) and message is None


@pytest.mark.parametrize(
    "counts, request_, expected",
    [
        ([20, 20, 20], (5, 1, 15), (3, 1, 15)),  # fewer classes than ways
        ([20, 6, 20], (2, 1, 15), (2, 1, 5)),  # queries shrink first
        ([20, 2, 20], (2, 5, 15), (2, 1, 1)),  # then shots, keeping 1 + 1
    ],
)
def test_resolve_shrinks_to_the_data_and_says_so(counts, request_, expected):
    shape, message = resolve_episode_shape(counts, *request_, class_names=["a", "b", "c"])
    assert shape == EpisodeShape(*expected)
    assert "n_ways={}, k_shot={}, n_query={}".format(*expected) in message
    assert f"has {min(counts)} examples" in message
    if counts[1] < 20:
        assert "'b'" in message


def test_resolve_rejects_what_cannot_make_an_episode():
    with pytest.raises(ValueError, match="at least 2 classes.*1 class"):
        resolve_episode_shape([10], 5, 1, 1)
    with pytest.raises(ValueError, match="class 'cat' has only 1 example"):
        resolve_episode_shape([10, 1], 2, 1, 1, class_names=["dog", "cat"])


def test_sampler_rejects_a_shape_that_does_not_fit():
    with pytest.raises(ValueError, match="does not fit"):
        EpisodeSampler(_labels([3, 3]), EpisodeShape(2, 2, 2), np.random.default_rng(0))
