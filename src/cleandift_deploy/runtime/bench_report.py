"""A benchmark run end to end: open the artifact (and its PyTorch reference), measure every case,
and report it as a terminal table, JSON, Markdown and a throughput / p99 plot."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ..atomic import atomic_path, write_text_atomic
from ..manifest import source_onnx
from .bench import DENORMALS, BenchBudget, BenchCase, BenchRow, measure, model_inputs
from .extractor import FeatureExtractor
from .machine import device_description
from .precision import EXACT, PrecisionRequest


@dataclass(frozen=True)
class BenchRequest:
    """What `cleandift-deploy bench` was asked to do."""

    artifact: Path
    backend: str
    device: str | None
    cases: tuple[BenchCase, ...]
    budget: BenchBudget
    reference: bool = False
    count_flops: bool = True
    precision: PrecisionRequest = EXACT


def _flops(source: Path | None, extractor: FeatureExtractor, case: BenchCase) -> int | None:
    if source is None:
        return None
    from .flops import count_flops

    shapes = {k: list(v.shape) for k, v in model_inputs(extractor.manifest, case).items()}
    return sum(count_flops(source, shapes).values())


def run_bench(request: BenchRequest) -> dict[str, Any]:
    """Measure every case (and the reference's, when asked) and return the report."""
    ours = FeatureExtractor.load(
        request.artifact, request.backend, request.device, **request.precision.load_options()
    )
    reference = (
        FeatureExtractor.load(request.artifact, "torch", request.device)
        if request.reference
        else None
    )
    source = source_onnx(request.artifact, ours.manifest) if request.count_flops else None
    rows: list[BenchRow] = []
    with Progress(transient=True, console=Console(stderr=True)) as progress:
        task = progress.add_task("benchmarking", total=len(request.cases))
        for case in request.cases:
            flops = _flops(source, ours, case)
            row = measure(ours, case, request.budget, flops)
            if reference is not None:
                base = measure(reference, case, request.budget, flops)
                row.speedup_vs_reference = base.latency_ms["p50"] / row.latency_ms["p50"]
                base.speedup_vs_reference = 1.0
                rows.append(base)
            rows.append(row)
            progress.advance(task)
    device = str(ours.backend.device)
    return {
        "artifact": str(request.artifact),
        "manifest_sha256": ours.manifest_sha256,
        "backend": ours.backend_name,
        "selection": ours.selection.as_dict(),
        "device": device,
        "machine": device_description(device),
        "budget": {
            "warmup": request.budget.warmup,
            "iterations": request.budget.iterations,
            "seconds": request.budget.seconds,
        },
        "timing": "CUDA events" if device.startswith("cuda") else "monotonic clock",
        "memory": "CUDA allocator peak" if device.startswith("cuda") else "process peak RSS",
        "denormals": DENORMALS,
        "rows": [row.to_dict() for row in rows],
    }


def _cells(row: dict[str, Any]) -> list[str]:
    latency = row["latency_ms"]
    speedup = row["speedup_vs_reference"]
    return [
        row["backend"],
        str(row["batch"]),
        f"{row['height']}x{row['width']}",
        f"{latency['p50']:.2f}",
        f"{latency['p90']:.2f}",
        f"{latency['p99']:.2f}",
        f"{row['images_per_s']:.2f}",
        "-" if row["tflops"] is None else f"{row['tflops']:.3g}",
        f"{row['peak_memory_mb']:.0f}",
        "-" if speedup is None else f"{speedup:.2f}x",
    ]


HEADERS = (
    "backend",
    "batch",
    "size",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "images/s",
    "TFLOP/s",
    "peak MB",
    "vs reference",
)


def print_table(report: dict[str, Any], console: Console) -> None:
    """The report as a terminal table."""
    table = Table(title=f"{report['artifact']} on {report['machine']}")
    for header in HEADERS:
        table.add_column(header, justify="left" if header == "backend" else "right")
    for row in report["rows"]:
        table.add_row(*_cells(row))
    console.print(table)


def to_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table with its machine and settings."""
    lines = [
        f"# bench: {report['artifact']}",
        "",
        f"Machine: {report['machine']}. Timing: {report['timing']}; memory: {report['memory']}; "
        f"budget: {report['budget']}; {report.get('denormals', '')}.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in report["rows"]]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Throughput and p99 latency against batch size, one line per backend and image size;
    bars when every series has a single batch size (a line of one point says nothing). The
    value axes start at zero, so equal figures look equal rather than magnified noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure = bench_figure(report)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)


def bench_figure(report: dict[str, Any]) -> Any:
    """The matplotlib figure `plot` saves (lines per series, or bars for single batch sizes)."""
    import matplotlib.pyplot as plt

    series = _series(report["rows"])
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    if all(len(rows) == 1 for rows in series.values()):
        names = [f"{key}\nbatch {rows[0]['batch']}" for key, rows in series.items()]
        left.bar(names, [rows[0]["images_per_s"] for rows in series.values()], color="C0")
        right.bar(names, [rows[0]["latency_ms"]["p99"] for rows in series.values()], color="C1")
        for axes in (left, right):
            axes.tick_params(axis="x", labelsize="small")
    else:
        for key, rows in series.items():
            batches = [r["batch"] for r in rows]
            left.plot(batches, [r["images_per_s"] for r in rows], marker="o", label=key)
            right.plot(batches, [r["latency_ms"]["p99"] for r in rows], marker="o", label=key)
        for axes in (left, right):
            axes.set_xlabel("batch")
            axes.set_xticks(sorted({r["batch"] for rows in series.values() for r in rows}))
        left.legend(fontsize="small")
    left.set(ylabel="images/s", title="throughput (higher is better)")
    right.set(ylabel="p99 latency (ms)", title="tail latency (lower is better)")
    for axes in (left, right):
        axes.set_ylim(bottom=0)
    title = textwrap.fill(f"{report['machine']}; {report.get('denormals', '')}", 150)
    figure.suptitle(title, fontsize="small")
    figure.tight_layout()
    return figure


def _series(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    series: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        key = f"{row['backend']} {row['height']}x{row['width']}"
        series.setdefault(key, []).append(row)
    return {k: sorted(v, key=lambda r: r["batch"]) for k, v in series.items()}


def write_outputs(
    report: dict[str, Any], json_path: Path | None, markdown: Path | None, png: Path | None
) -> None:
    """Write whichever of the JSON, Markdown and PNG files were asked for."""
    if json_path is not None:
        write_text_atomic(json_path, json.dumps(report, indent=2) + "\n")
    if markdown is not None:
        write_text_atomic(markdown, to_markdown(report))
    if png is not None:
        plot(report, png)
