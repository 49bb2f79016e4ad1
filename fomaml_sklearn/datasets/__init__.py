"""Few-shot data sets, loaded the scikit-learn way.

One module per source, all names re-exported here:

- Omniglot (Lake et al., 2015): :func:`fetch_omniglot` downloads it once into
  the data home (:func:`get_data_home`) and verifies the cache;
  :func:`omniglot_split`, :func:`rotate_classes` and
  :func:`fetch_omniglot_maml` (the MAML paper's split, with a fixed split
  seed) build the few-shot splits.
- Digits: :func:`load_digits_split` (scikit-learn's 8x8 digits, 0-5 to
  meta-train, 6-9 to test) and :func:`load_mnist` (a local MNIST copy).
- Images: :func:`load_image_folder` (class subfolders), :func:`load_images`
  (loose files) and :func:`apply_ink` (bright strokes on a dark background,
  as in Omniglot and digits).
- Synthetic: :func:`make_subspace_classes` and :func:`make_sinusoid_tasks`.
- By name: :func:`load_data` loads ``"digits"``, ``"omniglot"`` or a folder
  as the command line names them (``DATA_SETS``); the command line and
  the benchmarks see the same classes.

torch and torchvision are imported only when a loader needs them.
"""

from ._base import get_data_home
from ._digits import load_digits_split, load_mnist
from ._images import apply_ink, load_image_folder, load_images
from ._named import DATA_SETS, load_data
from ._omniglot import (
    MAML_SPLIT_SEED,
    OMNIGLOT_MD5,
    OMNIGLOT_URL,
    fetch_omniglot,
    fetch_omniglot_maml,
    omniglot_split,
    rotate_classes,
)
from ._synthetic import make_sinusoid_tasks, make_subspace_classes

__all__ = [
    "get_data_home", "fetch_omniglot", "omniglot_split", "rotate_classes",
    "fetch_omniglot_maml", "load_digits_split", "load_mnist", "load_image_folder",
    "load_images", "apply_ink", "make_subspace_classes", "make_sinusoid_tasks",
    "load_data", "DATA_SETS", "MAML_SPLIT_SEED", "OMNIGLOT_URL", "OMNIGLOT_MD5",
]

# The docstring examples of the functions defined in the submodules run as this
# module's (doctest finds only what a module defines, or what __test__ lists).
__test__ = {name: value for name, value in list(globals().items())
            if name in __all__ and callable(value)}
