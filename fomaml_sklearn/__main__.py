"""``python -m fomaml_sklearn``: the ``fomaml-sklearn`` command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
