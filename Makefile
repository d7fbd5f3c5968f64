# Erynoa booking backbone: one entry point for a fresh machine and for CI.
#   make run    the system (local stack + API + agents + materializer) in the foreground
#   make test   unit then integration tests against a real local stack, stopped afterwards
# Settings come from ERYNOA_* variables (see erynoa/settings.py), e.g. ERYNOA_KAFKA_PORT.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
ERYNOA := $(VENV)/bin/erynoa
STAMP := $(VENV)/.installed-stamp
# The order tests run in: pure unit tests first, then the ones needing the stack, then any other.
TEST_PATHS := tests/unit tests/integration \
	$(filter-out tests/unit tests/integration tests/__pycache__,$(patsubst %/,%,$(wildcard tests/*/)))
PYTEST_ARGS ?=
# `make run` is the local development system, and says so: ERYNOA_ENVIRONMENT=development is
# what lets the development token issuer run (on 127.0.0.1 only; erynoa/settings.py). An
# environment set in the shell or in .env wins. `make test` needs nothing: the tests declare
# themselves the test environment (tests/conftest.py).
RUN_ENVIRONMENT := $(if $(or $(ERYNOA_ENVIRONMENT),$(shell grep -s '^ERYNOA_ENVIRONMENT=' .env)),,ERYNOA_ENVIRONMENT=development)

.PHONY: help setup system-packages stack run test _test lint docs asyncapi-cli down clean bench bench-quick faults

help:
	@echo "make setup   system packages (when missing) and $(VENV) with the project"
	@echo "make stack   setup, then the local stack up, topics applied, migrations run"
	@echo "make run     stack, then the API, agents and materializer in the foreground"
	@echo "make test    stack, unit and integration tests, stack stopped if this run started it"
	@echo "make lint    ruff check, ruff format --check, mypy, lint-imports (layers), asyncapi.yaml up to date"
	@echo "make docs    render asyncapi.yaml's HTML (served at /api/v1/events/docs/)"
	@echo "make bench   the benchmark (bench/run.py): writes bench/results/<date>.md and .json"
	@echo "make faults  the fault matrix on a private stack: bench/results/faults-<date>.*"
	@echo "make down    stop the local stack"
	@echo "make clean   stop the local stack and delete its data (.stack)"

setup: system-packages $(STAMP)

system-packages:
	@bash erynoa/stack/system-packages.sh

$(STAMP): pyproject.toml
	@if [ ! -x $(PY) ]; then echo "setup: creating $(VENV) with $(PYTHON)"; $(PYTHON) -m venv $(VENV); fi
	@echo "setup: pip install -e '.[dev]' into $(VENV) (pyproject.toml changed)"
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

stack: setup
	@$(ERYNOA) stack up
	@$(ERYNOA) topics apply
	@$(ERYNOA) db migrate
	@$(ERYNOA) schemas register

# The HTML docs of the committed asyncapi.yaml, into build/ where the API serves them; rendered
# again only when the document changed. It never rewrites asyncapi.yaml (`erynoa asyncapi` does;
# a test fails while it is stale). The renderer is an npm package installed on first use: without
# Node.js and npm the docs page answers 503 and says how to render it.
docs: setup
	@if command -v npm >/dev/null; then $(ERYNOA) asyncapi --no-write --html; \
	else echo "docs: npm not found; /api/v1/events/docs/ stays unrendered"; fi

run: stack docs
	exec env $(RUN_ENVIRONMENT) $(ERYNOA) run

test: setup
	@$(PY) -m erynoa.stack.with_stack -- $(MAKE) --no-print-directory _test

# The tests run `asyncapi validate` too: its npm package (a few minutes to install, once) is set
# up here rather than inside the suite.
asyncapi-cli: setup
	@if command -v npm >/dev/null; then $(ERYNOA) asyncapi --no-write --validate >/dev/null; fi

_test: stack docs asyncapi-cli
	$(PY) -m pytest $(TEST_PATHS) $(PYTEST_ARGS)

lint: setup
	@rc=0; \
	$(VENV)/bin/ruff check . || rc=1; \
	$(VENV)/bin/ruff format --check . || rc=1; \
	$(VENV)/bin/mypy || rc=1; \
	$(VENV)/bin/lint-imports || rc=1; \
	$(ERYNOA) asyncapi --check >/dev/null || rc=1; \
	exit $$rc

PEERS_STAMP := $(VENV)/.peers-stamp

# The benchmark's peers (bench/peers) come from the `peers` extra; Temporal's dev server is
# built by bench/run.py itself (once, a few minutes).
$(PEERS_STAMP): pyproject.toml
	@echo "bench: pip install -e '.[dev,peers]' into $(VENV)"
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,peers]'
	@touch $(PEERS_STAMP)

bench: stack $(PEERS_STAMP)
	$(PY) bench/run.py --no-stack

bench-quick: stack $(PEERS_STAMP)
	$(PY) bench/run.py --quick --no-stack

faults: setup
	$(ERYNOA) faults

down:
	@if [ -x $(ERYNOA) ]; then $(ERYNOA) stack down; else echo "no $(VENV): nothing to stop"; fi

clean:
	@if [ -x $(ERYNOA) ]; then $(ERYNOA) stack clean; fi
	rm -rf .stack
