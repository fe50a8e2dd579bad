"""The GPU check: every part one short lease on a lent GPU can run once and learn from.

    bash benchmarks/gpu_check.sh --dry-run     # the parts, their expected times, the wheels
    bash benchmarks/gpu_check.sh               # installs carried wheels, then this script
    python benchmarks/bench_gpu.py [--out DIR] [--only PART ...] [--dry-run]

Parts (each in a child process with its own time limit, all inside one deadline of
``BUDGET_S`` seconds, results written after every part):
  environment   GPU, driver, torch, CUDA, Triton versions; libcudart found; optional packages
  lanes         CUDA graphs without TensorRT: tests/test_cuda_lanes_gpu.py (a torch stand-in for
                the engine on the real lanes, pool and runtime capture: threads, eviction, a
                forced invalid capture with flat memory over 100 calls, a dropped backend)
  floor         bf16 8192^3 torch matmul TFLOP/s and device copy GB/s, measured now
  match-dense   match_dense at 9216 x 9216, C = 1280, per dtype: autotune choice and first-call
                (compile + tune) seconds apart from run time; the whole call and the raw kernel
                as TFLOP/s against the floor; top-1 agreement with float64; mutual pairs against
                the float64 torch reference (differences only at near-ties)
  gallery       1,024 queries against a 1.7M x 1280 fp16 gallery (past 2^31 elements), timed
                after warm-up; planted neighbours found
  kernel-tests  tests/kernels/test_kernels_triton.py and test_kernels_passes.py, compiled for
                the GPU, pytest -n 4 with the reduced autotune set
  tensorrt      tests/test_runtime_tensorrt.py, and tensorrt-bench (graphs vs re-capture vs
                eager): expected only where `import tensorrt` works (TensorRT's wheels are far
                over the 64 MiB that travels to a lent GPU)
A part that was expected to run and failed, timed out, was skipped, or had a test skipped for a
reason not listed as expected makes the script exit 1 and name it. Files under DIR (default
$OUT, else benchmarks/results/<machine-id>/): <machine-id>/gpu_check.{json,md} in the harness
schema (rewritten after every part) and gpu_check.log (every part's output).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 450
"""Every part together, install excluded (gpu_check.sh's own, ~20 s): inside 8 minutes."""
MIB = 1 << 20
CARRY_LIMIT_MIB = 64
WHEELS = {"diffusers==0.42.1": 6.06, "importlib_metadata==8.7.0": 0.03}
"""Carried wheels and their sizes in MiB as fetched on 2026-12-03 (tests/conftest.py imports the
model code, which imports diffusers; the H200 image has neither; its other needs are there)."""
SIZES = {"n": 9216, "m": 9216, "c": 1280}
GALLERY = {"n": 1024, "m": 1_700_000, "c": 1280}
NEAR_TIE = 1e-4


@dataclass(frozen=True)
class Part:
    """One part of the check: how long it should take, how long it may, what it runs."""

    name: str
    expected_s: int
    limit_s: int
    what: str
    tests: tuple[str, ...] = ()
    pytest_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    skips_allowed: tuple[str, ...] = ()
    needs: str | None = None


PARTS = (
    Part("environment", 15, 40, "GPU, driver, torch, CUDA, Triton versions; libcudart found"),
    Part(
        "lanes",
        35,
        90,
        "CUDA graphs without TensorRT (torch stand-in engine): threads, eviction, invalid "
        "capture with flat memory over 100 calls, dropped backend; fake-runtime tests",
        tests=(
            "tests/test_cuda_lanes_gpu.py",
            "tests/test_cuda_graphs.py",
            "tests/test_trt_contexts.py",
        ),
        skips_allowed=("needs two CUDA GPUs",),
    ),
    Part("floor", 15, 40, "bf16 8192^3 matmul TFLOP/s and device copy GB/s"),
    Part("match-dense", 80, 150, "match_dense vs the floor: whole call, raw kernel, autotune"),
    Part("gallery", 35, 90, "1,024 x 1.7M x 1280 fp16 gallery after warm-up"),
    Part(
        "kernel-tests",
        100,
        180,
        "Triton kernel tests compiled for the GPU (pytest -n 4, first autotune config only)",
        tests=("tests/kernels/test_kernels_triton.py", "tests/kernels/test_kernels_passes.py"),
        pytest_args=("-n", "4"),
        env={"CLEANDIFT_TRITON_AUTOTUNE": "first"},
        skips_allowed=("needs two CUDA GPUs", "tile overrides apply to the interpreter"),
    ),
    Part(
        "tensorrt",
        120,
        200,
        "TensorRT engine vs PyTorch, graphs vs eager, two threads capturing",
        tests=("tests/test_runtime_tensorrt.py",),
        needs="tensorrt",
    ),
    Part(
        "tensorrt-bench",
        60,
        120,
        "tiny engine, batches 1,2 alternating: graphs vs re-capture vs eager ms per call",
        needs="tensorrt",
    ),
)


# --- the parts that measure ----------------------------------------------------------------
def _ms(fn: Callable[[], object]) -> float:
    """Median milliseconds by CUDA events after warm-up (triton.testing.do_bench)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))


def _sync_seconds(fn: Callable[[], object]) -> float:
    import torch

    torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def part_environment() -> dict[str, Any]:
    """Versions and what was found (the JSON names GPU, driver, torch, CUDA and Triton)."""
    import importlib.util

    import torch
    import triton

    from cleandift_deploy.runtime.cuda_graphs import CudaRuntime
    from cleandift_deploy.runtime.machine import describe_machine

    torch.cuda.init()
    gpus = describe_machine().gpus
    found = {
        "gpu": torch.cuda.get_device_name(0),
        "driver": gpus[0].driver if gpus else None,
        "capability": "{}.{}".format(*torch.cuda.get_device_capability(0)),
        "sms": torch.cuda.get_device_properties(0).multi_processor_count,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton.__version__,
        "libcudart_found": CudaRuntime.load() is not None,
        "packages": {
            name: importlib.util.find_spec(name) is not None
            for name in ("diffusers", "tensorrt", "onnxruntime", "xdist")
        },
        "test_imports": _import_errors(
            ("cleandift_deploy.models", "cleandift_deploy.runtime.cuda_lanes", "conftest")
        ),
    }
    failed = list(found["test_imports"]) + ([] if found["libcudart_found"] else ["libcudart"])
    return {**found, "failed": failed} if failed else found


def _import_errors(modules: tuple[str, ...]) -> dict[str, str]:
    """What the tests import, tried here so a missing package shows in the first part."""
    import importlib

    errors = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
    return errors


def part_floor() -> dict[str, Any]:
    """The ceilings this run is compared with, on random data (zeros run faster)."""
    import torch

    side = 8192
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(side, side, device="cuda", generator=g, dtype=torch.bfloat16)
    b = torch.randn(side, side, device="cuda", generator=g, dtype=torch.bfloat16)
    matmul_ms = _ms(lambda: a @ b)
    source = torch.randn(1 << 30, device="cuda", generator=g, dtype=torch.float16)  # 2 GiB
    target = torch.empty_like(source)
    copy_ms = _ms(lambda: target.copy_(source))
    return {
        "bf16_matmul_8192_ms": matmul_ms,
        "bf16_matmul_tflops": 2 * side**3 / matmul_ms / 1e9,
        "copy_gbps": 2 * source.numel() * 2 / copy_ms / 1e6,
    }


def _floor(results: dict[str, Any]) -> dict[str, Any]:
    floor = results.get("floor") or {}
    if "bf16_matmul_tflops" not in floor:
        raise RuntimeError("the floor part did not run: nothing to compare against")
    return floor


def _autotune_state(precision: str) -> dict[str, Any]:
    from cleandift_deploy.kernels import triton_dense as td

    tuner = td._autotuned[precision]
    timings = getattr(tuner, "configs_timings", None) or {}
    return {
        "best_config": str(getattr(tuner, "best_config", None)),
        "tuning_seconds": getattr(tuner, "bench_time", None),  # compile + time every config
        "configs_timed": {
            str(k): list(map(float, v)) if isinstance(v, (list, tuple)) else float(v)
            for k, v in timings.items()
        },
    }


def _reference(a: Any, b: Any) -> dict[str, Any]:
    """From the float64 cosine matrix: each row's best column, the mutual pairs, and each row's
    and column's top-2 margin (a difference within NEAR_TIE is a near-tie, not an error)."""
    import torch

    normalize = torch.nn.functional.normalize
    sim = normalize(a.double(), dim=1) @ normalize(b.double(), dim=1).T
    row_top, col_top = sim.topk(2, dim=1), sim.topk(2, dim=0)
    rows = torch.arange(sim.shape[0], device=sim.device)
    keep = col_top.indices[0][row_top.indices[:, 0]] == rows
    pairs = torch.stack([rows[keep], row_top.indices[keep, 0]], dim=1).tolist()
    return {
        "best": row_top.indices[:, 0].cpu(),
        "pairs": {(int(i), int(j)) for i, j in pairs},
        "row_margin": (row_top.values[:, 0] - row_top.values[:, 1]).cpu(),
        "col_margin": (col_top.values[0] - col_top.values[1]).cpu(),
    }


def _dense_case(dtype: Any, floor: dict[str, Any]) -> dict[str, Any]:
    """First call (autotune + compile), whole call and raw kernel, agreement, mutual pairs."""
    import torch

    from cleandift_deploy.kernels import match_dense, triton_dense

    n, m, c = SIZES["n"], SIZES["m"], SIZES["c"]
    g = torch.Generator(device="cuda").manual_seed(int(torch.finfo(dtype).bits))
    a = torch.randn(n, c, device="cuda", generator=g).to(dtype)
    b = torch.randn(m, c, device="cuda", generator=g).to(dtype)
    flops = 2 * n * m * c
    row: dict[str, Any] = {"dtype": str(dtype).removeprefix("torch."), "flops": flops}
    row["first_call_s"] = _sync_seconds(lambda: match_dense(a, b, impl="triton"))
    row["autotune"] = _autotune_state(triton_dense.dot_precision(dtype))
    whole = _ms(lambda: match_dense(a, b, impl="triton"))
    raw = _ms(triton_dense.prepare(a, b, mutual=False).run)
    row.update(whole_ms=whole, raw_kernel_ms=raw)
    row["whole_tflops"] = flops / whole / 1e9
    row["raw_kernel_tflops"] = flops / raw / 1e9
    row["raw_vs_bf16_matmul"] = row["raw_kernel_tflops"] / floor["bf16_matmul_tflops"]
    ref = _reference(a, b)
    clear = ref["row_margin"] > NEAR_TIE
    got = match_dense(a, b, impl="triton").indices[:, 0].cpu()
    row["top1_agreement_clear_rows"] = (got == ref["best"])[clear].float().mean().item()
    mutual_call = lambda: match_dense(a, b, mutual=True, impl="triton")  # noqa: E731
    row["mutual_first_call_s"] = _sync_seconds(mutual_call)
    row["mutual_whole_ms"] = _ms(mutual_call)
    pairs = {(int(i), int(j)) for i, j in mutual_call().pairs.tolist()}
    differing = pairs ^ ref["pairs"]
    row_margin, col_margin = ref["row_margin"], ref["col_margin"]
    unexplained = [(i, j) for i, j in differing if min(row_margin[i], col_margin[j]) > NEAR_TIE]
    row["mutual"] = {
        "pairs": len(pairs),
        "reference_pairs": len(ref["pairs"]),
        "differing": len(differing),
        "differing_not_near_ties": len(unexplained),
    }
    normalize = torch.nn.functional.normalize
    row["torch_normalise_matmul_max_ms"] = _ms(
        lambda: (normalize(a.float(), dim=1) @ normalize(b.float(), dim=1).T).max(dim=1)
    )
    if unexplained or row["top1_agreement_clear_rows"] < 0.999:
        raise AssertionError(f"{row['dtype']}: wrong matches: {row}")
    return row


def part_match_dense(results: dict[str, Any]) -> dict[str, Any]:
    """Per dtype: see _dense_case; a wrong answer fails the part (after recording the row)."""
    import torch

    floor = _floor(results)
    torch.backends.cuda.matmul.allow_tf32 = False  # the torch procedure in true float32
    rows = [_dense_case(dtype, floor) for dtype in (torch.float16, torch.bfloat16, torch.float32)]
    return {"sizes": SIZES, "rows": rows}


def part_gallery(results: dict[str, Any]) -> dict[str, Any]:
    """Planted neighbours past row 1.68M (int64 offsets), timed after a warm-up call."""
    import torch

    from cleandift_deploy.kernels import match_dense, triton_dense

    floor = _floor(results)
    n, m, c = GALLERY["n"], GALLERY["m"], GALLERY["c"]
    g = torch.Generator(device="cuda").manual_seed(1)
    a = torch.randn(n, c, device="cuda", generator=g).half()
    b = torch.randn(m, c, device="cuda", generator=g).half()
    planted = torch.arange(m - 64, m, device="cuda")
    b[planted] = a[:64] * 2
    first = _sync_seconds(lambda: match_dense(a, b, impl="triton"))
    whole = _ms(lambda: match_dense(a, b, impl="triton"))
    raw = _ms(triton_dense.prepare(a, b, mutual=False).run)
    got = match_dense(a, b, impl="triton")
    found = (got.indices[:64, 0] == planted).float().mean().item()
    flops, read = 2 * n * m * c, m * c * 2
    torch.cuda.reset_peak_memory_stats()
    match_dense(a, b, impl="triton")
    extra = torch.cuda.max_memory_allocated() - (a.numel() + b.numel()) * 2
    out = {
        **GALLERY,
        "first_call_s": first,
        "autotune": _autotune_state("tf32"),
        "whole_ms": whole,
        "raw_kernel_ms": raw,
        "whole_tflops": flops / whole / 1e9,
        "raw_kernel_tflops": flops / raw / 1e9,
        "floor_ms": max(flops / floor["bf16_matmul_tflops"] / 1e9, read / floor["copy_gbps"] / 1e6),
        "peak_extra_mib": extra / MIB,
        "planted_found": found,
    }
    if found < 1.0:
        raise AssertionError(f"planted neighbours missed: {out}")
    return out


def part_tensorrt_bench() -> dict[str, Any]:
    """Tiny engine, batches alternating 1 and 2, ms per call: one context and graph per shape
    (the default), one context re-captured at every shape change (lanes=1, shapes_per_lane=1),
    and eager runs."""
    import numpy as np
    from runtime_helpers import export_tiny, random_rgb

    from cleandift_deploy.export.tensorrt_build import BuildOptions, build_engine
    from cleandift_deploy.manifest import Manifest, sidecar_path
    from cleandift_deploy.models import random_unet
    from cleandift_deploy.runtime.extractor import FeatureExtractor
    from cleandift_deploy.runtime.tensorrt_backend import TensorRTBackend

    folder = Path(tempfile.mkdtemp())
    onnx_path = export_tiny(random_unet("tiny", seed=1), folder / "tiny.onnx", batch=(1, 2, 2))
    engine = folder / "tiny.engine"
    build_engine(onnx_path, engine, BuildOptions(target="tensorrt"))
    rng = np.random.default_rng(0)
    batches = [[random_rgb(64, 64, rng) for _ in range(n)] for n in (1, 2) * 20]
    manifest = Manifest.load(sidecar_path(engine))
    variants: dict[str, dict[str, Any]] = {
        "graphs_ms": {"cuda_graphs": True},
        "recapture_each_change_ms": {"cuda_graphs": True, "lanes": 1, "shapes_per_lane": 1},
        "eager_ms": {"cuda_graphs": False},
    }
    result: dict[str, Any] = {}
    for key, options in variants.items():
        backend = TensorRTBackend(engine, manifest, "cuda", **options)
        extractor = FeatureExtractor(backend, manifest)
        for images in batches[:4]:
            extractor(images)
        seconds = _sync_seconds(lambda e=extractor: [e(images) for images in batches])
        result[key] = seconds * 1000 / len(batches)
        backend.close()
    return result


MEASURED: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "tensorrt-bench": lambda _: part_tensorrt_bench(),
    "environment": lambda _: part_environment(),
    "floor": lambda _: part_floor(),
    "match-dense": part_match_dense,
    "gallery": part_gallery,
}


