"""What the classifier and the regressor share: checks, the meta-training
run through the skorch net, adaptation plumbing, prediction through the
adapted task network, persistence and pickling.

:class:`MetaEstimatorBase` is private. A subclass says what its targets are
(``_validate_targets``-style code in its own ``fit``), its task loss
(``_loss``), its head (``_head``) and its episode sampling; everything else
lives here once.
"""

import copy
import math
import numbers
import os
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from . import distributed, names, persistence
from ._codecs import (
    FLAG,
    NAMES,
    OBJECT,
    TEXT,
    TRUSTED_ONLY,
    Optional,
    Record,
    choice,
    count,
    decode_params,
    encode_params,
    real,
    sizes,
)
from ._config import PRECISIONS, resolve_config, resolve_device, resolve_precision
from ._constraints import (
    Bool,
    Callbacks,
    Either,
    Int,
    Mapping,
    NoneOr,
    Options,
    RandomState,
    Real,
    Shape,
    Sizes,
    check_params,
)
from ._threads import fit_threads
from ._training import (
    EpisodeLoader,
    all_finite,
    build_net,
    numeric_hint,
    restart_meta_rate,
    training_params,
)
from .algorithms import available_algorithms, get_algorithm
from .algorithms.runner import TaskRunner, attach_rule_parameters
from .augmentation import RandomShift, ShiftEnsemble
from .backbones import BACKBONE_CHOICES, build_backbone
from .backbones import image_shape as image_shape_of
from .callbacks import meta_steps_per_epoch
from .episodes import EpisodeShape
from .evaluation import sample_episodes
from .heads import MetaModel, TaskModel

__all__ = ["MetaEstimatorBase", "OPTIMIZERS", "SAVED_FIELDS", "attach_net", "flatten_images"]

#: The meta-optimizers by the (lower-case) names of :data:`names.OPTIMIZERS`,
#: as classes: ``optimizer=`` takes these names, and a model file stores
#: these classes and no other.
OPTIMIZERS = {name: getattr(torch.optim, cls) for name, cls in names.OPTIMIZERS.items()}
_PREDICT_CHUNK = 4096


def flatten_images(X):
    """Flatten (n, C, H, W)-like arrays to rows; return them and the image shape."""
    ndim = getattr(X, "ndim", None)
    if ndim is not None and ndim > 2:
        shape = tuple(int(s) for s in X.shape[1:])
        if torch.is_tensor(X):
            X = X.detach().cpu().numpy()
        return np.asarray(X).reshape(X.shape[0], -1), shape
    return X, None


def _require_images(name, shift, image_shape):
    """Raise if the parameter ``name`` asks to shift inputs that are not images."""
    if shift and image_shape is None:
        raise ValueError(
            f"{name}={shift} shifts images, but the inputs are not known to be "
            "images: use module='conv4', pass X as (n_samples, channels, height, "
            "width), or set input_shape=(channels, height, width); or set "
            f"{name}=0.")


def _check_shift_size(name, shift, image_shape):
    """Raise if shifting by ``shift`` pixels leaves nothing of images of
    ``image_shape``: a shift of ``side - 1`` or more along a side of ``side``
    pixels replaces the whole image by copies of its border row (or column)."""
    if not shift or image_shape is None:
        return
    _, h, w = image_shape if len(image_shape) == 3 else (1,) + tuple(image_shape)
    largest = min(h, w) - 2
    if shift > largest:
        allowed = f"at most {largest}" if largest > 0 else "0 (the images are too small to shift)"
        raise ValueError(
            f"{name}={shift} moves {h}x{w} images by up to {shift} pixels, which leaves "
            f"nothing of them (a shift of {min(h, w) - 1} or more replaces an image by "
            f"copies of its border); {name} must be {allowed} for these images (1 or 2 "
            "pixels is usual)."
        )


def _image_layout_error(got, fitted, what):
    return ValueError(
        f"{what} holds images of shape {got}, but this estimator was fitted on images "
        f"of shape {fitted} (channels, height, width). Pass images in the fitted layout "
        "(for channels-last arrays, X.transpose(0, 3, 1, 2)), or rows of "
        f"{int(np.prod(fitted))} features."
    )


# The constraints of the parameters both estimators have (each adds its own).
COMMON_PARAMS = {
    "hidden_layer_sizes": Sizes(),
    "n_filters": Int(1),
    "input_shape": NoneOr(Shape()),
    "module_params": NoneOr(Mapping()),
    "k_shot": Int(1),
    "n_query": Int(1),
    "meta_batch_size": Int(1),
    "n_inner_steps": Int(0),
    "n_inner_steps_test": Int(0),
    "lr": Real(0.0),
    "optimizer_params": NoneOr(Mapping()),
    "lr_schedule": Options(*names.LR_SCHEDULES),
    "max_epochs": Int(0),
    "meta_batches_per_epoch": Int(1),
    "n_eval_episodes": Int(1),
    "validation_fraction": NoneOr(Real(0.0, strict=True, high=1.0)),
    "precision": Options("auto", *PRECISIONS),
    "adapt_on_fit": Bool(),
    "warm_start": Bool(),
    "callbacks": Callbacks(),
    "random_state": RandomState(),
    "verbose": Either(Bool(), Int(0)),
}


#: The fitted fields every estimator saves in a model file, with the codecs
#: that write them and check them when a file is loaded (each estimator class
#: adds its own in ``_saved_fields``).
SAVED_FIELDS = {
    "n_features_in_": count(1),
    "feature_names_in_": Optional(NAMES, set_none=False),
    "input_shape_": Optional(sizes(3)),
    "episode_shape_": Record(EpisodeShape, n_ways=count(1), k_shot=count(1), n_query=count(1)),
    "device_": TEXT,
    "precision_": choice(names.PRECISIONS),
    "inner_lr_": real(0),
    "task_batching_": choice(names.TASK_BATCHING),
    "n_meta_steps_": count(0, 2**63 - 1),
}


