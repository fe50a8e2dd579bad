"""Golden inputs and outputs in Polygraphy's JSON formats, so an engine on a GPU machine can be
compared later (with this toolkit or `polygraphy run --load-inputs/--load-outputs`) against
reference outputs made here on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import CleanDiftError

INPUTS_FILE = "inputs.json"
OUTPUTS_FILE = "outputs.json"
RUNNER_NAME = "pytorch-fp32-reference"


def save_golden(
    folder: Path, batches: list[dict[str, np.ndarray]], outputs: list[dict[str, np.ndarray]]
) -> None:
    """Write the input batches and the reference outputs per batch (one iteration each)."""
    from polygraphy.comparator import IterationResult, RunResults
    from polygraphy.json import save_json

    folder.mkdir(parents=True, exist_ok=True)
    results = RunResults(
        [(RUNNER_NAME, [IterationResult(dict(o), runner_name=RUNNER_NAME) for o in outputs])]
    )
    with atomic_path(folder / INPUTS_FILE) as temporary:
        save_json(batches, str(temporary))
    with atomic_path(folder / OUTPUTS_FILE) as temporary:
        results.save(str(temporary))


def load_golden(folder: Path) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """The input batches and reference outputs saved by `save_golden`."""
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    paths = [folder / INPUTS_FILE, folder / OUTPUTS_FILE]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise CleanDiftError(
            f"golden folder {folder} lacks {', '.join(missing)}: make it with --save-golden"
        )
    try:
        batches = list(load_json(str(paths[0])))
        results = RunResults.load(str(paths[1]))
        outputs = [dict(iteration) for iteration in results[0][1]]
    except Exception as err:
        raise CleanDiftError(f"cannot read the golden files in {folder} ({err})") from None
    if len(outputs) != len(batches):
        raise CleanDiftError(
            f"golden folder {folder} has {len(batches)} input batches but {len(outputs)} outputs"
        )
    return [dict(b) for b in batches], outputs
