# The two commands of the README. Each one sets up what it needs in .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test lint typecheck bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed-base: pyproject.toml | $(PY)
	$(PIP) install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[dev,all]'
	touch $@ $(VENV)/.installed-base

## make demo: run the main job on the embedded default (SQLite + local files under ./.openma)
demo: $(VENV)/.installed-base
	$(PY) -m openma demo

## make test: ruff, mypy, then the whole pytest suite
test: $(VENV)/.installed-dev lint typecheck
	$(PY) -m pytest

lint: $(VENV)/.installed-dev
	$(PY) -m ruff check openma tests bench examples
	$(PY) -m ruff format --check openma tests bench examples

typecheck: $(VENV)/.installed-dev
	$(PY) -m mypy

bench: $(VENV)/.installed-dev
	$(PY) bench/stores.py

clean:
	rm -rf $(VENV) .openma .pytest_cache .mypy_cache .ruff_cache
