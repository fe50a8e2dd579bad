# Two commands do everything: `make demo` and `make test` (each creates .venv first).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1

.PHONY: demo page test test-isa test-slow lint docs bench bench-quick bench-index clean

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

# The correspondence page on the demo's tiny model (exported first if missing): prints its address.
page: $(STAMP)
	$(BIN)/python -m cleandift_deploy.demo page

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"
	$(MAKE) --no-print-directory test-isa

# The CPU-dependent tests (training's bit-exact resume, matching kernels) again with oneDNN and
# ATen capped at AVX2: the kernel paths of another x86 family run on every machine (about 25 s;
# the offline GPU compilation does not depend on the CPU and runs once).
test-isa: $(STAMP)
	ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 \
		$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" tests/test_train.py tests/kernels \
		--ignore tests/kernels/test_triton_offline.py

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src/cleandift_deploy
	$(BIN)/lint-imports --no-cache

# Benchmarks (benchmarks/suite.py): the machine is measured once (description, GEMM and memory
# ceilings), results go to benchmarks/results/<machine-id>/, then the index and docs/performance/
# are regenerated. `bench` runs everything (hours on 2 cores; the estimate prints first),
# `bench-quick` one small size per benchmark (a few minutes). On a shared machine set
# BENCH_BUSY="why" to mark the figures busy.
# The documentation site (mkdocs.yml, docs/) into site/; --strict: broken links and missing pages fail
# (not with --quiet, which hides the warnings that --strict counts).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python benchmarks/suite.py

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/suite.py --quick

bench-index: $(STAMP)
	$(BIN)/python benchmarks/suite.py --index

clean:
	rm -rf $(VENV) build dist site *.egg-info
