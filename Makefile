# Two commands set up a fresh Debian machine: `make demo` and `make test`. Both create .venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo docs test test-fast lint bench clean sysdeps neuralprophet

# python3-venv is not part of a minimal Debian; install it (as root) only when missing.
sysdeps:
	@$(PYTHON) -c "import venv, ensurepip" 2>/dev/null || { \
	  echo "installing python3-venv (apt)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv python3-pip >/dev/null; }

# Three installs into one .venv, each with its own stamp: the demo needs the package and its core
# dependencies only (no test tooling); the docs need MkDocs; the tests need everything. The full one
# covers the others, so it stamps them too.
DEMO_STAMP := $(VENV)/.installed-demo
DOCS_STAMP := $(VENV)/.installed-docs
PIP        := $(PY) -m pip install -q --disable-pip-version-check

$(DEMO_STAMP): pyproject.toml | sysdeps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(DOCS_STAMP): pyproject.toml | sysdeps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e ".[docs]"
	touch $@

$(STAMP): pyproject.toml | sysdeps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -U pip
	$(PIP) -e ".[test,analysis,hyperqueue,notify,docs]"
	touch $@ $(DEMO_STAMP) $(DOCS_STAMP)

demo: $(DEMO_STAMP)
	$(PY) -m balancer.demo

# The documentation site (mkdocs.yml, docs/) into site/, strict: a broken link or anchor fails. The
# same strict build runs in `make test` (tests/unit/test_docs_build.py).
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# ruff's lint (complexity rule included) and its formatter, and mypy on the package (pyproject.toml).
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# Everything: unit, inproc, system (balancer subprocesses), cluster (SLURM, HyperQueue), browser.
test: lint
	$(PY) -m pytest -q

# The quick loop: pure functions and the in-process harness (no balancer subprocess, cluster or browser).
test-fast: lint
	$(PY) -m pytest -q -m "unit or inproc"

bench: $(STAMP)
	$(PY) bench/overhead.py

# NeuralProphet in its own environment, as it needs numpy<2 (see pyproject's neuralprophet extra);
# torch 2.13.0 first: on this machine that is a local CPU wheel, where a bare `torch` would pull a
# multi-GB CUDA build. Then its test runs there (it skips in .venv).
NP_VENV ?= .venv-np
neuralprophet: | sysdeps
	test -x $(NP_VENV)/bin/python || $(PYTHON) -m venv $(NP_VENV)
	$(NP_VENV)/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(NP_VENV)/bin/python -m pip install -q --disable-pip-version-check -e ".[neuralprophet]" \
	  torch==2.13.0 numpy==1.26.4 pandas==2.2.3 pytest pytest-timeout tomli-w
	$(NP_VENV)/bin/python -m pytest -q tests/unit/test_forecast.py

clean:
	rm -rf .balancer-runs .pytest_cache demo-run site
