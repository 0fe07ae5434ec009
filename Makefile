# Two commands on a fresh machine: `make run` and `make test`.
PY := .venv/bin/python
export CONVEYOR_HOME ?= $(CURDIR)/var

.PHONY: run test lint setup setup-test unit bench clean

setup:
	@bash scripts/setup.sh

setup-test:
	@bash scripts/setup.sh test

## Start API, web UI and local workers on http://127.0.0.1:8000 (embedded defaults).
run: setup
	@mkdir -p "$(CONVEYOR_HOME)"
	@$(PY) -m conveyor.cli bootstrap
	@$(PY) -m conveyor.cli serve --host 127.0.0.1 --port 8000

## Lint, type-check and run every test (CI runs this).
test: setup-test lint
	@$(PY) -m pytest -q -p no:cacheprovider

lint: setup
	@$(PY) -m ruff check conveyor tests bench
	@$(PY) -m mypy

unit: setup
	@$(PY) -m pytest -q tests/unit

bench: setup
	@$(PY) bench/run_all.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
