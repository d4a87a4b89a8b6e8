# jaxlm: `make demo` and `make test` work on a fresh machine (they create .venv and install into it).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.13.0 is pinned for the optional `hf` extra so that pip takes the CPU build, not a multi-GB CUDA one.
TORCH_CPU ?= torch==2.13.0
CORE_STAMP := $(VENV)/.core-installed
TEST_STAMP := $(VENV)/.test-installed
PYTEST_ARGS ?=
# pytest-xdist workers: the suite is mostly single-threaded XLA compilation, so CI's 2 cores run two test modules
# at once (--dist loadscope keeps each module, and its module-scoped fixtures, on one worker).
TEST_WORKERS ?= 2

.PHONY: install install-test demo lint test test-slow test-all bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(CORE_STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): $(CORE_STAMP)
	$(BIN)/python -m pip install --quiet $(TORCH_CPU)
	$(BIN)/python -m pip install --quiet -e '.[test,hf,eval]'
	touch $@

install: $(CORE_STAMP)
install-test: $(TEST_STAMP)

# Pretrain the quickstart BERT (MLM + NSP) on the embedded corpus, offline, and print the summary.
# Each demo is a fresh run; `make demo DEMO_WORKDIR=runs/x` twice resumes the first instead.
DEMO_WORKDIR ?= runs/quickstart-$(shell date +%Y%m%d-%H%M%S)
# GLIBC_TUNABLES: transparent huge pages for XLA's per-step buffers, 13-21% faster on CPU (benchmarks/RESULTS.md).
demo: install
	GLIBC_TUNABLES=glibc.malloc.hugetlb=1 $(BIN)/python -m jaxlm.pretrain --config=configs/pretrain/quickstart.py --workdir=$(DEMO_WORKDIR)

# Everything but the end-to-end runs marked `slow` (under 10 minutes on CI's 2 cores); huge pages here too (the
# suite is mostly XLA CPU steps); --durations lists what to trim when it grows.
PYTEST := GLIBC_TUNABLES=glibc.malloc.hugetlb=1 $(BIN)/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadscope
test: install-test
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

# The end-to-end runs (pretrain -> fine-tune -> evaluate, resume after SIGKILL, two processes); CI runs them too.
test-slow: install-test
	$(PYTEST) -m slow $(PYTEST_ARGS)

test-all: test test-slow

# pyflakes, pycodestyle, import order and likely bugs ([tool.ruff] in pyproject.toml); CI runs it before the tests.
lint: install-test
	$(BIN)/ruff check jaxlm tests benchmarks tpu configs

bench: install-test
	$(BIN)/python benchmarks/train_step.py

clean:
	rm -rf $(VENV) runs build *.egg-info
