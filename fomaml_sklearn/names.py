"""The names the estimators' string parameters accept: the one source of each list.

The parameter constraints, the error messages, the command line's choices
and the model files' allow-lists all read these tuples, so adding a name is
one line here (and its implementation where it is built). This module does
not import torch, so that ``fomaml-sklearn --help`` stays fast.

The rules (``algorithm=``) have a registry of their own, which also takes
rules from outside the package:
:func:`fomaml_sklearn.algorithms.available_algorithms`.

Examples
--------
>>> from fomaml_sklearn import names
>>> names.HEADS
('prototype', 'cosine', 'shared', 'fixed')
>>> "conv4" in names.BACKBONES
True
"""

__all__ = [
    "BACKBONES",
    "BACKBONE_ALIASES",
    "HEADS",
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "PRECISIONS",
    "PROTOTYPE_HEADS",
    "TASK_BATCHING",
    "backbone_name",
    "quoted",
]

#: The built-in backbones (``module=``): a fully connected network and the
#: four-block CNN of the MAML paper (:mod:`fomaml_sklearn.backbones`).
BACKBONES = ("mlp", "conv4")

#: Other spellings accepted for a built-in backbone.
BACKBONE_ALIASES = {"conv-4": "conv4"}

#: The heads whose rows are built from the support set's class means
#: (prototypes) rather than meta-learned (:mod:`fomaml_sklearn.heads`).
PROTOTYPE_HEADS = ("prototype", "cosine")

#: The task heads (``head=``, :mod:`fomaml_sklearn.heads`).
HEADS = PROTOTYPE_HEADS + ("shared", "fixed")

#: The meta-optimizers by name (``optimizer=``, any case): the class of
#: ``torch.optim`` each name stands for. A model file stores these only.
OPTIMIZERS = {
    "adam": "Adam",
    "adamw": "AdamW",
    "sgd": "SGD",
    "rmsprop": "RMSprop",
    "adagrad": "Adagrad",
    "adadelta": "Adadelta",
    "adamax": "Adamax",
    "nadam": "NAdam",
    "radam": "RAdam",
    "asgd": "ASGD",
    "rprop": "Rprop",
}

#: The precisions of the forward passes (``precision=``, also ``"auto"``);
#: float16 runs on a GPU only.
PRECISIONS = ("float32", "bfloat16", "float16")

#: How a meta-batch's tasks run (``task_batching=``, the classifier).
TASK_BATCHING = ("auto", "loop", "threads", "grouped")

#: The meta learning rate over a fit (``lr_schedule=``).
LR_SCHEDULES = ("constant", "cosine")


def backbone_name(module):
    """The built-in backbone a string names (aliases and case resolved), or
    None when it names none."""
    if not isinstance(module, str):
        return None
    name = module.lower()
    name = BACKBONE_ALIASES.get(name, name)
    return name if name in BACKBONES else None


def quoted(names):
    """``'a', 'b' or 'c'``: names for a message."""
    names = [repr(n) for n in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
