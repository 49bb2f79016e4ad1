"""Plotting helpers: learning curves and adapted-task pictures."""

import sys

import numpy as np
import pytest
from sklearn.datasets import load_digits

from fomaml_sklearn import FOMAMLClassifier
from fomaml_sklearn.plotting import plot_episode, plot_history

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


@pytest.fixture(scope="module")
def fitted():
    X, y = load_digits(return_X_y=True)
    X = (X / 16).astype(np.float32)
    clf = FOMAMLClassifier(n_ways=3, n_query=5, max_epochs=3, meta_batches_per_epoch=4,
                           n_eval_episodes=6, validation_fraction=0.3, device="cpu",
                           random_state=0)
    return clf.fit(X[y < 8], y[y < 8]), X, y


def test_plot_history_draws_every_recorded_curve_against_meta_steps(fitted, tmp_path):
    clf, _, _ = fitted
    fig = plot_history(clf)
    loss_ax, acc_ax = fig.axes
    labels = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    assert set(labels) == {"meta-training query loss", "validation query loss",
                           "meta-training query accuracy", "validation few-shot accuracy"}
    valid = labels["validation few-shot accuracy"]
    np.testing.assert_array_equal(valid.get_xdata(), [4, 8, 12])
    np.testing.assert_allclose(valid.get_ydata(), clf.history_[:, "valid_acc"])
    fig.savefig(tmp_path / "history.png")
    assert (tmp_path / "history.png").stat().st_size > 0


def test_plot_history_without_validation_and_on_given_axes(fitted):
    import matplotlib.pyplot as plt

    clf, X, y = fitted
    plain = FOMAMLClassifier(n_ways=3, n_query=5, max_epochs=2, meta_batches_per_epoch=3,
                             device="cpu", random_state=0).fit(X[y < 6], y[y < 6])
    fig, axes = plt.subplots(1, 2)
    assert plot_history(plain.history_, axes=axes) is fig
    labels = [line.get_label() for ax in axes for line in ax.get_lines()]
    assert labels == ["meta-training query loss", "meta-training query accuracy"]


def test_plot_episode_titles_show_labels_and_mistakes(fitted):
    clf, X, y = fitted
    support = np.concatenate([np.flatnonzero(y == c)[:1] for c in (8, 9)])
    query = np.concatenate([np.flatnonzero(y == c)[5:8] for c in (8, 9)])
    clf.adapt(X[support], y[support])
    fig = plot_episode(clf, X[support], y[support], X[query], y[query])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[:2] == ["support: 8", "support: 9"]
    pred = clf.predict(X[query])
    for title, p, t in zip(titles[2:], pred, y[query]):
        assert title == (f"pred: {p}" if p == t else f"pred: {p} ({t})")
    colors = [ax.title.get_color() for ax in fig.axes if ax.get_title().startswith("pred")]
    assert colors == ["green" if p == t else "red" for p, t in zip(pred, y[query])]
    image = fig.axes[0].get_images()[0].get_array()
    assert image.shape == (8, 8)


def test_plot_episode_needs_a_shape_for_non_square_rows(fitted):
    clf, X, y = fitted
    with pytest.raises(ValueError, match="image_shape"):
        plot_episode(clf, X[:2, :60], y[:2], X[:2, :60])


def test_clear_errors_without_history_or_matplotlib(monkeypatch):
    with pytest.raises(ValueError, match=r"call fit\(X, y\) first"):
        plot_history(FOMAMLClassifier())
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_history(FOMAMLClassifier())


def test_plot_episode_image_shapes(fitted):
    clf, X, y = fitted
    support = np.concatenate([np.flatnonzero(y == c)[:1] for c in (8, 9)])
    clf.adapt(X[support], y[support])
    fig = plot_episode(clf, X[support], y[support], X[support], image_shape=(4, 16))
    assert fig.axes[0].get_images()[0].get_array().shape == (4, 16)
    with pytest.raises(ValueError, match=r"image_shape=\(3, 8, 8\) does not fit the data"):
        plot_episode(clf, X[support], y[support], X[support], image_shape=(3, 8, 8))
