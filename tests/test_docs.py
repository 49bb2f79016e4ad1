"""The documentation: the Sphinx site builds without warnings, the examples
in the docstrings run as doctests, and every gallery example runs.

The site build renders the gallery without running the examples
(``-D plot_gallery=0``: they take minutes, and one needs Omniglot);
``make docs`` runs them in full. Here each ``examples/plot_*.py`` runs as a
script in smoke mode (``FOMAML_EXAMPLES_SMOKE=1``: the same code with tiny
budgets), skipped where a data set it declares ("# Needs data: ...") is
missing.
"""

import doctest
import importlib
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fomaml_sklearn
from fomaml_sklearn.datasets import get_data_home

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
EXAMPLES = sorted((REPO / "examples").glob("plot_*.py"))
SHARED_DATA = REPO.parent / "shared" / "data"

# Modules whose import has side effects (running the command line).
NOT_DOCTESTED = {"__main__"}
MODULES = sorted(
    f"fomaml_sklearn.{m.name}"
    for m in pkgutil.iter_modules(fomaml_sklearn.__path__)
    if m.name not in NOT_DOCTESTED
)


def test_sphinx_site_builds_without_warnings(tmp_path):
    if importlib.util.find_spec("sphinx") is None:
        pytest.skip("sphinx is not installed (pip install -e '.[docs]')")
    out = tmp_path / "html"
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
           "-D", "plot_gallery=0", "-d", str(tmp_path / "doctrees"), str(DOCS), str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    missing = [name for name in ("numpydoc", "sphinx_gallery", "myst_parser",
                                 "pydata_sphinx_theme")
               if importlib.util.find_spec(name) is None]
    assert proc.returncode == 0, (
        f"sphinx-build exited with {proc.returncode}"
        + (f" (docs packages missing: {missing})" if missing else "")
        + f"\n--- stderr ---\n{proc.stderr[-6000:]}\n--- stdout ---\n{proc.stdout[-2000:]}"
    )
    for page in [
        "index.html",
        "api.html",
        "gen_modules/fomaml_sklearn.FOMAMLClassifier.html",
        "gen_modules/fomaml_sklearn.few_shot_scorer.html",
        "gen_modules/fomaml_sklearn.callbacks.TimeLimit.html",
        "user_guide/index.html",
        "user_guide/meta_learning.html",
        "user_guide/persistence.html",
        "auto_examples/index.html",
        "auto_examples/plot_digits_quickstart.html",
        "design.html",
    ]:
        assert (out / page).is_file(), f"{page} was not built"
    api = (out / "gen_modules/fomaml_sklearn.FOMAMLClassifier.html").read_text()
    # numpydoc rendered the parameters, and autodoc the methods.
    for text in ("n_inner_steps_test", "fomaml_sklearn.FOMAMLClassifier.adapt",
                 "fomaml_sklearn.FOMAMLClassifier.evaluate"):
        assert text in api, f"{text!r} missing from the FOMAMLClassifier page"


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name):
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    )
    tests = [t for t in finder.find(module, module_name) if t.examples]
    # Only what the module defines, not what it imports.
    tests = [t for t in tests if t.name.startswith(module_name)]
    for test in sorted(tests, key=lambda t: t.name):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) of {module_name} failed"


def test_the_estimator_has_a_docstring_example():
    examples = doctest.DocTestFinder().find(fomaml_sklearn.FOMAMLClassifier)
    assert any(t.examples for t in examples)


# -- The gallery examples, in smoke mode ------------------------------------------

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _example_env():
    env = dict(os.environ, FOMAML_EXAMPLES_SMOKE="1", OMP_NUM_THREADS="1",
               MPLBACKEND="Agg")
    if SHARED_DATA.is_dir():
        env["FOMAML_SKLEARN_DATA"] = str(SHARED_DATA)
    return env


def _missing_data(name, env):
    """Why data set ``name`` is not available to an example run with ``env``, or None."""
    data_home = get_data_home(env.get("FOMAML_SKLEARN_DATA"), create=False)
    if name == "omniglot":
        path = data_home / "omniglot" / "images_background.npz"
        return None if path.exists() else (
            f"Omniglot is not in the data home: {path} is missing (set "
            "FOMAML_SKLEARN_DATA, or put it in ../shared/data)")
    if name == "mnist":
        raw = Path(env.get("FOMAML_MNIST_ROOT", data_home / "mnist")) / "MNIST" / "raw"
        missing = [f for f in MNIST_FILES if not (raw / f).exists()]
        return None if not missing else (
            f"MNIST is not available: {raw} lacks {', '.join(missing)} (set "
            "FOMAML_MNIST_ROOT to a folder holding MNIST/raw/)")
    raise ValueError(f"unknown data set {name!r}")


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_gallery_example_runs_in_smoke_mode(example, tmp_path):
    source = example.read_text()
    env = _example_env()
    # The data sets the example declares (docs/conf.py reads the same line).
    needs = re.search(r"(?m)^# Needs data: (\w+(?:, *\w+)*)\.", source)
    for name in (needs.group(1).split(",") if needs else []):
        reason = _missing_data(name.strip(), env)
        if reason:
            pytest.skip(f"{example.name}: {reason}")
    assert re.search(r'(?m)^SMOKE = os.environ.get\("FOMAML_EXAMPLES_SMOKE"\) == "1"$',
                     source), f"{example.name} has no smoke mode"
    pngs = re.findall(r'savefig\("([^"]+\.png)"', source)
    assert pngs, f"{example.name} saves no PNG"
    proc = subprocess.run([sys.executable, str(example)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (
        f"{example.name} exited with {proc.returncode}\n--- stderr ---\n"
        f"{proc.stderr[-4000:]}\n--- stdout ---\n{proc.stdout[-2000:]}")
    for png in pngs:
        assert (tmp_path / png).is_file(), f"{example.name} did not save {png}"
