# Two commands do all their own set-up on a fresh machine:
#   make demo   - the end-to-end pipeline on data it generates
#   make test   - the whole test suite
# Both create (or reuse) the virtualenv in $(VENV) and install what they need.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

# torch: the CPU build where there is no NVIDIA GPU (an unpinned torch pulls a multi-GB CUDA
# build). On this project's machines pip finds torch 2.13.0+cpu locally; elsewhere add
# TORCH_INDEX=https://download.pytorch.org/whl/cpu to fetch the CPU wheel.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
TORCH_SPEC ?= $(if $(HAS_GPU),torch>=2.4,torch==2.13.0)
TORCH_INDEX ?=
PIP_TORCH_FLAGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --extra-index-url https://pypi.org/simple,)
# pip installs without compiling bytecode (--no-compile: 40 s of set-up instead of 2 min), and the venv's runs
# write the bytecode of what they import, once (some machines set PYTHONDONTWRITEBYTECODE, which would make every
# process compile torch again)
CACHE_BYTECODE := PYTHONDONTWRITEBYTECODE=

.PHONY: demo test test-fast lint bench bench-gpu bench-quality setup clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	$(BIN)/python -m pip install -q --no-compile $(PIP_TORCH_FLAGS) "$(TORCH_SPEC)"
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(BIN)/python -m pip install -q --no-compile -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(CACHE_BYTECODE) $(BIN)/cdm4mi demo --output demo_out --overwrite

# pytest-xdist: one worker per core (each computing on one thread, tests/conftest.py), a test file's tests on one worker
# (its module fixtures, trained models among them, are built once); TEST_WORKERS=0 runs them all in this process
TEST_WORKERS ?= auto
XDIST := $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist loadfile)

test: $(VENV)/.installed
	$(CACHE_BYTECODE) $(BIN)/python -m pytest -q $(XDIST)

# the inner loop: every test not marked slow (the end-to-end trainings)
test-fast: $(VENV)/.installed
	$(CACHE_BYTECODE) $(BIN)/python -m pytest -q $(XDIST) -m "not slow"

# unused or undefined names, syntax, import order (ruff; settings in pyproject.toml)
lint: $(VENV)/.installed
	$(BIN)/python -m pip install -q "ruff>=0.6"
	$(BIN)/python -m ruff check cdm4mi tests benchmarks scripts

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_unet.py

# training and denoising throughput on a CUDA GPU against MONAI's network (says so and exits 0 without one)
bench-gpu: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_gpu.py

# denoising quality on real CT shipped in pydicom/pydicom-data, leave one patient out (about an hour on 2 cores)
bench-quality: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_quality.py

clean:
	rm -rf $(VENV) demo_out runs .pytest_cache
