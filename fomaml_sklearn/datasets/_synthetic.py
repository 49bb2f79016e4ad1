"""Synthetic few-shot data: classes in a shared subspace, and sine-wave tasks."""

import numbers

import numpy as np

__all__ = ["make_subspace_classes", "make_sinusoid_tasks"]


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
