# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The install compiles the Cython modules, so editing one reinstalls.
$(STAMP): pyproject.toml setup.py $(wildcard stream_detector/*/*.pyx stream_detector/*/*.pxd stream_detector/*/*/*.pyx) | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/stream-detector demo

test: $(STAMP)
	$(BIN)/ruff check stream_detector tests bench
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check stream_detector tests bench

bench: $(STAMP)
	$(BIN)/python bench/throughput.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
	find stream_detector \( -name '*.so' -o -name '*.c' \) -delete
