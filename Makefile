# Two entry points for a new machine: `make demo` (set up + run the whole pipeline on the
# generated demo dataset) and `make test`. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The Dagster instance (run history, dagster.yaml): this folder unless DAGSTER_HOME is exported.
# Passed here, never written to .env: Dagster's CLI lets .env override the environment.
DAGSTER_HOME ?= $(CURDIR)
export DAGSTER_HOME

.PHONY: setup demo test benchmark ui

$(BIN)/dagster: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[test]'
	touch $@

setup: $(BIN)/dagster
	@# Older set-ups wrote DAGSTER_HOME into .env, where it would override an exported one.
	@if [ -f .env ]; then sed -i '/^DAGSTER_HOME=/d' .env; fi

demo: setup
	$(BIN)/dagster asset materialize -m cpst_pipeline.definitions --select '*registered_model'

test: setup
	$(BIN)/python -m pytest

ui: setup
	$(BIN)/dagster dev -w workspace.yaml