# --- the driver -----------------------------------------------------------------------------
def expected_to_run(part: Part) -> str | None:
    """None when the part must run here, else why it is not expected to."""
    if part.needs is None:
        return None
    import importlib.util

    spec = importlib.util.find_spec(part.needs)
    if spec is None or spec.origin is None:
        return f"{part.needs} is not installed here (it cannot travel to a lent GPU)"
    return None


def _junit_skips(path: Path) -> tuple[int, list[str]]:
    """(tests run, skip messages) from a pytest JUnit XML file."""
    if not path.is_file():
        return 0, []
    root = ElementTree.parse(path).getroot()
    cases = list(root.iter("testcase"))
    skips = [s.get("message", "") for case in cases for s in case.findall("skipped")]
    return len(cases), skips


def _pytest_command(part: Part, junit: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-rs",
        "-o",
        "addopts=",
        f"--junitxml={junit}",
        *part.pytest_args,
        *part.tests,
    ]


def run_part(part: Part, limit: float, scratch: Path, log: Path) -> dict[str, Any]:
    """Run one part in a child process under `limit` seconds; its status and result."""
    started = time.perf_counter()
    env = {**os.environ, **part.env}
    junit = scratch / f"{part.name}.xml"
    result_file = scratch / f"{part.name}.json"
    if part.tests:
        command = _pytest_command(part, junit)
    else:
        command = [sys.executable, __file__, "--part", part.name, "--scratch", str(scratch)]
    with log.open("a") as stream:
        stream.write(f"\n===== {part.name}: {' '.join(command)}\n")
        stream.flush()
        try:
            done = subprocess.run(
                command, cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT, timeout=limit
            )
            code: int | None = done.returncode
        except subprocess.TimeoutExpired:
            code = None
    seconds = round(time.perf_counter() - started, 1)
    entry: dict[str, Any] = {"seconds": seconds, "expected_s": part.expected_s, "limit_s": limit}
    if code is None:
        return {**entry, "status": "timeout"}
    if part.tests:
        count, skips = _junit_skips(junit)
        unexpected = [s for s in skips if not any(ok in s for ok in part.skips_allowed)]
        entry.update(tests=count, skipped=skips)
        if code != 0 or count == 0:
            return {**entry, "status": "failed", "exit": code}
        if unexpected:
            return {**entry, "status": "skipped", "unexpected_skips": unexpected}
        return {**entry, "status": "ok"}
    if result_file.is_file():
        entry["result"] = json.loads(result_file.read_text())
    return {**entry, "status": "ok" if code == 0 else "failed", "exit": code}


