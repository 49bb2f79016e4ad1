"""First-Order MAML (FOMAML) meta-learning as scikit-learn estimators."""

from .classifier import FOMAMLClassifier
from .evaluation import FewShotResult
from .model_selection import ClassKFold, ClassShuffleSplit, adapt, few_shot_scorer

__version__ = "0.1.0"

__all__ = [
    "FOMAMLClassifier",
    "FewShotResult",
    "ClassKFold",
    "ClassShuffleSplit",
    "adapt",
    "few_shot_scorer",
    "__version__",
]
