# The two set-up commands: `make demo` (SQLite demo) and `make test` (whole suite, SQLite + MariaDB).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: install test lint format demo demo-portal bench-quick clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

install: $(BIN)/.installed

test: $(BIN)/.installed
	$(BIN)/pytest -q -rs $(PYTEST_ARGS)

# ruff's lint and format check, as CI runs them before the tests; `make format` rewrites the tree
lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: $(BIN)/.installed
	$(BIN)/azamrecon demo

# portal mode: the test Django portal's rows beside azamrecon on SQLite, printed as they change (tests/portal_django/demo.py)
demo-portal: $(BIN)/.installed
	$(BIN)/python -m tests.portal_django.demo

# The benchmarks' short runs (each under a minute); full runs and flags: bench/RESULTS.md.
bench-quick: $(BIN)/.installed
	$(BIN)/python -m bench.receiver --quick
	$(BIN)/python -m bench.fold --quick
	$(BIN)/python -m bench.poll --quick
	$(BIN)/python -m bench.latency --quick
	$(BIN)/python -m bench.portal --quick

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
