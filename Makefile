# tasklane: the two commands README promises (make run, make test) and their helpers.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run run-scaled test bench lint format clean system-packages tools lock

# A stamp per dependency set, so `make test` after `make run` installs only the extras.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The runtime dependencies come from requirements.lock, hash-checked, exactly as the image
# installs them; the project itself (and the dev extra's tools) on top, with nothing to resolve.
$(VENV)/.runtime-installed: pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q -e '.[dev]'
	touch $@ $(VENV)/.runtime-installed

## lock: re-resolve requirements.lock from pyproject.toml (keeps its pins; UPGRADE=1 takes the newest)
UV_VERSION ?= 0.13.9
lock: | $(BIN)/python
	$(BIN)/pip install -q "uv==$(UV_VERSION)"
	$(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
		--custom-compile-command "make lock" $(if $(UPGRADE),--upgrade) -o requirements.lock

## run: single mode on http://$(HOST):$(PORT) (in-process executor, in-memory store, no services)
run: $(VENV)/.runtime-installed
	$(BIN)/tasklane serve --host $(HOST) --port $(PORT)

## run-scaled: redis-server + api (hybrid) + one Celery worker + beat on localhost; Ctrl-C stops all
run-scaled: $(VENV)/.runtime-installed system-packages
	HOST=$(HOST) PORT=$(PORT) VENV=$(VENV) scripts/run-local scaled

system-packages:
	scripts/ensure-system-packages redis-server

## tools: helm 4, kubectl 1.33 (unless PATH has them) and checkov into .cache/tools (chart tests)
tools:
	scripts/install-tools --checkov >/dev/null

## test: lint, then the whole suite (starts its own redis-server on free loopback ports)
test: $(VENV)/.dev-installed system-packages tools
	scripts/ensure-system-packages prometheus
	$(BIN)/ruff check app tests scripts
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

## bench: the benchmarks of scripts/bench (baseline vs tasklane ratios, one run; JSON in .cache/bench)
bench: $(VENV)/.runtime-installed system-packages
	$(BIN)/python -m scripts.bench

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check app tests scripts
	$(BIN)/ruff format --check app tests scripts
	$(BIN)/lint-imports

format: $(VENV)/.dev-installed
	$(BIN)/ruff check --fix app tests scripts
	$(BIN)/ruff format app tests scripts

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
