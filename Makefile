# The two commands of the README. Each one sets itself up: a virtual environment in .venv,
# convforge installed into it (editable, with every extra), then the job.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.convforge-installed
PYTEST_ARGS ?=

.PHONY: demo test test-slow install lint clean

demo: install
	$(BIN)/convforge demo

test: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-slow: install
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

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
