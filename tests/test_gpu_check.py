"""The GPU check's driver without a GPU: the dry run lists every part with its expected time and
the wheels with their sizes under the 64 MiB that travels; a part that fails, times out or skips
a test for a reason not allowed makes the check exit 1 naming it, and the summary (harness
schema) is on disk after every part."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench_gpu() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "benchmarks/bench_gpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_dry_run_lists_every_part_and_what_travels() -> None:
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks/gpu_check.sh"), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    module = _bench_gpu()
    for part in module.PARTS:
        assert f"{part.name} " in done.stdout
    assert "install" in done.stdout and "diffusers" in done.stdout
    assert "tensorrt" in done.stdout and "no: tensorrt is not installed" in done.stdout
    total = float(done.stdout.split("travels in all: ")[1].split(" MiB")[0])
    assert 0 < total < 64
    expected = sum(p.expected_s for p in module.PARTS if module.expected_to_run(p) is None)
    assert expected + 20 < 8 * 60 and module.BUDGET_S + 20 < 8 * 60


def test_failures_timeouts_and_unexpected_skips_fail_the_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = _bench_gpu()
    tests = tmp_path / "cases"
    tests.mkdir()
    cases = {
        "passing": "def test_ok():\n    assert True\n",
        "allowed": "import pytest\n\ndef test_two():\n    pytest.skip('needs two CUDA GPUs')\n",
        "skipping": "import pytest\n\ndef test_s():\n    pytest.skip('needs a CUDA GPU')\n",
        "failing": "def test_bad():\n    assert False\n",
        "slow": "import time\n\ndef test_slow():\n    time.sleep(30)\n",
    }
    parts = []
    for name, body in cases.items():
        (tests / f"test_{name}.py").write_text(body)
        parts.append(
            module.Part(
                name,
                1,
                3 if name == "slow" else 60,
                name,
                tests=(str(tests / f"test_{name}.py"),),
                skips_allowed=("needs two CUDA GPUs",),
            )
        )
    parts.append(module.Part("absent", 1, 60, "absent", tests=("x",), needs="no_such_module_x"))
    out = tmp_path / "out"
    assert module.check(parts, out) == 1
    printed = capsys.readouterr().out
    assert "gpu_check FAILED: skipping (skipped), failing (failed), slow (timeout)" in printed
    (summary,) = out.glob("*/gpu_check.json")
    record = json.loads(summary.read_text())
    assert record["schema"] == "cleandift-bench/1" and record["machine"]["id"]
    statuses = {name: part["status"] for name, part in record["results"]["parts"].items()}
    assert statuses == {
        "passing": "ok",
        "allowed": "ok",
        "skipping": "skipped",
        "failing": "failed",
        "slow": "timeout",
        "absent": "not expected here",
    }
    log = (summary.parent / "gpu_check.log").read_text()
    assert "===== failing" in log and "assert False" in log


def test_a_measuring_part_writes_its_result_and_errors(tmp_path: Path) -> None:
    module = _bench_gpu()
    module.MEASURED["environment"] = lambda _: {"gpu": "none"}
    assert module.child("environment", tmp_path) == 0
    assert json.loads((tmp_path / "environment.json").read_text()) == {"gpu": "none"}

    def broken(_: object) -> dict[str, object]:
        raise RuntimeError("the floor part did not run")

    module.MEASURED["gallery"] = broken
    with pytest.raises(RuntimeError):
        module.child("gallery", tmp_path)
    assert "did not run" in json.loads((tmp_path / "gallery.json").read_text())["error"]
