# avatar4d — the two commands of the README are `make demo` and `make test`.
# Both set up .venv on first use (Python >= 3.10; the PyPI torch build runs on CPU too).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help setup demo test test-unit test-integration lint bench lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: $(STAMP)  ## create .venv and install avatar4d with the pinned versions of constraints.txt

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar off -c constraints.txt -e ".[dev]"
	touch $@

demo: $(STAMP)  ## the main job on the embedded default: world factory → VAE → encode → DiT → renderer → an avatar of a held-out portrait (outputs/demo/index.html); resumes when run again
	$(BIN)/python -m avatar4d.pipeline.demo --data data --heldout data-heldout --runs runs --out outputs
	$(BIN)/avatar4d demo --out outputs/world

test: $(STAMP)  ## the whole test suite (unit + integration), CPU only: unit tests on 2 processes, then integration in one
	$(BIN)/python -m pytest tests/unit -q -n 2
	$(BIN)/python -m pytest tests/integration -q

test-unit: $(STAMP)  ## fast unit tests (2 processes; pytest-xdist)
	$(BIN)/python -m pytest tests/unit -q -n 2

test-integration: $(STAMP)  ## tests that start real Ray / DeepSpeed / Serve / MLflow
	$(BIN)/python -m pytest tests/integration -q

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check avatar4d factory train serve cluster tests benchmarks

bench: $(STAMP)  ## CPU benchmarks, printed side by side (add --report/--out to write benchmarks/results/)
	$(BIN)/python benchmarks/raster.py
	$(BIN)/python benchmarks/generator.py --preset tiny
	$(BIN)/python benchmarks/factory.py
	$(BIN)/python benchmarks/train_step.py

lock: $(STAMP)  ## re-pin constraints.txt from the current environment
	{ head -n 2 constraints.txt; $(BIN)/python -m pip freeze --exclude-editable | grep -v '^avatar4d'; } > constraints.tmp
	mv constraints.tmp constraints.txt

clean:  ## remove the environment and outputs
	rm -rf $(VENV) outputs
