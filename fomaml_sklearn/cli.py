"""The ``fomaml-sklearn`` command line: ``train``, ``evaluate`` and ``predict``.

``fomaml-sklearn train [DATA]`` meta-trains a :class:`FOMAMLClassifier` and
saves it as a safe model file (:mod:`fomaml_sklearn.persistence`: tensors and
JSON under a checksum, loaded without running code from the file), and
``fomaml-sklearn train --resume MODEL`` continues meta-training a saved model;
``fomaml-sklearn evaluate MODEL [DATA]`` prints its episodic few-shot accuracy on
classes unseen in training;
``fomaml-sklearn predict MODEL SUPPORT QUERY`` adapts it to the classes of a
folder of labelled images and labels new images. ``python -m fomaml_sklearn``
runs the same program.

``DATA`` is ``digits`` (scikit-learn's 8x8 digits, embedded, the default),
``omniglot`` (fetched once into the data home) or a folder of images with one
subfolder per class. Errors are reported as one line on stderr with exit code
1 (2 for a mistyped command line); ``--debug`` shows the traceback instead.
"""

import argparse
import contextlib
import csv
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

__all__ = ["main", "build_parser", "CommandError"]

PROG = "fomaml-sklearn"
# fomaml_sklearn.heads.HEADS, spelled out so that --help does not import torch
# (a test checks that the two agree).
HEAD_CHOICES = ("prototype", "shared", "fixed")
DEFAULT_MODEL = "fomaml_model.fomaml"
BUILTIN_DATA = ("digits", "omniglot")

EPILOG = """\
examples:
  fomaml-sklearn train                     # digits 0-5, offline, ~30 s on a CPU
  fomaml-sklearn evaluate fomaml_model.fomaml          # 3-way 1-shot on digits 6-9
  fomaml-sklearn train omniglot --data-home ../shared/data --offline \\
      --minutes 5 -o omniglot.fomaml                   # the MAML paper's setup
  fomaml-sklearn evaluate omniglot.fomaml omniglot --data-home ../shared/data \\
      --offline --ways 5 --shots 1                     # 423 unseen characters
  fomaml-sklearn predict omniglot.fomaml support/ queries/ -o predictions.csv

A folder data set has one subfolder of images per class (support/cat/1.png,
support/dog/1.png, ...). Model files are FOMAMLClassifier files (written by
train or FOMAMLClassifier.save); a FOMAMLRegressor's file is refused: load it
in Python with FOMAMLRegressor.load. Run "fomaml-sklearn COMMAND --help" for
the options of a command.
"""

TRAIN_EPILOG = """\
examples:
  fomaml-sklearn train                         # digits 0-5, mlp, ~30 s on a CPU
  fomaml-sklearn train --ways 4 --shots 5 --minutes 1 -o digits-5shot.fomaml
  fomaml-sklearn train omniglot --data-home ../shared/data --offline \\
      --minutes 5 -o omniglot.fomaml           # Conv-4, the MAML paper's setup
  fomaml-sklearn train omniglot --data-home ../shared/data --offline \\
      --resume omniglot.fomaml --minutes 5     # 5 more minutes, same file
  fomaml-sklearn train my_images/ --image-size 28 --ways 5 -o mine.fomaml

Model files (.fomaml) hold tensors (safetensors) and JSON under a SHA-256
checksum: loading one runs no code from it. --resume keeps the saved model's
settings and meta-parameters; Adam's moments and the episode generator
restart (a model file stores no optimizer state).
"""

EVALUATE_EPILOG = """\
examples:
  fomaml-sklearn evaluate fomaml_model.fomaml  # 3-way 1-shot on digits 6-9
  fomaml-sklearn evaluate omniglot.fomaml omniglot --data-home ../shared/data \\
      --offline --ways 20 --shots 1            # 423 unseen characters
  fomaml-sklearn evaluate mine.fomaml other_images/ --shots 5 --episodes 200
"""

PREDICT_EPILOG = """\
examples:
  fomaml-sklearn predict omniglot.fomaml support/ queries/
  fomaml-sklearn predict omniglot.fomaml support/ new1.png new2.png -o labels.csv

The support folder holds one subfolder per class, named after the class:
support/alpha/1.png, support/beta/1.png, ... The CSV has one line per query
image: its path, the predicted class and that class's probability.
"""


class CommandError(Exception):
    """A problem with the command line's input, reported as one line."""


