"""The meta-learning rules, one module each, and the registry of their names.

``_BUILTIN`` below maps each built-in name to its rule's class and
options (:func:`available_algorithms` lists them with the registered ones);
each class's docstring documents its rule.

An estimator's ``algorithm=`` takes a name from this registry or an
instance (whose options are then searchable as ``algorithm__<option>``).
Every rule implements :class:`MetaAlgorithm` (``algorithms/_base.py``, the
contract) and uses the adaptation engine :class:`~.runner.TaskRunner`
(``algorithms/runner.py``, with :class:`~.runner.MetaBatch` and
:func:`~.runner.inner_loop`); a new one is a subclass and a
:func:`register_algorithm` call (a built-in one: its module and one line of
``_BUILTIN``). Importing this package does not import
torch (the command line lists the names); the classes load on first use.
"""

import difflib
import importlib

# name -> (module, class name, options)
_BUILTIN = {
    "fomaml": ("fomaml", "FOMAML", {}),
    "maml": ("maml", "MAML", {}),
    "reptile": ("reptile", "Reptile", {}),
    "anil": ("anil", "ANIL", {"first_order": False}),
    "fo-anil": ("anil", "ANIL", {"first_order": True}),
    "imaml": ("imaml", "IMAML", {}),
    "metasgd": ("metasgd", "MetaSGD", {}),
}
_REGISTERED = {}  # name -> (class, options), added by register_algorithm
# Lazily loaded names: the rules' classes from the registry, and the contract.
_CLASSES = {
    **{name: module for module, name, _ in _BUILTIN.values()},
    **dict.fromkeys(("MetaAlgorithm", "MetaGradient", "PrototypeGradientOption",
                     "TaskResult", "meta_gradient", "n_correct"), "_base"),
    **dict.fromkeys(("MetaBatch", "TaskRunner", "inner_loop"), "runner"),
}
__all__ = sorted([*_CLASSES, "available_algorithms", "get_algorithm", "register_algorithm"])


def __getattr__(name):
    module = _CLASSES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_CLASSES])


def available_algorithms():
    """Names accepted by ``algorithm=``, built in and registered.

    Returns
    -------
    names : list of str
    """
    return sorted({*_BUILTIN, *_REGISTERED})


def register_algorithm(name, cls, **options):
    """Make a rule available by name, as ``algorithm=name``.

    Parameters
    ----------
    name : str
        The name; it must not be taken.
    cls : type
        A :class:`MetaAlgorithm` subclass.
    **options
        Options the name stands for, passed to ``cls``.

    Examples
    --------
    >>> from fomaml_sklearn.algorithms import FOMAML, register_algorithm
    >>> register_algorithm("fomaml-constant-prototypes", FOMAML,
    ...                    prototype_gradient=False)
    >>> from fomaml_sklearn.algorithms import get_algorithm
    >>> get_algorithm("fomaml-constant-prototypes")
    FOMAML(prototype_gradient=False)
    """
    base = __getattr__("MetaAlgorithm")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"cls must be a MetaAlgorithm subclass; got {cls!r}.")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string; got {name!r}.")
    if name in _BUILTIN or name in _REGISTERED:
        raise ValueError(f"An algorithm named {name!r} is already registered; choose "
                         "another name.")
    _REGISTERED[name] = (cls, dict(options))


def get_algorithm(algorithm):
    """The rule named by ``algorithm``, or the instance itself.

    Parameters
    ----------
    algorithm : str or MetaAlgorithm
        A name (see :func:`available_algorithms`) or an instance.

    Returns
    -------
    rule : MetaAlgorithm
        A new instance for a name; the given instance otherwise.

    Raises
    ------
    ValueError
        For an unknown name, with the closest known one.
    TypeError
        For anything else.
    """
    if isinstance(algorithm, str):
        if algorithm in _REGISTERED:
            cls, options = _REGISTERED[algorithm]
            return cls(**options)
        if algorithm in _BUILTIN:
            module, name, options = _BUILTIN[algorithm]
            return getattr(importlib.import_module(f".{module}", __name__), name)(**options)
        close = difflib.get_close_matches(algorithm, available_algorithms(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"algorithm={algorithm!r} is not supported; use one of "
            f"{available_algorithms()} or a MetaAlgorithm instance.{hint}"
        )
    if isinstance(algorithm, __getattr__("MetaAlgorithm")):
        return algorithm
    raise TypeError(
        f"algorithm must be a name in {available_algorithms()} or a MetaAlgorithm "
        f"instance (fomaml_sklearn.algorithms); got {algorithm!r} of type "
        f"{type(algorithm).__name__}."
    )
