# The README's two commands: `make demo` (offline end-to-end demo) and `make test` (set up + lint + docs + tests).
# Each target installs the profile it needs into one virtualenv (.venv):
#   demo: the runtime + training + export profiles; test: everything the tests use.
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.demo: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[cpu,export]"
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"
	touch $@ $(VENV)/.demo

setup: $(VENV)/.test

# the docs site (docs/, mkdocs.yml; the `docs` extra, part of `test`) must build without a warning
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

test: setup
	$(BIN)/ruff check .
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site
	$(BIN)/python -m pytest -q

# the slow tests also run Ray (a local cluster and a two-node one on loopback)
$(VENV)/.ray: pyproject.toml $(VENV)/.test
	$(BIN)/pip install -q -e ".[test,ray]"
	touch $@

test-slow: $(VENV)/.ray
	$(BIN)/python -m pytest -q -m slow

demo: $(VENV)/.demo
	$(BIN)/dgl demo --out demo_out

$(VENV)/.bench: pyproject.toml $(VENV)/.test
	$(BIN)/pip install -q -e ".[bench]"
	touch $@

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/run_all.py

.PHONY: setup docs test test-slow demo bench

# GPU check: prepare benchmarks/.work/gpu/ (wheels the GPU image lacks, the project wheel, synthetic videos, run.sh)
# here, verify it with a dry run, and print (and write to benchmarks/.work/gpu/COMMAND.txt) the one command to run there.
gpu-check: $(VENV)/.demo
	$(BIN)/python benchmarks/gpu_check/prepare.py

.PHONY: gpu-check
