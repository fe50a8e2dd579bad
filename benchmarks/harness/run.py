"""`Benchmark`: what every script in benchmarks/ uses to time, record and write its results.

with Benchmark("matching", "Matching kernels vs references", quick=args.quick) as bench:
    timing = bench.time("dense 9216", run, Protocol(warmup=1, repeats=3),
                        work=flops, ceiling="fp32_gemm")
    bench.table("Dense", headers, rows)
# -> benchmarks/results/<machine-id>/matching-quick.{json,md,png}
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from cleandift_deploy.atomic import write_text_atomic

from .ceilings import CEILINGS, ratio
from .context import BUSY_ENV, QUICK_ENV, command, commit, now, run_context
from .render import markdown, plot
from .results import RESULTS, SCHEMA, result_stem, results_dir, write_json
from .timing import Protocol, Timing, is_busy, load_average, measure

DEFAULT = Protocol()
RATE_UNITS = {"fp32_gemm": ("GFLOP/s", 1e9), "bf16_gemm": ("GFLOP/s", 1e9), "memory": ("GB/s", 1e9)}


class Benchmark:
    """One benchmark run: context measured once, figures and tables collected, files written."""

    def __init__(
        self,
        name: str,
        title: str,
        quick: bool | None = None,
        root: Path = RESULTS,
        argv: list[str] | None = None,
        context: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.title = title
        self.quick = bool(os.environ.get(QUICK_ENV)) if quick is None else quick
        self.root = root
        self.context = context if context is not None else run_context()
        self.command = command(argv)
        self.started = time.perf_counter()
        self.date = now()
        self.load_before = load_average()
        self.figures: list[dict[str, Any]] = []
        self.tables: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.plots: list[dict[str, Any]] = []
        self.results: dict[str, Any] = {}
        self.status = "ok"
        self.reason: str | None = None
        self.busy_seen = False

    @property
    def machine_id(self) -> str:
        """The folder this run writes into."""
        return str(self.context["machine"]["id"])

    @property
    def ceilings(self) -> dict[str, Any]:
        """The ceilings measured for this run."""
        return dict(self.context.get("ceilings") or {})

    def path(self, suffix: str) -> Path:
        """benchmarks/results/<machine-id>/NAME[-quick].<suffix>"""
        stem = result_stem(self.name, self.quick)
        return results_dir(self.machine_id, self.root) / f"{stem}.{suffix}"

    def time(
        self,
        key: str,
        run: Callable[[], object],
        protocol: Protocol = DEFAULT,
        label: str | None = None,
        work: float | None = None,
        ceiling: str | None = None,
    ) -> Timing:
        """Time `run` with the one protocol and record the median as figure `key`."""
        timing = measure(run, protocol)
        self.timing_figure(key, timing, label=label, work=work, ceiling=ceiling)
        return timing

    def timing_figure(
        self,
        key: str,
        timing: Timing,
        label: str | None = None,
        work: float | None = None,
        ceiling: str | None = None,
    ) -> dict[str, Any]:
        """Record a timing (median seconds); with `work` (FLOPs or bytes per run) and a ceiling
        kind ("fp32_gemm", "bf16_gemm", "memory") also the achieved rate and its ratio."""
        figure = self.figure(key, timing.median, "s", label=label)
        figure["timing"] = timing.to_dict()
        self.busy_seen |= timing.busy
        if work is not None and ceiling is not None:
            unit, scale = RATE_UNITS[ceiling]
            achieved = work / timing.median / scale
            figure["rate"] = {
                "value": achieved,
                "unit": unit,
                "ceiling": CEILINGS[ceiling][0],
                "ratio": ratio(achieved, ceiling, self.ceilings),
            }
        return figure

    def figure(
        self, key: str, value: float, unit: str, label: str | None = None, better: str = "lower"
    ) -> dict[str, Any]:
        """Record one figure: the index compares figures with the same key across machines."""
        figure: dict[str, Any] = {"key": key, "value": value, "unit": unit, "better": better}
        if label:
            figure["label"] = label
        self.figures.append(figure)
        return figure

    def table(self, title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A table for the Markdown report (values stay JSON)."""
        rows_ = [list(r) for r in rows]
        self.tables.append({"title": title, "headers": list(headers), "rows": rows_})

    def note(self, text: str) -> None:
        """A paragraph under the tables (how it was measured, caveats)."""
        self.notes.append(text)

    def line_plot(
        self,
        title: str,
        xlabel: str,
        ylabel: str,
        series: dict[str, list[tuple[float, float]]],
        logx: bool = False,
        logy: bool = False,
    ) -> None:
        """A panel of the PNG: one line per series of (x, y) points."""
        self.plots.append(
            {
                "title": title,
                "xlabel": xlabel,
                "ylabel": ylabel,
                "series": series,
                "logx": logx,
                "logy": logy,
            }
        )

    def bar_plot(
        self,
        title: str,
        ylabel: str,
        categories: list[str],
        series: dict[str, list[float | None]],
        logy: bool = False,
    ) -> None:
        """A panel of grouped bars: one group per category, one bar per series."""
        self.plots.append(
            {
                "title": title,
                "xlabel": "",
                "ylabel": ylabel,
                "categories": categories,
                "series": series,
                "logy": logy,
            }
        )

    def skip(self, reason: str) -> None:
        """Mark the benchmark as not runnable here (the index says so; no old figure stands)."""
        self.status = "skipped"
        self.reason = reason

    def record(self) -> dict[str, Any]:
        """The results record in the one schema."""
        after = load_average()
        threads = int(self.ceilings.get("threads", 1))
        forced = os.environ.get(BUSY_ENV)
        busy = bool(forced) or self.busy_seen or is_busy(self.load_before, after, threads)
        reason = forced or ("load average above the run's own threads" if busy else None)
        record: dict[str, Any] = {
            "schema": SCHEMA,
            "name": self.name,
            "title": self.title,
            "quick": self.quick,
            "status": self.status,
            "machine": self.context["machine"],
            "software": self.context.get("software", {}),
            "ceilings": self.ceilings,
            "run": {
                "date": self.date,
                "commit": commit(),
                "command": self.command,
                "seconds": round(time.perf_counter() - self.started, 1),
                "load_before": list(self.load_before),
                "load_after": list(after),
                "busy": busy,
                "busy_reason": reason,
            },
            "figures": self.figures,
            "tables": self.tables,
            "notes": self.notes,
            "plots": self.plots,
            "results": self.results,
        }
        if self.reason:
            record["reason"] = self.reason
        return record

    def write(self) -> list[Path]:
        """Write NAME.json, NAME.md and (with plots) NAME.png into this machine's folder."""
        record = self.record()
        json_path, md_path = self.path("json"), self.path("md")
        write_json(json_path, record)
        write_text_atomic(md_path, markdown(record))
        written = [json_path, md_path]
        if self.plots:
            plot(record, self.path("png"))
            written.append(self.path("png"))
        return written

    def __enter__(self) -> Benchmark:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is None:
            for path in self.write():
                print(f"wrote {path}")
