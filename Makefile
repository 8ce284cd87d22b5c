# Every target sets up .venv from nothing when it is missing (or pyproject.toml changed).
# Override the PyTorch wheels for your platform, e.g. `make test TORCH="torch torchvision"`.
PYTHON ?= python3
TORCH ?= torch==2.14.1 torchvision==0.29.1
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PARAMS ?= params.yaml

.PHONY: setup repro test test-fast fuzz lint format ui sweep bench clean services-deps tracking-server

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev,export,cloud,openvino]"
	@touch $(STAMP)

repro: $(STAMP)  ## run the whole DVC pipeline (shapes dataset by default)
	@test -d .git || git init -q
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# Tests that load OpenVINO run in a second pytest process: with OpenVINO loaded, the one
# process of the whole suite died of a segmentation fault several tests later (three runs on
# an AMX Xeon, 2026-12-03; no Python traceback, so in a native thread). Each part passes alone.
test: $(STAMP)  ## the full test suite (what .ci/run calls)
	$(BIN)/python -m pytest -q --durations=20 -m "not openvino"
	$(BIN)/python -m pytest -q --durations=5 -m openvino

test-fast: $(STAMP)  ## skip tests marked slow
	$(BIN)/python -m pytest -q -m "not slow"

fuzz: $(STAMP)  ## the readers' property-based tests, many more examples than CI (tests/fuzz.py)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -q -m fuzz --durations=10 \
		--hypothesis-show-statistics

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

ui: $(STAMP)  ## MLflow UI on 127.0.0.1 over the tracking URI in params.yaml
	$(BIN)/python -m pipeline.ui --params $(PARAMS)

tracking-server: $(STAMP)  ## team MLflow server: PostgreSQL ($$MLFLOW_BACKEND_STORE_URI) + S3/folder artifacts
	$(BIN)/python -m pipeline.server $(SERVER_ARGS)

sweep: $(STAMP)  ## Ray Tune sweep over the space in params.yaml (builds the shards it needs first)
	@test -d .git || git init -q
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro shards
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pipeline.tune --params $(PARAMS)

bench: $(STAMP)
	$(BIN)/python bench/model_speed.py
	$(BIN)/python bench/data_speed.py

services-deps:  ## what the service tests need (Debian): PostgreSQL's initdb/postgres, Chromium (the UI test)
	@$(call apt_install,postgresql,ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb)
	@$(call apt_install,chromium,command -v chromium || command -v chromium-browser)

# $(call apt_install,PACKAGE,TEST): nothing when TEST finds it; else apt-get as root, or through
# sudo (without a password prompt) as another user; else say how, and its tests skip.
define apt_install
if { $(2); } >/dev/null 2>&1; then \
  echo "$(1): present"; \
elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null; \
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null && command -v apt-get >/dev/null; then \
  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null; \
else \
  echo "$(1) missing: install it (e.g. sudo apt-get install $(1)); its tests skip"; \
fi
endef

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