def child(name: str, scratch: Path) -> int:
    """One measuring part: reads the earlier parts' results, writes its own JSON."""
    previous = {}
    for path in scratch.glob("*.json"):
        previous[path.stem] = json.loads(path.read_text())
    try:
        result = MEASURED[name](previous)
    except Exception as exc:
        (scratch / f"{name}.json").write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        raise
    (scratch / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str))
    return 1 if result.get("failed") else 0  # recorded, and the part fails


def carried() -> dict[str, Any]:
    """The working tree that travels (tracked + untracked not ignored) and the wheels in .whl/."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=False,
    ).stdout.split(b"\0")
    tree = sum(
        (REPO / p.decode()).stat().st_size for p in listed if p and (REPO / p.decode()).is_file()
    )
    found = {w.name: w.stat().st_size / MIB for w in sorted((REPO / ".whl").glob("*.whl"))}
    wheels = found or {f"{spec} (not fetched yet)": size for spec, size in WHEELS.items()}
    total = tree / MIB + sum(wheels.values())
    return {"tree_mib": tree / MIB, "wheels_mib": wheels, "total_mib": total}


def dry_run(parts: list[Part]) -> int:
    """Print every part with its expected time and limit, and what travels; 1 if over 64 MiB."""
    install = float(os.environ.get("GPU_CHECK_INSTALL_S_EXPECTED", "20"))
    print(f"{'part':<13} {'expected':>8} {'limit':>6}  runs here?  what")
    print(f"{'install':<13} {install:>7.0f}s {40:>5}s  yes         pip install .whl/*.whl")
    total = install
    for part in parts:
        why = expected_to_run(part)
        total += part.expected_s if why is None else 0
        runs = "yes" if why is None else "no: " + why
        print(f"{part.name:<13} {part.expected_s:>7}s {part.limit_s:>5}s  {runs:<10}  {part.what}")
    print(f"expected in all: {total / 60:.1f} min; every part inside one {BUDGET_S} s deadline")
    sizes = carried()
    for name, size in sizes["wheels_mib"].items():
        print(f"wheel {name}: {size:.2f} MiB")
    print(f"working tree {sizes['tree_mib']:.2f} MiB (src/ on PYTHONPATH: the package itself)")
    print(f"travels in all: {sizes['total_mib']:.2f} MiB of {CARRY_LIMIT_MIB} MiB")
    return 0 if sizes["total_mib"] < CARRY_LIMIT_MIB else 1


def summary_record(statuses: dict[str, Any], out: Path) -> list[Path]:
    """The harness's schema (machine, software, run, figures) with every part's result."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from harness.run import Benchmark

    from cleandift_deploy.runtime.machine import describe_machine, library_versions

    environment = (statuses.get("environment") or {}).get("result") or {}
    floor = (statuses.get("floor") or {}).get("result") or {}
    context = {
        "machine": describe_machine().to_dict(),
        "software": {**library_versions(), **{k: environment.get(k) for k in ("triton", "cuda")}},
        "ceilings": {},  # the harness's are CPU ceilings; the GPU floor is its own table
    }
    bench = Benchmark("gpu_check", "GPU check (lanes, kernels vs floor)", root=out, context=context)
    bench.results = {"gpu": environment, "floor": floor, "parts": statuses}
    if environment:
        keys = ("gpu", "driver", "capability", "torch", "cuda", "triton")
        bench.table("GPU and versions", list(keys), [[environment.get(k) for k in keys]])
    if floor:
        bench.table(
            "GPU floor measured in this run",
            ["bf16 8192^3 matmul TFLOP/s", "device copy GB/s"],
            [[floor.get("bf16_matmul_tflops"), floor.get("copy_gbps")]],
        )
    rows = []
    for name, status in statuses.items():
        rows.append([name, status["status"], status["seconds"], status["expected_s"]])
    bench.table("Parts", ["part", "status", "seconds", "expected s"], rows)
    dense = ((statuses.get("match-dense") or {}).get("result") or {}).get("rows", [])
    for row in dense:
        key = f"match_dense {row['dtype']} raw TFLOP/s"
        bench.figure(key, row["raw_kernel_tflops"], "TFLOP/s", better="higher")
    if dense:
        bench.table(
            "match_dense 9216 x 9216 x 1280",
            ["dtype", "first call s", "whole ms", "raw ms", "raw TFLOP/s", "of bf16 matmul"],
            [
                [
                    r["dtype"],
                    r["first_call_s"],
                    r["whole_ms"],
                    r["raw_kernel_ms"],
                    r["raw_kernel_tflops"],
                    r["raw_vs_bf16_matmul"],
                ]
                for r in dense
            ],
        )
    failed = [n for n, s in statuses.items() if s["status"] not in ("ok", "not expected here")]
    if failed:
        bench.note("failed or not run: " + ", ".join(failed))
    return bench.write()


