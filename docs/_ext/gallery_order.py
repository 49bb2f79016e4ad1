"""Order of the gallery examples (a class named by string in ``conf.py``, so
that Sphinx can pickle the configuration)."""

from pathlib import Path

ORDER = [
    "plot_digits_quickstart.py",
    "plot_model_selection.py",
    "plot_training_curves.py",
    "plot_curvature.py",
    "plot_sinusoid_regression.py",
    "plot_algorithms_omniglot.py",
    "plot_mnist.py",
]


class ExampleOrder:
    """Sort key: the examples listed in ``ORDER`` first, then any other by name."""

    def __init__(self, src_dir):
        self.src_dir = src_dir

    def __call__(self, filename):
        name = Path(filename).name
        if name in ORDER:
            return f"{ORDER.index(name):03d}"
        return f"999{name}"

    def __repr__(self):
        return f"<{type(self).__name__}>"
