# Every target sets up .venv from nothing when it is missing (or pyproject.toml changed).
# Override the PyTorch wheels for your platform, e.g. `make test TORCH="torch torchvision"`.
PYTHON ?= python3
TORCH ?= torch==2.14.1 torchvision==0.29.1
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PARAMS ?= params.yaml

.PHONY: setup repro test test-fast lint format ui sweep bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev,export]"
	@touch $(STAMP)

repro: $(STAMP)  ## run the whole DVC pipeline (shapes dataset by default)
	@test -d .git || git init -q
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: $(STAMP)  ## the full test suite (what .ci/run calls)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)  ## skip tests marked slow
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

ui: $(STAMP)  ## MLflow UI on 127.0.0.1 over the tracking URI in params.yaml
	$(BIN)/python -m pipeline.ui --params $(PARAMS)

sweep: $(STAMP)  ## Ray Tune sweep over the space in params.yaml (builds the shards it needs first)
	@test -d .git || git init -q
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro shards
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pipeline.tune --params $(PARAMS)

bench: $(STAMP)
	$(BIN)/python bench/model_speed.py
	$(BIN)/python bench/data_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