def attach_net(estimator, meta_model=None, config=None):
    """Give a fitted (or loaded) estimator a new, initialised skorch net.

    The net wraps ``meta_model`` (default: ``estimator.meta_model_``) with a
    fresh meta-optimizer, the current ``callbacks``, ``verbose`` and
    optimizer settings, and a new episode generator (seeded from an int
    ``random_state`` and ``n_meta_steps_``), so that ``save_params`` works
    and a ``warm_start=True`` fit continues from these meta-parameters. Call
    it after ``set_params`` to use new callbacks in such a fit.

    Returns
    -------
    estimator : the same estimator
    """
    meta_model = estimator.meta_model_ if meta_model is None else meta_model
    config = estimator.config_ if config is None else config
    optimizer_cls = estimator._check_params()
    net_params = dict(estimator._net_params(estimator.episode_shape_), config=config)
    seed = estimator.random_state
    rng = (np.random.default_rng([int(seed), int(estimator.n_meta_steps_)])
           if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and seed >= 0
           else np.random.default_rng())
    net = estimator._build_net(meta_model, optimizer_cls, config.device, rng, net_params)
    net.initialize()
    estimator.net_, estimator.history_, estimator.meta_model_ = net, net.history, net.module_
    return estimator


def _loading_device(name, file):
    """The saved device if it is available here, else the CPU."""
    try:
        saved = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise file.invalid("fitted.device_", name, "a torch device") from exc
    if saved.type == "cuda" and torch.cuda.is_available():
        if saved.index is not None and saved.index >= torch.cuda.device_count():
            return torch.device("cuda")
        return saved
    return torch.device("cpu")


def _names_a_gpu(device):
    """Whether a ``device`` parameter names a GPU (``"cuda"``, ``"cuda:1"``, ...)."""
    try:
        return device not in (None, "auto") and torch.device(device).type == "cuda"
    except (RuntimeError, TypeError):
        return False


