"""`cleandift-deploy --help` lists the commands without importing the heavy libraries."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "torch",
    "diffusers",
    "transformers",
    "onnx",
    "onnxruntime",
    "openvino",
    "ray",
    "tritonclient",
    "tensorrt",
    "tensorrt_rtx",
)

PROBE = """
import json, sys
from cleandift_deploy.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def _top_level_modules(*args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, check=True
    )
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(
    ("args", "allowed"),
    [
        (("--help",), set()),
        (("info", "--help"), set()),
        # a command's own help reads its choices (e.g. resize policies), which may need torch
        (("extract", "--help"), {"torch"}),
        (("train", "--help"), {"torch"}),
    ],
)
def test_help_imports_no_heavy_library(args: tuple[str, ...], allowed: set[str]) -> None:
    loaded = _top_level_modules(*args)
    assert "click" in loaded
    assert not (loaded & set(HEAVY)) - allowed, sorted(loaded & set(HEAVY))


def test_a_command_still_imports_what_it_needs() -> None:
    loaded = _top_level_modules("info", "--arch", "tiny", "--random-init")
    assert {"torch", "diffusers"} <= loaded
