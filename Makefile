# Two commands do everything: `make demo` and `make test` (each creates .venv first).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1

.PHONY: demo test test-slow lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	# the stubs declare a dependency on the full TensorRT, which cannot install without a GPU index
	$(BIN)/pip install --quiet --no-deps "tensorrt-stubs>=10.0"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m cleandift_deploy.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src/cleandift_deploy

clean:
	rm -rf $(VENV) build dist *.egg-info
