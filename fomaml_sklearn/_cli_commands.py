"""What the ``fomaml-sklearn`` commands do: ``train``, ``evaluate`` and ``predict``.

:mod:`fomaml_sklearn.cli` parses the command line and calls :func:`cmd_train`,
:func:`cmd_evaluate` or :func:`cmd_predict` with the parsed arguments. Data
sets are named as in :func:`fomaml_sklearn.datasets.load_data`; model files
are those of :mod:`fomaml_sklearn.persistence`, holding a
:class:`~fomaml_sklearn.FOMAMLClassifier` (a regressor's file is refused).
torch is imported only when a command runs.
"""

import contextlib
import csv
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from . import presets
from ._cli_help import DEFAULT_MODEL, PROG
from .datasets import load_data

__all__ = ["CommandError", "RESUME_FIXED", "cmd_evaluate", "cmd_predict", "cmd_train",
           "load_model", "model_image_shape"]


class CommandError(Exception):
    """A problem with the command line's input, reported as one line."""



def load_model(path):
    """Load a model file written by ``fomaml-sklearn train``.

    Parameters
    ----------
    path : str or path-like
        A safe model file (:func:`fomaml_sklearn.persistence.save_model`).
        Its checksum and format version are checked; nothing in it is run,
        and pickles (joblib files) are refused, never unpickled.

    Returns
    -------
    clf : FOMAMLClassifier
        The fitted estimator (meta-trained; adapt it before ``predict``).

    Raises
    ------
    CommandError
        If the file is missing, corrupted, of a newer format, a pickle or
        otherwise not a model file, holds another estimator than a
        :class:`~fomaml_sklearn.FOMAMLClassifier` (a
        :class:`~fomaml_sklearn.FOMAMLRegressor` is for Python only), or
        safetensors is not installed: one line saying which and what to do.
    """
    from .persistence import load_model as load

    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise CommandError(f"{path} is a folder, not a model file")
        raise CommandError(f"model file {path} not found (train one with '{PROG} train -o "
                           f"{path}')")
    try:
        model = load(path)
    except (ImportError, OSError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    from .classifier import FOMAMLClassifier

    if not isinstance(model, FOMAMLClassifier):
        # Checked before any data is read or anything is written: the file stays as is.
        kind = type(model).__name__
        raise CommandError(
            f"{path} holds a {kind}; the command line serves FOMAMLClassifier files "
            f"(few-shot classification); use {kind}.load({str(path)!r}) in Python"
        )
    return model


def _save_model(clf, path):
    """Write ``clf`` as a safe model file (atomically: written aside, then renamed)."""
    from .persistence import save_model

    save_model(clf, Path(path).expanduser())


def _require_safetensors():
    """Fail before any training when model files cannot be written."""
    from .persistence import safetensors_module

    try:
        safetensors_module()
    except ImportError as exc:
        raise CommandError(str(exc)) from exc


def _check_output(path, option="--output", example=DEFAULT_MODEL):
    """Check that ``path`` can be written, before any work.

    Refuses a folder, creates the parent folder if needed, and writes then
    deletes a temporary file there, so that a read-only folder is reported
    now rather than after meta-training or predicting.
    """
    target = Path(path).expanduser()
    if target.is_dir():
        raise CommandError(f"{option} {path} is a folder; give a file name, such as "
                           f"{Path(path) / example}")
    folder = target.resolve().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot create the folder {folder} for {option} {path}: "
                           f"{exc.strerror or exc}") from exc
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".write-test",
                                     dir=folder)
    except OSError as exc:
        raise CommandError(f"cannot write {option} {path}: the folder {folder} is not "
                           f"writable ({exc.strerror or exc}); choose another {option}"
                           ) from exc
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)
        os.remove(probe)
    if target.exists() and not os.access(target, os.W_OK):
        raise CommandError(f"cannot write {option} {path}: the file is read-only; choose "
                           f"another {option} or make it writable")


def model_image_shape(clf):
    """Return ``(channels, height, width)`` of the images a model takes, or None.

    Parameters
    ----------
    clf : FOMAMLClassifier
        A fitted model.

    Returns
    -------
    shape : tuple of int or None
        The shape :func:`~fomaml_sklearn.backbones.image_shape` resolves for
        ``n_features_in_`` from the model's ``input_shape_`` (fit records the
        given or the backbone's image shape there; a square single-channel
        image when it is None: digits are 8x8); None when the features are
        not such an image.
    """
    from .backbones import image_shape

    try:
        return image_shape(clf.n_features_in_, clf.input_shape_)
    except ValueError:
        return None


