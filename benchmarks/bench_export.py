"""Export and build figures for the full SD2.1 architecture (random weights) at 768 px, tap us6.

For fp32 and fp16: export wall time and peak memory (each in a fresh process), ONNX size on disk,
ONNX Runtime agreement with the fp32 PyTorch reference on fresh random images; for the fp16
graph also the TensorRT-RTX ahead-of-time build time, peak memory and engine size.

Run once, under the shared lock:
    flock /tmp/cpu-heavy.lock .venv/bin/python benchmarks/bench_export.py
Writes benchmarks/results/export.json and export.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.results import machine_folder

RESULTS = machine_folder()  # benchmarks/results/<machine-id>/
SIZE = 768


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _files_size(onnx_path: Path) -> int:
    return sum(p.stat().st_size for p in onnx_path.parent.glob(onnx_path.name + "*"))


def export_one(precision: str, folder: Path) -> dict[str, object]:
    """Export in this process; time, peak memory, size, then agreement."""
    from cleandift_deploy.export import ExportOptions, export_onnx
    from cleandift_deploy.export.agreement import as_record
    from cleandift_deploy.export.graph_module import build_export_graph
    from cleandift_deploy.export.measure import agreement_batches, measure_agreement
    from cleandift_deploy.export.shapes import plan_shapes
    from cleandift_deploy.models import random_unet

    loaded = random_unet("sd21", seed=0)
    options = ExportOptions(
        image_size=(SIZE, SIZE), precision=precision, check_agreement=False, random_init=True
    )
    out = folder / f"sd21-us6-{precision}.onnx"
    started = time.perf_counter()
    manifest = export_onnx(loaded, out, options)
    seconds = time.perf_counter() - started
    peak_export = _peak_gb()
    module = build_export_graph(loaded, options).module
    batches = agreement_batches(plan_shapes("sd21", options), module)
    started = time.perf_counter()
    agreement = measure_agreement(out, module, batches)
    return {
        "precision": precision,
        "export_seconds": round(seconds, 1),
        "export_peak_rss_gb": round(peak_export, 2),
        "onnx_bytes": _files_size(out),
        "external_data": manifest.build["external_data"],
        "nodes_traced": manifest.build["nodes_traced"],
        "nodes_cleaned": manifest.build["nodes_cleaned"],
        "agreement_seconds": round(time.perf_counter() - started, 1),
        "agreement_peak_rss_gb": round(_peak_gb(), 2),
        "agreement": as_record(agreement),
        "onnx": str(out),
    }


def build_one(onnx_path: Path) -> dict[str, object]:
    """TensorRT-RTX ahead-of-time build in this process."""
    from cleandift_deploy.export.tensorrt_build import BuildOptions, build_engine

    engine = onnx_path.with_name(onnx_path.stem + "-rtx.engine")
    started = time.perf_counter()
    manifest = build_engine(onnx_path, engine, BuildOptions(workspace_gb=8.0))
    return {
        "build_seconds": round(time.perf_counter() - started, 1),
        "build_peak_rss_gb": round(_peak_gb(), 2),
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


def _markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"# Export: SD2.1 architecture (random weights), {SIZE}x{SIZE} px, tap us6, batch 1",
        "",
        "| precision | export s | export peak GB | ONNX MB | nodes traced -> cleaned "
        "| ORT cos min | ORT rel L2 | ORT max abs | engine MB (RTX) | build s | build peak GB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        us6 = row.get("agreement", {}).get("us6", {})
        build = row.get("build", {})
        nan = float("nan")
        lines.append(
            f"| {row.get('precision')} | {row.get('export_seconds')} | "
            f"{row.get('export_peak_rss_gb')} | {int(row.get('onnx_bytes', 0)) / 1e6:.0f} | "
            f"{row.get('nodes_traced')} -> {row.get('nodes_cleaned')} | "
            f"{us6.get('cosine_min', nan):.7f} | {us6.get('relative_l2', nan):.2e} | "
            f"{us6.get('max_abs', nan):.2e} | "
            f"{int(build.get('engine_bytes', 0)) / 1e6:.0f} | {build.get('build_seconds', '-')} | "
            f"{build.get('build_peak_rss_gb', '-')} |"
        )
    lines += ["", "Each step ran in a fresh process; peak GB is that process's max RSS.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", choices=["fp32", "fp16"])
    parser.add_argument("--build", type=Path)
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    if args.export:
        print(json.dumps(export_one(args.export, args.folder)))
        return
    if args.build:
        print(json.dumps(build_one(args.build)))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-export-") as folder:
        for precision in ("fp32", "fp16"):
            print(f"exporting {precision} ...", file=sys.stderr, flush=True)
            row = _child(["--export", precision, "--folder", folder])
            if precision == "fp16" and "onnx" in row:
                print("building fp16 engine with TensorRT-RTX ...", file=sys.stderr, flush=True)
                row["build"] = _child(["--build", str(row["onnx"])])
            row.pop("onnx", None)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "export.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / "export.md").write_text(_markdown(rows))
    print(_markdown(rows))


if __name__ == "__main__":
    main()
