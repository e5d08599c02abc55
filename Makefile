# llmos-jobs: `make demo` runs the pipeline on the embedded default; `make test` runs
# the linters, the type checker and the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed here, not pinned in pyproject.toml: on CPU machines the 2.13.0
# CPU build; on a GPU host, set TORCH to the CUDA build you want.
TORCH  ?= torch==2.13.0

.PHONY: setup demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/llmos demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy

# The suite waits on real worker processes far more than it computes, so it runs in
# several pytest processes even on two cores; each has its own redis-server, PostgreSQL
# databases and data directories (tests/support/services.py, tests/e2e/conftest.py).
TEST_PROCESSES ?= 4

test: lint
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist worksteal

bench: setup
	$(BIN)/python bench/pipeline_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
