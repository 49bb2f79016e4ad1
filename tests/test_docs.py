"""The documentation: the Sphinx site builds without warnings, and the
examples in the docstrings run as doctests.

The site build renders the gallery without running the examples
(``-D plot_gallery=0``: they take minutes, and one needs Omniglot);
``make -C docs html`` runs them.
"""

import doctest
import importlib
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import fomaml_sklearn

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"

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
