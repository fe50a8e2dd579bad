#!/usr/bin/env bash
# Every GPU test and GPU benchmark of the project in one run (< 10 minutes on one A100/H100/H200).
#
# On a GPU machine, from the repository root:
#     bash benchmarks/gpu_check.sh
# Results go to $OUT when it is set (the device tool's folder), else
# benchmarks/results/<machine-id>/gpu_check/ (the id from cleandift_deploy.runtime.machine):
#     gpu.txt          nvidia-smi, versions and which optional packages were found
#     gpu_tests.log    pytest output of the GPU tests (failures and skip reasons included)
#     gpu_tests.xml    the same as JUnit XML
#     gpu_bench.json / gpu_bench.md / gpu_bench.log   benchmarks/bench_gpu.py
#
# Assumptions: python3 has torch with CUDA, triton, numpy, pytest, onnx, onnxruntime, safetensors,
# transformers, pillow, click, rich (a stock PyTorch CUDA image has them). The rest is pure Python
# and travels as wheels in .whl/ (ignored by git): fetch them once on a machine with a package
# index with `bash benchmarks/gpu_check.sh --fetch-wheels`, then carry .whl. TensorRT itself
# (1+ GB of libraries) cannot travel that way: its GPU tests and benchmark rows run only where
# `import tensorrt` works and are reported as skipped otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS="diffusers==0.42.1 importlib_metadata==8.7.0 onnx_graphsurgeon==0.6.1 polygraphy==0.53.6"

if [ "${1:-}" = "--fetch-wheels" ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    for spec in $WHEELS; do
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d .whl "$spec" || exit 1
    done
    ls -l .whl
    exit 0
fi

if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/gpu_check_site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/gpu_check_site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:$PWD/tests:${PYTHONPATH:-}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET
MACHINE_ID=$("$PY" -c "from cleandift_deploy.runtime.machine import describe_machine as d; print(d().machine_id())")
DEST=${OUT:-benchmarks/results/${MACHINE_ID:-unknown-machine}/gpu_check}
mkdir -p "$DEST"

{
    date -u
    nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv
    "$PY" - <<'EOF'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())
for name in ("triton", "tensorrt", "diffusers", "onnx_graphsurgeon", "onnxruntime"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:
        print(name, "MISSING:", type(exc).__name__, exc)
EOF
} > "$DEST/gpu.txt" 2>&1
cat "$DEST/gpu.txt"

# GPU tests: the Triton kernel compiled on the device (rows, slices, ties, cuda:1 if present), the
# TensorRT backend (against PyTorch; graphs vs eager on shapes 1,2,1,2; two threads capturing;
# cuda_graphs=False), and the GPU-free bookkeeping tests for completeness.
timeout 330 "$PY" -m pytest -q -p no:cacheprovider -rs -o addopts="" \
    --junitxml="$DEST/gpu_tests.xml" \
    tests/kernels/test_kernels_triton.py tests/test_runtime_tensorrt.py tests/test_trt_contexts.py \
    > "$DEST/gpu_tests.log" 2>&1
tests_rc=$?
tail -n 25 "$DEST/gpu_tests.log"

timeout 200 "$PY" benchmarks/bench_gpu.py --out "$DEST" > "$DEST/gpu_bench.log" 2>&1
bench_rc=$?
tail -n 30 "$DEST/gpu_bench.log"

echo "gpu_check: tests exit $tests_rc, benchmark exit $bench_rc; results in $DEST"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
