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
subfolder per class (:func:`fomaml_sklearn.datasets.load_data`). Model files
hold a :class:`FOMAMLClassifier`; a :class:`FOMAMLRegressor`'s is refused
(use it from Python). Errors are reported as one line on stderr with exit code
1 (2 for a mistyped command line); ``--debug`` shows the traceback instead.

This module parses the command line and dispatches; what the commands do is in
``fomaml_sklearn._cli_commands``, the help texts in ``fomaml_sklearn._cli_help``.
"""

import argparse
import math
import sys
import warnings

from . import _cli_help as texts
from . import names, presets
from ._cli_commands import RESUME_FIXED, CommandError, cmd_evaluate, cmd_predict, cmd_train

__all__ = ["main", "build_parser", "CommandError"]

PROG = texts.PROG
INK_CHOICES = ("auto", "dark", "light")


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
                       help=texts.TEST_SHIFT_HELP.format(default))


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
    group.add_argument("--ink", choices=INK_CHOICES, default="auto", help=texts.INK_HELP)


def _command(commands, name, handler, summary, description, epilog):
    parser = commands.add_parser(name, formatter_class=_Formatter, help=summary,
                                 description=description, epilog=epilog)
    parser.set_defaults(handler=handler)
    return parser


def _add_train(commands):
    from .algorithms import available_algorithms  # names only: no torch import

    train = _command(commands, "train", cmd_train,
                     "meta-train on a data set and save the model",
                     texts.TRAIN_DESCRIPTION, texts.TRAIN_EPILOG)
    train.add_argument("data", nargs="?", default="digits", metavar="DATA",
                       help=texts.DATA_HELP)
    train.add_argument("-o", "--output", default=None, metavar="PATH",
                       help=f"where to save the model (default: {texts.DEFAULT_MODEL}, or "
                            "the --resume file, which is then replaced)")
    train.add_argument("--resume", default=None, metavar="MODEL", help=texts.RESUME_HELP)
    model = train.add_argument_group("model")
    model.add_argument("--module", choices=names.BACKBONES, default=None,
                       help="network: 'mlp' or the MAML paper's 'conv4' (default: the "
                            "preset's; without --preset: conv4 for omniglot, mlp for "
                            "digits, conv4 for image folders)")
    model.add_argument("--preset", choices=sorted(presets.PRESETS), default=None,
                       help="start from this configuration of fomaml_sklearn.presets; the "
                            "options below override it (default: omniglot for omniglot, "
                            "else tabular)")
    model.add_argument("--algorithm", choices=available_algorithms(), default="fomaml",
                       help="meta-learning rule (default: fomaml)")
    model.add_argument("--head", choices=names.HEADS, default=None,
                       help="task-head initialisation (default: the preset's)")
    episodes = train.add_argument_group("episodes and inner loop")
    add = episodes.add_argument
    add("--ways", type=_count(2), default=None, metavar="N",
        help="classes per task (default: the preset's; without --preset: 10 for "
             "omniglot, 3 for digits, else 5; at most the number of classes)")
    add("--shots", type=_count(1), default=None, metavar="K",
        help="support examples per class (default: the preset's)")
    add("--queries", type=_count(1), default=None, metavar="Q",
        help="query examples per class (default: the preset's)")
    add("--meta-batch-size", type=_count(1), default=None, metavar="T",
        help="tasks per meta-step (default: the preset's)")
    add("--inner-lr", type=_inner_lr, default=None, metavar="ALPHA",
        help="inner-loop SGD rate, or 'auto' (default: the preset's)")
    add("--inner-steps", type=_count(0), default=None, metavar="S",
        help="inner SGD steps in meta-training (default: the preset's)")
    add("--inner-steps-test", type=_count(0), default=None, metavar="S",
        help="inner SGD steps when adapting to a new task (default: the preset's)")
    add("--transductive", action="store_true",
        help="BatchNorm on query-batch statistics, as in the MAML paper")
    add("--augment-shift", type=_count(0), default=None, metavar="PX",
        help="shift meta-training images by up to PX pixels (images only; default: the "
             "preset's)")
    _test_shift_option(episodes, "saved with the model; default: the preset's")
    add = train.add_argument_group("meta-training").add_argument
    add("--lr", type=_positive_float, default=None, metavar="BETA",
        help="meta learning rate of Adam (default: the preset's; annealed to 0 along a "
             "cosine where the preset does so, over the epochs or over --minutes)")
    add("--epochs", type=_count(0), default=None, metavar="E",
        help="epochs of meta-training (default: the preset's, or unlimited with --minutes)")
    add("--meta-batches-per-epoch", type=_count(1), default=None, metavar="B",
        help="meta-steps per epoch (default: the preset's, or the model's with --resume)")
    add("--minutes", type=_positive_float, default=None, metavar="M",
        help="time budget: stop after the first epoch past M minutes")
    add("--device", default="auto",
        help="'cpu', 'cuda', 'cuda:N' or 'auto' (default: auto, a GPU if there is one)")
    add("--precision", choices=("auto", *names.PRECISIONS), default="auto",
        help="forward-pass precision; auto takes bfloat16 where the hardware is fast at "
             "it (default: auto)")
    add("--seed", type=int, default=0,
        help="random seed of the initialisation and episodes (default: 0)")
    add("--nproc-per-node", type=_count(1), default=1, metavar="N", help=texts.NPROC_HELP)
    _data_options(train, image_size=True)
    _common_options(train)
    # The options --resume refuses, with their defaults (a model keeps its own).
    train.set_defaults(resume_fixed={a.dest: (a.default, a.option_strings[-1])
                                     for a in train._actions if a.dest in RESUME_FIXED})


def _add_evaluate(commands):
    evaluate = _command(commands, "evaluate", cmd_evaluate,
                        "few-shot accuracy of a saved model on unseen classes",
                        texts.EVALUATE_DESCRIPTION, texts.EVALUATE_EPILOG)
    evaluate.add_argument("model", metavar="MODEL", help=texts.MODEL_HELP)
    evaluate.add_argument("data", nargs="?", default="digits", metavar="DATA",
                          help=texts.DATA_HELP)
    group = evaluate.add_argument_group("episodes")
    add = group.add_argument
    add("--ways", type=_count(2), default=None, metavar="N",
        help="classes per episode (default: 3 for digits, else 5, at most the number of "
             "classes)")
    add("--shots", type=_count(1), default=1, metavar="K",
        help="support examples per class (default: 1)")
    add("--queries", type=_count(1), default=15, metavar="Q",
        help="query examples per class (default: 15)")
    add("--episodes", type=_count(1), default=600, metavar="E",
        help="number of episodes (default: 600)")
    add("--seed", type=int, default=0, help="random seed of the episodes (default: 0)")
    _test_shift_option(group, "default: the model's")
    _data_options(evaluate, image_size=False)
    _common_options(evaluate)


def _add_predict(commands):
    predict = _command(commands, "predict", cmd_predict,
                       "adapt to labelled images in a folder and label new images",
                       texts.PREDICT_DESCRIPTION, texts.PREDICT_EPILOG)
    predict.add_argument("model", metavar="MODEL", help=texts.MODEL_HELP)
    predict.add_argument("support", metavar="SUPPORT",
                         help="folder of labelled images: SUPPORT/<class>/<image>")
    predict.add_argument("query", nargs="+", metavar="QUERY",
                         help="images to label: files or folders (flat or nested)")
    predict.add_argument("-o", "--output", default=None, metavar="CSV",
                         help="write the CSV to this file (default: stdout)")
    group = predict.add_argument_group("data options")
    group.add_argument("--ink", choices=INK_CHOICES, default="auto",
                       help=texts.PREDICT_INK_HELP)
    _test_shift_option(group, "default: the model's")
    _common_options(predict)


def build_parser():
    """Build the argument parser of ``fomaml-sklearn``.

    Returns
    -------
    parser : argparse.ArgumentParser
        The parser; each subcommand sets ``handler``, the function to run.
    """
    from . import __version__

    parser = argparse.ArgumentParser(prog=PROG, description=texts.DESCRIPTION,
                                     epilog=texts.EPILOG, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_train, _add_evaluate, _add_predict):
        add(commands)
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
