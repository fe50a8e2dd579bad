"""GPU benchmark, run by benchmarks/gpu_check.sh: the Triton matching kernel against the torch
procedure it replaces (normalise, matmul, argmax), its agreement with a float64 ground truth, a
gallery past 2^31 elements (the int64-offset fix), and TensorRT with and without CUDA graphs on
alternating batch sizes where TensorRT is installed. Writes OUT/gpu_bench.{json,md}.

    python benchmarks/bench_gpu.py   (-> benchmarks/results/<machine-id>/gpu_check/)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from harness.results import results_dir

from cleandift_deploy.runtime.machine import describe_machine

SIZES = {"n": 9216, "m": 9216, "c": 1280}  # two 96x96 maps of SD2.1 us6-level width
GALLERY = {"n": 1024, "m": 1_700_000, "c": 1280}  # m * c > 2^31: int32 offsets would wrap


def _median_ms(fn: Any, repeats: int = 20) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=50, rep=repeats * 10, return_mode="median"))


def torch_reference(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The procedure the kernel replaces: normalise, full similarity matrix, argmax."""
    an = torch.nn.functional.normalize(a.float(), dim=1).to(a.dtype)
    bn = torch.nn.functional.normalize(b.float(), dim=1).to(b.dtype)
    return (an @ bn.T).float().max(dim=1)


def truth(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 argmax and the top-2 margin per row (rows with a margin < 1e-4 are near-ties)."""
    sim = (
        torch.nn.functional.normalize(a.double(), dim=1)
        @ torch.nn.functional.normalize(b.double(), dim=1).T
    )
    top = sim.topk(2, dim=1)
    return top.indices[:, 0], top.values[:, 0] - top.values[:, 1]


def bench_matching() -> list[dict[str, Any]]:
    """Triton vs torch at 9216 x 9216, C = 1280, per dtype; agreement on clear rows."""
    from cleandift_deploy.kernels.triton_dense import triton_match_dense
    from cleandift_deploy.kernels.types import NearestNeighbours

    rows = []
    torch.backends.cuda.matmul.allow_tf32 = False  # the torch procedure in true float32
    g = torch.Generator(device="cuda").manual_seed(0)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        a = torch.randn(SIZES["n"], SIZES["c"], device="cuda", generator=g).to(dtype)
        b = torch.randn(SIZES["m"], SIZES["c"], device="cuda", generator=g).to(dtype)
        got = triton_match_dense(a, b)
        assert isinstance(got, NearestNeighbours)
        want, margin = truth(a, b)
        clear = margin > 1e-4
        agree = (got.indices[:, 0] == want)[clear].float().mean().item()
        rows.append(
            {
                "dtype": str(dtype).removeprefix("torch."),
                "triton_ms": _median_ms(lambda a=a, b=b: triton_match_dense(a, b)),
                "triton_mutual_ms": _median_ms(
                    lambda a=a, b=b: triton_match_dense(a, b, mutual=True)
                ),
                "torch_ms": _median_ms(lambda a=a, b=b: torch_reference(a, b)),
                "agreement_clear_rows": agree,
                "clear_rows": int(clear.sum()),
            }
        )
        print(rows[-1], flush=True)
    return rows


def bench_gallery() -> dict[str, Any]:
    """Queries whose true neighbours sit past row 1.68M of a 1.7M x 1280 fp16 gallery."""
    from cleandift_deploy.kernels.triton_dense import triton_match_dense
    from cleandift_deploy.kernels.types import NearestNeighbours

    g = torch.Generator(device="cuda").manual_seed(1)
    a = torch.randn(GALLERY["n"], GALLERY["c"], device="cuda", generator=g).half()
    b = torch.randn(GALLERY["m"], GALLERY["c"], device="cuda", generator=g).half()
    planted = torch.arange(GALLERY["m"] - 64, GALLERY["m"], device="cuda")
    b[planted] = a[:64] * 2
    started = time.perf_counter()
    got = triton_match_dense(a, b)
    assert isinstance(got, NearestNeighbours)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    found = (got.indices[:64, 0] == planted).float().mean().item()
    return {**GALLERY, "planted_found": found, "first_call_s": round(seconds, 3)}


def bench_tensorrt() -> dict[str, Any]:
    """Tiny engine, batches alternating 1, 2, ms per call: one context and graph per shape
    (the default), one context re-created and re-captured at every shape change (lanes=1,
    shapes_per_lane=1: the alternative the review named), and eager runs."""
    import numpy as np

    from cleandift_deploy.runtime.tensorrt_backend import tensorrt_installed

    if not tensorrt_installed():
        return {"skipped": "tensorrt is not installed on this machine"}
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
    variants = {
        "graphs_ms": {"cuda_graphs": True},
        "recapture_each_change_ms": {"cuda_graphs": True, "lanes": 1, "shapes_per_lane": 1},
        "eager_ms": {"cuda_graphs": False},
    }
    result: dict[str, Any] = {}
    for key, options in variants.items():
        backend = TensorRTBackend(engine, manifest, "cuda", **options)  # type: ignore[arg-type]
        extractor = FeatureExtractor(backend, manifest)
        for images in batches[:4]:
            extractor(images)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for images in batches:
            extractor(images)
        torch.cuda.synchronize()
        result[key] = round((time.perf_counter() - started) * 1000 / len(batches), 3)
    return result


def markdown(results: dict[str, Any]) -> str:
    """A short table for the README and the device tool's output."""
    lines = [
        f"# GPU check: {results['gpu']}",
        "",
        "| dtype | Triton top-1 ms | Triton mutual ms | torch normalise+matmul+argmax ms | "
        "agreement (clear rows) |",
        "|---|---|---|---|---|",
    ]
    for r in results["matching"]:
        lines.append(
            f"| {r['dtype']} | {r['triton_ms']:.2f} | {r['triton_mutual_ms']:.2f} | "
            f"{r['torch_ms']:.2f} | {r['agreement_clear_rows']:.5f} |"
        )
    lines += ["", f"Gallery past 2^31 elements: {results['gallery']}"]
    lines += ["", f"TensorRT (tiny, batches 1,2 alternating): {results['tensorrt']}", ""]
    return "\n".join(lines)


def main() -> None:
    """Run every part; a part that fails is recorded, not fatal."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, help="default: benchmarks/results/<machine-id>/gpu_check"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU; torch sees none here")
    machine = describe_machine()
    out = args.out or results_dir(machine.machine_id()) / "gpu_check"
    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "machine": machine.to_dict()}
    for name, part in (
        ("matching", bench_matching),
        ("gallery", bench_gallery),
        ("tensorrt", bench_tensorrt),
    ):
        try:
            results[name] = part()
        except Exception as exc:  # the report says which part failed and why
            results[name] = {"failed": f"{type(exc).__name__}: {exc}"}
        torch.cuda.empty_cache()
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps(results, indent=1))
    if isinstance(results["matching"], dict):
        results["matching"] = []
    (out / "gpu_bench.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
