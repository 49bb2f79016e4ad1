"""Sphinx configuration of the fomaml_sklearn documentation.

Build it with ``make docs`` from the repository root (runs every gallery
example, about 4.5 minutes on 1 thread), ``make -C docs html`` (runs the
gallery examples, but an example that has not changed since its last
successful run is not run again) or ``make -C docs html-noplot`` (renders
the examples without running them, as the test suite does:
``sphinx-build -W --keep-going -b html -D plot_gallery=0 docs <out>``).
"""

import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document the working tree, installed or not
sys.path.insert(0, str(DOCS / "_ext"))  # local helpers (gallery order)

import fomaml_sklearn  # noqa: E402

# -- Project ------------------------------------------------------------------
project = "fomaml_sklearn"
author = "the fomaml_sklearn developers"
copyright = "the fomaml_sklearn developers, BSD-3-Clause"
release = fomaml_sklearn.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "_templates",
    "_ext",
    "Thumbs.db",
    ".DS_Store",
    # sphinx-gallery writes these next to the generated pages; they are not pages.
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "auto_examples/*.zip",
    "auto_examples/*.md5",
    "auto_examples/*.codeobj.json",
]
default_role = "literal"  # `x` is code, as in the Markdown pages
pygments_style = "sphinx"

# -- MyST (the Markdown pages: design notes and the command line) -----------
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3  # "page.md#a-heading" links, as on GitHub

# -- autodoc / autosummary / numpydoc -----------------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True, "inherited-members": True}
autodoc_typehints = "none"
autodoc_member_order = "groupwise"
# The class template lists the members itself (autodoc), so numpydoc must not
# add a second, autosummary-based table of them.
numpydoc_show_class_members = False
numpydoc_show_inherited_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False

# -- sphinx-gallery ----------------------------------------------------------
# Some examples read data sets from disk; each declares them in a comment line
# "# Needs data: NAME[, NAME]." (tests/test_docs.py reads the same line). The
# docs build never downloads them: an example whose data is missing on this
# machine is rendered without being run (and says so at the start of the build).


def _data_home():
    from fomaml_sklearn.datasets import get_data_home

    return get_data_home()  # $FOMAML_SKLEARN_DATA, else scikit-learn's data home


def _omniglot_available():
    return (_data_home() / "omniglot" / "images_background.npz").exists()


def _mnist_available():
    root = Path(os.environ.get("FOMAML_MNIST_ROOT", _data_home() / "mnist"))
    raw = root / "MNIST" / "raw"
    return all((raw / f).exists() for f in ("train-images-idx3-ubyte",
                                            "train-labels-idx1-ubyte",
                                            "t10k-images-idx3-ubyte",
                                            "t10k-labels-idx1-ubyte"))


_DATA_SETS = {
    "omniglot": (
        _omniglot_available,
        "Omniglot: set FOMAML_SKLEARN_DATA to an absolute path of a folder holding "
        "omniglot/images_background.npz",
    ),
    "mnist": (
        _mnist_available,
        "MNIST: set FOMAML_MNIST_ROOT to a folder holding MNIST/raw/ with the IDX files",
    ),
}
_NEEDS_DATA = re.compile(r"(?m)^# Needs data: (\w+(?:, *\w+)*)\.")


def _needed_data(example):
    """The data sets an example declares (an unknown name is an error)."""
    match = _NEEDS_DATA.search(example.read_text())
    names = [n.strip() for n in match.group(1).split(",")] if match else []
    unknown = sorted(set(names) - set(_DATA_SETS))
    if unknown:
        raise ValueError(f"{example.name} needs unknown data sets {unknown}; "
                         f"known: {sorted(_DATA_SETS)}")
    return names


_not_run = []
for _example in sorted((ROOT / "examples").glob("plot_*.py")):
    _missing = [n for n in _needed_data(_example) if not _DATA_SETS[n][0]()]
    if _missing:
        _not_run.append(_example.stem)
        print(f"fomaml_sklearn docs: {_example.name} is shown without running it; to run "
              f"it, {'; '.join(_DATA_SETS[n][1] for n in _missing)}.")
_run_pattern = r"/plot_"
if _not_run:
    _run_pattern = r"/(?!(%s)\.py$)plot_" % "|".join(_not_run)

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": str(DOCS / "auto_examples"),
    "filename_pattern": _run_pattern,
    "within_subsection_order": "gallery_order.ExampleOrder",  # docs/_ext
    "doc_module": ("fomaml_sklearn",),
    "backreferences_dir": str(DOCS / "gen_modules" / "backreferences"),
    "download_all_examples": False,
    "remove_config_comments": True,
    "show_memory": False,
    "matplotlib_animations": False,
    "image_scrapers": ("matplotlib",),
    "reset_modules": ("matplotlib",),
}

# -- HTML ----------------------------------------------------------------------
try:
    import pydata_sphinx_theme  # noqa: F401
except ImportError:  # the docs extra installs it; alabaster keeps a bare env working
    html_theme = "alabaster"
    html_theme_options = {}
else:
    html_theme = "pydata_sphinx_theme"
    html_theme_options = {
        "navbar_align": "left",
        "show_toc_level": 2,
        "navigation_with_keys": False,
        "secondary_sidebar_items": ["page-toc", "sourcelink"],
    }
html_title = f"fomaml_sklearn {release}"
html_static_path = []
html_show_sourcelink = True


# -- Pages written by others: list them in the index only if present ----------
def _index_toctree_entries(app, docname, source):
    """Adjust the index's toctrees to the Markdown pages present in docs/.

    - ``cli`` (the command-line page) is listed only while docs/cli.* exists;
    - any other top-level ``docs/*.md`` page not named in the index (a new
      design note) is appended to the last toctree, "Design notes".

    A toctree naming a missing document warns, and so does a page in no
    toctree; the build runs with -W.
    """
    if docname != "index":
        return
    text = source[0]
    if not any((DOCS / f"cli{ext}").exists() for ext in (".md", ".rst")):
        text = re.sub(r"(?m)^   cli\n", "", text)
    listed = set(re.findall(r"(?m)^   ([\w/.-]+)[ \t]*$", text))
    notes = sorted(p.stem for p in DOCS.glob("*.md") if p.stem not in listed | {"cli"})
    if notes:  # the design-notes toctree is the last block of index.rst
        text = text.rstrip("\n") + "\n" + "".join(f"   {name}\n" for name in notes)
    source[0] = text


# -- Inherited scikit-learn plumbing ----------------------------------------------
_SKLEARN_ROUTING = re.compile(r"^(get_metadata_routing|set_\w+_request)$")


def _skip_metadata_routing(app, what, name, obj, skip, options):
    """Leave scikit-learn's metadata-routing methods to scikit-learn's docs.

    Every estimator and splitter inherits ``get_metadata_routing`` and
    generated ``set_*_request`` methods; they are generic scikit-learn
    machinery, and their docstrings point into scikit-learn's own site.
    ``get_params`` / ``set_params`` stay documented.
    """
    if _SKLEARN_ROUTING.match(name):
        return True
    return None


def setup(app):
    app.connect("source-read", _index_toctree_entries)
    app.connect("autodoc-skip-member", _skip_metadata_routing)
