# lvlm_probe developer commands. `make demo` and `make test` work on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-retrain demo lint bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# The CPU build of torch first, and pinned again beside the project so that no resolver step
	# swaps it for a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q torch==2.13.0 -e ".[dev,bench]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not retrain" tests

# Full from-scratch organism retrains (~9 min each on 2 cores), compared with the shipped behaviour.
test-retrain: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m retrain tests

demo: $(STAMP)
	$(BIN)/lvlm-probe demo --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check lvlm_probe tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/capture_overhead.py

clean:
	rm -rf $(VENV) runs .pytest_cache
