# Two commands that work on a fresh machine (Python >= 3.10 with venv and pip):
#   make demo   set up .venv, train BN vs no BN on sigmoid (3 seeds), collect, draw the figure
#               into results/demo/ (about a minute of training)
#   make test   set up .venv with the dev extras and run the tests, notebooks included
#               (about 15 minutes on 2 cores)
#   make reproduce   every experiment, figure and the claims report (about 60 minutes, 2 cores)
# Data: one rule for every command (bnlab/engine/data.py): $BNLAB_DATA_ROOT, else this checkout's
# data/, else ~/.cache/bnlab. `make demo` links data/ to $BNLAB_DATA_ROOT when that is set (a
# folder holding MNIST/raw/), so later commands find it without the variable; else it
# downloads MNIST into data/ once. The tests never download.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo link-data test test-fast test-durations lint bench reproduce

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e .
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@

demo: $(BIN)/.installed link-data
	$(BIN)/bnlab data fetch
	$(BIN)/bnlab train -m experiment=demo
	$(BIN)/bnlab collect results/sweeps/demo
	$(BIN)/bnlab figures demo --out results/demo

# data/ -> $BNLAB_DATA_ROOT (when set; a data/ folder of real files is left as it is)
link-data:
	@if [ -n "$$BNLAB_DATA_ROOT" ] && { [ ! -e data ] || [ -L data ]; }; then \
	  mkdir -p "$$BNLAB_DATA_ROOT" && ln -sfn "$$(cd "$$BNLAB_DATA_ROOT" && pwd)" data && \
	  echo "data -> $$(readlink data)"; fi

test: $(BIN)/.installed-dev
	$(BIN)/python -m pytest -q --durations=10 -n 2 --dist worksteal

# the edit-test loop: everything but the tests marked slow (real-MNIST training, subprocesses)
test-fast: $(BIN)/.installed-dev
	$(BIN)/python -m pytest -q -m "not slow" -n 2 --dist worksteal

# the whole suite, keeping every test's time in docs/generated/test-durations.md
test-durations: $(BIN)/.installed-dev
	$(BIN)/python -m pytest -q -n 2 --dist worksteal --durations-file=docs/generated/test-durations.md

reproduce: $(BIN)/.installed
	$(BIN)/bnlab reproduce

lint: $(BIN)/.installed-dev
	$(BIN)/ruff check bnlab tests notebooks hydra_plugins

bench: $(BIN)/.installed
	$(BIN)/bnlab bench --markdown docs/generated/bench.md
