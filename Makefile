# lvlm_probe developer commands. `make demo` and `make test` work on a fresh machine.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-retrain demo lint bench gpu-check docs notebooks report-screenshot clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# The CPU build of torch first (a plain `torch` requirement would pull a multi-GB CUDA build). A venv
	# that already has torch keeps it, so re-running after a setup.cfg edit never swaps the build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev,bench]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m "not retrain" tests

# Full from-scratch retrains of every shipped checkpoint (7-15 min each, about 3 hours), each compared with its
# card; ARGS="-k cooccurrence" runs a subset.
test-retrain: $(STAMP)
	$(BIN)/python -m pytest -q -ra -m retrain tests $(ARGS)

demo: $(STAMP)
	$(BIN)/lvlm-probe demo --out runs/demo

# Optional: a screenshot of the demo report as a browser shows it (needs Debian's chromium:
# apt-get install chromium), kept in docs/img/report.png.
report-screenshot: $(STAMP)
	test -f runs/demo/report.html || $(BIN)/lvlm-probe demo --out runs/demo
	chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1200,2200 \
		--screenshot=docs/img/report.png "file://$(CURDIR)/runs/demo/report.html"

lint: $(STAMP)
	$(BIN)/ruff check lvlm_probe tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/capture_overhead.py

# On a CUDA machine: gpu tests, capture overhead at LLaVA-1.5-7B's shape, half-precision stores, torchrun
# (~8 min, docs/gpu.md).
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py

# The documentation site (MkDocs, strict: any warning fails). Installs the docs extra on first use.
docs: $(STAMP)
	$(BIN)/python -c "import mkdocs, material, mkdocstrings_handlers.python" 2>/dev/null || \
		$(BIN)/python -m pip install -q -e ".[docs]"
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

# Execute every notebooks/*.ipynb on CPU, offline; a failing cell fails. The repository copies are not
# modified (executed copies go to runs/notebooks/).
notebooks: $(STAMP)
	$(BIN)/python -c "import nbclient, nbformat, ipykernel" 2>/dev/null || \
		$(BIN)/python -m pip install -q -e ".[notebooks]"
	CUDA_VISIBLE_DEVICES= $(BIN)/python notebooks/_execute.py

clean:
	rm -rf $(VENV) runs .pytest_cache
