"""A rich progress bar for training: step count, steps/s, and the latest loss of every tap."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from .loop import StepCallback


def format_losses(losses: dict[str, float]) -> str:
    """`mid -0.712  us6 -0.604 ...` for the bar and the log."""
    return "  ".join(f"{tap} {value:+.3f}" for tap, value in losses.items())


@contextmanager
def training_progress(
    first_step: int, total: int, console: Console | None = None
) -> Iterator[StepCallback]:
    """Yield a per-step callback that advances a bar from `first_step` to `total`."""
    columns = (
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[losses]}"),
    )
    started = time.perf_counter()
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("train", total=total, completed=first_step, rate="", losses="")

        def update(step: int, losses: dict[str, float]) -> None:
            rate = (step - first_step) / max(time.perf_counter() - started, 1e-9)
            bar.update(
                task, completed=step, rate=f"{rate:.2f} steps/s", losses=format_losses(losses)
            )

        yield update
