# Two entry points (see README.md):
#   make run    meta-train on Omniglot, print few-shot accuracy next to baselines
#   make test   run the test suite
# and, for developers:
#   make docs   build the documentation site, running every gallery example in full
#               (4.5 min on 1 thread; Omniglot read from DATA_HOME, by default
#               ../shared/data; see docs/performance.md). The test suite runs
#               the examples in smoke mode only (FOMAML_EXAMPLES_SMOKE=1).
# Each creates the virtual environment $(VENV) and installs the package on first use.

VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
RUN_ARGS ?=
DATA_HOME ?= ../shared/data

.PHONY: run test lint docs install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,docs]"
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(PY) benchmarks/few_shot.py $(RUN_ARGS)

# pytest exits 5 when it collects no test; that must not pass for a failure
# nor fail the build, so it is reported and mapped to success explicitly.
# ruff (lint and import order, configured in pyproject.toml) runs first.
test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# The site with the gallery executed in full: every example runs, not only
# those changed since the last build (run_stale_examples), never in smoke mode.
# An example whose data set is missing is shown without running (docs/conf.py
# says which at the start). Per-example times: docs/sg_execution_times.rst.
docs: $(VENV)/.installed
	FOMAML_SKLEARN_DATA="$(abspath $(DATA_HOME))" FOMAML_EXAMPLES_SMOKE= \
	$(MAKE) -C docs html SPHINXBUILD="$(abspath $(PY)) -m sphinx" \
		SPHINXOPTS="-W --keep-going -D sphinx_gallery_conf.run_stale_examples=True"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
