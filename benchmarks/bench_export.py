"""Export and build figures for the full SD2.1 architecture (random weights) at 768 px, tap us6.

For fp32 and fp16: export wall time and peak memory (each in a fresh process), ONNX size on disk,
ONNX Runtime agreement with the fp32 PyTorch reference on fresh random images; for the fp16
graph also the TensorRT-RTX ahead-of-time build time, peak memory and engine size.

Run once, under the shared lock:
    flock /tmp/cpu-heavy.lock .venv/bin/python benchmarks/bench_export.py
    python benchmarks/bench_export.py --arch tiny --size 64     # a quick check
Writes benchmarks/results/<machine-id>/export.{json,md} (benchmarks/harness).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness.memory import process_peak_gib
from harness.run import Benchmark
from harness.timing import Protocol, Timing, measure


def _files_size(onnx_path: Path) -> int:
    return sum(p.stat().st_size for p in onnx_path.parent.glob(onnx_path.name + "*"))


def once(run: Any) -> tuple[Timing, Any]:
    """One timed run with the harness's protocol (exports are minutes: no warm-up)."""
    result: list[Any] = [None]
    timing = measure(lambda: result.__setitem__(0, run()), Protocol(warmup=0, repeats=1))
    return timing, result[0]


def export_one(precision: str, folder: Path, arch: str, size: int) -> dict[str, object]:
    """Export in this process; time, peak memory, size, then agreement."""
    from cleandift_deploy.export import ExportOptions, export_onnx
    from cleandift_deploy.export.agreement import as_record
    from cleandift_deploy.export.measure import agreement_batches, measure_agreement
    from cleandift_deploy.models import random_unet
    from cleandift_deploy.models.graph_module import build_export_graph
    from cleandift_deploy.models.graph_shapes import plan_shapes

    loaded = random_unet(arch, seed=0)
    options = ExportOptions(
        image_size=(size, size), precision=precision, check_agreement=False, random_init=True
    )
    out = folder / f"{arch}-us6-{precision}.onnx"
    export_timing, manifest = once(lambda: export_onnx(loaded, out, options))
    peak_export = process_peak_gib()
    module = build_export_graph(loaded, options).module
    batches = agreement_batches(plan_shapes(arch, options), module)
    agreement_timing, agreement = once(lambda: measure_agreement(out, module, batches))
    return {
        "precision": precision,
        "export_seconds": round(export_timing.median, 1),
        "export_timing": export_timing.to_dict(),
        "export_peak_rss_gb": round(peak_export, 2),
        "onnx_bytes": _files_size(out),
        "external_data": manifest.build["external_data"],
        "nodes_traced": manifest.build["nodes_traced"],
        "nodes_cleaned": manifest.build["nodes_cleaned"],
        "agreement_seconds": round(agreement_timing.median, 1),
        "agreement_peak_rss_gb": round(process_peak_gib(), 2),
        "agreement": as_record(agreement),
        "onnx": str(out),
    }


def build_one(onnx_path: Path) -> dict[str, object]:
    """TensorRT-RTX ahead-of-time build in this process."""
    from cleandift_deploy.export.tensorrt_build import BuildOptions, build_engine

    engine = onnx_path.with_name(onnx_path.stem + "-rtx.engine")
    timing, manifest = once(lambda: build_engine(onnx_path, engine, BuildOptions(workspace_gb=8.0)))
    return {
        "build_seconds": round(timing.median, 1),
        "build_timing": timing.to_dict(),
        "build_peak_rss_gb": round(process_peak_gib(), 2),
        "engine_bytes": engine.stat().st_size,
        "tensorrt_rtx": manifest.versions.get("tensorrt_rtx"),
    }


def _child(args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        return {"failed": done.stderr.strip().splitlines()[-1:] or ["no output"]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def report(bench: Benchmark, rows: list[dict[str, Any]], arch: str, size: int) -> None:
    """Figures (export / build seconds and peaks per precision) and the table."""
    table = []
    for row in rows:
        precision = row.get("precision")
        us6 = row.get("agreement", {}).get("us6", {})
        build = row.get("build", {})
        if "export_timing" in row:
            bench.timing_figure(f"{precision} export", Timing.from_dict(row["export_timing"]))
            bench.figure(f"{precision} export peak", row["export_peak_rss_gb"], "GiB")
        if "build_timing" in build:
            bench.timing_figure(f"{precision} rtx build", Timing.from_dict(build["build_timing"]))
            bench.figure(f"{precision} rtx build peak", build["build_peak_rss_gb"], "GiB")
        table.append(
            [
                precision,
                row.get("export_seconds"),
                row.get("export_peak_rss_gb"),
                f"{int(row.get('onnx_bytes', 0)) / 1e6:.0f}",
                f"{row.get('nodes_traced')} -> {row.get('nodes_cleaned')}",
                us6.get("cosine_min"),
                us6.get("relative_l2"),
                us6.get("max_abs"),
                f"{int(build.get('engine_bytes', 0)) / 1e6:.0f}",
                build.get("build_seconds"),
                build.get("build_peak_rss_gb"),
            ]
        )
    headers = ["precision", "export s", "export peak GiB", "ONNX MB", "nodes traced -> cleaned"]
    headers += ["ORT cos min", "ORT rel L2", "ORT max abs", "engine MB (RTX)", "build s"]
    bench.table(
        f"{arch} architecture (random weights), {size}x{size} px, tap us6, batch 1",
        [*headers, "build peak GiB"],
        table,
    )
    failed = [row["failed"] for row in rows if "failed" in row]
    failed += [row["build"]["failed"] for row in rows if "failed" in row.get("build", {})]
    bench.note(
        "Each step ran in a fresh process; peak GiB is that process's high-water mark."
        + (f" Failed steps: {failed}." if failed else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", choices=["fp32", "fp16"])
    parser.add_argument("--build", type=Path)
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--arch", default="sd21", help="tiny: a quick check")
    parser.add_argument("--size", type=int, default=768)
    args = parser.parse_args()
    if args.export:
        print(json.dumps(export_one(args.export, args.folder, args.arch, args.size)))
        return
    if args.build:
        print(json.dumps(build_one(args.build)))
        return
    bench = Benchmark("export", "Export and TensorRT-RTX build")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as folder:
        for precision in ("fp32", "fp16"):
            print(f"exporting {precision} ...", file=sys.stderr, flush=True)
            size_args = ["--arch", args.arch, "--size", str(args.size)]
            row = _child(["--export", precision, "--folder", folder, *size_args])
            if precision == "fp16" and "onnx" in row:
                print("building fp16 engine with TensorRT-RTX ...", file=sys.stderr, flush=True)
                row["build"] = _child(["--build", str(row["onnx"])])
            row.pop("onnx", None)
            rows.append(row)
    report(bench, rows, args.arch, args.size)
    bench.results = {"arch": args.arch, "size": args.size, "rows": rows}
    for path in bench.write():
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
