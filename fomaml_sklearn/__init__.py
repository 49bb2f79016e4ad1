"""First-Order MAML (FOMAML) meta-learning as scikit-learn estimators."""

from .classifier import FOMAMLClassifier
from .evaluation import FewShotResult

__version__ = "0.1.0"

__all__ = ["FOMAMLClassifier", "FewShotResult", "__version__"]