def _image_options(clf, model_path):
    """Image side and channels for folder/Omniglot data fed to ``clf``."""
    shape = model_image_shape(clf)
    if shape is None or shape[0] not in (1, 3) or shape[1] != shape[2]:
        raise CommandError(
            f"the model in {model_path} takes {clf.n_features_in_} features, not square "
            "grayscale or RGB images; it can only be used from Python"
        )
    return shape[1], shape[0]


def _check_features(clf, X, model_path, description):
    n = int(np.prod(X.shape[1:]))
    if n != clf.n_features_in_:
        shape = model_image_shape(clf)
        what = "x".join(map(str, shape)) + " images" if shape else "rows"
        raise CommandError(
            f"the model in {model_path} takes {clf.n_features_in_} features ({what}) but "
            f"{description} has {n}; use data of the kind it was trained on"
        )


def _default_ways(spec, y, ways):
    if ways is not None:
        return ways
    if spec == "digits":
        return 3
    return min(5, len(np.unique(y)))


# The estimator's defaults of the image options, for presets without them.
IMAGE_DEFAULTS = {"augment_shift": 0, "test_shift": 0}
# train's options that a preset fills when they are not given: option -> parameter.
PRESET_OPTIONS = {"head": "head", "shots": "k_shot", "queries": "n_query",
                  "meta_batch_size": "meta_batch_size", "inner_lr": "inner_lr",
                  "inner_steps": "n_inner_steps", "inner_steps_test": "n_inner_steps_test",
                  "augment_shift": "augment_shift", "test_shift": "test_shift", "lr": "lr"}


def train_configuration(args, y):
    """The estimator parameters and callbacks of ``train``: the preset
    (``--preset``, else ``omniglot`` for Omniglot and ``tabular`` for other
    data), overridden by the options given. A preset's cosine schedule
    anneals over its epochs, or over ``--minutes`` (``TimeCosineLR``)."""
    from .callbacks import TimeCosineLR, TimeLimit

    name = args.preset or ("omniglot" if args.data == "omniglot" else "tabular")
    preset = presets.PRESETS[name]
    # The whole preset (no key of it is dropped), then the options given.
    params = {**IMAGE_DEFAULTS, **preset}
    params.update({param: getattr(args, option) for option, param in PRESET_OPTIONS.items()
                   if getattr(args, option) is not None})
    params["module"] = args.module or (preset["module"] if args.preset or args.data == "omniglot"
                                       else "mlp" if args.data == "digits" else "conv4")
    if args.preset or args.data == "omniglot":
        default_ways = preset["n_ways"]
    else:
        default_ways = _default_ways(args.data, y, None)
    params["n_ways"] = args.ways or min(default_ways, len(np.unique(y)))
    if params["inner_lr"] != "auto":
        params["inner_lr"] = float(params["inner_lr"])
    params["meta_batches_per_epoch"] = (args.meta_batches_per_epoch
                                        or preset.get("meta_batches_per_epoch", 100))
    schedule = preset.get("lr_schedule", "constant")
    callbacks = None
    if args.minutes is not None:
        params["max_epochs"] = args.epochs if args.epochs is not None else 100_000
        callbacks = [TimeLimit(args.minutes)]
        if schedule == "cosine" and args.epochs is None:  # anneal over the time budget
            callbacks.append(TimeCosineLR(args.minutes))
            schedule = "constant"
    else:
        params["max_epochs"] = args.epochs if args.epochs is not None else preset.get(
            "max_epochs", 10)
    params["lr_schedule"] = schedule
    return name, params, callbacks


# ----------------------------------------------------------------- commands
def _info(args, message):
    # Under torchrun only rank 0 reports (RANK is set before the group exists).
    if not args.quiet and os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)


# Options that describe the model: --resume keeps the saved model's.
RESUME_FIXED = ("preset", "module", "algorithm", "head", "ways", "shots", "queries",
                "meta_batch_size", "inner_lr", "inner_steps", "inner_steps_test",
                "transductive", "lr", "device", "precision", "seed", "image_size")


