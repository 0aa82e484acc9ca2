# The two commands of the README. Each one sets itself up: a virtual environment in .venv,
# convforge installed into it (editable, with every extra), then the job.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.convforge-installed
PYTEST_ARGS ?=

# Training, distillation, pruning, quantization and export parity: the tests whose figures depend on the
# CPU's kernels, rerun by CI with oneDNN and ATen held to another instruction set than this machine's best
# (AVX2 on an AVX-512 machine, SSE4.1 on an AVX2 one)
NUMERIC_TESTS := tests/train tests/compress tests/deploy/test_export.py tests/deploy/test_onnx_models.py \
	tests/robust/test_deployed_models.py tests/models/test_zoo_training.py
HELD_CPU := $(shell grep -q avx512f /proc/cpuinfo 2>/dev/null \
	&& echo "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2" \
	|| echo "ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41")

.PHONY: demo test test-slow test-held-cpu install lint clean

demo: install
	$(BIN)/convforge demo

test: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

test-held-cpu: install
	$(HELD_CPU) $(BIN)/python -m pytest -m "not slow" $(NUMERIC_TESTS) $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[all,dev]"
	# torchattacks (test reference only) pins requests~=2.25, which clashes with the rest; it needs
	# nothing beyond torch, torchvision, scipy and numpy, all installed above
	$(BIN)/python -m pip install --quiet --no-deps "torchattacks==3.5.1"
	touch $(STAMP)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
