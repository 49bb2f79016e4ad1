"""First-Order MAML (FOMAML) meta-learning as scikit-learn estimators.

The public names are imported on first use, so ``import fomaml_sklearn`` (and
the ``fomaml-sklearn --help`` command line) does not load torch and skorch.
"""

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "FOMAMLClassifier": "classifier",
    "FOMAMLRegressor": "regressor",
    "FewShotResult": "evaluation",
    "FewShotRegressionResult": "evaluation",
    "ClassKFold": "model_selection",
    "ClassShuffleSplit": "model_selection",
    "adapt": "model_selection",
    "few_shot_scorer": "model_selection",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_PUBLIC])
