# Two commands on a fresh machine: `make run` and `make test`. Everything is installed into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
BENCH_STAMP := $(VENV)/.installed-bench
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: run test test-fast lint bench docs clean

# Running needs the package and the examples' extra (numpy and Pillow, for the Mandelbrot
# example); the dev extra (test tools, the docs site, Dask, Ray, Playwright) is for `make test`,
# and far bigger.
$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[examples]'
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP) $(RUN_STAMP)

run: $(RUN_STAMP)
	$(BIN)/taskswarm run examples/mandelbrot.py --output mandelbrot.png

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m mypy
	$(BIN)/python -m pytest

# The quick tier for the edit-run loop: unit and in-process tests (the modules tests/conftest.py
# lists in FAST_MODULES), under a minute; `make test` stays the whole suite.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'fast and not slow'

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m mypy

# The peers (loky, dask, ray, ipyparallel) are installed only for this target.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/peers.py

# The documentation site, built into build/site; --strict fails on any warning (a broken link,
# a docstring mkdocstrings cannot read, a page missing from the nav). The build fetches nothing.
$(DOCS_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info mandelbrot.png
