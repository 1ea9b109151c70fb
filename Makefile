# Two entry points for a new machine: `make demo` (set up + run the whole pipeline on the
# generated demo dataset) and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test benchmark ui

$(BIN)/dagster: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[test]'
	touch $@

.env:
	echo "DAGSTER_HOME=$(CURDIR)" > .env

setup: $(BIN)/dagster .env

demo: setup
	$(BIN)/python -m cpst_pipeline.materialize_all

test: setup
	$(BIN)/python -m pytest

ui: setup
	$(BIN)/dagster dev -w workspace.yaml
