"""Markdown and PNG from a results record: every benchmark's report looks the same, and the
files can be regenerated from the JSON alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cleandift_deploy.atomic import atomic_path


def fmt(value: Any) -> str:
    """A cell: floats to 4 significant digits, None as a dash."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def percent(ratio: float) -> str:
    """A ratio as a percentage with two significant digits below 10%."""
    return f"{ratio:.0%}" if ratio >= 0.1 else f"{100 * ratio:.2g}%"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table's lines."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return lines


def busy_text(run: dict[str, Any]) -> str:
    """The busy note of a run, in words."""
    loads = f"load average {fmt(run.get('load_before', ['?'])[0])} before, "
    loads += f"{fmt(run.get('load_after', ['?'])[0])} after"
    if not run["busy"]:
        return f"quiet machine ({loads})"
    reason = run.get("busy_reason") or "other work was running"
    return f"**busy machine**: {reason} ({loads}); compare ratios, not absolute times"


def ceiling_text(ceilings: dict[str, Any]) -> str:
    """The ceilings measured in the run, in one line."""
    if not ceilings:
        return "not measured"
    return (
        f"fp32 GEMM {fmt(ceilings.get('fp32_gemm_gflops'))} GFLOP/s, "
        f"bf16 GEMM {fmt(ceilings.get('bf16_gemm_gflops'))} GFLOP/s, "
        f"memory {fmt(ceilings.get('memory_gbps'))} GB/s "
        f"({ceilings.get('threads', '?')} threads)"
    )


def figure_rows(figures: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """Rows of the figures table: what, value, min / spread, achieved rate and its ratio."""
    rows = []
    for f in figures:
        timing = f.get("timing")
        rate = f.get("rate")
        rows.append(
            [
                f.get("label") or f["key"],
                f"{fmt(f['value'])} {f['unit']}",
                "-" if not timing else f"{fmt(timing['minimum'])} s / {timing['spread']:.0%}",
                "-" if not timing else len(timing["samples"]),
                "-" if not rate else f"{fmt(rate['value'])} {rate['unit']}",
                "-"
                if not rate or rate.get("ratio") is None
                else f"{percent(rate['ratio'])} of {rate['ceiling']}",
            ]
        )
    return rows


FIGURE_HEADERS = ("figure", "value", "min / spread", "runs", "achieved", "of ceiling")


def markdown(record: dict[str, Any], level: int = 1) -> str:
    """The whole report: header with machine, run and ceilings, figures, tables, notes.
    `level` is the title's heading level (a docs page nests reports one level down)."""
    run = record["run"]
    lines = [f"{'#' * level} {record['title']}", ""]
    if record["status"] != "ok":
        lines += [f"Not run on this machine: {record.get('reason', record['status'])}.", ""]
    lines += [
        f"- Machine: {record['machine']['summary']} (`{record['machine']['id']}`)",
        f"- Run: {run['date']}, commit `{run['commit']}`, {fmt(run.get('seconds'))} s",
        f"- Command: `{run['command']}`",
        f"- Load: {busy_text(run)}",
        f"- Ceilings measured in this run: {ceiling_text(record.get('ceilings', {}))}",
        "",
    ]
    if record["figures"]:
        lines += [*table(FIGURE_HEADERS, figure_rows(record["figures"])), ""]
    for t in record.get("tables", []):
        lines += [f"{'#' * (level + 1)} {t['title']}", "", *table(t["headers"], t["rows"]), ""]
    for note in record.get("notes", []):
        lines += [note, ""]
    return "\n".join(lines).rstrip() + "\n"


def plot(record: dict[str, Any], path: Path) -> None:
    """The record's plot panels (line charts) side by side, titled with the machine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = record["plots"]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for axis, panel in zip(axes[0], panels, strict=True):
        if panel.get("categories"):
            _bars(axis, panel)
        else:
            for label, points in panel["series"].items():
                xs, ys = zip(*points, strict=True) if points else ((), ())
                axis.plot(xs, ys, marker="o", label=label)
        axis.set(xlabel=panel["xlabel"], ylabel=panel["ylabel"], title=panel["title"])
        if panel.get("logx"):
            axis.set_xscale("log")
        if panel.get("logy"):
            axis.set_yscale("log")
        axis.legend(fontsize="small")
    machine = record["machine"]["summary"]
    figure.suptitle(f"{record['title']}\n{machine}, {record['run']['date'][:10]}", fontsize="small")
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)


def _bars(axis: Any, panel: dict[str, Any]) -> None:
    """Grouped bars: one group per category, one bar per series (None: no bar)."""
    categories = panel["categories"]
    width = 0.8 / max(len(panel["series"]), 1)
    for i, (label, values) in enumerate(panel["series"].items()):
        xs = [j + (i - (len(panel["series"]) - 1) / 2) * width for j in range(len(categories))]
        axis.bar(xs, [v or 0 for v in values], width, label=label)
    axis.set_xticks(range(len(categories)), categories, rotation=25, ha="right", fontsize=7)
