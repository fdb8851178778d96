# Two commands for a fresh machine: `make demo` (install + run the demo) and `make test` (install + all tests).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install browser demo up test lint typecheck pytest test-full reliability bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for the dashboard's browser tests (tests/test_dashboard.py, driven by Playwright through the
# system browser: no browser download). Debian's package; installed when missing (needs root and apt).
CHROMIUM ?= $(shell command -v chromium || command -v chromium-browser)

browser:
	@if [ -z "$(CHROMIUM)" ]; then \
		echo "installing Debian's chromium for the browser tests"; \
		(apt-get install -y --no-install-recommends chromium || (apt-get update && apt-get install -y --no-install-recommends chromium)); \
	fi

demo: install
	$(BIN)/mjq demo

up: install
	$(BIN)/mjq up

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy worker tasks simulator bench tests

# The suite in 3 pytest-xdist workers (most of a test waits on processes: 3 keep 2 cores busy) (each with its own Redis, simulator, worker stack, ports and temp dirs);
# a test module is one unit of work, the reliability scenarios are one unit (tests/conftest.py).
XDIST ?= -n 3 --dist loadfile

pytest: install browser
	$(BIN)/pytest -q $(XDIST) --durations=15

test: install browser
	$(BIN)/ruff check .
	$(BIN)/mypy worker tasks simulator bench tests
	$(BIN)/lint-imports
	$(BIN)/pytest -q $(XDIST) --durations=15

test-full: install browser
	$(BIN)/pytest -q --full

reliability: install
	$(BIN)/pytest -q tests/reliability --full

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build *.egg-info
