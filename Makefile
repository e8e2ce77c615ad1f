# DMHA developer entry points. Two commands matter:
#   make serve   install everything, prepare the default model, run the server and the
#                HTTP gateway (web chat page at http://127.0.0.1:8080/)
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
SERVE_PORT ?= 50051
GATEWAY_PORT ?= 8080
# The browser tests drive Debian's chromium through Playwright (no browser download).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export OMP_NUM_THREADS ?= 1

.PHONY: install serve setup browser lint test test-fast bench protos config clean help

help:
	@echo "make serve   - install, prepare the model, run the server on 127.0.0.1:$(SERVE_PORT) and the"
	@echo "               gateway on http://127.0.0.1:$(GATEWAY_PORT)/ (web chat page, OpenAI-compatible API)"
	@echo "make browser - install Debian's chromium for the browser tests (no-op when present)"
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

# The gateway runs beside the server and stops with it (Ctrl-C stops both); it answers
# 503 until the server is up, so the two may start in any order.
serve: setup
	@$(BIN)/dmha gateway --port $(GATEWAY_PORT) --address 127.0.0.1:$(SERVE_PORT) --log-level warning & gateway=$$!; \
	trap 'kill $$gateway 2>/dev/null' EXIT INT TERM; \
	$(BIN)/dmha serve --config configs/default.yaml --port $(SERVE_PORT)

# Debian's chromium for the Playwright browser tests; nothing happens when it is there.
browser:
	@test -x $(CHROMIUM) || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core; }

# The same checks as .pre-commit-config.yaml; their config lives in pyproject.toml.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: setup browser lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install browser
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/serve.py
	$(BIN)/python bench/kb.py
	$(BIN)/python bench/memory_locomo.py
	$(BIN)/python bench/edit_speed.py
	$(BIN)/python bench/freeze_memory.py
	$(BIN)/python bench/online_edit.py
	$(BIN)/python bench/load.py
	$(BIN)/python bench/fuzz.py
	$(BIN)/python bench/gateway.py

protos: install
	$(BIN)/python protos/generate.py

config: install
	$(BIN)/dmha config --defaults > configs/default.yaml

clean:
	rm -rf $(VENV) .pytest_cache
