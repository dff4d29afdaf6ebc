# Pico monorepo tasks. `make test` works on a fresh machine: it creates the virtual environment,
# installs the pinned CPU torch first (so no dependency pulls a CUDA build), then the three
# packages in editable mode with their test extras, then runs every test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# The CPU build of torch, from its own wheel index on any machine (on Linux, PyPI's torch is a
# CUDA build). PyPI stays an extra index for torch's own dependencies; where the CPU index cannot
# be reached, pip installs the pinned version it finds elsewhere.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PYPI_INDEX  ?= https://pypi.org/simple
STAMP   = $(VENV)/.installed
PYTEST  = $(BIN)/python -m pytest -n 2 --dist loadgroup -q shared/tests pico-train/tests pico-analyze/tests
# One torch thread per process: the CPU is shared and OpenMP oversubscription is slow.
export OMP_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-fast demo sweep lint bench clean

install: $(STAMP)

$(STAMP): shared/pyproject.toml pico-train/pyproject.toml pico-analyze/pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --retries 1 --timeout 30 torch==$(TORCH_VERSION) \
		--index-url $(TORCH_INDEX) --extra-index-url $(PYPI_INDEX) \
		|| $(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e "shared[test]" -e "pico-train[test]" -e "pico-analyze[test]" ruff
	touch $(STAMP)

# Every test.
test: install
	$(PYTEST)

# Every test but the end-to-end subprocess runs (marked slow): training CLI runs, kill-and-resume,
# torchrun and the demo.
test-fast: install
	$(PYTEST) -m "not slow"

demo: install
	OMP_NUM_THREADS=$$(nproc) $(BIN)/python examples/demo.py

SWEEP_PRESETS ?= demo-w32,demo-w64,demo-w64-l8,demo
SWEEP_RUNS = $(addprefix runs/sweep/,$(subst $(comma), ,$(SWEEP_PRESETS)))
comma := ,

sweep: install
	OMP_NUM_THREADS=$$(nproc) $(BIN)/pico-train sweep --config examples/sweep.yaml --presets $(SWEEP_PRESETS)
	$(BIN)/pico-analyze compare $(SWEEP_RUNS) --out runs/sweep/compare
	@echo "figures and report: runs/sweep/compare/plots, runs/sweep/compare/report.html"

lint: install
	$(BIN)/ruff check shared pico-train pico-analyze examples benchmarks
	$(BIN)/ruff format --check shared pico-train pico-analyze examples benchmarks

bench: install
	$(BIN)/python benchmarks/bench_train.py
	$(BIN)/python benchmarks/bench_capture.py
	$(BIN)/python benchmarks/bench_analyze.py
	$(BIN)/python benchmarks/bench_figures.py

clean:
	rm -rf $(VENV) runs