# --------------------------------------------------------------------- data
def load_data(spec, part, *, data_home=None, offline=False, image_size=28, channels=1,
              ink="auto"):
    """Load a data set named on the command line.

    The loading itself is in :mod:`fomaml_sklearn.datasets`
    (:func:`~fomaml_sklearn.datasets.load_digits_split`,
    :func:`~fomaml_sklearn.datasets.fetch_omniglot_maml`,
    :func:`~fomaml_sklearn.datasets.load_image_folder` and
    :func:`~fomaml_sklearn.datasets.apply_ink`), shared with the benchmarks.

    Parameters
    ----------
    spec : str
        ``"digits"``, ``"omniglot"`` or a folder of images in class subfolders.
    part : {"train", "test"}
        Digits: 0-5 or 6-9; Omniglot: the MAML split's training characters
        (with rotations) or its test characters; a folder: all its classes.
    data_home : str or None, default=None
        Omniglot's data home.
    offline : bool, default=False
        Never download Omniglot.
    image_size : int, default=28
        Image side for Omniglot and folders (digits are 8x8 rows).
    channels : {1, 3}, default=1
        Channels of folder images.
    ink : {"auto", "dark", "light"}, default="auto"
        How folder images are normalised (see
        :func:`~fomaml_sklearn.datasets.apply_ink`).

    Returns
    -------
    X : ndarray
        Rows (digits) or ``(n, channels, image_size, image_size)`` images.
    y : ndarray of shape (n_samples,)
        Labels.
    description : str
        What was loaded, for messages.
    """
    from . import datasets

    if part not in ("train", "test"):
        raise ValueError(f"part={part!r} is not 'train' or 'test'")
    if spec == "digits":
        data = datasets.load_digits_split()
        if part == "train":
            return data.X_train, data.y_train, "digits 0-5"
        return data.X_test, data.y_test, "digits 6-9"
    if spec == "omniglot":
        data = datasets.fetch_omniglot_maml(data_home, subset=part, image_size=image_size,
                                            download_if_missing=not offline)
        if part == "train":
            return (data.X_train, data.y_train,
                    "omniglot (1200 characters x 4 rotations, MAML split)")
        return data.X_test, data.y_test, "omniglot (423 test characters, MAML split)"
    if not Path(spec).is_dir():
        raise CommandError(
            f"data set {spec!r} is not 'digits', 'omniglot' or a folder of images in "
            "class subfolders"
        )
    X, y = datasets.load_image_folder(spec, image_size=image_size, channels=channels,
                                      return_X_y=True)
    X, inverted = datasets.apply_ink(X, ink)
    note = ", inverted to light ink on dark" if inverted else ""
    return X, y, f"{spec} ({image_size}x{image_size}{note})"


# ------------------------------------------------------------------- models
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
    from .persistence import _safetensors

    try:
        _safetensors()
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


# ----------------------------------------------------------------- commands
def _info(args, message):
    # Under torchrun only rank 0 reports (RANK is set before the group exists).
    if not args.quiet and os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)


# Options that describe the model: --resume keeps the saved model's.
RESUME_FIXED = ("module", "algorithm", "head", "ways", "shots", "queries", "meta_batch_size",
                "inner_lr", "inner_steps", "inner_steps_test", "transductive", "lr",
                "device", "precision", "seed", "image_size")