def _resumed_model(args, max_epochs, callbacks, verbose):
    """Load ``--resume MODEL`` and its training data, ready for a warm-start fit.

    A model saved with ``lr_schedule="cosine"`` anneals over the new
    ``--epochs``, or with ``--minutes`` alone over the time budget
    (``TimeCosineLR``; the model keeps ``"cosine"`` in its file)."""
    from ._estimator import attach_net
    from .callbacks import TimeCosineLR

    changed = [option for dest, (default, option) in sorted(args.resume_fixed.items())
               if getattr(args, dest) != default]
    if changed:
        raise CommandError(
            f"--resume continues with the settings saved in {args.resume}, so "
            f"{', '.join(changed)} cannot be given with it; drop "
            f"{'it' if len(changed) == 1 else 'them'}, or train a new model without "
            "--resume"
        )
    clf = load_model(args.resume)
    image_size, channels = (8, 1) if args.data == "digits" else _image_options(clf,
                                                                               args.resume)
    X, y, description = load_data(args.data, "train", data_home=args.data_home,
                                  offline=args.offline, image_size=image_size,
                                  channels=channels, ink=args.ink)
    _check_features(clf, X, args.resume, description)
    _apply_test_shift(clf, args)
    saved = {"warm_start": clf.warm_start, "lr_schedule": clf.lr_schedule}
    if clf.lr_schedule == "cosine" and args.minutes is not None and args.epochs is None:
        callbacks = [*(callbacks or []), TimeCosineLR(args.minutes)]
        clf.set_params(lr_schedule="constant")
    clf.set_params(
        warm_start=True,
        max_epochs=max_epochs,
        meta_batches_per_epoch=args.meta_batches_per_epoch or clf.meta_batches_per_epoch,
        callbacks=callbacks,
        verbose=verbose,
    )
    # A new skorch net with these callbacks: a fresh Adam (its moments are not in
    # the file) and a new episode generator, around the saved meta-parameters.
    attach_net(clf)
    return clf, X, y, description, saved


def cmd_train(args):
    """Run ``train``: meta-train on a data set and save the model.

    With ``--resume MODEL``, meta-training continues from the saved model's
    meta-parameters, with its settings (a warm-start ``fit``); the optimizer
    moments and the episode generator restart, as a model file has none.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line.

    Returns
    -------
    code : int
        0 on success.
    """
    from .callbacks import TimeLimit
    from .classifier import FOMAMLClassifier
    from .distributed import launch_with_torchrun, world

    output = args.output or args.resume or DEFAULT_MODEL
    _check_output(output)
    _require_safetensors()
    if args.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        return launch_with_torchrun(args.nproc_per_node, args.argv)
    if args.resume:
        max_epochs = args.epochs if args.epochs is not None else (
            100_000 if args.minutes is not None else 10)
        callbacks = [TimeLimit(args.minutes)] if args.minutes is not None else None
        clf, X, y, description, saved = _resumed_model(args, max_epochs, callbacks,
                                                       0 if args.quiet else 1)
        previous = clf.n_meta_steps_
        _info(args, f"Resuming {args.resume} ({previous} meta-steps so far): meta-training "
                    f"the {clf.module} network on {description}, {len(np.unique(y))} "
                    f"classes, {len(y)} examples.")
    else:
        X, y, description = load_data(args.data, "train", data_home=args.data_home,
                                      offline=args.offline, image_size=args.image_size,
                                      ink=args.ink)
        preset, params, callbacks = train_configuration(args, y)
        _info(args, f"Meta-training the {params['module']} network on {description}: "
                    f"{len(np.unique(y))} classes, {len(y)} examples; preset {preset!r}.")
        clf = FOMAMLClassifier(
            **params,
            algorithm=args.algorithm,
            transductive=args.transductive,
            precision=args.precision,
            adapt_on_fit=False,  # adapting to thousands of training classes is costly
            device=args.device,
            callbacks=callbacks,
            random_state=args.seed,
            verbose=0 if args.quiet else 1,
        )
        previous = 0
    start = time.perf_counter()
    # Progress and skorch's table go to stderr: stdout carries only the result.
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
        # Its advice (warm_start=True) is for Python; the command line's is below.
        warnings.filterwarnings("ignore", message="Meta-training was interrupted",
                                category=UserWarning)
        clf.fit(X, y)
    seconds = time.perf_counter() - start
    interrupted = getattr(clf.net_, "interrupted_", False)
    n_steps = clf.n_meta_steps_ - previous  # fit counts over all warm-started runs
    if args.resume:
        clf.set_params(**saved)  # as saved: a later fit starts afresh, with its schedule
    if world()[0] != 0:  # every rank holds the same model; rank 0 writes it
        return 0
    _save_model(clf, output)
    s = clf.episode_shape_
    total = f" ({clf.n_meta_steps_} in total)" if args.resume else ""
    _info(args, f"Meta-trained for {n_steps} {'more ' if args.resume else ''}meta-steps"
                f"{total} of {clf.meta_batch_size} {s.n_ways}-way {s.k_shot}-shot tasks "
                f"in {seconds:.1f} s ({clf.device_}, {clf.precision_}).")
    if interrupted:
        data, same = ("", "") if args.data == "digits" else (
            f" {args.data}", " (with the same data options)")
        print(f"{PROG}: warning: meta-training was interrupted; the model of the last "
              f"completed meta-step is saved. Continue with: {PROG} train{data} "
              f"--resume {output}{same}", file=sys.stderr)
    print(f"Saved the model to {output}")
    return 0


