"""`bench`: FLOPs counted from the ONNX graph agree with PyTorch's own count, and the command
reports every field for every case, with the reference in the same run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_helpers import run_cli
from runtime_helpers import export_tiny
from torch.utils.flop_counter import FlopCounterMode

from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.runtime.bench import BenchBudget, latencies, summarise
from cleandift_deploy.runtime.extractor import FeatureExtractor
from cleandift_deploy.runtime.flops import count_flops

ROW_FIELDS = {
    "backend",
    "batch",
    "height",
    "width",
    "iterations",
    "latency_ms",
    "images_per_s",
    "peak_memory_mb",
    "flops",
    "tflops",
    "speedup_vs_reference",
    "extra",
}


@pytest.fixture(scope="module")
def artifact(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "tiny.onnx"
    return export_tiny(
        tiny, out, batch=(1, 1, 2), size_range=((64, 64), (128, 128)), image_size=(64, 64)
    )


def test_graph_flops_match_pytorch_count(artifact: Path) -> None:
    """Convolutions and weight products equal torch's FlopCounterMode on the reference; the
    graph's activation x activation products (attention, which torch's counter skips for CPU
    SDPA) come on top."""
    import onnx

    shape = [2, 3, 64, 128]
    counted = count_flops(artifact, {"image": shape})
    reference = FeatureExtractor.load(artifact, backend="torch")
    pixels = torch.randint(0, 256, shape, dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        reference.backend.run({"image": pixels})
    by_op = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    assert counted["Conv"] == by_op["aten.convolution"]
    linear = sum(v for k, v in by_op.items() if k in ("aten.mm", "aten.addmm", "aten.bmm"))
    graph = onnx.load(str(artifact), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    assert any(n.op_type == "MatMul" and n.input[1] not in weights for n in graph.node)
    assert counted["MatMul"] + counted.get("Gemm", 0) > linear
    attention = counted["MatMul"] + counted.get("Gemm", 0) - linear
    assert attention < 0.5 * linear
    doubled = count_flops(artifact, {"image": [4, 3, 64, 128]})
    assert doubled["Conv"] == 2 * counted["Conv"]


def test_budget_by_iterations_and_by_seconds() -> None:
    calls: list[int] = []
    found = latencies(lambda: calls.append(1), torch.device("cpu"), BenchBudget(2, 5, None))
    assert len(found) == 5 and len(calls) == 7
    found = latencies(lambda: None, torch.device("cpu"), BenchBudget(0, None, 0.05))
    assert len(found) > 1
    stats = summarise([0.001 * i for i in range(1, 101)])
    assert stats["p50"] == pytest.approx(50.5) and stats["p99"] == pytest.approx(99.01)
    assert stats["min"] == pytest.approx(1.0)


def test_cli_reports_every_field_with_the_reference(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench"
    args = ["bench", str(artifact), "--batch", "1,2", "--image-size", "64x128", "--warmup", "1"]
    args += ["--iterations", "2", "--reference", "--json", f"{out}.json"]
    args += ["--markdown", f"{out}.md", "--plot", f"{out}.png"]
    assert run_cli(args) == 0
    report = json.loads(Path(f"{out}.json").read_text())
    assert {"artifact", "manifest_sha256", "backend", "device", "machine", "rows"} <= set(report)
    rows = report["rows"]
    assert [(r["backend"], r["batch"]) for r in rows] == [
        ("torch-cpu", 1),
        ("onnxruntime-cpu", 1),
        ("torch-cpu", 2),
        ("onnxruntime-cpu", 2),
    ]
    for row in rows:
        assert set(row) == ROW_FIELDS
        latency = row["latency_ms"]
        assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"]
        assert row["iterations"] == 2 and row["flops"] > 0 and row["peak_memory_mb"] > 100
        assert row["images_per_s"] == pytest.approx(row["batch"] * 1000 / latency["p50"])
    ours = rows[1]
    assert ours["speedup_vs_reference"] == pytest.approx(
        rows[0]["latency_ms"]["p50"] / ours["latency_ms"]["p50"]
    )
    assert rows[2]["flops"] == 2 * rows[0]["flops"]
    markdown = Path(f"{out}.md").read_text()
    assert markdown.count("| onnxruntime-cpu |") == 2
    assert Path(f"{out}.png").read_bytes()[:4] == b"\x89PNG"
    assert "onnxruntime-cpu" in capsys.readouterr().out


def test_cli_refuses_cases_outside_the_profile(
    artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["bench", str(artifact), "--batch", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "batch 3 is outside the model's profile 1..2" in err
    assert run_cli(["bench", str(artifact), "--iterations", "2", "--seconds", "1"]) == 2
    assert "not both" in capsys.readouterr().err
