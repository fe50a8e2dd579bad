#!/usr/bin/env bash
# The GPU check for one short lease on a lent GPU: < 8 minutes on an H200, installs included.
#
#   bash benchmarks/gpu_check.sh --dry-run        every part, its expected time and limit, the
#                                                 carried wheels with their sizes (no GPU needed)
#   bash benchmarks/gpu_check.sh --fetch-wheels   once, where a package index is reachable
#   bash benchmarks/gpu_check.sh [--only PART..]  on the GPU machine, with .whl/ carried
#
# The parts and what each learns: benchmarks/bench_gpu.py's docstring (environment, lanes, floor,
# match-dense, gallery, kernel-tests, tensorrt where `import tensorrt` works). Results:
# $OUT/<machine-id>/gpu_check.{json,md,log} (else benchmarks/results/<machine-id>/), rewritten
# after every part. Exit 1, naming the parts, when a part expected to run failed, timed out or
# skipped; a failed install stops here. The H200 image has torch, triton, pytest, pytest-xdist,
# onnxruntime (CPU), transformers; diffusers and importlib_metadata travel as wheels (~6 MiB);
# TensorRT's wheels are over 1 GB and cannot travel, so its part is reported "not expected here".
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS="diffusers==0.42.1 importlib_metadata==8.7.0"
export PYTHONPATH="$PWD/src:$PWD/tests:${PYTHONPATH:-}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
unset TRITON_INTERPRET

case "${1:-}" in
--fetch-wheels)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    for spec in $WHEELS; do
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d .whl "$spec" || exit 1
    done
    ls -l .whl
    exit 0
    ;;
--dry-run)
    exec "$PY" benchmarks/bench_gpu.py --dry-run
    ;;
esac

started=$(date +%s)
if ls .whl/*.whl >/dev/null 2>&1; then
    if ! timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target /tmp/gpu_check_site .whl/*.whl; then
        echo "gpu_check FAILED: install (pip install .whl/*.whl)"
        exit 1
    fi
    export PYTHONPATH="$PYTHONPATH:/tmp/gpu_check_site"
fi
echo "install: $(($(date +%s) - started)) s"
exec "$PY" benchmarks/bench_gpu.py "$@"