def _check_tensors(file, module, prefix, what):
    """The tensors a model file holds under ``prefix.`` must be ``module``'s
    state (a network built on the "meta" device: nothing allocated), name for
    name, with the same shapes and dtypes: then building it for real
    allocates no more than the payload holds."""
    start = f"{prefix}."
    saved = {k[len(start):]: v for k, v in file.index.items() if k.startswith(start)}
    own = {k: (str(t.dtype).replace("torch.", ""), tuple(t.shape))
           for k, t in module.state_dict().items()}
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    mismatch = next((k for k in sorted(saved) if k in own and saved[k] != own[k]), None)
    if missing or unexpected or mismatch:
        why = (f"tensor {mismatch!r} is {' '.join(map(str, saved[mismatch]))}, the network "
               f"expects {' '.join(map(str, own[mismatch]))}" if mismatch else
               f"missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
        raise ValueError(f"the model file {file.path} does not fit the network its "
                         f"parameters describe ({what}): {why}. The file was edited, or "
                         "written by another version.")


def _materialise(module, state):
    """``module``, built on the "meta" device and checked against the file's
    tensor index, given memory on the CPU and ``state``."""
    module = module.to_empty(device="cpu")
    module.load_state_dict(state, strict=True)
    return module


class MetaEstimatorBase(BaseEstimator):
    """Shared machinery of :class:`~fomaml_sklearn.FOMAMLClassifier` and
    :class:`~fomaml_sklearn.FOMAMLRegressor` (not public).

    Subclasses define ``__init__`` (their parameters), ``_PARAM_TABLE``,
    ``_loss`` (the task loss), ``_head`` (the head of the meta-model),
    ``_fit`` and the target-specific public methods.
    """

    _PARAM_TABLE = {}
    # The final adaptation of fit uses at most this many examples.
    _fit_adapt_max_samples = 1024
    _loss = None
    # Options of the built-in "mlp" backbone beyond its widths.
    _mlp_batch_norm = True

    # ------------------------------------------------------------------ checks
    def _check_params(self):
        """Check every parameter; return the optimizer class."""
        check_params(self._PARAM_TABLE, self.get_params(deep=False))
        module = self.module
        if not (isinstance(module, (str, torch.nn.Module))
                or (isinstance(module, type) and issubclass(module, torch.nn.Module))):
            raise ValueError(
                f"module must be {BACKBONE_CHOICES}; got {module!r} of type "
                f"{type(module).__name__}."
            )
        get_algorithm(self.algorithm).validate()
        resolve_device(self.device)
        return self._optimizer_class()

    def set_params(self, **params):
        """Set parameters, as scikit-learn's ``set_params``.

        ``algorithm__<option>`` also works when ``algorithm`` is a name:
        the name becomes its rule instance (``"imaml"`` -> ``IMAML()``, with
        the options a name stands for, e.g. ``"fo-anil"`` ->
        ``ANIL(first_order=True)``), whose option is then set. So a grid
        search can tune ``algorithm__lam`` of ``algorithm="imaml"``.

        Returns
        -------
        self : estimator
        """
        if any(key.startswith("algorithm__") for key in params):
            algorithm = params.get("algorithm", self.algorithm)
            if isinstance(algorithm, str):
                try:
                    params["algorithm"] = get_algorithm(algorithm)
                except ValueError as exc:
                    options = ", ".join(k for k in params if k.startswith("algorithm__"))
                    raise ValueError(f"{exc} ({options} sets an option of the rule.)") from None
        return super().set_params(**params)

    def _check_validation_callbacks(self, has_validation):
        """A callback that monitors validation scores needs validation data."""
        if has_validation:
            return
        for cb in self.callbacks or []:
            name, cb = cb if isinstance(cb, tuple) else (type(cb).__name__, cb)
            monitor = getattr(cb, "monitor", None)
            if isinstance(monitor, str) and monitor.startswith("valid_"):
                raise ValueError(
                    f"The callback {name} monitors {monitor!r}, but fit has no validation "
                    "data, so that score never exists. Set validation_fraction (e.g. 0.2, "
                    f"whole {self._task_units} held out){self._explicit_validation_hint}, "
                    "or monitor 'train_loss'."
                )

    _task_units = "classes"
    _explicit_validation_hint = " or pass X_val and y_val to fit"

    def _optimizer_class(self):
        opt = self.optimizer
        if isinstance(opt, str):
            if opt.lower() not in OPTIMIZERS:
                raise ValueError(
                    f"optimizer={opt!r} is not known; use one of {sorted(OPTIMIZERS)} "
                    "or a torch.optim.Optimizer subclass."
                )
            return OPTIMIZERS[opt.lower()]
        if isinstance(opt, type) and issubclass(opt, torch.optim.Optimizer):
            return opt
        raise TypeError(
            f"optimizer must be a name in {sorted(OPTIMIZERS)} or a "
            f"torch.optim.Optimizer subclass; got {opt!r}."
        )

    def _check_layout(self, image_shape, what):
        """Images must come in the layout of the fitted ones (a flat row only
        has to have the right number of features)."""
        fitted = getattr(self, "input_shape_", None)
        if image_shape is None or fitted is None:
            return
        fitted = tuple(fitted) if len(fitted) == 3 else (1,) + tuple(fitted)
        got = tuple(image_shape) if len(image_shape) == 3 else (1,) + tuple(image_shape)
        if got != fitted:
            raise _image_layout_error(tuple(image_shape), fitted, what)

    def _validate_X(self, X, reset, what="X"):
        X, image_shape = flatten_images(X)
        X = validate_data(self, X, reset=reset, dtype=np.float32)
        if not reset:
            self._check_layout(image_shape, what)
        return X, image_shape

    def _check_input_shape(self, X, image_shape):
        """A given ``input_shape`` must fit the data (any backbone)."""
        if self.input_shape is not None:
            given = image_shape_of(X.shape[1], self.input_shape)
            if image_shape is not None and given != image_shape_of(X.shape[1], image_shape):
                raise _image_layout_error(image_shape, given, "X")

    def _to_tensor(self, X, device):
        return torch.tensor(X, dtype=torch.float32, device=device)

    def _check_meta_fitted(self, what):
        if not hasattr(self, "meta_model_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet: call "
                f"fit(X, y) to meta-train it before {what}."
            )

    # --------------------------------------------------------------------- fit
    def _fit(self, *args, warm, device):
        """Meta-train on ``args`` (each estimator's own data: the classifier's
        ``X, y, X_val, y_val``, the regressor's ``X, y, groups``) on ``device``,
        from scratch or, with ``warm``, on; called by :meth:`_fit_on_copy` on
        a copy of the estimator. Each estimator defines it."""
        raise NotImplementedError

    def _fit_on_copy(self, *args):
        """Run ``_fit(*args, warm=, device=)`` on a copy and swap it in only when it
        succeeds: a failed call leaves a fitted estimator exactly as it was."""
        warm = bool(self.warm_start) and hasattr(self, "net_")
        # Under torchrun, join (initialise) the process group first: the
        # ranks then agree on every seed (distributed.py).
        device = distributed.init_from_env(
            self.device_ if warm else resolve_device(self.device))
        new = object.__new__(type(self))  # not copy.copy: no __getstate__ round trip
        new.__dict__.update(self.__dict__)
        if warm:  # meta-trained further on a copy of the net
            new.net_ = copy.deepcopy(self.net_)
        else:
            for name in [k for k in vars(new) if k.endswith("_") and not k.startswith("_")]:
                delattr(new, name)
        try:
            with fit_threads(device):  # fewer threads on busy cores (_threads.py)
                new._fit(*args, warm=warm, device=device)
        except BaseException as exc:
            raise distributed.rank_note(exc, "fit")
        self.__dict__.clear()
        self.__dict__.update(vars(new))
        return self

    @staticmethod
    def _group_codes(groups, n_samples, what="groups", label="task"):
        """Group codes ``0 .. n_groups-1`` and the group names of ``groups``
        (``label``: what a group is, in messages: a regressor's task, a
        classifier's family of classes)."""
        groups = np.asarray(groups)
        if groups.ndim != 1 or len(groups) != n_samples:
            raise ValueError(
                f"{what} must be 1-D with one {label} label per sample ({n_samples}); got "
                f"shape {groups.shape}."
            )
        if groups.dtype.kind == "f":
            missing = np.isnan(groups)
        elif groups.dtype.kind == "O":
            missing = np.array([v is None or (isinstance(v, (float, np.floating)) and v != v)
                                for v in groups.tolist()], dtype=bool)
        else:  # integers, bools, strings: nothing can be missing
            missing = np.zeros(len(groups), dtype=bool)
        if missing.any():
            raise ValueError(
                f"{what} has {int(missing.sum())} missing {label} label(s) (NaN or None), the "
                f"first at index {int(np.argmax(missing))}; every sample needs the label of "
                f"its {label}. Drop those samples or give them their {label}'s label (NaN labels "
                f"would otherwise merge unrelated samples into one {label})."
            )
        try:
            names, codes = np.unique(groups, return_inverse=True)
        except TypeError as exc:
            kinds = sorted({type(v).__name__ for v in groups.tolist()})
            raise ValueError(
                f"{what} mixes {label} labels of different types ({', '.join(kinds)}), which "
                f"cannot be sorted; use one type for all labels, e.g. np.asarray({what}, "
                "dtype=str)."
            ) from exc
        return codes.reshape(-1), names

    @staticmethod
    def _draw_seeds(random_state):
        """The seeds of fit's sub-steps, all drawn from one generator:
        initialisation, episodes, validation split, validation episodes and
        the final adaptation."""
        rng = check_random_state(random_state)
        torch_seed, episode_seed = (int(s) for s in rng.randint(0, 2**31 - 1, size=2))
        split_seed, valid_seed = (int(s) for s in rng.randint(0, 2**31 - 1, size=2))
        adapt_seed = int(rng.randint(0, 2**31 - 1))
        # In a distributed fit every rank takes rank 0's seeds: the same
        # initialisation and the same meta-batches (random_state=None too).
        seeds = distributed.broadcast_ints(
            [torch_seed, episode_seed, split_seed, valid_seed, adapt_seed])
        return dict(zip(("torch", "episodes", "split", "valid", "adapt"), seeds))

    def _meta_train(self, *, X, image_shape, train_mask, fit_labels, shape, valid, n_rows,
                    warm, device, seeds, optimizer_cls, targets=None, class_groups=None,
                    valid_class_groups=None):
        """Build (or continue) the skorch net and meta-train it; set the
        fitted attributes every estimator has.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_features)
            All of fit's examples (float32 rows).
        image_shape : tuple or None
            The layout ``X`` came in.
        train_mask : ndarray of bool
            The examples to meta-train on (the others were held out).
        fit_labels : ndarray of int
            What episodes are drawn from, for the training examples: class
            codes, or task (group) codes for a regressor.
        shape : EpisodeShape
            The episode shape.
        valid : tuple or None
            ``(X_valid, codes, shape, targets_or_None)`` of the validation
            episodes.
        n_rows : int
            Rows of a ``"fixed"`` head.
        warm : bool
            Continue the existing net.
        device : torch.device
            Where to train (``fit`` resolved it, and joined a process group).
        seeds : dict
            From :meth:`_draw_seeds`.
        optimizer_cls : type
            The meta-optimizer.
        targets : ndarray of shape (n_train, n_outputs) or None
            Real-valued targets of the training examples (regression).
        class_groups : ndarray of int or None
            A group per training class code: each task takes its classes
            from one group (a classifier's ``fit(X, y, groups)``).
        valid_class_groups : ndarray of int or None
            The same for the validation classes (``validation_fraction``
            with ``groups``).

        Returns
        -------
        X_t : torch.Tensor
            All of ``X`` on the device (for the final adaptation).
        """
        resolve_precision(self.precision, device)  # fail before building anything
        X_t = self._to_tensor(X, device)
        train_split, valid_params = None, {}
        if valid is not None:
            from skorch.dataset import Dataset
            from skorch.helper import predefined_split

            X_valid, valid_codes, valid_shape, valid_targets = valid
            train_split = predefined_split(
                Dataset(self._to_tensor(X_valid, device), valid_codes))
            valid_params = dict(
                iterator_valid=EpisodeLoader,
                iterator_valid__shape=valid_shape,
                iterator_valid__rng=seeds["valid"],
                iterator_valid__n_episodes=self.n_eval_episodes,
            )
            if valid_targets is not None:
                valid_params["iterator_valid__targets"] = self._to_tensor(valid_targets, device)
            if valid_class_groups is not None:
                valid_params["iterator_valid__class_groups"] = valid_class_groups
        net_params = self._net_params(shape, train_split=train_split, **valid_params)
        if targets is not None:
            net_params["iterator_train__targets"] = self._to_tensor(targets, device)
        net_params["iterator_train__class_groups"] = class_groups
        input_shape = self.input_shape if self.input_shape is not None else image_shape
        X_train = X_t if train_mask.all() else X_t[torch.as_tensor(train_mask, device=device)]
        # Initialisation from an explicit generator: nothing global is
        # touched, and seeded fits in parallel threads are reproducible.
        generator = torch.Generator().manual_seed(seeds["torch"])
        meta_model = (self.net_.module_ if warm else
                      self._build_meta_model(X.shape[1], input_shape, n_rows, generator))
        config = self._resolve_config(self.get_params(deep=False), meta_model, device)
        # The rule's own meta-learned tensors (meta_model.rule_state), if any.
        attach_rule_parameters(meta_model, config, create=not warm)
        images = (image_shape_of(X.shape[1], input_shape) if input_shape is not None
                  else getattr(meta_model.backbone, "input_shape", None))
        net_params["iterator_train__augment"] = self._augmentation(images)
        rank, world_size = distributed.world()
        if self.verbose and rank == 0:
            where = f" x {world_size} processes" if world_size > 1 else ""
            print(f"Meta-training on {device}{where} in {config.precision} precision with "
                  f"{type(config.algorithm).__name__}, {self._describe_shape(shape)}.")
        net_params["config"] = config
        if warm:
            net = self.net_
            steps_before = sum(meta_steps_per_epoch(net.history))
            for name, value in net_params.items():
                setattr(net, name, value)
            restart_meta_rate(net, lr=self.lr, lr_schedule=self.lr_schedule,
                              n_steps=self.max_epochs * self.meta_batches_per_epoch)
            net.partial_fit(X_train, fit_labels)
        else:
            net = self._build_net(meta_model, optimizer_cls, device,
                                  np.random.default_rng(seeds["episodes"]), net_params)
            net.fit(X_train, fit_labels)
        # Neither the validation data nor the targets are kept in the fitted estimator.
        net.train_split = None
        for name in ("iterator_train__targets", "iterator_valid__targets",
                     "iterator_train__class_groups", "iterator_valid__class_groups"):
            if hasattr(net, name):
                setattr(net, name, None)
        if net.interrupted_:
            warnings.warn(
                f"Meta-training was interrupted (KeyboardInterrupt) during epoch "
                f"{len(net.history)}. The estimator keeps the meta-parameters of the "
                "last completed meta-step and is usable; call fit again with "
                "warm_start=True to continue.",
                UserWarning,
                stacklevel=5,  # the user's fit call (fit -> _fit_on_copy -> _fit -> here)
            )

        self.net_ = net
        self.history_ = net.history
        self.meta_model_ = net.module_
        # Counted over all fits of a warm start, also one continued from a
        # loaded model file (whose history starts empty).
        new_steps = sum(meta_steps_per_epoch(net.history)) - (steps_before if warm else 0)
        self.n_meta_steps_ = (self.n_meta_steps_ if warm else 0) + new_steps
        self.episode_shape_ = shape
        self.config_ = config
        self.algorithm_ = config.algorithm
        self.device_ = device
        self.precision_ = config.precision
        self.inner_lr_ = config.inner_lr
        self.task_batching_ = config.task_batching
        if not warm:
            self.input_shape_ = images
        self.task_model_ = None
        return X_t

    def _augmentation(self, image_shape):
        """The transform of the meta-training episodes' inputs, or None
        (``image_shape``: of one input, None where they are not images).
        Also checks that ``test_shift`` has images to shift."""
        shift = getattr(self, "augment_shift", 0)
        _require_images("augment_shift", shift, image_shape)
        _require_images("test_shift", getattr(self, "test_shift", 0), image_shape)
        _check_shift_size("augment_shift", shift, image_shape)
        _check_shift_size("test_shift", getattr(self, "test_shift", 0), image_shape)
        return RandomShift(shift, image_shape) if shift else None

    def _test_augmentation(self):
        """The test-time :class:`ShiftEnsemble` of ``test_shift`` (read now, so
        ``set_params(test_shift=s)`` after ``fit`` applies to ``adapt``,
        ``predict`` and ``evaluate``), or None."""
        shift = getattr(self, "test_shift", 0)
        if not shift:
            return None
        check_params({"test_shift": self._PARAM_TABLE["test_shift"]}, {"test_shift": shift})
        images = getattr(self, "input_shape_", None)
        _require_images("test_shift", shift, images)
        _check_shift_size("test_shift", shift, images)
        return ShiftEnsemble(shift, images)

    @staticmethod
    def _warn_smaller_episodes(message, what=None):
        """Warn that the episodes shrank (``what``: where), at the user's fit
        call (fit -> _fit_on_copy -> _fit -> the shape helper -> here)."""
        if message is not None:
            warnings.warn(message if what is None else f"{message[:-1]} {what}.",
                          UserWarning, stacklevel=6)

    def _describe_shape(self, shape):
        return (f"episodes {shape.n_ways}-way {shape.k_shot}-shot with "
                f"{shape.n_query} queries")

    def _resolve_config(self, params, meta_model, device):
        """The frozen configuration of meta-training and adaptation."""
        return resolve_config(params, get_algorithm(params["algorithm"]), meta_model, device,
                              loss=self._loss)

    def _net_params(self, shape, train_split=None, **valid_params):
        """The skorch net's training settings: meta-batches of ``shape`` episodes."""
        return training_params(shape, max_epochs=self.max_epochs,
                               meta_batch_size=self.meta_batch_size,
                               meta_batches_per_epoch=self.meta_batches_per_epoch,
                               train_split=train_split, **valid_params)

    def _build_meta_model(self, n_features, input_shape, n_rows, generator):
        """A new meta-model (``n_rows`` rows of a ``"fixed"`` head), initialised
        from ``generator``."""
        options = {} if self._mlp_batch_norm else {"batch_norm": False}
        backbone = build_backbone(
            self.module,
            n_features,
            input_shape=input_shape,
            hidden_layer_sizes=self.hidden_layer_sizes,
            n_filters=self.n_filters,
            module_params=self.module_params,
            generator=generator,
            **options,
        )
        return MetaModel(backbone, n_features, head=self._head, n_rows=n_rows,
                         generator=generator)

    def _build_net(self, meta_model, optimizer_cls, device, episode_rng, net_params):
        """The skorch net that meta-trains ``meta_model`` (:func:`_training.build_net`
        with this estimator's settings)."""
        return build_net(meta_model, optimizer_cls=optimizer_cls, lr=self.lr,
                         optimizer_params=self.optimizer_params, callbacks=self.callbacks,
                         lr_schedule=self.lr_schedule,
                         n_steps=self.max_epochs * self.meta_batches_per_epoch,
                         verbose=self.verbose,
                         n_batches_shown=self.meta_batches_per_epoch + (
                             -(-self.n_eval_episodes // self.meta_batch_size)
                             if net_params.get("iterator_valid") is not None else 0),
                         device=device, episode_rng=episode_rng, net_params=net_params)

    def _fit_adapt_sample(self, n_samples, strata, rng):
        """Indices of at most ``_fit_adapt_max_samples`` examples for the final
        adaptation, the same number from every stratum (class or task),
        fewer where a stratum has fewer (a uniform sample where there are
        more strata than examples allowed); all of them when there are few
        enough."""
        limit = self._fit_adapt_max_samples
        if n_samples <= limit:
            return np.arange(n_samples)
        n_strata = int(strata.max()) + 1
        per = limit // n_strata
        if per == 0:  # more strata than examples allowed: a uniform sample
            keep = rng.choice(n_samples, size=limit, replace=False)
        else:
            keep = np.concatenate([rng.permutation(np.flatnonzero(strata == c))[:per]
                                   for c in range(n_strata)])
        keep.sort()
        return keep

    def _adapt_safely(self, adapt, what):
        """Run the final adaptation of fit; a failure (for example out of
        memory) keeps the meta-trained model and warns."""
        try:
            adapt()
        except Exception as exc:
            self.task_model_ = None
            warnings.warn(
                f"fit meta-trained the model, but its final adaptation to {what} failed "
                f"({type(exc).__name__}: {exc}). The estimator keeps the meta-trained "
                "model; call adapt(X_support, y_support) before predict.",
                UserWarning, stacklevel=6)  # fit -> _fit_on_copy -> _fit -> _adapt_on_fit

    def _evaluation_episodes(self, codes, shape, n_episodes, random_state):
        """``evaluate``'s episodes: ``n_eval_episodes`` by default, seeded by
        ``random_state``, else the estimator's int ``random_state``, else 0
        (repeated calls score the same episodes)."""
        if isinstance(random_state, np.random.RandomState):
            random_state = int(random_state.randint(0, 2**31 - 1))
        if random_state is None:
            seed = self.random_state
            random_state = seed if isinstance(seed, numbers.Integral) else 0
        n_episodes = self.n_eval_episodes if n_episodes is None else n_episodes
        return sample_episodes(codes, shape, n_episodes, random_state)

    # ------------------------------------------------------------------- adapt
    def _runner(self):
        """A task runner for adaptation. ``n_inner_steps_test`` is read now,
        so ``set_params(n_inner_steps_test=k)`` after ``fit`` applies to
        ``adapt``, ``evaluate`` and ``score``; every other setting is as
        fitted (``config_``)."""
        config = self.config_
        steps = self.n_inner_steps_test
        if steps != config.n_inner_steps_test:
            check_params({"n_inner_steps_test": self._PARAM_TABLE["n_inner_steps_test"]},
                         {"n_inner_steps_test": steps})
            config = config.replace(n_inner_steps_test=int(steps))
        return TaskRunner(self.meta_model_, config)

    def _adapt_tensors(self, X_t, y_t, n_outputs):
        """Adapt from the meta-parameters on ``(X_t, y_t)``; keep the task network."""
        runner = self._runner()
        ensemble = self._test_augmentation()
        if ensemble is not None:
            X_t, y_t = ensemble.support(X_t, y_t)
        head = self.algorithm_.adapt(runner, X_t, y_t, n_outputs)
        task_model = runner.task_model(head)
        if not all_finite(task_model.parameters()):
            # Kept from predicting NaN; the previous task stays.
            hint = numeric_hint(y_t.is_floating_point(), inner_lr=runner.config.inner_lr,
                                n_inner_steps_test=runner.config.n_inner_steps_test)
            raise ValueError(
                "the adaptation to the support set diverged: the adapted task network's "
                f"parameters are not finite. {hint} The adapted task was not changed."
            )
        self.task_model_ = task_model

    # ----------------------------------------------------------------- predict
    def _task_outputs(self, X, n_outputs):
        """Outputs of the adapted task network on ``X`` (float64, on the CPU)."""
        check_is_fitted(self, "meta_model_")
        if getattr(self, "task_model_", None) is None:
            raise NotFittedError(
                "No task to predict for: this estimator was fitted with "
                "adapt_on_fit=False, its final adaptation in fit failed (fit warned), "
                "or its parameters were reloaded with load_params; call "
                "adapt(X_support, y_support) first."
            )
        X, _ = self._validate_X(X, reset=False)
        ensemble = self._test_augmentation()
        model = self.task_model_
        device = next(model.parameters()).device
        # On CPU, predict in float64: float32 kernels round differently for
        # different batch sizes, and a sample's outputs should not depend on
        # its batch even in the last digits.
        dtype = torch.float64 if device.type == "cpu" else torch.float32
        transductive = self.config_.transductive  # as fitted, not the current parameter
        if transductive or dtype != torch.float32:
            model = copy.deepcopy(model).to(dtype).train(transductive)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(X), _PREDICT_CHUNK):
                xb = torch.tensor(X[start:start + _PREDICT_CHUNK], device=device)
                xb = xb.to(dtype)
                out = model(xb) if ensemble is None else ensemble.log_proba(model, xb)
                chunks.append(out.double().cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, n_outputs, dtype=torch.float64)

    # ----------------------------------------------------------- persistence
    def save_params(self, f_params=None, f_optimizer=None, f_history=None):
        """Save the meta-parameters (and optionally optimizer state, history).

        skorch's ``save_params``: ``f_params`` holds the meta-learned network's
        ``state_dict``. Pickling (or ``joblib.dump``) the whole estimator is
        the other way, which also keeps the adapted task.

        Parameters
        ----------
        f_params, f_optimizer, f_history : str, path or file-like, default=None
            Where to write each part; ``None`` skips that part.

        Returns
        -------
        self : estimator
        """
        self._check_meta_fitted("save_params")
        for name, f in (("f_params", f_params), ("f_optimizer", f_optimizer),
                        ("f_history", f_history)):
            if isinstance(f, (str, os.PathLike)):
                folder = os.path.dirname(os.path.abspath(os.fspath(f)))
                if not os.path.isdir(folder):
                    raise FileNotFoundError(
                        f"{name}={os.fspath(f)!r}: the folder {folder} does not exist; "
                        "create it first or save elsewhere."
                    )
        self.net_.save_params(f_params=f_params, f_optimizer=f_optimizer, f_history=f_history)
        return self

    def load_params(self, f_params=None, f_optimizer=None, f_history=None):
        """Load what :meth:`save_params` wrote into this meta-trained estimator.

        The network must have the same architecture: fit an estimator with
        the same parameters first (``max_epochs=0`` is enough). Tensors are
        mapped to this estimator's device, so parameters saved on a GPU load
        on a CPU-only machine. The adapted task is discarded: call
        :meth:`adapt` before ``predict``.

        Parameters
        ----------
        f_params, f_optimizer, f_history : str, path or file-like, default=None
            Files written by :meth:`save_params`; ``None`` skips that part.

        Returns
        -------
        self : estimator
        """
        self._check_meta_fitted("load_params")
        net = self.net_
        before = (copy.deepcopy(net.module_.state_dict()),
                  copy.deepcopy(net.optimizer_.state_dict()), net.history)
        try:
            net.load_params(f_params=f_params, f_optimizer=f_optimizer, f_history=f_history)
        except Exception as exc:
            # torch copies the tensors that fit before it reports the others:
            # put everything back, so a failed load changes nothing.
            net.module_.load_state_dict(before[0])
            net.optimizer_.load_state_dict(before[1])
            net.history = before[2]
            files = ", ".join(f"{k}={v!r}" for k, v in (("f_params", f_params),
                              ("f_optimizer", f_optimizer), ("f_history", f_history))
                              if v is not None)
            raise ValueError(
                f"load_params could not load {files} into this estimator "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:300]}). The files must "
                "come from save_params of an estimator with the same network (module, "
                f"{self._network_params_hint}); fit such an estimator first "
                "(max_epochs=0 is enough). Nothing was changed."
            ) from exc
        self.meta_model_ = self.net_.module_
        self.history_ = self.net_.history
        if f_params is not None:
            self.task_model_ = None
        return self

    _network_params_hint = "hidden_layer_sizes, n_filters, input_shape"

    def save(self, path):
        """Save the fitted estimator to a safe model file.

        The file holds tensors (safetensors) and JSON under a SHA-256
        checksum, with its format and package versions; :meth:`load` reads
        it back without running any code from it, unlike a pickle. It keeps
        what predicting, adapting, evaluating and scoring need (the
        meta-parameters, the adapted task, the fitted attributes) but not
        ``callbacks`` (stored as None), the optimizer state or ``history_``:
        to continue meta-training with the optimizer's state, pickle the
        estimator instead (for trusted files only). See
        :func:`fomaml_sklearn.persistence.save_model`.

        Parameters
        ----------
        path : str or path-like
            The file to write (replaced atomically).

        Returns
        -------
        path : pathlib.Path
            The file written.

        Raises
        ------
        ValueError
            If ``module`` is a user torch module, ``algorithm`` or
            ``optimizer`` a user class (not registered), or (classifier) the
            labels are not int, float, bool or str: the safe format does not
            rebuild user code.
        OSError
            If the file cannot be written; the error names ``path``, and a
            file already there is left as it was.
        """
        persistence.safetensors_module()
        self._check_meta_fitted("saving it")
        if names.backbone_name(self.module) is None:
            raise ValueError(
                f"module={self.module!r}: the safe model format rebuilds the built-in "
                f"backbones {names.quoted(names.BACKBONES)} only, and cannot rebuild user code "
                f"(a torch.nn.Module class or instance). {TRUSTED_ONLY}")
        # Callbacks are skorch objects (often holding files or functions): not stored.
        params = dict(self.get_params(deep=False), callbacks=None)
        task_model = getattr(self, "task_model_", None)
        fitted = {name: field.encode(getattr(self, field.attr or name, None))
                  for name, field in self._saved_fields.items()}
        fitted.update(meta_model_training=bool(self.meta_model_.training), task_model_=(
            None if task_model is None else {"n_outputs": int(task_model.head.weight.shape[0])}))
        document = {"estimator": type(self).__name__, "fitted": fitted,
                    "params": encode_params(params, OPTIMIZERS)}
        tensors = {f"{prefix}.{name}": t.detach().to("cpu").contiguous()
                   for prefix, module in (("meta_model", self.meta_model_),
                                          ("task_model", task_model)) if module is not None
                   for name, t in module.state_dict().items()}
        return persistence.write_model(path, document, tensors)

    @classmethod
    def load(cls, path):
        """Load an estimator saved with :meth:`save`, without running code from the file.

        The checksum and format version are checked first; a pickle is
        refused, never unpickled. Tensors saved on a GPU load on a CPU-only
        machine. See :func:`fomaml_sklearn.persistence.load_model`.

        Parameters
        ----------
        path : str or path-like
            A file written by :meth:`save`.

        Returns
        -------
        estimator : estimator of this class
            The fitted estimator; it predicts, adapts, evaluates and scores
            exactly like the saved one.

        Raises
        ------
        ValueError
            If the file is corrupted, from a newer format version, lacks a
            field, is not a model file or holds another kind of estimator.
        """
        estimator = persistence.load_model(path)
        if not isinstance(estimator, cls):
            raise ValueError(
                f"the model file {os.fspath(path)} holds a {type(estimator).__name__}, not "
                f"a {cls.__name__}; load it with {type(estimator).__name__}.load or "
                "fomaml_sklearn.persistence.load_model."
            )
        return estimator

    # ------------------------------------------------------------ saved state
    #: The fitted fields this estimator saves (subclasses add theirs).
    _saved_fields = SAVED_FIELDS

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        persistence.register_kind(cls, cls._restore)  # the registry of estimator kinds

    def _n_task_outputs(self):
        """Rows of the adapted task head: classes, or outputs."""
        raise NotImplementedError

    def _saved_state_error(self):
        """``(field, value, allowed)`` of restored fields that do not fit
        together, or None."""
        n = self.n_features_in_
        if len(getattr(self, "feature_names_in_", [None] * n)) != n:
            return ("fitted.feature_names_in_", list(self.feature_names_in_),
                    f"n_features_in_ = {n} names")
        if self.input_shape_ is not None and math.prod(self.input_shape_) != n:
            return ("fitted.input_shape_", self.input_shape_,
                    f"(channels, height, width) whose product is n_features_in_ = {n}")
        return None

    @classmethod
    def _restore(cls, file):
        """The estimator a checked :class:`~fomaml_sklearn.persistence.ModelFile`
        holds. Every field is read and checked, and the network the file
        describes is built on the "meta" device and compared with the tensors
        the file holds, before any memory is given to it."""
        document = file.document
        params = decode_params(file.field(document, "params", OBJECT), file,
                                           cls._get_param_names(), OPTIMIZERS)
        name = params.get("algorithm")
        if isinstance(name, str) and name not in available_algorithms():
            raise ValueError(
                f"the model file {file.path} was saved with algorithm={name!r}, which is "
                "neither a rule of this fomaml-sklearn nor registered in this session. If it "
                "was registered with fomaml_sklearn.algorithms.register_algorithm when the "
                "model was saved, register it again (same class and options) before loading.")
        fitted = file.field(document, "fitted", OBJECT)
        values = {name: file.field(fitted, name, field, "fitted.")
                  for name, field in cls._saved_fields.items()}
        training = file.field(fitted, "meta_model_training", FLAG, "fitted.")
        task = file.field(fitted, "task_model_", Optional(Record(dict, n_outputs=count(1))),
                          "fitted.")
        est = cls(**params)
        for name, field in cls._saved_fields.items():
            if values[name] is not None or field.set_none:
                setattr(est, field.attr or name, values[name])
        problem = est._saved_state_error()
        if problem is not None:
            raise file.invalid(*problem)
        if _names_a_gpu(est.device) and not torch.cuda.is_available():
            warnings.warn(
                f"The model in {file.path} was saved with device={est.device!r}, but CUDA is "
                "not available here: it is loaded on the CPU, and its device parameter is "
                "set to 'cpu' (device_ is cpu).", UserWarning, stacklevel=3)
            est.set_params(device="cpu")
        try:
            if names.backbone_name(est.module) is None:
                raise ValueError(f"module={est.module!r} is not a built-in backbone")
            est._check_params()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"the model file {file.path} holds invalid parameters: "
                             f"{exc}") from exc
        device = _loading_device(est.device_, file)
        # The rows of a "fixed" head, as saved (checked with the rest below).
        rows = max(1, (file.index.get("meta_model.head_weight", (None, (1,)))[1] or (1,))[0])
        try:  # on the "meta" device: shapes only, nothing allocated
            with torch.device("meta"):
                meta_model = est._build_meta_model(est.n_features_in_, est.input_shape_, rows,
                                                   None)
                # The rule's own tensors (names and shapes; their values are the file's).
                attach_rule_parameters(meta_model, est._resolve_config(
                    dict(est.get_params(deep=False), inner_lr=est.inner_lr_,
                         precision="float32", task_batching="loop"), meta_model, device))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"the model file {file.path} describes a network that cannot "
                             f"be built: {exc}") from exc
        _check_tensors(file, meta_model, "meta_model", "meta_model")
        n_outputs = est._n_task_outputs()
        if task is None and any(k.startswith("task_model.") for k in file.index):
            raise file.error("task-model tensors but no task model")
        if task is not None:
            if task["n_outputs"] != n_outputs:
                raise file.invalid("fitted.task_model_.n_outputs", task["n_outputs"],
                                   f"{n_outputs}, the estimator's classes or outputs")
            task_model = TaskModel(copy.deepcopy(meta_model.backbone),
                                   torch.empty(n_outputs, meta_model.feature_dim, device="meta"),
                                   torch.empty(n_outputs, device="meta"))
            _check_tensors(file, task_model, "task_model", "task_model")
        # Every tensor is known to fit now: read them, and give the networks memory.
        meta_model = _materialise(meta_model, file.tensors("meta_model")).train(training)
        precision = est.precision_
        if precision == "float16" and device.type != "cuda":
            warnings.warn(
                "The model was saved with precision_='float16', which runs only on a GPU; "
                "it runs in float32 on this CPU, so its outputs may differ slightly from "
                "the saved model's.", UserWarning, stacklevel=3)
            precision = "float32"
        settings = dict(est.get_params(deep=False), inner_lr=est.inner_lr_,
                        precision=precision, task_batching=est.task_batching_)
        try:
            config = est._resolve_config(settings, meta_model, device)
        except ValueError:  # a batched path this model lacks: it only matters in fit
            config = est._resolve_config(dict(settings, task_batching="loop"), meta_model,
                                         device)
        est.config_ = config
        attach_net(est, meta_model, config)
        est.algorithm_, est.device_, est.precision_ = config.algorithm, device, config.precision
        est.inner_lr_, est.task_batching_ = config.inner_lr, config.task_batching
        est.task_model_ = None
        if task is not None:
            task_model = _materialise(task_model, file.tensors("task_model"))
            task_model.backbone.requires_grad_(False)
            est.task_model_ = task_model.to(device).eval()
        return est

    def __getstate__(self):
        # A copy: on Python 3.11+ object.__getstate__ returns __dict__ itself.
        state = dict(super().__getstate__())
        # meta_model_ is net_.module_, which skorch pickles device-safely.
        if "net_" in state:
            state.pop("meta_model_", None)
        if state.get("task_model_") is not None:
            state["task_model_"] = copy.deepcopy(state["task_model_"]).to("cpu")
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if "net_" in state:
            self.meta_model_ = self.net_.module_
            self.device_ = torch.device(self.net_.device)
        if getattr(self, "task_model_", None) is not None and hasattr(self, "device_"):
            self.task_model_.to(self.device_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
