# strongroom — two commands on a fresh machine:
#   make run    serve on the embedded default (SQLite + SeaweedFS with Object Lock) at 127.0.0.1:8000
#   make test   install what the tests need and run the whole suite (starts SeaweedFS itself)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The suite waits on subprocesses, SeaweedFS and PostgreSQL more than it computes: four workers
# on two cores finish it in about a third of the serial time. Each test module runs in one worker
# (its module fixtures are built once).
TEST_WORKERS ?= 4

.PHONY: run test lint bench install clean-venv

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "strongroom needs Python 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed-run

install: $(VENV)/.installed-run

run: $(VENV)/.installed-run
	$(BIN)/strongroom serve

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

lint: $(VENV)/.installed-test
	$(BIN)/ruff check archiver audit policies review exporters console strongroom tests bench
	$(BIN)/mypy

bench: $(VENV)/.installed-test
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/seal.py
	$(BIN)/python bench/verify.py
	$(BIN)/python bench/history_import.py
	$(BIN)/python bench/history_kill9.py
	$(BIN)/python bench/signin.py
	$(BIN)/python bench/media.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/export.py
	$(BIN)/python bench/console.py
	$(BIN)/python bench/supervision.py
	$(BIN)/python bench/review_queue.py

clean-venv:
	rm -rf $(VENV)
