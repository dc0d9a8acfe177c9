# Two commands that work on a fresh machine (Python >= 3.10 with venv and pip):
#   make demo   set up .venv, train BN vs no BN on sigmoid (3 seeds), collect, draw the figure
#   make test   set up .venv with the dev extras and run the test suite and the notebooks
#   make reproduce   every experiment, figure and the claims report (about 65 minutes, 2 cores)
# Data: MNIST is downloaded to ./data on first use; point BNLAB_DATA_ROOT at a folder holding
# MNIST/raw/ to use existing files (tests default to ../shared/data).

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export BNLAB_TEST_DATA ?= $(abspath ../shared/data)

.PHONY: demo test lint bench reproduce

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/python -m bnlab -m experiment=demo
	$(BIN)/python -m bnlab.collect results/sweeps/demo
	$(BIN)/python -m bnlab.figures demo

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q
	$(BIN)/python -m pytest -q --nbmake notebooks/

reproduce: $(BIN)/.installed
	$(BIN)/python -m bnlab.reproduce

lint: $(BIN)/.installed
	$(BIN)/ruff check bnlab tests scripts notebooks hydra_plugins

bench: $(BIN)/.installed
	$(BIN)/python scripts/benchmark.py
