"""The scikit-learn estimator: :class:`FOMAMLClassifier`."""

import copy
import numbers
import warnings

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from ._training import EpisodeLoader, MetaTrainingNet
from .backbones import build_backbone
from .episodes import resolve_episode_shape
from .evaluation import (
    FewShotResult,
    confidence_interval,
    episodic_accuracies,
    sample_episodes,
)
from .learner import ALGORITHMS, HEAD_ONLY_ALGORITHMS, HEADS, MetaModel, TaskRunner

__all__ = ["FOMAMLClassifier"]

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
_PREDICT_CHUNK = 4096


def _resolve_device(device):
    """Turn ``"auto"``/``"cpu"``/``"cuda[:i]"``/``torch.device`` into a torch.device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a valid device; use 'cpu', 'cuda', 'cuda:N' "
            "or 'auto'."
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested, but CUDA is not available on this "
            "machine (torch.cuda.is_available() is False); use device='cpu', or "
            "device='auto' to take a GPU only where there is one."
        )
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not supported; use 'cpu', 'cuda' or 'auto'.")
    return dev


_PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _cpu_has_fast_bf16():
    """True where the CPU runs bfloat16 natively (AMX or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _resolve_precision(precision, device):
    """Return the precision name and the autocast dtype (None for float32)."""
    if precision == "auto":
        if device.type == "cuda":
            fast = torch.cuda.is_bf16_supported()
        else:
            fast = _cpu_has_fast_bf16()
        precision = "bfloat16" if fast else "float32"
    if precision not in _PRECISIONS:
        raise ValueError(
            f"precision={precision!r} is not supported; use 'auto', 'float32', "
            "'bfloat16' or 'float16' (GPU only)."
        )
    if precision == "float16" and device.type != "cuda":
        raise ValueError(
            "precision='float16' runs only on a GPU; on the CPU use 'bfloat16' "
            "or 'auto'."
        )
    return precision, _PRECISIONS[precision]


def _flatten_images(X):
    """Flatten (n, C, H, W)-like arrays to rows; return them and the image shape."""
    ndim = getattr(X, "ndim", None)
    if ndim is not None and ndim > 2:
        shape = tuple(int(s) for s in X.shape[1:])
        if torch.is_tensor(X):
            X = X.detach().cpu().numpy()
        return np.asarray(X).reshape(X.shape[0], -1), shape
    return X, None


def _check_int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")


def _check_float(name, value, low=0.0, strict=True):
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    if not ok or (value <= low if strict else value < low):
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {op} {low}; got {value!r}.")


class FOMAMLClassifier(ClassifierMixin, BaseEstimator):
    """Few-shot classifier meta-trained with First-Order MAML.

    ``fit(X, y)`` meta-trains an initialisation on N-way K-shot episodes drawn
    from the classes of ``y`` (Finn et al., 2017; Nichol et al., 2018): for
    each task of a meta-batch, a copy of the parameters takes
    ``n_inner_steps`` SGD steps on the support set, and the initialisation
    moves along the query-set gradient taken at the adapted parameters (no
    second derivatives). ``adapt(X_support, y_support)`` then fine-tunes that
    initialisation on a new task's few labelled examples, after which
    ``predict`` and ``predict_proba`` classify among the support classes.

    After ``fit`` the estimator is adapted to all the classes of ``y`` (using
    all of ``X`` as the support set), so ``predict`` works as for any
    scikit-learn classifier. ``score(X, y)`` is the mean *few-shot* accuracy
    over ``n_eval_episodes`` episodes drawn from ``(X, y)``; with
    class-disjoint folds it measures generalisation to unseen classes.

    Parameters
    ----------
    module : {"mlp", "conv4"}, torch.nn.Module class or instance, default="mlp"
        The feature extractor. ``"mlp"``: fully connected layers of
        ``hidden_layer_sizes``; ``"conv4"``: the four-block CNN of the MAML
        paper with ``n_filters`` filters, on images of ``input_shape``. A class
        is instantiated with ``module_params``; an instance is copied, never
        trained in place. It must map ``(n, n_features)`` rows to
        ``(n, d)`` features; the task head is added by the estimator.
    hidden_layer_sizes : tuple of int, default=(64, 64)
        Hidden widths of the ``"mlp"`` backbone.
    n_filters : int, default=64
        Filters per convolution of the ``"conv4"`` backbone.
    input_shape : tuple of int or None, default=None
        ``(channels, height, width)`` of an image for ``"conv4"``. ``None``:
        taken from 4-D ``X``, or a square single-channel image for rows.
    module_params : dict or None, default=None
        Keyword arguments for a ``module`` given as a class.
    algorithm : {"fomaml", "maml", "reptile", "anil", "fo-anil"}, default="fomaml"
        The meta-learning rule. ``"fomaml"``: the query gradient at the
        adapted parameters. ``"maml"``: the exact second-order meta-gradient,
        differentiating through the inner steps (about 2-3x the cost).
        ``"reptile"``: the direction ``theta - phi`` after ``n_inner_steps``
        steps on all of a task's examples, fed to the meta-optimizer.
        ``"anil"`` / ``"fo-anil"``: only the head adapts in the inner loop
        (also in ``adapt``), second or first order; the body is meta-learned.
    head : {"prototype", "shared", "fixed"}, default="prototype"
        Initialisation of the task head, which has one row per class, so a
        task may have any number of classes. ``"prototype"``: rows from the
        support-class mean embeddings (Proto-MAML; the most accurate in our
        measurements). ``"shared"``: one meta-learned row copied for every
        class (under cross-entropy this is a zero-initialised head).
        ``"fixed"``: the classic ``n_ways``-row head of the MAML paper (class
        ``j`` of a task starts from row ``j % n_ways``).
    n_ways : int, default=5
        Classes per meta-training episode.
    k_shot : int, default=1
        Support examples per class.
    n_query : int, default=15
        Query examples per class.
    meta_batch_size : int, default=4
        Tasks per outer (meta) step.
    inner_lr : float or "auto", default="auto"
        Inner-loop SGD rate (alpha). ``"auto"``: 0.05 with the prototype head
        (which starts close to a good classifier; 0.4 lost about 20 points of
        5-way 1-shot accuracy on Omniglot in our runs) and 0.4, the MAML
        paper's Omniglot value, with the ``"shared"`` and ``"fixed"`` heads.
    n_inner_steps : int, default=1
        Inner SGD steps during meta-training.
    n_inner_steps_test : int, default=3
        Inner SGD steps in ``adapt`` and in episodic evaluation.
    optimizer : {"adam", "adamw", "sgd"} or torch.optim.Optimizer class, default="adam"
        The meta-optimizer.
    lr : float, default=1e-3
        Meta learning rate (beta).
    optimizer_params : dict or None, default=None
        Further keyword arguments of the meta-optimizer.
    max_epochs : int, default=10
        Number of epochs of meta-training.
    meta_batches_per_epoch : int, default=100
        Meta-steps per epoch. Meta-training takes
        ``max_epochs * meta_batches_per_epoch`` meta-steps.
    n_eval_episodes : int, default=100
        Episodes drawn by ``score``.
    transductive : bool, default=False
        If True, BatchNorm normalises queries with their own batch statistics,
        as in the MAML paper's experiments; predictions then depend on the
        other samples of the batch. If False, the support statistics are used.
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Precision of the forward passes (``torch.autocast``); parameters and
        SGD updates stay float32. ``"auto"`` takes bfloat16 where the hardware
        runs it fast (CPUs with AMX or AVX512-BF16, bf16-capable GPUs) and
        float32 elsewhere; ``precision_`` says which was used.
    adapt_on_fit : bool, default=True
        Adapt to all classes of ``y`` at the end of ``fit``. Set to False when
        meta-training on many classes only to call ``adapt`` later.
    device : {"auto", "cpu", "cuda"} or str, default="auto"
        Where the network runs; ``"auto"`` takes a GPU if there is one.
    callbacks : list of skorch callbacks or None, default=None
        Extra skorch callbacks for meta-training (e.g. ``EarlyStopping``,
        ``Checkpoint``, ``LRScheduler``); they are copied, never changed.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation and the episodes. The global numpy and torch
        random generators are left untouched.
    verbose : int, default=0
        0: silent. 1: a progress bar and skorch's per-epoch table.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The classes of the current task (those of ``y`` after ``fit``, of
        ``y_support`` after ``adapt``).
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during ``fit``; only when ``X`` has them.
    episode_shape_ : EpisodeShape
        The episode shape used for meta-training.
    net_ : skorch.NeuralNet
        The internal skorch net; ``net_.module_`` holds the meta-parameters.
    history_ : skorch.History
        Per-epoch and per-meta-batch records (``train_loss``: mean query loss,
        ``train_query_acc``: mean query accuracy after adaptation, ``dur``).
    meta_model_ : torch.nn.Module
        The meta-learned initialisation (backbone and head initialisation).
    task_model_ : torch.nn.Module
        The network adapted to the current task, used by ``predict``.
    device_ : torch.device
        The device used.
    precision_ : str
        The precision used (``"auto"`` resolved).
    inner_lr_ : float
        The inner-loop rate used (``"auto"`` resolved).

    See Also
    --------
    fomaml_sklearn.evaluation.FewShotResult : What :meth:`evaluate` returns.

    References
    ----------
    Finn, Abbeel and Levine (2017). Model-Agnostic Meta-Learning for Fast
    Adaptation of Deep Networks. ICML.
    Nichol, Achiam and Schulman (2018). On First-Order Meta-Learning
    Algorithms. arXiv:1803.02999.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from fomaml_sklearn import FOMAMLClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = FOMAMLClassifier(n_ways=3, max_epochs=2, meta_batches_per_epoch=20,
    ...                        n_eval_episodes=20, random_state=0)
    >>> clf = clf.fit(X[y < 6], y[y < 6])
    >>> accuracy = clf.score(X[y >= 6], y[y >= 6])   # few-shot, unseen digits
    >>> support = [list(y).index(c) for c in (6, 7, 8, 9)]
    >>> clf = clf.adapt(X[support], y[support])
    >>> clf.classes_
    array([6, 7, 8, 9])
    """

    def __init__(
        self,
        module="mlp",
        *,
        hidden_layer_sizes=(64, 64),
        n_filters=64,
        input_shape=None,
        module_params=None,
        algorithm="fomaml",
        head="prototype",
        n_ways=5,
        k_shot=1,
        n_query=15,
        meta_batch_size=4,
        inner_lr="auto",
        n_inner_steps=1,
        n_inner_steps_test=3,
        optimizer="adam",
        lr=1e-3,
        optimizer_params=None,
        max_epochs=10,
        meta_batches_per_epoch=100,
        n_eval_episodes=100,
        transductive=False,
        precision="auto",
        adapt_on_fit=True,
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
        self.head = head
        self.n_ways = n_ways
        self.k_shot = k_shot
        self.n_query = n_query
        self.meta_batch_size = meta_batch_size
        self.inner_lr = inner_lr
        self.n_inner_steps = n_inner_steps
        self.n_inner_steps_test = n_inner_steps_test
        self.optimizer = optimizer
        self.lr = lr
        self.optimizer_params = optimizer_params
        self.max_epochs = max_epochs
        self.meta_batches_per_epoch = meta_batches_per_epoch
        self.n_eval_episodes = n_eval_episodes
        self.transductive = transductive
        self.precision = precision
        self.adapt_on_fit = adapt_on_fit
        self.device = device
        self.callbacks = callbacks
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ checks
    def _check_params(self):
        _check_int("n_ways", self.n_ways, 2)
        _check_int("k_shot", self.k_shot, 1)
        _check_int("n_query", self.n_query, 1)
        _check_int("meta_batch_size", self.meta_batch_size, 1)
        _check_int("n_inner_steps", self.n_inner_steps, 0)
        _check_int("n_inner_steps_test", self.n_inner_steps_test, 0)
        _check_int("max_epochs", self.max_epochs, 0)
        _check_int("meta_batches_per_epoch", self.meta_batches_per_epoch, 1)
        _check_int("n_eval_episodes", self.n_eval_episodes, 1)
        _check_int("n_filters", self.n_filters, 1)
        if not (isinstance(self.inner_lr, str) and self.inner_lr == "auto"):
            _check_float("inner_lr", self.inner_lr, 0.0, strict=False)
        _check_float("lr", self.lr, 0.0, strict=False)
        sizes = self.hidden_layer_sizes
        if (
            not isinstance(sizes, (tuple, list))
            or len(sizes) == 0
            or not all(isinstance(s, numbers.Integral) and s >= 1 for s in sizes)
        ):
            raise ValueError(
                "hidden_layer_sizes must be a non-empty tuple of positive integers, "
                f"e.g. (64, 64); got {sizes!r}."
            )
        if self.algorithm not in ALGORITHMS:
            raise ValueError(
                f"algorithm={self.algorithm!r} is not supported; use one of "
                f"{sorted(ALGORITHMS)}."
            )
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r} is not supported; use one of {HEADS}.")
        return self._optimizer_class()

    def _optimizer_class(self):
        opt = self.optimizer
        if isinstance(opt, str):
            if opt.lower() not in _OPTIMIZERS:
                raise ValueError(
                    f"optimizer={opt!r} is not known; use one of {sorted(_OPTIMIZERS)} "
                    "or a torch.optim.Optimizer subclass."
                )
            return _OPTIMIZERS[opt.lower()]
        if isinstance(opt, type) and issubclass(opt, torch.optim.Optimizer):
            return opt
        raise TypeError(
            f"optimizer must be a name in {sorted(_OPTIMIZERS)} or a "
            f"torch.optim.Optimizer subclass; got {opt!r}."
        )

    def _validate_X(self, X, reset):
        X, image_shape = _flatten_images(X)
        X = validate_data(self, X, reset=reset, dtype=np.float32)
        return X, image_shape

    def _validate_Xy(self, X, y, reset):
        X, image_shape = _flatten_images(X)
        X, y = validate_data(self, X, y, reset=reset, dtype=np.float32)
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        codes = encoder.transform(y)
        return X, codes, encoder.classes_, image_shape

    def _to_tensor(self, X, device):
        return torch.tensor(X, dtype=torch.float32, device=device)

    def _seed_scope(self, device):
        devices = [device.index or 0] if device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)

    # --------------------------------------------------------------------- fit
    def fit(self, X, y):
        """Meta-train on episodes drawn from ``(X, y)``, then adapt to its classes.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, C, H, W)
            Training examples; images may be given as rows or as 4-D arrays.
        y : array-like of shape (n_samples,)
            Class labels (any type scikit-learn accepts). Every class needs at
            least two examples; with fewer classes than ``n_ways`` or classes
            smaller than ``k_shot + n_query`` the episodes shrink to what the
            data allows, with a warning.

        Returns
        -------
        self : FOMAMLClassifier
            The fitted estimator.
        """
        optimizer_cls = self._check_params()
        X, codes, classes, image_shape = self._validate_Xy(X, y, reset=True)
        counts = np.bincount(codes, minlength=len(classes))
        shape, message = resolve_episode_shape(
            counts, self.n_ways, self.k_shot, self.n_query, class_names=classes
        )
        if message is not None:
            warnings.warn(message, UserWarning, stacklevel=2)
        device = _resolve_device(self.device)
        precision, autocast_dtype = _resolve_precision(self.precision, device)
        if self.verbose:
            print(f"Meta-training on {device} in {precision} precision, episodes "
                  f"{shape.n_ways}-way {shape.k_shot}-shot with {shape.n_query} queries.")
        input_shape = self.input_shape if self.input_shape is not None else image_shape
        rng = check_random_state(self.random_state)
        torch_seed, episode_seed = (int(s) for s in rng.randint(0, 2**31 - 1, size=2))

        callbacks = copy.deepcopy(list(self.callbacks or []))
        if self.verbose:
            from skorch.callbacks import ProgressBar

            callbacks.append(
                ("progress_bar", ProgressBar(batches_per_epoch=self.meta_batches_per_epoch))
            )
        X_t = self._to_tensor(X, device)
        with self._seed_scope(device):
            torch.manual_seed(torch_seed)
            backbone = build_backbone(
                self.module,
                X.shape[1],
                input_shape=input_shape,
                hidden_layer_sizes=self.hidden_layer_sizes,
                n_filters=self.n_filters,
                module_params=self.module_params,
            )
            meta_model = MetaModel(backbone, X.shape[1], head=self.head, n_rows=shape.n_ways)
            net = MetaTrainingNet(
                meta_model,
                criterion=torch.nn.CrossEntropyLoss,
                optimizer=optimizer_cls,
                lr=self.lr,
                max_epochs=self.max_epochs,
                batch_size=self.meta_batch_size,
                iterator_train=EpisodeLoader,
                iterator_train__shape=shape,
                iterator_train__rng=np.random.default_rng(episode_seed),
                iterator_train__n_batches=self.meta_batches_per_epoch,
                train_split=None,
                callbacks=callbacks,
                verbose=self.verbose,
                device=device,
                inner_lr=self._resolved_inner_lr(),
                n_inner_steps=self.n_inner_steps,
                transductive=self.transductive,
                autocast_dtype=autocast_dtype,
                algorithm=self.algorithm,
                **{f"optimizer__{k}": v for k, v in (self.optimizer_params or {}).items()},
            )
            net.fit(X_t, codes)

        self.net_ = net
        self.history_ = net.history
        self.meta_model_ = net.module_
        self.episode_shape_ = shape
        self.device_ = device
        self.precision_ = precision
        self.inner_lr_ = self._resolved_inner_lr()
        self.input_shape_ = input_shape
        if self.adapt_on_fit:
            self._adapt_codes(X_t, codes, classes)
        else:
            self.classes_ = classes
            self.task_model_ = None
        return self

    # ------------------------------------------------------------------- adapt
    def _adapt_body(self):
        return self.algorithm not in HEAD_ONLY_ALGORITHMS

    def _resolved_inner_lr(self):
        if isinstance(self.inner_lr, str):
            return 0.05 if self.head == "prototype" else 0.4
        return float(self.inner_lr)

    def _runner(self):
        return TaskRunner(self.meta_model_, _PRECISIONS[self.precision_])

    def _adapt_codes(self, X_t, codes, classes):
        runner = self._runner()
        y_t = torch.as_tensor(codes, device=X_t.device)
        weight, bias = runner.adapt(
            X_t, y_t, len(classes), self.inner_lr_, self.n_inner_steps_test,
            adapt_body=self._adapt_body(),
        )
        self.task_model_ = runner.task_model(weight, bias)
        self.classes_ = classes

    def adapt(self, X_support, y_support):
        """Fine-tune the meta-learned initialisation on a new task.

        Takes ``n_inner_steps_test`` SGD steps with rate ``inner_lr`` from the
        meta-parameters (which are not changed) on the support set, replacing
        any previously adapted task.

        Parameters
        ----------
        X_support : array-like of shape (n_support, n_features)
            The task's labelled examples, with the features seen in ``fit``.
        y_support : array-like of shape (n_support,)
            Their labels: at least 2 classes, at least one example each.
            They need not be classes seen in ``fit``.

        Returns
        -------
        self : FOMAMLClassifier
            The estimator, now predicting among ``classes_ = unique(y_support)``.
        """
        self._check_meta_fitted("adapt")
        X, codes, classes, _ = self._validate_Xy(X_support, y_support, reset=False)
        if len(classes) < 2:
            raise ValueError(
                f"adapt needs a support set with at least 2 classes; y_support has "
                f"1 class ({classes[0]!r}). Add labelled examples of other classes."
            )
        self._adapt_codes(self._to_tensor(X, self.device_), codes, classes)
        return self

    def _check_meta_fitted(self, what):
        if not hasattr(self, "meta_model_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet: call "
                f"fit(X, y) to meta-train it before {what}."
            )

    # ----------------------------------------------------------------- predict
    def _task_logits(self, X):
        check_is_fitted(self, "meta_model_")
        if getattr(self, "task_model_", None) is None:
            raise NotFittedError(
                "No task to predict for: this estimator was fitted with "
                "adapt_on_fit=False; call adapt(X_support, y_support) first."
            )
        X, _ = self._validate_X(X, reset=False)
        model = self.task_model_
        device = next(model.parameters()).device
        # On CPU, predict in float64: float32 kernels round differently for
        # different batch sizes, and a sample's probabilities should not
        # depend on its batch even in the last digits.
        dtype = torch.float64 if device.type == "cpu" else torch.float32
        if self.transductive or dtype != torch.float32:
            model = copy.deepcopy(model).to(dtype).train(self.transductive)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(X), _PREDICT_CHUNK):
                xb = torch.tensor(X[start:start + _PREDICT_CHUNK], device=device)
                chunks.append(model(xb.to(dtype)).double().cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, len(self.classes_))

    def predict_proba(self, X):
        """Class probabilities for the current task.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Examples to classify.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Probabilities, columns in the order of ``classes_``.
        """
        return torch.softmax(self._task_logits(X), dim=1).numpy()

    def predict(self, X):
        """Predict labels among the classes of the current task.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Examples to classify.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Labels from ``classes_``.
        """
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    # ------------------------------------------------------------------- score
    def evaluate(self, X, y, *, n_ways=None, k_shot=None, n_query=None,
                 n_episodes=None, random_state=None):
        """Episodic few-shot accuracy on the classes of ``(X, y)``.

        Each episode draws ``n_ways`` classes of ``y`` with ``k_shot`` support
        and ``n_query`` query examples each, adapts from the meta-learned
        initialisation on the support set (``n_inner_steps_test`` steps) and
        classifies the queries. The estimator's state is not changed.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Examples, typically of classes unseen in ``fit``.
        y : array-like of shape (n_samples,)
            Their labels.
        n_ways, k_shot, n_query : int or None, default=None
            Episode shape; ``None`` takes the estimator's. Shrunk, with a
            warning, where the data is smaller.
        n_episodes : int or None, default=None
            Number of episodes; ``None`` takes ``n_eval_episodes``.
        random_state : int or None, default=None
            Seed of the episodes. ``None`` takes ``random_state`` when it is an
            int, else 0, so repeated calls use the same episodes.

        Returns
        -------
        result : FewShotResult
            ``mean``, ``ci95`` (95% half-width), per-episode ``accuracies``
            and the episode ``shape`` used.
        """
        self._check_meta_fitted("evaluate")
        X, codes, classes, _ = self._validate_Xy(X, y, reset=False)
        n_episodes = self.n_eval_episodes if n_episodes is None else n_episodes
        _check_int("n_episodes", n_episodes, 1)
        counts = np.bincount(codes, minlength=len(classes))
        shape, message = resolve_episode_shape(
            counts,
            self.n_ways if n_ways is None else n_ways,
            self.k_shot if k_shot is None else k_shot,
            self.n_query if n_query is None else n_query,
            class_names=classes,
        )
        if message is not None:
            warnings.warn(message, UserWarning, stacklevel=2)
        if random_state is None:
            seed = self.random_state
            random_state = seed if isinstance(seed, numbers.Integral) else 0
        episodes = sample_episodes(codes, shape, n_episodes, random_state)
        runner = self._runner()
        accuracies = episodic_accuracies(
            runner, self._to_tensor(X, self.device_), episodes,
            self.inner_lr_, self.n_inner_steps_test, self.transductive,
            adapt_body=self._adapt_body(),
        )
        mean, ci95 = confidence_interval(accuracies)
        return FewShotResult(mean=mean, ci95=ci95, accuracies=accuracies, shape=shape)

    def score(self, X, y, sample_weight=None):
        """Mean few-shot accuracy over ``n_eval_episodes`` episodes of ``(X, y)``.

        Unlike most classifiers' ``score``, this is not the accuracy of
        ``predict(X)``: it is the mean query accuracy of episodes drawn from
        the classes of ``(X, y)``, each adapted from the meta-learned
        initialisation (see :meth:`evaluate`). With class-disjoint splits
        (e.g. ``GroupKFold`` with ``groups=y``) this measures how well the
        meta-learned initialisation adapts to unseen classes, which is what
        cross-validation and grid search of a meta-learner should compare.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Examples.
        y : array-like of shape (n_samples,)
            Their labels.
        sample_weight : None
            Not supported; present for API compatibility.

        Returns
        -------
        score : float
            Mean few-shot accuracy.
        """
        if sample_weight is not None:
            raise ValueError("score does not support sample_weight; pass None.")
        return self.evaluate(X, y).mean

    # -------------------------------------------------------------- pickling
    def __getstate__(self):
        state = super().__getstate__()
        if state.get("task_model_") is not None:
            state["task_model_"] = copy.deepcopy(state["task_model_"]).to("cpu")
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if getattr(self, "task_model_", None) is not None and hasattr(self, "device_"):
            if self.device_.type == "cuda" and torch.cuda.is_available():
                self.task_model_.to(self.device_)
            elif self.device_.type == "cuda":
                self.device_ = torch.device("cpu")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        return tags
