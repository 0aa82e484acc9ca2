# The two commands of the README. Each one sets itself up: a virtual environment in .venv,
# convforge installed into it (editable, with every extra), then the job.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.convforge-installed
PYTEST_ARGS ?=
# The tests run in one process per core (pytest-xdist; a file with module fixtures is one xdist_group, on
# one process, so they are built once), each process with one intra-op thread: the suite's small models
# kept only about one of two cores busy in one process (47.7 min of CPU in 44.6 min), and two processes of
# two threads each on two cores would spin against each other (convforge/threads.py). TEST_WORKERS=0 runs
# them in this process.
TEST_WORKERS ?= auto
PARALLEL := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

# Training, distillation, pruning, quantization and export parity: the tests whose figures depend on the
# CPU's kernels, rerun by CI with oneDNN and ATen held to another instruction set than this machine's best
# (AVX2 on an AVX-512 machine, SSE4.1 on an AVX2 one)
NUMERIC_TESTS := tests/train tests/compress tests/deploy/test_export.py tests/deploy/test_onnx_models.py \
	tests/robust/test_deployed_models.py tests/models/test_zoo_training.py
# ... less the ones in those files that time things or manage processes (kills, launches, refusals), whose
# outcome no kernel's rounding decides; distributed training's figures (one process against two) stay
NOT_NUMERIC := $(addprefix --deselect tests/train/test_distributed.py::test_, bad_inputs_are_one_message \
	a_rank_killed_mid_run_is_named_and_the_run_resumes_on_one_process two_nodes_on_one_machine_write_one_run_folder \
	a_distributed_run_killed_before_its_first_checkpoint_resumes_on_all_its_ranks) \
	--deselect tests/compress/test_prune.py::test_a_speedup_target_is_measured_and_the_search_stops_by_its_rule
HELD_CPU := $(shell grep -q avx512f /proc/cpuinfo 2>/dev/null \
	&& echo "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2" \
	|| echo "ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41")

.PHONY: demo test test-slow test-held-cpu install lint clean

demo: install
	$(BIN)/convforge demo

test: install
	$(PARALLEL) -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(PARALLEL) -m slow $(PYTEST_ARGS)

test-held-cpu: install
	$(HELD_CPU) $(PARALLEL) -m "not slow" $(NUMERIC_TESTS) $(NOT_NUMERIC) $(PYTEST_ARGS)

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
