# Two commands that work on a fresh machine (Python >= 3.10 with venv and pip):
#   make demo   set up .venv, train BN vs no BN on sigmoid (3 seeds), collect, draw the figure
#               into results/demo/ (about a minute of training)
#   make test   set up .venv with the dev extras and run the tests, notebooks included
#               (about 15 minutes on 2 cores)
#   make reproduce   every experiment, figure and the claims report (about 95 minutes, 2 cores)
# Data: MNIST is read from $BNLAB_DATA_ROOT when set, else from ../shared/data when that
# holds it (offline), else `make demo` downloads it to ./data (tests never download).

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED := $(abspath ../shared/data)
DATA := $(or $(BNLAB_DATA_ROOT),$(if $(wildcard $(SHARED)/MNIST/raw),$(SHARED),$(abspath data)))
TEST_DATA := $(or $(BNLAB_DATA_ROOT),$(SHARED))

.PHONY: demo test lint bench reproduce

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e .
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

demo: $(BIN)/.installed
	BNLAB_DATA_ROOT=$(DATA) $(BIN)/bnlab train -m experiment=demo
	$(BIN)/bnlab collect results/sweeps/demo
	$(BIN)/bnlab figures demo --out results/demo

test: $(BIN)/.installed-dev
	BNLAB_DATA_ROOT=$(TEST_DATA) $(BIN)/python -m pytest -q --durations=10 -n 2 --dist worksteal

reproduce: $(BIN)/.installed
	BNLAB_DATA_ROOT=$(DATA) $(BIN)/bnlab reproduce

lint: $(BIN)/.installed-dev
	$(BIN)/ruff check bnlab tests notebooks hydra_plugins

bench: $(BIN)/.installed
	BNLAB_DATA_ROOT=$(DATA) $(BIN)/bnlab bench --markdown docs/generated/bench.md