def _resumed_model(args, max_epochs, callbacks, verbose):
    """Load ``--resume MODEL`` and its training data, ready for a warm-start fit."""
    from .persistence import _attach_net

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
    warm_start = clf.warm_start
    clf.set_params(
        warm_start=True,
        max_epochs=max_epochs,
        meta_batches_per_epoch=args.meta_batches_per_epoch or clf.meta_batches_per_epoch,
        callbacks=callbacks,
        verbose=verbose,
    )
    # A new skorch net with these callbacks: a fresh Adam (its moments are not in
    # the file) and a new episode generator, around the saved meta-parameters.
    _attach_net(clf)
    return clf, X, y, description, warm_start


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
    from .distributed import world

    output = args.output or args.resume or DEFAULT_MODEL
    _check_output(output)
    _require_safetensors()
    if args.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        return _launch_with_torchrun(args.nproc_per_node, args.argv)
    if args.epochs is not None:
        max_epochs = args.epochs
    else:
        max_epochs = 100_000 if args.minutes is not None else 10
    callbacks = [TimeLimit(args.minutes)] if args.minutes is not None else None
    verbose = 0 if args.quiet else 1
    if args.resume:
        clf, X, y, description, warm_start = _resumed_model(args, max_epochs, callbacks,
                                                            verbose)
        previous = clf.n_meta_steps_
        _info(args, f"Resuming {args.resume} ({previous} meta-steps so far): meta-training "
                    f"the {clf.module} network on {description}, {len(np.unique(y))} "
                    f"classes, {len(y)} examples.")
    else:
        X, y, description = load_data(args.data, "train", data_home=args.data_home,
                                      offline=args.offline, image_size=args.image_size,
                                      ink=args.ink)
        module = args.module or ("mlp" if args.data == "digits" else "conv4")
        _info(args, f"Meta-training the {module} network on {description}: "
                    f"{len(np.unique(y))} classes, {len(y)} examples.")
        inner_lr = args.inner_lr if args.inner_lr == "auto" else float(args.inner_lr)
        clf = FOMAMLClassifier(
            module,
            algorithm=args.algorithm,
            head=args.head,
            n_ways=_default_ways(args.data, y, args.ways),
            k_shot=args.shots,
            n_query=args.queries,
            meta_batch_size=args.meta_batch_size,
            inner_lr=inner_lr,
            n_inner_steps=args.inner_steps,
            n_inner_steps_test=args.inner_steps_test,
            lr=args.lr,
            max_epochs=max_epochs,
            meta_batches_per_epoch=args.meta_batches_per_epoch or 100,
            transductive=args.transductive,
            augment_shift=args.augment_shift,
            test_shift=args.test_shift or 0,
            precision=args.precision,
            adapt_on_fit=False,  # adapting to thousands of training classes is costly
            device=args.device,
            callbacks=callbacks,
            random_state=args.seed,
            verbose=verbose,
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
        clf.set_params(warm_start=warm_start)  # as saved: a later fit starts afresh
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


def _launch_with_torchrun(nproc, command_line):
    """Run this same command under ``torch.distributed.run`` with ``nproc``
    processes (rank 0 prints and saves); return its exit code."""
    import subprocess

    argv, skip = [], False
    for arg in command_line:  # the command line without --nproc-per-node
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif not arg.startswith("--nproc-per-node="):
            argv.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "fomaml_sklearn", *argv]
    env = dict(os.environ)
    # Each process gets its share of the cores, unless --threads says otherwise.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(cmd, env=env)


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


