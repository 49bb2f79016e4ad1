"""The scikit-learn few-shot regressor: :class:`FOMAMLRegressor`."""

import warnings

import numpy as np
import torch
from sklearn.base import RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data
from torch.nn import functional as F

from ._codecs import count
from ._constraints import (
    Int,
    NoneOr,
    RandomState,
    Real,
    check_params,
)
from ._estimator import COMMON_PARAMS, SAVED_FIELDS, MetaEstimatorBase, flatten_images
from ._training import numeric_hint
from .episodes import resolve_task_shape
from .evaluation import (
    FewShotRegressionResult,
    confidence_interval,
    episodic_regression_errors,
)

__all__ = ["FOMAMLRegressor"]


def _check_numeric_targets(y, name):
    """Refuse targets that are not numbers (strings, say), naming ``name``
    (``None`` is left to scikit-learn's ``validate_data``)."""
    if y is None:
        return
    values = np.asarray(y)
    if values.dtype.kind not in "USO":
        return
    for value in values.ravel().tolist():
        try:
            float(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name} must hold real-valued regression targets, but it holds "
                f"{value!r} ({type(value).__name__}), which is not a number. Convert {name} "
                "to numbers first, or use FOMAMLClassifier for class labels."
            ) from None


def _mse(outputs, targets):
    """Mean squared error over examples and outputs (the task loss)."""
    return F.mse_loss(outputs, targets)


