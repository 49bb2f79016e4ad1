"""The scikit-learn estimator: :class:`FOMAMLClassifier`."""

import warnings

import numpy as np
import torch
from sklearn.base import ClassifierMixin
from sklearn.preprocessing import LabelEncoder
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data
from torch.nn import functional as F

from ._codecs import Labels
from ._config import TASK_BATCHING
from ._constraints import (
    Bool,
    Either,
    Int,
    NoneOr,
    Options,
    RandomState,
    Real,
    check_params,
)
from ._estimator import COMMON_PARAMS, SAVED_FIELDS, MetaEstimatorBase, flatten_images
from .episodes import resolve_episode_shape
from .evaluation import (
    FewShotResult,
    confidence_interval,
    episodic_accuracies,
)
from .heads import HEADS

__all__ = ["FOMAMLClassifier"]


class FOMAMLClassifier(ClassifierMixin, MetaEstimatorBase):
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
    algorithm : str or MetaAlgorithm, default="fomaml"
        The meta-learning rule (:mod:`fomaml_sklearn.algorithms`), by name or
        as an instance whose options are then searchable like any other
        parameter (``algorithm__prototype_gradient``, ``algorithm__lam``).
        ``"fomaml"``: the query gradient at the adapted parameters (option
        ``prototype_gradient``). ``"maml"``: the exact second-order
        meta-gradient, differentiating through the inner steps.
        ``"reptile"``: the direction ``theta - phi`` after ``n_inner_steps``
        steps on all of a task's examples, fed to the meta-optimizer.
        ``"anil"`` / ``"fo-anil"``: only the head adapts in the inner loop
        (also in ``adapt``), second or first order. ``"imaml"``: the implicit
        gradient of a proximal inner problem (options ``lam``,
        ``cg_steps``). ``"metasgd"``: Meta-SGD, per-parameter inner rates
        meta-learned beside the network (kept in model files, not in
        ``get_params``). ``algorithm_`` holds the rule used, its ``"auto"``
        options resolved.
    head : {"prototype", "cosine", "shared", "fixed"}, default="prototype"
        Initialisation of the task head, which has one row per class, so a
        task may have any number of classes. ``"prototype"``: rows from the
        support-class mean embeddings (Proto-MAML); with ``"fomaml"`` the
        head's query gradient can also flow back through the prototypes into
        the body (the rule's ``prototype_gradient`` option). ``"cosine"``:
        the same, on features scaled to a learnt norm, so that classes are
        ranked by cosine similarity at a learnt scale (the network gains one
        parameter, ``log_scale``; measured best on Omniglot's within-alphabet
        task, ``presets.OMNIGLOT_WITHIN_ALPHABET``). ``"shared"``:
        one meta-learned row copied for every class (under cross-entropy
        this is a zero-initialised head).
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
    augment_shift : int, default=0
        Augment the meta-training episodes: every support and query image
        moves by a random whole number of pixels, up to ``augment_shift`` in
        each direction (border pixels fill the gap). Needs images: a
        ``"conv4"`` backbone, 4-D ``X`` or ``input_shape``, and at most
        ``min(height, width) - 2`` pixels (a larger shift leaves nothing of
        an image). Validation episodes, ``adapt`` and ``predict`` see the
        images as they are.
    test_shift : int, default=0
        Test-time augmentation: ``adapt`` fine-tunes on the support images
        together with copies of them moved by every offset ``(dy, dx)`` with
        ``|dy| + |dx| <= test_shift`` pixels (5 copies at 1, 13 at 2), and
        ``predict_proba`` averages each example's probabilities over the same
        copies of it; ``evaluate`` and ``score`` do both. Still
        non-transductive (each query is classified on its own), at that many
        times the cost of adapting and predicting. Read when adapting and
        predicting, so it can be set after ``fit`` (and checked then).
        Needs images, and at most ``min(height, width) - 2``, as
        ``augment_shift`` does.
    inner_lr : float or "auto", default="auto"
        Inner-loop SGD rate (alpha). ``"auto"``: 0.01 with the prototype head
        (which starts close to a good classifier: larger rates made the
        test-time steps collapse some 5-shot episodes, see
        ``docs/design.md``) and 0.4, the MAML paper's Omniglot value, with
        the ``"shared"`` and ``"fixed"`` heads.
    n_inner_steps : int, default=1
        Inner SGD steps during meta-training.
    n_inner_steps_test : int, default=3
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
        Meta-steps per epoch. Meta-training takes
        ``max_epochs * meta_batches_per_epoch`` meta-steps.
    n_eval_episodes : int, default=100
        Episodes drawn by ``score``, and validation episodes per epoch.
    validation_fraction : float or None, default=None
        Hold out this fraction of the classes of ``y`` (whole classes, at
        least 2) for validation: after every epoch, ``n_eval_episodes`` fixed
        episodes of those unseen classes are adapted to and scored, recorded
        as ``valid_acc`` (few-shot accuracy) and ``valid_loss`` in
        ``history_``, so skorch's ``EarlyStopping(monitor="valid_acc",
        lower_is_better=False)`` or ``Checkpoint(monitor="valid_acc_best",
        load_best=True)`` can use them. With ``fit``'s ``groups``, whole
        groups are held out (at least one), and a validation task takes its
        classes from one group, as the training tasks do. Ignored when
        ``fit`` gets explicit ``X_val, y_val``. ``None``: no validation.
    transductive : bool, default=False
        If True, BatchNorm normalises queries with their own batch statistics,
        as in the MAML paper's experiments; predictions then depend on the
        other samples of the batch. If False, the support statistics are used.
    statistics_gradient : {"auto", True, False}, default="auto"
        Whether the meta-gradient runs through the support set's BatchNorm
        statistics, which normalise the queries and the prototypes (True), or
        holds them constant (False). Predictions are the same either way;
        True costs up to 1.45x per meta-step and learnt faster per meta-step
        with convolutions (+4 points within alphabets at 200 meta-steps) but
        slower with BatchNorm over flat features. ``"auto"``: True for
        backbones with convolutions, False for BatchNorm over flat features
        (:func:`~fomaml_sklearn.backbones.statistics_gradient_auto`; see
        ``docs/design.md``).
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Precision of the forward passes (``torch.autocast``); parameters and
        SGD updates stay float32. ``"auto"`` takes bfloat16 where the hardware
        runs it fast (CPUs with AMX or AVX512-BF16, bf16-capable GPUs) and
        float32 elsewhere; ``precision_`` says which was used.
    task_batching : {"auto", "loop", "threads", "grouped"}, default="auto"
        How the tasks of a meta-batch run in meta-training. ``"loop"``: one
        task after the other, each kernel on torch's intra-op threads.
        ``"threads"`` (CPU): the tasks on ``torch.get_num_threads()`` threads,
        one intra-op thread each; the same arithmetic whatever the number of
        threads (bitwise the loop's with one thread), for rules whose tasks
        may run at once (all built-in rules but iMAML). ``"grouped"``: all
        tasks at once through the rule's batched path (FOMAML with the
        ``"mlp"`` and ``"conv4"`` backbones; the same meta-gradient, more
        memory). ``"auto"``: grouped on a GPU where the rule supports it
        (many tiny per-task kernels leave a GPU idle), threads on a CPU where
        the rule allows them and the backbone is a built-in one (a module of
        your own may draw random numbers, whose order threads would change),
        else the loop (measured in ``docs/performance.md``);
        ``task_batching_`` says which ran.
    adapt_on_fit : bool, default=True
        Adapt to all classes of ``y`` at the end of ``fit``, so that
        ``predict`` works straight away. The adaptation uses at most 1024
        examples of ``(X, y)``, the same number from every class (drawn with
        ``random_state``), so its memory does not grow with ``len(X)``; with
        more than 1024 classes it is skipped with a warning. If it fails
        (for example out of memory), ``fit`` keeps the meta-trained model and
        warns. Set to False when meta-training on many classes only to call
        ``adapt`` later.
    warm_start : bool, default=False
        If True and the estimator is already meta-trained, ``fit`` continues
        from the current meta-parameters and meta-optimizer state (and the
        episode generator) for another ``max_epochs`` epochs, instead of
        starting afresh. The data must have the same features; the network
        (``module``, backbone options, ``head``), ``device``, optimizer and
        callbacks of the first ``fit`` are kept, while the episode shape, the
        inner-loop settings and the meta rate follow the current parameters:
        each warm ``fit`` starts at ``lr`` and, with ``lr_schedule="cosine"``,
        anneals it over its own ``max_epochs * meta_batches_per_epoch``
        meta-steps (the optimizer's state, e.g. Adam's moments, carries on).
    device : {"auto", "cpu", "cuda"} or str, default="auto"
        Where the network runs; ``"auto"`` takes a GPU if there is one.
    callbacks : list of skorch callbacks or None, default=None
        Extra skorch callbacks for meta-training (e.g. ``EarlyStopping``,
        ``Checkpoint``, ``LRScheduler``); they are copied, never changed.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialisation and the episodes. With an int (or a
        RandomState), ``fit`` is reproducible and leaves the global numpy
        and torch generators untouched. With None, as everywhere in
        scikit-learn, the seeds are drawn from numpy's global generator
        (which advances it).
    verbose : int, default=0
        0: silent. 1: a progress bar and skorch's per-epoch table.

    Notes
    -----
    Interrupting ``fit`` with Ctrl-C (``KeyboardInterrupt``) ends
    meta-training, as in skorch, with a warning: the estimator keeps the
    meta-parameters of the last completed meta-step and is usable.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The classes of the current task (those of ``y`` after ``fit``, of
        ``y_support`` after ``adapt``).
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (``n_features_in_``,)
        Names of features seen during ``fit``; only when ``X`` has them.
    episode_shape_ : EpisodeShape
        The episode shape used for meta-training.
    net_ : skorch.NeuralNet
        The internal skorch net; ``net_.module_`` holds the meta-parameters.
    history_ : skorch.History
        Per-epoch and per-meta-batch records (``train_loss``: mean query loss,
        ``train_query_acc``: mean query accuracy after adaptation, ``dur``;
        with validation data also ``valid_loss`` and ``valid_acc``).
    n_meta_steps_ : int
        Meta-steps (outer updates) taken, over all ``fit`` calls of a warm
        start.
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
    task_batching_ : str
        ``"loop"``, ``"threads"`` or ``"grouped"``, the task batching used
        in ``fit``.
    algorithm_ : MetaAlgorithm
        The rule used, its ``"auto"`` options resolved (for example
        ``algorithm_.prototype_gradient``).
    config_ : MetaConfig
        Every resolved setting of meta-training and adaptation.
    input_shape_ : tuple of int or None
        ``(channels, height, width)`` of an image for convolutional
        backbones (given or inferred), else None.

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
        augment_shift=0,
        test_shift=0,
        inner_lr="auto",
        n_inner_steps=1,
        n_inner_steps_test=3,
        optimizer="adam",
        lr=1e-3,
        optimizer_params=None,
        lr_schedule="constant",
        max_epochs=10,
        meta_batches_per_epoch=100,
        n_eval_episodes=100,
        validation_fraction=None,
        transductive=False,
        statistics_gradient="auto",
        precision="auto",
        task_batching="auto",
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
        self.head = head
        self.n_ways = n_ways
        self.k_shot = k_shot
        self.n_query = n_query
        self.meta_batch_size = meta_batch_size
        self.augment_shift = augment_shift
        self.test_shift = test_shift
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
        self.transductive = transductive
        self.statistics_gradient = statistics_gradient
        self.precision = precision
        self.task_batching = task_batching
        self.adapt_on_fit = adapt_on_fit
        self.warm_start = warm_start
        self.device = device
        self.callbacks = callbacks
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ checks
    # Every parameter's constraint, checked at the start of fit (one table;
    # ``module``, ``algorithm``, ``optimizer`` and ``device`` have their own
    # checks below, since what they accept is richer).
    _PARAM_TABLE = {
        **COMMON_PARAMS,
        "head": Options(*HEADS),
        "n_ways": Int(2),
        "augment_shift": Int(0),
        "test_shift": Int(0),
        "inner_lr": Either(Options("auto"), Real(0.0)),
        "transductive": Bool(),
        "statistics_gradient": Either(Options("auto"), Bool()),
        "task_batching": Options(*TASK_BATCHING),
    }

    def _validate_Xy(self, X, y, reset, what="X"):
        X, image_shape = flatten_images(X)
        X, y = validate_data(self, X, y, reset=reset, dtype=np.float32)
        if not reset:
            self._check_layout(image_shape, what)
        if getattr(y, "dtype", None) is not None and y.dtype.kind == "O":
            kinds = {type(v).__name__ for v in np.asarray(y).ravel()}
            if kinds & {"str", "str_"} and kinds - {"str", "str_"}:
                raise ValueError(
                    f"y mixes labels of different types ({', '.join(sorted(kinds))}); use "
                    "one type for all labels, e.g. y.astype(str)."
                )
        check_classification_targets(y)
        encoder = LabelEncoder().fit(y)
        codes = encoder.transform(y)
        return X, codes, encoder.classes_, image_shape

    # --------------------------------------------------------------------- fit
    def fit(self, X, y, groups=None, *, X_val=None, y_val=None):
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
        groups : array-like of shape (n_samples,) or None, default=None
            Families of classes (the alphabet of each character, say): every
            class lies in one group, and each meta-training task takes all
            its classes from one group (drawn in proportion to its classes;
            groups with fewer than ``n_ways`` classes are not drawn, with a
            warning that counts their classes). Harder
            tasks, for telling apart classes that look alike (on Omniglot's
            within-alphabet task, measured in ``docs/performance.md``).
            ``None``: tasks draw from all classes. Routed by scikit-learn's
            metadata routing (``set_fit_request(groups=True)``).
        X_val : array-like of shape (n_val_samples, n_features) or None, default=None
            Validation examples, normally of classes not in ``y``: after every
            epoch the meta-learner adapts to ``n_eval_episodes`` fixed episodes
            of them and records ``valid_acc`` and ``valid_loss`` in
            ``history_``. Takes precedence over ``validation_fraction``.
        y_val : array-like of shape (n_val_samples,) or None, default=None
            Labels of ``X_val``; at least 2 classes.

        Returns
        -------
        self : FOMAMLClassifier
            The fitted estimator.

        Raises
        ------
        ValueError
            For invalid parameters or data (naming them), and when a
            meta-step's loss or meta-gradient, or the final meta-parameters,
            are not finite (NaN or infinite): the message suggests scaling
            ``X`` or a lower ``lr`` or ``inner_lr``. A failed ``fit`` leaves
            the estimator (fitted or not) exactly as it was.
        """
        return self._fit_on_copy(X, y, groups, X_val, y_val)

    # fit's groups (families of classes) are not requested by default: with
    # metadata routing on, GridSearchCV(..., cv=GroupKFold()).fit(X, y,
    # groups=y) keeps giving groups to the splitter alone, as without it.
    # set_fit_request(groups=True) routes them to fit as well.
    __metadata_request__fit = {"groups": False}

    _loss = staticmethod(F.cross_entropy)
    _head = property(lambda self: self.head)
    _network_params_hint = "hidden_layer_sizes, n_filters, input_shape, head, n_ways"
    # Saved in model files: the common fitted fields and the class labels.
    _saved_fields = {**SAVED_FIELDS, "classes_": Labels()}

    def _n_task_outputs(self):
        return len(self.classes_)

    def _fit(self, X, y, groups, X_val, y_val, warm, device):
        optimizer_cls = self._check_params()
        X, codes, classes, image_shape = self._validate_Xy(X, y, reset=not warm)
        class_groups = None if groups is None else self._class_groups(groups, codes, classes)
        self._check_input_shape(X, image_shape)
        seeds = self._draw_seeds(self.random_state)
        train_mask, valid = self._validation_data(
            codes, classes, X, X_val, y_val, np.random.default_rng(seeds["split"]),
            class_groups)
        self._check_validation_callbacks(valid is not None)
        train_classes, train_codes = np.unique(codes[train_mask], return_inverse=True)
        shape = self._episode_shape(train_codes, classes[train_classes])
        train_groups = None if class_groups is None else class_groups[train_classes]
        if train_groups is not None:
            self._warn_small_groups(train_groups, shape.n_ways)
        valid_groups = None
        if valid is not None:
            X_valid, valid_codes, valid_names, valid_groups = valid
            valid = (X_valid, valid_codes, self._validation_shape(
                valid_codes, valid_names, valid_groups), None)
        X_t = self._meta_train(X=X, image_shape=image_shape, train_mask=train_mask,
                               fit_labels=train_codes, shape=shape, valid=valid,
                               n_rows=shape.n_ways, warm=warm, device=device, seeds=seeds,
                               optimizer_cls=optimizer_cls,
                               class_groups=train_groups,
                               valid_class_groups=valid_groups)
        self.classes_ = classes
        if self.adapt_on_fit:
            self._adapt_on_fit(X_t, codes, classes, np.random.default_rng(seeds["adapt"]))

    def _class_groups(self, groups, codes, classes):
        """The group code of each class code, from fit's ``groups``; every
        class must lie in one group."""
        group_codes, names = self._group_codes(groups, len(codes), label="group")
        pairs = np.unique(np.stack([codes, group_codes]), axis=1)
        if pairs.shape[1] != len(classes):
            first = pairs[0][np.flatnonzero(np.diff(pairs[0]) == 0)[0]]
            in_groups = names[pairs[1][pairs[0] == first]]
            raise ValueError(
                f"groups puts class {classes[first:first + 1].tolist()[0]!r} in "
                f"{len(in_groups)} groups "
                f"({', '.join(map(repr, in_groups[:3].tolist()))}); each class must lie in "
                "one group (a family of classes, such as an alphabet). Give all samples of "
                "a class the same group.")
        class_groups = np.empty(len(classes), dtype=np.int64)
        class_groups[pairs[0]] = pairs[1]
        return class_groups

    @staticmethod
    def _warn_small_groups(class_groups, n_ways):
        """Warn when groups of fewer than ``n_ways`` meta-training classes
        leave classes out of every task (the sampler never draws them)."""
        sizes = np.bincount(class_groups)
        small = (sizes > 0) & (sizes < n_ways)
        if small.any() and (sizes >= n_ways).any():  # else the sampler refuses them all
            warnings.warn(
                f"groups: {small.sum()} of {(sizes > 0).sum()} groups hold fewer than "
                f"n_ways={n_ways} of the meta-training classes, so their "
                f"{sizes[small].sum()} classes (of {len(class_groups)}) are in no "
                "meta-training task. Merge the small groups or lower n_ways to train on "
                "them.", UserWarning, stacklevel=5)

    def _adapt_on_fit(self, X_t, codes, classes, rng):
        """Adapt to all the classes of ``y`` in bounded memory; never lose the
        meta-training to a failure here."""
        n_classes = len(classes)
        if n_classes > self._fit_adapt_max_samples:
            warnings.warn(
                f"adapt_on_fit: y has {n_classes} classes, more than the "
                f"{self._fit_adapt_max_samples} examples the final adaptation uses at most, so "
                "fit did not adapt to them; the estimator is meta-trained. Call "
                "adapt(X_support, y_support) with the classes to predict, or pass "
                "adapt_on_fit=False to silence this.", UserWarning, stacklevel=5)
            return
        keep = self._fit_adapt_sample(len(codes), codes, rng)

        def adapt():
            index = torch.as_tensor(keep, device=X_t.device)
            self._adapt_codes(X_t[index], codes[keep], classes)

        self._adapt_safely(adapt, f"the {n_classes} classes of y")

    def _episode_shape(self, codes, class_names, what=None, n_ways=None):
        """The estimator's episode shape (``n_ways`` in place of the
        estimator's if given), shrunk (with a warning) to fit ``codes``."""
        counts = np.bincount(codes, minlength=len(class_names))
        shape, message = resolve_episode_shape(
            counts, self.n_ways if n_ways is None else n_ways, self.k_shot, self.n_query,
            class_names=class_names
        )
        self._warn_smaller_episodes(message, what)
        return shape

    def _validation_shape(self, codes, class_names, class_groups):
        """The validation episodes' shape; with groups, at most as many ways
        as the largest held-out group has classes (a task stays in a group)."""
        what = "in the validation episodes"
        if class_groups is None:
            return self._episode_shape(codes, class_names, what)
        largest = int(np.bincount(class_groups).max())
        shape = self._episode_shape(codes, class_names, what, n_ways=min(self.n_ways, largest))
        if largest < self.n_ways:
            self._warn_smaller_episodes(
                f"n_ways={self.n_ways} shrunk to {shape.n_ways}: the largest group held out "
                f"for validation has {largest} classes, and a validation task takes its "
                "classes from one group, as the training tasks do.", what)
        return shape

    def _validation_data(self, codes, classes, X, X_val, y_val, rng, class_groups=None):
        """Training mask and validation ``(X, codes, class names, class groups
        or None)`` or None. With ``class_groups`` (fit's ``groups``),
        ``validation_fraction`` holds out whole groups."""
        if (X_val is None) != (y_val is None):
            missing = "y_val" if y_val is None else "X_val"
            raise ValueError(
                f"{missing} is None but the other was given; pass both X_val and "
                "y_val for validation, or neither."
            )
        train_mask = np.ones(len(codes), dtype=bool)
        if X_val is not None:
            Xv, val_codes, val_classes, _ = self._validate_Xy(X_val, y_val, reset=False)
            if len(val_classes) < 2:
                raise ValueError(
                    f"y_val has {len(val_classes)} class; validation episodes need at "
                    "least 2 classes."
                )
            return train_mask, (Xv, val_codes, val_classes, None)
        if self.validation_fraction is None:
            return train_mask, None
        if class_groups is None:
            held_out = self._held_out_classes(len(classes), rng)
            valid_groups = None
        else:
            held_out = self._held_out_groups(class_groups, rng)
            valid_groups = np.unique(class_groups[held_out], return_inverse=True)[1]
        valid_mask = held_out[codes]
        val_codes = np.unique(codes[valid_mask], return_inverse=True)[1]
        return ~valid_mask, (X[valid_mask], val_codes, classes[held_out], valid_groups)

    def _held_out_classes(self, n_classes, rng):
        """``validation_fraction`` of the classes (at least 2), as a mask."""
        n_valid = max(2, int(round(self.validation_fraction * n_classes)))
        if n_classes - n_valid < 2:
            raise ValueError(
                f"validation_fraction={self.validation_fraction!r} holds out {n_valid} of "
                f"the {n_classes} classes, leaving fewer than 2 to meta-train on; lower "
                "it, pass X_val and y_val, or set it to None."
            )
        held_out = np.zeros(n_classes, dtype=bool)
        held_out[rng.permutation(n_classes)[:n_valid]] = True
        return held_out

    def _held_out_groups(self, class_groups, rng):
        """``validation_fraction`` of the groups (at least 1), whole, as a
        mask over the classes: validation then scores families of classes
        that meta-training never saw."""
        groups = np.unique(class_groups)
        n_valid = max(1, int(round(self.validation_fraction * len(groups))))
        held_out = np.isin(class_groups, rng.permutation(groups)[:n_valid])
        problem = None
        if n_valid >= len(groups):
            problem = f"all {len(groups)} groups, leaving none to meta-train on"
        elif held_out.sum() < 2:
            problem = (f"{n_valid} of the {len(groups)} groups, with {held_out.sum()} class; "
                       "validation episodes need at least 2 classes")
        elif (~held_out).sum() < 2:
            problem = (f"{n_valid} of the {len(groups)} groups, leaving "
                       f"{(~held_out).sum()} class to meta-train on")
        if problem:
            raise ValueError(
                f"validation_fraction={self.validation_fraction!r} with groups holds out "
                f"whole groups: {problem}. Change validation_fraction, pass X_val and y_val, "
                "or set it to None.")
        return held_out

    # ------------------------------------------------------------------- adapt
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
        X, codes, classes, _ = self._validate_Xy(X_support, y_support, reset=False,
                                                 what="X_support")
        if len(classes) < 2:
            raise ValueError(
                f"adapt needs a support set with at least 2 classes; y_support has "
                f"1 class ({classes[0]!r}). Add labelled examples of other classes."
            )
        self._adapt_codes(self._to_tensor(X, self.device_), codes, classes)
        return self

    def _adapt_codes(self, X_t, codes, classes):
        self._adapt_tensors(X_t, torch.as_tensor(codes, device=X_t.device), len(classes))
        self.classes_ = classes

    # ----------------------------------------------------------------- predict
    def _task_logits(self, X):
        return self._task_outputs(X, len(getattr(self, "classes_", ())))

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
        check_params({"n_ways": NoneOr(Int(2)), "k_shot": NoneOr(Int(1)),
                      "n_query": NoneOr(Int(1)), "n_episodes": NoneOr(Int(1)),
                      "random_state": NoneOr(RandomState())},
                     dict(n_ways=n_ways, k_shot=k_shot, n_query=n_query,
                          n_episodes=n_episodes, random_state=random_state))
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
        episodes = self._evaluation_episodes(codes, shape, n_episodes, random_state)
        runner, augment = self._runner(), self._test_augmentation()
        accuracies = episodic_accuracies(runner, self._to_tensor(X, self.device_), episodes,
                                         augment=augment)
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