def _apply_test_shift(clf, args):
    """``--test-shift PX`` of evaluate and predict: overrides the model's."""
    if args.test_shift is not None:
        clf.set_params(test_shift=args.test_shift)


def cmd_evaluate(args):
    """Run ``evaluate``: print the episodic few-shot accuracy of a saved model.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line.

    Returns
    -------
    code : int
        0 on success.
    """
    clf = load_model(args.model)
    if args.data == "digits":
        image_size, channels = 8, 1
    else:
        image_size, channels = _image_options(clf, args.model)
    X, y, description = load_data(args.data, "test", data_home=args.data_home,
                                  offline=args.offline, image_size=image_size,
                                  channels=channels, ink=args.ink)
    _check_features(clf, X, args.model, description)
    _apply_test_shift(clf, args)
    n_ways = _default_ways(args.data, y, args.ways)
    _info(args, f"Evaluating {args.model} on {description}: {len(np.unique(y))} classes, "
                f"{len(y)} examples.")
    result = clf.evaluate(X, y, n_ways=n_ways, k_shot=args.shots, n_query=args.queries,
                          n_episodes=args.episodes, random_state=args.seed)
    s = result.shape
    ci = "n/a" if np.isnan(result.ci95) else f"{100 * result.ci95:.2f}"
    print(f"{s.n_ways}-way {s.k_shot}-shot: {100 * result.mean:.2f} +- {ci} % "
          f"({len(result.accuracies)} episodes)")
    return 0


def cmd_predict(args):
    """Run ``predict``: adapt to a support folder and label query images.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line.

    Returns
    -------
    code : int
        0 on success.
    """
    from .datasets import apply_ink, load_image_folder, load_images

    if args.output:  # before any work: a bad path fails now, not after predicting
        _check_output(args.output, example="predictions.csv")
    clf = load_model(args.model)
    _apply_test_shift(clf, args)
    size, channels = _image_options(clf, args.model)
    X_support, y_support = load_image_folder(args.support, image_size=size,
                                             channels=channels, return_X_y=True)
    query = load_images(args.query, image_size=size, channels=channels)
    X_query, files = query.data, query.filenames
    # One decision for both sets (from the labelled ones), so they match.
    _, inverted = apply_ink(X_support, args.ink)
    if inverted:
        X_support, X_query = 1.0 - X_support, 1.0 - X_query
    classes = np.unique(y_support)
    _info(args, f"Adapting to {len(classes)} classes ({', '.join(classes)}) from "
                f"{len(y_support)} support images ({size}x{size}"
                f"{', inverted' if inverted else ''}); predicting {len(files)} images.")
    clf.adapt(X_support, y_support)
    proba = clf.predict_proba(X_query)
    labels = clf.classes_[proba.argmax(axis=1)]
    if args.output:
        out = open(Path(args.output).expanduser(), "w", newline="", encoding="utf-8")
    else:
        out = contextlib.nullcontext(sys.stdout)
    with out as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "label", "probability"])
        for path, label, p in zip(files, labels, proba.max(axis=1)):
            writer.writerow([path, label, f"{p:.4f}"])
    if args.output:
        _info(args, f"Wrote {len(files)} predictions to {args.output}")
    return 0