def check(parts: list[Part], out: Path) -> int:
    """Run the parts in order inside the deadline; rewrite the summary after each one."""
    from cleandift_deploy.runtime.machine import describe_machine

    deadline = time.perf_counter() + BUDGET_S
    folder = out / describe_machine().machine_id()
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "gpu_check.log"
    log.write_text("")
    statuses: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as temporary:
        scratch = Path(temporary)
        for part in parts:
            why = expected_to_run(part)
            left = deadline - time.perf_counter()
            if why is not None:
                statuses[part.name] = {
                    "status": "not expected here",
                    "reason": why,
                    "seconds": 0,
                    "expected_s": part.expected_s,
                }
            elif left < 5:
                statuses[part.name] = {
                    "status": "not run: out of time",
                    "seconds": 0,
                    "expected_s": part.expected_s,
                }
            else:
                statuses[part.name] = run_part(part, min(part.limit_s, left), scratch, log)
            print(
                f"{part.name}: {statuses[part.name]['status']} ({statuses[part.name]['seconds']} s)"
            )
            summary_record(statuses, out)
    bad = [n for n, s in statuses.items() if s["status"] not in ("ok", "not expected here")]
    if bad:
        print("gpu_check FAILED: " + ", ".join(f"{n} ({statuses[n]['status']})" for n in bad))
        return 1
    print("gpu_check: every part expected to run passed")
    return 0


def main() -> None:
    """Dry run, the whole check, or (internally) one measuring part."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="default: $OUT, else benchmarks/results")
    parser.add_argument("--only", nargs="+", choices=[p.name for p in PARTS])
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--part", choices=sorted(MEASURED), help=argparse.SUPPRESS)
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        raise SystemExit(child(args.part, args.scratch))
    parts = [p for p in PARTS if not args.only or p.name in args.only]
    if args.dry_run:
        raise SystemExit(dry_run(parts))
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU; torch sees none here (try --dry-run)")
    out = args.out or Path(os.environ.get("OUT") or REPO / "benchmarks" / "results")
    raise SystemExit(check(parts, out))


if __name__ == "__main__":
    main()
