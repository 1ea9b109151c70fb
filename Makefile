# Two entry points for a new machine: `make demo` (set up + run the whole pipeline on the
# generated demo dataset) and `make test`. Everything installs into .venv.
# `make serve` serves the registered champion over HTTP on 127.0.0.1:$(PORT).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The Dagster instance (run history, dagster.yaml): this folder unless DAGSTER_HOME is exported.
# Passed here, never written to .env: Dagster's CLI lets .env override the environment.
DAGSTER_HOME ?= $(CURDIR)
export DAGSTER_HOME
PORT ?= 5001
MODEL ?= cpst-cascade
MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/data/mlflow/mlflow.db

.PHONY: setup demo test benchmark ui serve

$(BIN)/dagster: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[test]'
	touch $@

setup: $(BIN)/dagster
	@# Older set-ups wrote DAGSTER_HOME into .env, where it would override an exported one.
	@if [ -f .env ]; then sed -i '/^DAGSTER_HOME=/d' .env; fi

demo: setup
	$(BIN)/python -m cpst_pipeline.materialize_all

test: setup
	$(BIN)/python -m pytest

ui: setup
	$(BIN)/dagster dev -w workspace.yaml

# mlflow starts uvicorn by name, so the venv's bin folder goes on PATH (nothing to activate).
serve: setup
	PATH="$(abspath $(BIN)):$$PATH" MLFLOW_TRACKING_URI="$(MLFLOW_TRACKING_URI)" \
		$(BIN)/python -m mlflow models serve -m "models:/$(MODEL)@champion" --env-manager local -h 127.0.0.1 -p $(PORT)