# ------------------------------------------------------------------- parser
class _Formatter(argparse.HelpFormatter):
    """Wraps descriptions; keeps the lines of epilogs (example commands)."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=32)

    def _fill_text(self, text, width, indent):
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _count(low):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _inner_lr(text):
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'auto' or a number") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be 'auto' or a number >= 0, got {text}")
    return value


def _test_shift_option(group, default):
    group.add_argument("--test-shift", type=_count(0), default=None, metavar="PX",
                       help="test-time shifts: adapt on the support images and copies "
                            "of them moved by up to PX pixels, average each query's "
                            f"probabilities over its copies (images only; {default})")


def _common_options(parser):
    group = parser.add_argument_group("general options")
    group.add_argument("-q", "--quiet", action="store_true",
                       help="print only the result (no progress, no messages)")
    group.add_argument("--threads", type=_count(1), default=None, metavar="N",
                       help="CPU threads for torch (default: torch's choice)")
    group.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the full traceback of an error")


def _data_options(parser, image_size):
    group = parser.add_argument_group("data options")
    group.add_argument("--data-home", default=None, metavar="DIR",
                       help="folder holding omniglot/ (default: $FOMAML_SKLEARN_DATA, "
                            "else scikit-learn's data home)")
    group.add_argument("--offline", action="store_true",
                       help="never download Omniglot; fail if it is not in the data home")
    if image_size:
        group.add_argument("--image-size", type=_count(1), default=28, metavar="PX",
                           help="side of the square images of Omniglot or a folder, in "
                                "pixels (default: 28; evaluate and predict take the "
                                "model's)")
    group.add_argument("--ink", choices=["auto", "dark", "light"], default="auto",
                       help="folder images: 'dark' strokes on a light background are "
                            "inverted so that ink is 1, as in Omniglot and digits; "
                            "'auto' inverts when most pixels are light (default: auto)")


DATA_HELP = ("'digits' (scikit-learn's 8x8 digits, embedded: train uses 0-5, evaluate "
             "6-9), 'omniglot' (the MAML split: train uses 1200 characters x 4 "
             "rotations, evaluate the other 423) or a folder of images with one "
             "subfolder per class (all of them; write ./digits for a folder of that "
             "name). Default: digits")


MODEL_HELP = ("a FOMAMLClassifier model file (written by train or FOMAMLClassifier.save; "
              "a FOMAMLRegressor's is refused)")


def build_parser():
    """Build the argument parser of ``fomaml-sklearn``.

    Returns
    -------
    parser : argparse.ArgumentParser
        The parser; each subcommand sets ``handler``, the function to run.
    """
    from . import __version__
    from .algorithms import available_algorithms  # names only: no torch import

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Few-shot classification with First-Order MAML: meta-train a "
                    "network on many small tasks, then adapt it to new classes from "
                    "one or a few labelled examples each.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # train
    train = commands.add_parser(
        "train", formatter_class=_Formatter, epilog=TRAIN_EPILOG,
        help="meta-train on a data set and save the model",
        description="Meta-train a FOMAMLClassifier on N-way K-shot episodes drawn from "
                    "DATA and save it to --output as a safe model file (tensors and "
                    "JSON under a checksum; loading it runs no code from it). Digits "
                    "(the default) trains on 0-5 so that 'evaluate' can test on the "
                    "unseen 6-9. Meta-training runs --epochs x --meta-batches-per-epoch "
                    "meta-steps, or until --minutes have passed; Ctrl-C stops it early "
                    "and still saves, and --resume continues it.",
    )
    train.add_argument("data", nargs="?", default="digits", metavar="DATA", help=DATA_HELP)
    train.add_argument("-o", "--output", default=None, metavar="PATH",
                       help=f"where to save the model (default: {DEFAULT_MODEL}, or the "
                            "--resume file, which is then replaced)")
    train.add_argument("--resume", default=None, metavar="MODEL",
                       help="continue meta-training the model saved in MODEL on DATA (the "
                            "same kind of data). Kept: its meta-parameters and all its "
                            "settings (network, rule, episodes, inner loop, learning "
                            "rate, precision, device, seed), so the model, episode and "
                            "inner-loop options, --lr, --device, --precision, --seed and "
                            "--image-size cannot be given with it. "
                            "Restarted: Adam's moments and the episode generator, which "
                            "a model file does not store. --epochs, --minutes and "
                            "--meta-batches-per-epoch set the new budget")
    model = train.add_argument_group("model")
    model.add_argument("--module", choices=["mlp", "conv4"], default=None,
                       help="network: 'mlp' or the MAML paper's 'conv4' (default: mlp "
                            "for digits, conv4 for images)")
    model.add_argument("--algorithm", choices=available_algorithms(), default="fomaml",
                       help="meta-learning rule (default: fomaml)")
    model.add_argument("--head", choices=HEAD_CHOICES, default="prototype",
                       help="task-head initialisation (default: prototype)")
    episodes = train.add_argument_group("episodes and inner loop")
    episodes.add_argument("--ways", type=_count(2), default=None, metavar="N",
                          help="classes per task (default: 3 for digits, else 5)")
    episodes.add_argument("--shots", type=_count(1), default=1, metavar="K",
                          help="support examples per class (default: 1)")
    episodes.add_argument("--queries", type=_count(1), default=5, metavar="Q",
                          help="query examples per class (default: 5)")
    episodes.add_argument("--meta-batch-size", type=_count(1), default=16, metavar="T",
                          help="tasks per meta-step (default: 16)")
    episodes.add_argument("--inner-lr", type=_inner_lr, default="auto", metavar="ALPHA",
                          help="inner-loop SGD rate, or 'auto' (default: auto)")
    episodes.add_argument("--inner-steps", type=_count(0), default=1, metavar="S",
                          help="inner SGD steps in meta-training (default: 1)")
    episodes.add_argument("--inner-steps-test", type=_count(0), default=3, metavar="S",
                          help="inner SGD steps when adapting to a new task (default: 3)")
    episodes.add_argument("--transductive", action="store_true",
                          help="BatchNorm on query-batch statistics, as in the MAML paper")
    episodes.add_argument("--augment-shift", type=_count(0), default=0, metavar="PX",
                          help="shift meta-training images by up to PX pixels (images "
                               "only; default: 0)")
    _test_shift_option(episodes, "saved with the model; default: 0")
    outer = train.add_argument_group("meta-training")
    outer.add_argument("--lr", type=_positive_float, default=1e-3, metavar="BETA",
                       help="meta learning rate of Adam (default: 0.001)")
    outer.add_argument("--epochs", type=_count(0), default=None, metavar="E",
                       help="epochs of meta-training (default: 10, or unlimited with "
                            "--minutes)")
    outer.add_argument("--meta-batches-per-epoch", type=_count(1), default=None, metavar="B",
                       help="meta-steps per epoch (default: 100, or the model's with "
                            "--resume)")
    outer.add_argument("--minutes", type=_positive_float, default=None, metavar="M",
                       help="time budget: stop after the first epoch past M minutes")
    outer.add_argument("--device", default="auto",
                       help="'cpu', 'cuda', 'cuda:N' or 'auto' (default: auto, a GPU "
                            "if there is one)")
    outer.add_argument("--precision", choices=["auto", "float32", "bfloat16", "float16"],
                       default="auto",
                       help="forward-pass precision; auto takes bfloat16 where the "
                            "hardware is fast at it (default: auto)")
    outer.add_argument("--seed", type=int, default=0,
                       help="random seed of the initialisation and episodes (default: 0)")
    outer.add_argument("--nproc-per-node", type=_count(1), default=1, metavar="N",
                       help="shard each meta-batch over N processes on this machine, "
                            "launched with torch.distributed.run (torchrun); the same "
                            "model as one process, to float tolerance (default: 1)")
    _data_options(train, image_size=True)
    _common_options(train)
    train.set_defaults(handler=cmd_train, resume_fixed={
        a.dest: (a.default, a.option_strings[-1])
        for a in train._actions if a.dest in RESUME_FIXED})

    # evaluate
    evaluate = commands.add_parser(
        "evaluate", formatter_class=_Formatter, epilog=EVALUATE_EPILOG,
        help="few-shot accuracy of a saved model on unseen classes",
        description="Draw N-way K-shot episodes from the classes of DATA, adapt the "
                    "model to each episode's support examples and score its queries; "
                    "print the mean accuracy with its 95% confidence interval. Use "
                    "classes the model was not trained on: digits 6-9, Omniglot's "
                    "test characters, or a folder of other classes.",
    )
    evaluate.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    evaluate.add_argument("data", nargs="?", default="digits", metavar="DATA",
                          help=DATA_HELP)
    ev = evaluate.add_argument_group("episodes")
    ev.add_argument("--ways", type=_count(2), default=None, metavar="N",
                    help="classes per episode (default: 3 for digits, else 5, at most "
                         "the number of classes)")
    ev.add_argument("--shots", type=_count(1), default=1, metavar="K",
                    help="support examples per class (default: 1)")
    ev.add_argument("--queries", type=_count(1), default=15, metavar="Q",
                    help="query examples per class (default: 15)")
    ev.add_argument("--episodes", type=_count(1), default=600, metavar="E",
                    help="number of episodes (default: 600)")
    ev.add_argument("--seed", type=int, default=0,
                    help="random seed of the episodes (default: 0)")
    _test_shift_option(ev, "default: the model's")
    _data_options(evaluate, image_size=False)
    _common_options(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)

    # predict
    predict = commands.add_parser(
        "predict", formatter_class=_Formatter, epilog=PREDICT_EPILOG,
        help="adapt to labelled images in a folder and label new images",
        description="Adapt the model to the classes of SUPPORT (a folder with one "
                    "subfolder of labelled images per class, a few images each) and "
                    "predict a class for every image of QUERY (image files or folders, "
                    "searched recursively). Prints CSV lines path,label,probability. "
                    "Images are converted to the model's channels and size.",
    )
    predict.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    predict.add_argument("support", metavar="SUPPORT",
                         help="folder of labelled images: SUPPORT/<class>/<image>")
    predict.add_argument("query", nargs="+", metavar="QUERY",
                         help="images to label: files or folders (flat or nested)")
    predict.add_argument("-o", "--output", default=None, metavar="CSV",
                         help="write the CSV to this file (default: stdout)")
    pg = predict.add_argument_group("data options")
    pg.add_argument("--ink", choices=["auto", "dark", "light"], default="auto",
                    help="'dark' strokes on a light background are inverted so that ink "
                         "is 1; 'auto' decides from the support images (default: auto)")
    _test_shift_option(pg, "default: the model's")
    _common_options(predict)
    predict.set_defaults(handler=cmd_predict)
    return parser


# --------------------------------------------------------------------- main
def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _one_line(exc):
    text = " ".join(str(exc).split())
    if isinstance(exc, (CommandError, OSError, ValueError)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text} (run with --debug for the traceback)"


def main(argv=None):
    """Run ``fomaml-sklearn`` with ``argv`` (default: ``sys.argv[1:]``).

    Parameters
    ----------
    argv : list of str or None, default=None
        The arguments, without the program name.

    Returns
    -------
    code : int
        0 on success, 1 on an error, 2 on a command-line usage error (and
        130 when interrupted).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version or a usage error
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    args.argv = list(sys.argv[1:] if argv is None else argv)

    import torch

    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            if args.threads:
                torch.set_num_threads(args.threads)
            return args.handler(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    finally:
        torch.set_num_threads(threads)
