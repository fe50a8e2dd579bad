"""Where results live and what a results file holds (one JSON schema for every benchmark).

Layout: ``benchmarks/results/<machine-id>/NAME.{json,md,png}``; the machine id comes from the
measured description (`cleandift_deploy.runtime.machine.MachineDescription.machine_id`), so a run
on one machine never overwrites another machine's figures. ``NAME-quick`` holds `make bench-quick`'s
small sizes beside the full run. Folders whose name starts with ``legacy-`` or is
``unknown-machine`` hold figures measured before this harness, with a ``legacy.json`` saying what
their files state about the machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cleandift_deploy.atomic import write_text_atomic

RESULTS = Path(__file__).resolve().parent.parent / "results"
SCHEMA = "cleandift-bench/1"
REQUIRED = ("schema", "name", "title", "status", "machine", "run", "figures")
RUN_FIELDS = ("date", "commit", "command", "busy")
LEGACY_FILE = "legacy.json"


class ResultsError(ValueError):
    """A results file that does not follow the schema."""


def result_stem(name: str, quick: bool) -> str:
    """File stem of a benchmark's results: NAME, or NAME-quick for the small sizes."""
    return f"{name}-quick" if quick else name


def results_dir(machine_id: str, root: Path = RESULTS) -> Path:
    """This machine's results folder (not created)."""
    if not machine_id or "/" in machine_id or machine_id.startswith("."):
        raise ResultsError(f"not a machine id: {machine_id!r}")
    return root / machine_id


def machine_folder(root: Path = RESULTS) -> Path:
    """This machine's results folder, from its measured description (not created)."""
    from cleandift_deploy.runtime.machine import describe_machine

    return results_dir(describe_machine().machine_id(), root)


def validate(record: dict[str, Any], where: str = "results") -> dict[str, Any]:
    """Check the record against the schema; return it."""
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ResultsError(f"{where}: missing {', '.join(missing)}")
    if record["schema"] != SCHEMA:
        raise ResultsError(f"{where}: schema {record['schema']!r}, expected {SCHEMA!r}")
    if "id" not in record["machine"]:
        raise ResultsError(f"{where}: the machine has no id")
    lacking = [k for k in RUN_FIELDS if k not in record["run"]]
    if lacking:
        raise ResultsError(f"{where}: run lacks {', '.join(lacking)}")
    for figure in record["figures"]:
        if not {"key", "value", "unit"} <= set(figure):
            raise ResultsError(f"{where}: figure {figure} lacks key, value or unit")
    return record


def write_json(path: Path, record: dict[str, Any]) -> None:
    """Validate and write one results file atomically."""
    validate(record, str(path))
    write_text_atomic(path, json.dumps(record, indent=2, default=str) + "\n")


def load_results(root: Path = RESULTS) -> list[dict[str, Any]]:
    """Every harness results file under `root`, each with its path relative to `root`."""
    found = []
    for path in sorted(root.glob("*/*.json")):
        if path.name == LEGACY_FILE:
            continue
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or record.get("schema") != SCHEMA:
            continue
        validate(record, str(path))
        record["_path"] = path.relative_to(root).as_posix()
        found.append(record)
    return found


def load_legacy(root: Path = RESULTS) -> list[dict[str, Any]]:
    """The folders of figures measured before the harness, with what their files state."""
    found = []
    for path in sorted(root.glob(f"*/{LEGACY_FILE}")):
        legacy = json.loads(path.read_text())
        legacy["_folder"] = path.parent.name
        found.append(legacy)
    return found
