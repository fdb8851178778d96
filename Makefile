# Two commands for a fresh machine: `make demo` (install + run the demo) and `make test` (install + all tests).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install demo up test lint typecheck pytest test-full reliability bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/mjq demo

up: install
	$(BIN)/mjq up

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy worker tasks simulator bench tests

pytest: install
	$(BIN)/pytest -q

test: install
	$(BIN)/ruff check .
	$(BIN)/mypy worker tasks simulator bench tests
	$(BIN)/lint-imports
	$(BIN)/pytest -q

test-full: install
	$(BIN)/pytest -q --full

reliability: install
	$(BIN)/pytest -q tests/reliability --full

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
