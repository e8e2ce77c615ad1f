# DMHA developer entry points. Two commands matter:
#   make serve   install everything, prepare the default model, run the server
#   make test    install everything, prepare the default model, lint, run the test suite
# Re-running either is fast: the install is skipped while pyproject.toml is unchanged,
# and the model is converted once into $(DATA_DIR).

PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# Leave empty here (the registry mirror serves the CPU build of torch==2.13.0);
# elsewhere set TORCH_INDEX=https://download.pytorch.org/whl/cpu to avoid the
# multi-GB CUDA build on CPU-only machines.
TORCH_INDEX ?=
TORCH_VERSION := 2.13.0
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
export OMP_NUM_THREADS ?= 1

.PHONY: install serve setup lint test test-fast bench protos config clean help

help:
	@echo "make serve   - install, prepare the model, run the server on 127.0.0.1:50051"
	@echo "make test    - install, prepare the model, lint, run unit + integration + slow tests"
	@echo "make lint    - ruff (lint + format check), mypy and import-linter (config in pyproject.toml)"
	@echo "make bench   - run every benchmark (figures for BENCHMARKS.md)"
	@echo "make protos  - regenerate the gRPC stubs from protos/"
	@echo "make config  - regenerate configs/default.yaml from the config tree"

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: a plain requirement on a bare venv would pull the CUDA build.
ifeq ($(HAS_GPU),1)
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[dev,gpu]'
else
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -e '.[dev]'
endif
	touch $(STAMP)

setup: install
	$(BIN)/dmha setup --config configs/default.yaml

serve: setup
	$(BIN)/dmha serve --config configs/default.yaml

# The same checks as .pre-commit-config.yaml; their config lives in pyproject.toml.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: setup lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/kb.py
	$(BIN)/python bench/memory_locomo.py
	$(BIN)/python bench/online_edit.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/fuzz.py

protos: install
	$(BIN)/python protos/generate.py

config: install
	$(BIN)/dmha config --defaults > configs/default.yaml

clean:
	rm -rf $(VENV) .pytest_cache
