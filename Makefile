# The README's two commands: `make demo` (offline end-to-end demo) and `make test` (set up + tests).
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

$(BIN)/dgl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[cpu,test]"
	touch $(BIN)/dgl

setup: $(BIN)/dgl

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

demo: setup
	$(BIN)/dgl demo --out demo_out

bench: setup
	$(BIN)/python benchmarks/run_all.py

.PHONY: setup test test-slow demo bench
