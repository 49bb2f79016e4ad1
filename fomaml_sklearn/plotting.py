"""Plots of meta-training and of adapted tasks (matplotlib, optional).

matplotlib is not a dependency of the package: it is imported when a
function here is called, with a clear error where it is missing.
"""

import math

import numpy as np

from .callbacks import meta_steps_per_epoch

__all__ = ["plot_history", "plot_episode"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "fomaml_sklearn.plotting needs matplotlib, which is not installed; "
            "install it with `pip install matplotlib`."
        ) from exc
    return plt


def _history_of(estimator):
    from skorch.history import History

    if isinstance(estimator, History):
        return estimator
    history = getattr(estimator, "history_", None)
    if history is None:
        raise ValueError(
            f"{type(estimator).__name__} has no training history: pass a fitted "
            "FOMAMLClassifier (call fit(X, y) first) or a skorch History."
        )
    return history


def plot_history(estimator, axes=None):
    """Learning curves of meta-training against the meta-step.

    Left: the mean query loss after adaptation (``train_loss``, and
    ``valid_loss`` where there was validation data). Right: the query
    accuracy after adaptation on training episodes (``train_query_acc``) and
    the few-shot accuracy on validation episodes (``valid_acc``).

    Parameters
    ----------
    estimator : FOMAMLClassifier or skorch.History
        A fitted estimator (its ``history_`` is used) or a history.
    axes : sequence of two matplotlib Axes or None, default=None
        Where to draw; ``None`` makes a new figure.

    Returns
    -------
    fig : matplotlib.figure.Figure
        The figure holding the axes.
    """
    plt = _pyplot()
    history = _history_of(estimator)
    if len(history) == 0:
        raise ValueError("The history is empty: fit with max_epochs >= 1 to plot it.")
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    else:
        fig = axes[0].figure
    # x: meta-steps done at the end of each epoch.
    steps = np.cumsum(meta_steps_per_epoch(history))
    loss_ax, acc_ax = axes
    for key, label, ax in [
        ("train_loss", "meta-training query loss", loss_ax),
        ("valid_loss", "validation query loss", loss_ax),
        ("train_query_acc", "meta-training query accuracy", acc_ax),
        ("valid_acc", "validation few-shot accuracy", acc_ax),
    ]:
        values = [epoch.get(key) for epoch in history]
        if all(v is None for v in values):
            continue
        values = np.array([np.nan if v is None else v for v in values], dtype=float)
        ax.plot(steps, values, marker="o", markersize=3, label=label)
    loss_ax.set_ylabel("loss")
    acc_ax.set_ylabel("accuracy")
    for ax in axes:
        ax.set_xlabel("meta-step")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    return fig


def plot_episode(estimator, X_support, y_support, X_query, y_query=None, *,
                 image_shape=None, max_query=12):
    """Support images with their labels and query images with predictions.

    Calls ``estimator.predict(X_query)`` (the estimator must be adapted to
    the task, e.g. with ``estimator.adapt(X_support, y_support)``). Where
    ``y_query`` is given, correct predictions are titled in green and wrong
    ones in red with the true label.

    Parameters
    ----------
    estimator : fitted and adapted estimator with ``predict``
        A :class:`~fomaml_sklearn.FOMAMLClassifier` or a pipeline ending in one.
    X_support : array-like of shape (n_support, n_features) or (n_support, C, H, W)
        The support images.
    y_support : array-like of shape (n_support,)
        Their labels.
    X_query : array-like of shape (n_query, n_features) or (n_query, C, H, W)
        Images to classify; the first ``max_query`` are shown.
    y_query : array-like of shape (n_query,) or None, default=None
        True labels of the queries, if known.
    image_shape : tuple of int or None, default=None
        ``(H, W)`` or ``(C, H, W)`` of one image; ``None`` takes the shape of
        4-D input, else the estimator's ``input_shape_``, else a square.
    max_query : int, default=12
        How many queries to show.

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    plt = _pyplot()
    X_support, X_query = np.asarray(X_support), np.asarray(X_query)[:max_query]
    y_support = np.asarray(y_support)
    shape = _image_shape(estimator, X_support, image_shape)
    pred = np.asarray(estimator.predict(X_query))
    truth = None if y_query is None else np.asarray(y_query)[:max_query]
    n_cols = max(len(X_support), len(X_query), 1)
    n_cols = min(n_cols, 8)
    rows_s = math.ceil(len(X_support) / n_cols)
    rows_q = math.ceil(len(X_query) / n_cols)
    fig, axes = plt.subplots(rows_s + rows_q, n_cols, squeeze=False,
                             figsize=(1.4 * n_cols, 1.6 * (rows_s + rows_q)))
    for ax in axes.ravel():
        ax.axis("off")
    for i, (x, label) in enumerate(zip(X_support, y_support)):
        ax = axes[i // n_cols, i % n_cols]
        ax.imshow(_as_image(x, shape), cmap="gray_r")
        ax.set_title(f"support: {label}", fontsize=8)
    for i, x in enumerate(X_query):
        ax = axes[rows_s + i // n_cols, i % n_cols]
        ax.imshow(_as_image(x, shape), cmap="gray_r")
        if truth is None:
            ax.set_title(f"pred: {pred[i]}", fontsize=8)
        else:
            ok = pred[i] == truth[i]
            title = f"pred: {pred[i]}" if ok else f"pred: {pred[i]} ({truth[i]})"
            ax.set_title(title, fontsize=8, color="green" if ok else "red")
    fig.tight_layout()
    return fig


def _image_shape(estimator, X, image_shape):
    """The shape of one image of ``X``: ``image_shape``, else that of 3-D or
    4-D ``X``, else the estimator's ``input_shape_`` where it fits the
    rows, else a square (see :func:`~fomaml_sklearn.backbones.image_shape`)."""
    from .backbones import image_shape as resolve

    n_features = math.prod(X.shape[1:])
    if image_shape is None and X.ndim > 2:
        image_shape = X.shape[1:]
    if image_shape is None:
        from .model_selection import final_estimator

        fitted = getattr(final_estimator(estimator)[0], "input_shape_", None)
        if fitted is not None and math.prod(fitted) == n_features:
            image_shape = fitted
    return resolve(n_features, image_shape, argument="image_shape")


def _as_image(x, shape):
    img = np.asarray(x, dtype=float).reshape(shape)
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
    return img