class FOMAMLRegressor(RegressorMixin, MetaEstimatorBase):
    """Few-shot regressor meta-trained with First-Order MAML.

    Each task is a group of examples (``groups`` in :meth:`fit`): a sine wave
    in the MAML paper's benchmark (:func:`~fomaml_sklearn.datasets.make_sinusoid_tasks`).
    ``fit(X, y, groups)`` meta-trains an initialisation on episodes of one
    task each, ``k_shot`` support and ``n_query`` query points, with the
    same rules, inner loop and skorch-driven training loop as
    :class:`~fomaml_sklearn.FOMAMLClassifier`, under the mean squared error.
    ``adapt(X_support, y_support)`` fine-tunes the initialisation on a new
    task's few points; ``predict`` then returns real values for that task.

    Without ``groups``, all of ``(X, y)`` is one task (with a warning): the
    estimator then behaves like a network trained on the data, and works in
    any scikit-learn setting. After ``fit`` the estimator is adapted to (a
    sample of at most 1024 examples of) all of ``(X, y)``, so ``predict``
    works straight away; for a new task call :meth:`adapt`.

    ``score(X, y, groups)`` is the mean *few-shot* R^2 over ``n_eval_episodes``
    episodes drawn from the tasks of ``(X, y, groups)``, each adapted from the
    meta-learned initialisation on ``k_shot`` points and scored on
    ``n_query`` others (see :meth:`evaluate`); with group-disjoint folds
    (``GroupKFold``) it measures generalisation to unseen tasks.

    Parameters
    ----------
    module : {"mlp", "conv4"}, torch.nn.Module class or instance, default="mlp"
        The feature extractor, as in the classifier. The built-in ``"mlp"``
        here has no BatchNorm (``Linear -> ReLU`` layers, the MAML paper's
        sinusoid network). A linear output layer of ``n_outputs`` units is
        added by the estimator; it is meta-learned like the body.
    hidden_layer_sizes : tuple of int, default=(40, 40)
        Hidden widths of the ``"mlp"`` backbone (the MAML paper's 1-40-40-1).
    n_filters : int, default=64
        Filters per convolution of the ``"conv4"`` backbone.
    input_shape : tuple of int or None, default=None
        ``(channels, height, width)`` of an image for ``"conv4"``.
    module_params : dict or None, default=None
        Keyword arguments for a ``module`` given as a class.
    algorithm : str or MetaAlgorithm, default="fomaml"
        The meta-learning rule (:mod:`fomaml_sklearn.algorithms`):
        ``"fomaml"``, ``"maml"``, ``"reptile"``, ``"anil"``, ``"fo-anil"``,
        ``"imaml"``, ``"metasgd"`` or an instance. ``algorithm_`` holds the
        rule used.
    k_shot : int, default=10
        Support points per episode.
    n_query : int, default=10
        Query points per episode.
    meta_batch_size : int, default=10
        Tasks per outer (meta) step.
    inner_lr : float, default=0.01
        Inner-loop SGD rate (alpha; the MAML paper's sinusoid value).
    n_inner_steps : int, default=1
        Inner SGD steps during meta-training.
    n_inner_steps_test : int, default=10
        Inner SGD steps in ``adapt`` and in episodic evaluation.
    optimizer : str or torch.optim.Optimizer class, default="adam"
        The meta-optimizer: a name of :data:`fomaml_sklearn.names.OPTIMIZERS`
        (``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"``, ...: the
        optimizers of ``torch.optim``, in any case) or a class.
    lr : float, default=1e-3
        Meta learning rate (beta).
    optimizer_params : dict or None, default=None
        Further keyword arguments of the meta-optimizer.
    lr_schedule : {"constant", "cosine"}, default="constant"
        The meta learning rate over the ``max_epochs * meta_batches_per_epoch``
        meta-steps of a fit: constant, or cosine-annealed from ``lr`` to 0
        after every meta-step (MAML++, Antoniou et al. 2019; skorch's
        ``LRScheduler`` with ``CosineAnnealingLR``). A warm-start fit keeps
        the schedule of the first.
    max_epochs : int, default=10
        Number of epochs of meta-training.
    meta_batches_per_epoch : int, default=100
        Meta-steps per epoch.
    n_eval_episodes : int, default=100
        Episodes drawn by ``score``, and validation episodes per epoch.
    validation_fraction : float or None, default=None
        Hold out this fraction of the tasks (whole groups, at least one) for
        validation: after every epoch, ``n_eval_episodes`` fixed episodes of
        those unseen tasks are adapted to and scored, recorded as
        ``valid_loss`` (query MSE) in ``history_`` for skorch's
        ``EarlyStopping`` or ``Checkpoint``. ``None``: no validation.
    precision : {"float32", "auto", "bfloat16", "float16"}, default="float32"
        Precision of the forward passes (``torch.autocast``). float32 by
        default: the small networks of regression gain nothing from lower
        precision, and targets need its resolution. ``"auto"`` as in the
        classifier.
    adapt_on_fit : bool, default=True
        Adapt to all of ``(X, y)`` at the end of ``fit`` (at most 1024
        examples, the same number from every task), so that ``predict``
        works straight away. A failure there keeps the meta-trained model,
        with a warning.
    warm_start : bool, default=False
        If True and the estimator is already meta-trained, ``fit`` continues
        from the current meta-parameters and meta-optimizer state, at the
        current ``lr`` (and ``lr_schedule`` over its own meta-steps).
    device : {"auto", "cpu", "cuda"} or str, default="auto"
        Where the network runs.
    callbacks : list of skorch callbacks or None, default=None
        Extra skorch callbacks for meta-training; they are copied.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation and the episodes, without touching global
        generators.
    verbose : int, default=0
        0: silent. 1: a progress bar and skorch's per-epoch table.

    Attributes
    ----------
    n_outputs_ : int
        Number of targets (columns of a 2-D ``y``; 1 for 1-D ``y``).
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (``n_features_in_``,)
        Names of features seen during ``fit``; only when ``X`` has them.
    n_tasks_ : int
        Number of tasks (groups) meta-trained on.
    episode_shape_ : EpisodeShape
        The episode shape used (``n_ways=1``).
    net_ : skorch.NeuralNet
        The internal skorch net; ``net_.module_`` holds the meta-parameters.
    history_ : skorch.History
        Per-epoch and per-meta-batch records (``train_loss``: mean query
        MSE after adaptation; with validation also ``valid_loss``).
    n_meta_steps_ : int
        Meta-steps taken, over all ``fit`` calls of a warm start.
    meta_model_ : torch.nn.Module
        The meta-learned initialisation (backbone and output layer).
    task_model_ : torch.nn.Module
        The network adapted to the current task, used by ``predict``.
    device_, precision_, inner_lr_, task_batching_, algorithm_, config_, input_shape_
        As in :class:`~fomaml_sklearn.FOMAMLClassifier`.

    See Also
    --------
    fomaml_sklearn.FOMAMLClassifier : The classifier on the same machinery.
    fomaml_sklearn.datasets.make_sinusoid_tasks : The MAML paper's tasks.

    References
    ----------
    Finn, Abbeel and Levine (2017). Model-Agnostic Meta-Learning for Fast
    Adaptation of Deep Networks. ICML (section 5.1, regression).

    Examples
    --------
    >>> from fomaml_sklearn import FOMAMLRegressor
    >>> from fomaml_sklearn.datasets import make_sinusoid_tasks
    >>> X, y, groups = make_sinusoid_tasks(n_tasks=200, n_points=20, random_state=0)
    >>> reg = FOMAMLRegressor(max_epochs=2, meta_batches_per_epoch=50, random_state=0)
    >>> reg = reg.fit(X, y, groups=groups)
    >>> X_new, y_new, _ = make_sinusoid_tasks(n_tasks=1, n_points=10, random_state=1)
    >>> y_pred = reg.adapt(X_new[:5], y_new[:5]).predict(X_new[5:])
    >>> y_pred.shape
    (5,)
    """

    def __init__(
        self,
        module="mlp",
        *,
        hidden_layer_sizes=(40, 40),
        n_filters=64,
        input_shape=None,
        module_params=None,
        algorithm="fomaml",
        k_shot=10,
        n_query=10,
        meta_batch_size=10,
        inner_lr=0.01,
        n_inner_steps=1,
        n_inner_steps_test=10,
        optimizer="adam",
        lr=1e-3,
        optimizer_params=None,
        lr_schedule="constant",
        max_epochs=10,
        meta_batches_per_epoch=100,
        n_eval_episodes=100,
        validation_fraction=None,
        precision="float32",
        adapt_on_fit=True,
        warm_start=False,
        device="auto",
        callbacks=None,
        random_state=None,
        verbose=0,
    ):
        self.module = module
        self.hidden_layer_sizes = hidden_layer_sizes
        self.n_filters = n_filters
        self.input_shape = input_shape
        self.module_params = module_params
        self.algorithm = algorithm
        self.k_shot = k_shot
        self.n_query = n_query
        self.meta_batch_size = meta_batch_size
        self.inner_lr = inner_lr
        self.n_inner_steps = n_inner_steps
        self.n_inner_steps_test = n_inner_steps_test
        self.optimizer = optimizer
        self.lr = lr
        self.optimizer_params = optimizer_params
        self.lr_schedule = lr_schedule
        self.max_epochs = max_epochs
        self.meta_batches_per_epoch = meta_batches_per_epoch
        self.n_eval_episodes = n_eval_episodes
        self.validation_fraction = validation_fraction
        self.precision = precision
        self.adapt_on_fit = adapt_on_fit
        self.warm_start = warm_start
        self.device = device
        self.callbacks = callbacks
        self.random_state = random_state
        self.verbose = verbose

    _PARAM_TABLE = {**COMMON_PARAMS, "inner_lr": Real(0.0)}
    _loss = staticmethod(_mse)
    _head = "fixed"  # a meta-learned linear output layer, one row per output
    _mlp_batch_norm = False
    _task_units = "tasks (groups)"
    _explicit_validation_hint = ""
    _network_params_hint = "hidden_layer_sizes, n_filters, input_shape and outputs"
    # Saved in model files: the common fitted fields, the outputs, the tasks
    # seen and whether y was 1-D.
    _saved_fields = {**SAVED_FIELDS, "n_outputs_": count(1), "n_tasks_": count(1),
                     "y_ndim": count(1, 2, attr="_y_ndim")}

    def _n_task_outputs(self):
        return self.n_outputs_

    def _saved_state_error(self):
        if self._y_ndim == 1 and self.n_outputs_ != 1:
            return ("fitted.n_outputs_", self.n_outputs_, "1 for a 1-D y (y_ndim 1)")
        return super()._saved_state_error()

    # -------------------------------------------------------------- validation
    def _validate_Xy(self, X, y, reset, what="X"):
        X, image_shape = flatten_images(X)
        _check_numeric_targets(y, "y" if what == "X" else "y_support")
        X, y = validate_data(self, X, y, reset=reset, dtype=np.float32, multi_output=True,
                             y_numeric=True)
        if not reset:
            self._check_layout(image_shape, what)
        y = np.asarray(y, dtype=np.float32)
        if y.ndim > 2:
            raise ValueError(f"y must be 1-D or 2-D (n_samples, n_outputs); got shape "
                             f"{y.shape}.")
        Y = y.reshape(len(y), -1)
        if not reset and Y.shape[1] != self.n_outputs_:
            raise ValueError(
                f"y has {Y.shape[1]} output{'s' if Y.shape[1] != 1 else ''}, but this "
                f"{type(self).__name__} was fitted with {self.n_outputs_}; pass targets of "
                f"{self.n_outputs_} column{'s' if self.n_outputs_ != 1 else ''}."
            )
        return X, Y, y.ndim, image_shape

    def _no_groups(self, method, stacklevel):
        """Warn that ``method`` got no groups, so all of (X, y) is one task
        (``stacklevel``: of the user's call, counted from the caller)."""
        if method == "fit":
            what, fix = ("meta-training then fits that task like an ordinary network",
                         "meta-learn across tasks")
        else:
            what, fix = "its episodes are all drawn from that task", "score each task apart"
        warnings.warn(
            f"{type(self).__name__}.{method} got no groups, so all of (X, y) is treated as "
            f"one task: {what}. Pass groups=<task of each sample> to {fix}.",
            UserWarning, stacklevel=stacklevel + 1)

    # --------------------------------------------------------------------- fit
    def fit(self, X, y, groups=None):
        """Meta-train on episodes of the tasks in ``groups``, then adapt to ``(X, y)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, C, H, W)
            Training inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Real-valued targets.
        groups : array-like of shape (n_samples,) or None, default=None
            The task of each sample: an episode draws one task, with
            ``k_shot`` support and ``n_query`` query points of it (shrunk,
            with a warning, where the smallest task is smaller). ``None``:
            all of ``(X, y)`` is one task, with a warning. Routed by
            scikit-learn's metadata routing: in a ``Pipeline`` or a search,
            call ``set_fit_request(groups=True)`` and pass ``groups`` to the
            outer ``fit``.

        Returns
        -------
        self : FOMAMLRegressor
            The fitted estimator.

        Raises
        ------
        ValueError
            For invalid parameters or data (naming them), and when a
            meta-step's loss or meta-gradient, or the final meta-parameters,
            are not finite (NaN or infinite): the message suggests scaling
            ``y`` (``TransformedTargetRegressor(regressor=FOMAMLRegressor(...),
            transformer=StandardScaler())``) or a lower ``lr`` or
            ``inner_lr``. A failed ``fit`` leaves the estimator (fitted or
            not) exactly as it was.
        """
        return self._fit_on_copy(X, y, groups)

    def _fit(self, X, y, groups, warm, device):
        optimizer_cls = self._check_params()
        if warm:
            n_outputs_before = self.n_outputs_
        X, Y, y_ndim, image_shape = self._validate_Xy(X, y, reset=not warm)
        if warm and Y.shape[1] != n_outputs_before:
            raise ValueError(f"warm_start: y has {Y.shape[1]} outputs, the fitted model "
                             f"{n_outputs_before}.")
        self._check_input_shape(X, image_shape)
        if groups is None:
            self._no_groups("fit", stacklevel=4)  # the user's fit -> _fit_on_copy -> here
            groups = np.zeros(len(X), dtype=int)
        codes, names = self._group_codes(groups, len(X))
        seeds = self._draw_seeds(self.random_state)
        train_mask, valid = self._validation_data(codes, names, X, Y,
                                                  np.random.default_rng(seeds["split"]))
        self._check_validation_callbacks(valid is not None)
        train_codes = np.unique(codes[train_mask], return_inverse=True)[1]
        shape = self._task_shape(train_codes, names[np.unique(codes[train_mask])])
        if valid is not None:
            X_valid, valid_codes, valid_names, Y_valid = valid
            valid = (X_valid, valid_codes, self._task_shape(
                valid_codes, valid_names, "in the validation episodes"), Y_valid)
        X_t = self._meta_train(X=X, image_shape=image_shape, train_mask=train_mask,
                               fit_labels=train_codes, shape=shape, valid=valid,
                               n_rows=Y.shape[1], warm=warm, device=device, seeds=seeds,
                               optimizer_cls=optimizer_cls, targets=Y[train_mask])
        self.n_outputs_ = Y.shape[1]
        self.n_tasks_ = int(train_codes.max()) + 1
        self._y_ndim = y_ndim
        if self.adapt_on_fit:
            rng = np.random.default_rng(seeds["adapt"])
            keep = self._fit_adapt_sample(len(X), codes, rng)

            def adapt():
                index = torch.as_tensor(keep, device=X_t.device)
                self._adapt_tensors(X_t[index], self._to_tensor(Y[keep], X_t.device),
                                    self.n_outputs_)

            self._adapt_safely(adapt, "(X, y)")

    def _describe_shape(self, shape):
        return f"episodes of one task, {shape.k_shot} support and {shape.n_query} query points"

    def _task_shape(self, codes, names, what=None):
        sizes = np.bincount(codes, minlength=len(names))
        shape, message = resolve_task_shape(sizes, self.k_shot, self.n_query, names)
        self._warn_smaller_episodes(message, what)
        return shape

    def _validation_data(self, codes, names, X, Y, rng):
        """Training mask and validation ``(X, codes, task names, targets)`` or None."""
        if self.validation_fraction is None:
            return np.ones(len(codes), dtype=bool), None
        n_tasks = len(names)
        n_valid = max(1, int(round(self.validation_fraction * n_tasks)))
        if n_tasks - n_valid < 1:
            raise ValueError(
                f"validation_fraction={self.validation_fraction!r} holds out {n_valid} of "
                f"the {n_tasks} tasks (groups), leaving none to meta-train on; lower it, "
                "pass more groups, or set it to None."
            )
        held_out = np.zeros(n_tasks, dtype=bool)
        held_out[rng.permutation(n_tasks)[:n_valid]] = True
        valid_mask = held_out[codes]
        valid_codes = np.unique(codes[valid_mask], return_inverse=True)[1]
        return ~valid_mask, (X[valid_mask], valid_codes, names[held_out], Y[valid_mask])

    # ------------------------------------------------------------------- adapt
    def adapt(self, X_support, y_support):
        """Fine-tune the meta-learned initialisation on a new task's points.

        Takes ``n_inner_steps_test`` SGD steps at ``inner_lr`` from the
        meta-parameters (which are not changed) on the support points (the
        rule's test-time adaptation), replacing any previously adapted task.

        Parameters
        ----------
        X_support : array-like of shape (n_support, n_features)
            The task's points, with the features seen in ``fit``.
        y_support : array-like of shape (n_support,) or (n_support, n_outputs)
            Their targets, with the outputs seen in ``fit``.

        Returns
        -------
        self : FOMAMLRegressor
            The estimator, now predicting for this task.
        """
        self._check_meta_fitted("adapt")
        X, Y, _, _ = self._validate_Xy(X_support, y_support, reset=False, what="X_support")
        self._adapt_tensors(self._to_tensor(X, self.device_),
                            self._to_tensor(Y, self.device_), self.n_outputs_)
        return self

    # ----------------------------------------------------------------- predict
    def predict(self, X):
        """Predict the targets of ``X`` for the current (adapted) task.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,) or (n_samples, n_outputs)
            1-D when ``fit`` got 1-D ``y``.
        """
        check_is_fitted(self, "meta_model_")
        out = self._task_outputs(X, self.n_outputs_).numpy()
        return out.ravel() if self._y_ndim == 1 else out

    # ------------------------------------------------------------------- score
    def evaluate(self, X, y, groups=None, *, k_shot=None, n_query=None, n_episodes=None,
                 random_state=None):
        """Episodic few-shot MSE and R^2 on the tasks of ``(X, y, groups)``.

        Each episode draws one task (group), ``k_shot`` support and
        ``n_query`` query points of it, adapts from the meta-learned
        initialisation on the support points (``n_inner_steps_test`` steps)
        and scores the queries. The estimator's state is not changed.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs, typically of tasks unseen in ``fit``.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Their targets.
        groups : array-like of shape (n_samples,) or None, default=None
            The task of each sample; ``None``: all of ``(X, y)`` is one task,
            with a warning (as in ``fit``).
        k_shot, n_query : int or None, default=None
            Episode shape; ``None`` takes the estimator's. Shrunk, with a
            warning, where a task is smaller.
        n_episodes : int or None, default=None
            Number of episodes; ``None`` takes ``n_eval_episodes``.
        random_state : int or None, default=None
            Seed of the episodes. ``None`` takes ``random_state`` when it is an
            int, else 0, so repeated calls use the same episodes.

        Returns
        -------
        result : FewShotRegressionResult
            Mean MSE and R^2 with their 95% half-widths, and per-episode values.
        """
        return self._evaluate(X, y, groups, "evaluate", k_shot=k_shot, n_query=n_query,
                              n_episodes=n_episodes, random_state=random_state)

    def _evaluate(self, X, y, groups, method, *, k_shot=None, n_query=None, n_episodes=None,
                  random_state=None):
        """:meth:`evaluate`, called by the public ``method`` (for the warnings)."""
        self._check_meta_fitted(method)
        X, Y, _, _ = self._validate_Xy(X, y, reset=False)
        check_params({"k_shot": NoneOr(Int(1)), "n_query": NoneOr(Int(1)),
                      "n_episodes": NoneOr(Int(1)), "random_state": NoneOr(RandomState())},
                     dict(k_shot=k_shot, n_query=n_query, n_episodes=n_episodes,
                          random_state=random_state))
        if groups is None:
            self._no_groups(method, stacklevel=3)  # the user's call -> method -> here
            groups = np.zeros(len(X), dtype=int)
        codes, names = self._group_codes(groups, len(X))
        shape, message = resolve_task_shape(
            np.bincount(codes), self.k_shot if k_shot is None else k_shot,
            self.n_query if n_query is None else n_query, names)
        if message is not None:
            warnings.warn(message, UserWarning, stacklevel=3)
        episodes = self._evaluation_episodes(codes, shape, n_episodes, random_state)
        runner = self._runner()
        mses, r2s = episodic_regression_errors(
            runner, self._to_tensor(X, self.device_), self._to_tensor(Y, self.device_),
            episodes)
        diverged = int(np.sum(~np.isfinite(mses)))
        if diverged:
            hint = numeric_hint(True, inner_lr=runner.config.inner_lr,
                                n_inner_steps_test=runner.config.n_inner_steps_test)
            warnings.warn(
                f"{method}: the adaptation diverged in {diverged} of {len(mses)} episodes "
                f"(their query MSE is not finite), so the mean MSE and R^2 are not finite. "
                f"{hint}", UserWarning, stacklevel=3)  # the user's call -> method -> here
        mse, mse_ci = confidence_interval(mses)
        if np.isnan(r2s).any():
            r2, r2_ci = float("nan"), float("nan")
        else:
            r2, r2_ci = confidence_interval(r2s)
        return FewShotRegressionResult(mse=mse, mse_ci95=mse_ci, r2=r2, r2_ci95=r2_ci,
                                       mses=mses, r2s=r2s, shape=shape)

    def score(self, X, y, groups=None, sample_weight=None):
        """Mean few-shot R^2 over ``n_eval_episodes`` episodes of ``(X, y, groups)``.

        Unlike most regressors' ``score``, this is not the R^2 of
        ``predict(X)``: each episode adapts from the meta-learned
        initialisation on ``k_shot`` points of one task and scores its
        ``n_query`` other points (see :meth:`evaluate`). With group-disjoint
        splits (``GroupKFold``) this measures how well the initialisation
        adapts to unseen tasks. ``groups`` is routed like ``fit``'s
        (``set_score_request(groups=True)``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Inputs.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets.
        groups : array-like of shape (n_samples,) or None, default=None
            The task of each sample; ``None``: all of ``(X, y)`` is one task,
            with a warning (as in ``fit``).
        sample_weight : None
            Not supported; present for API compatibility.

        Returns
        -------
        score : float
            Mean few-shot R^2 (nan with one query per episode).
        """
        if sample_weight is not None:
            raise ValueError("score does not support sample_weight; pass None.")
        return self._evaluate(X, y, groups, "score").r2

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
