"""The run's context, taken once per run: the machine description, library versions, the
ceilings measured now, the commit and the command.

`make bench` / `make bench-quick` (benchmarks/suite.py) measure it once and hand it to every
benchmark through the file named by ``BENCH_CONTEXT``; a benchmark started by hand measures its
own (a few seconds).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cleandift_deploy.atomic import write_text_atomic
from cleandift_deploy.runtime.machine import describe_machine, library_versions

from .ceilings import measure_ceilings
from .timing import load_average

CONTEXT_ENV = "BENCH_CONTEXT"
BUSY_ENV = "BENCH_BUSY"
"""Set to a reason ("shared with 8 engineers") to mark every figure of the run as measured on a
busy machine, whatever the load average says."""
QUICK_ENV = "BENCH_QUICK"
REPO = Path(__file__).resolve().parents[2]


def now() -> str:
    """UTC time, ISO 8601, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def commit(repo: Path = REPO) -> str:
    """The checked-out commit (short), with "+dirty" when tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=10", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def command(argv: list[str] | None = None) -> str:
    """The command line that reproduces this run, relative to the repository."""
    args = list(sys.argv if argv is None else argv)
    script = Path(args[0]).resolve() if args else Path("?")
    try:
        shown = script.relative_to(REPO).as_posix()
    except ValueError:
        shown = args[0] if args else "?"
    return shlex.join(["python", shown, *args[1:]])


def measure_context() -> dict[str, Any]:
    """Machine, software and ceilings, measured now."""
    machine = describe_machine()
    return {
        "machine": machine.to_dict(),
        "software": library_versions(),
        "ceilings": measure_ceilings(),
        "measured": now(),
        "load": load_average(),
    }


def run_context() -> dict[str, Any]:
    """The suite's context when it handed one over, else one measured now."""
    path = os.environ.get(CONTEXT_ENV)
    if path and Path(path).is_file():
        context: dict[str, Any] = json.loads(Path(path).read_text())
        return context
    return measure_context()


def save_context(path: Path) -> dict[str, Any]:
    """Measure the context and write it for the benchmarks this run starts."""
    context = measure_context()
    write_text_atomic(path, json.dumps(context, indent=2, default=str) + "\n")
    return context
