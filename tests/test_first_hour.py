"""A newcomer's first hour (issue 25), kept as a test.

The documented quick start runs in order in `tests/test_docs_commands.py` (every runnable block of
docs/quickstart.md and README.md). This module starts where it ends: a folder with the quick
start's `tiny.onnx` and synthetic photos, made by the quick start's own commands (read from
docs/quickstart.md), and then what a careless user does with them. Each bad input must give one
line on stderr without a traceback, the advice in that line, the documented exit status, and
nothing half-written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import run_cli
from PIL import Image
from runtime_helpers import random_rgb
from test_docs_commands import ROOT, commands, inside, runnable_blocks

from cleandift_deploy.manifest import Manifest, ShapeRange, sidecar_path
from cleandift_deploy.runtime.extractor import FeatureExtractor
from cleandift_deploy.runtime.request_checks import resolve_image_size
from cleandift_deploy.serve.inputs import ClientError, parse_size
from cleandift_deploy.serve.triton_config import parse_config

pytestmark = pytest.mark.usefixtures("single_thread")

QUICKSTART = ROOT / "docs" / "quickstart.md"


def quickstart_step(verb: tuple[str, ...]) -> list[str]:
    """The quick start's command starting with `verb` (e.g. ("export",)), as documented."""
    steps = [
        argv for b in runnable_blocks(QUICKSTART) if b.language == "bash" for argv in commands(b)
    ]
    found = [argv for argv in steps if tuple(argv[: len(verb)]) == verb]
    assert found, f"docs/quickstart.md shows no `{' '.join(verb)}` command"
    return found[0]


@pytest.fixture(scope="module")
def start(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick start's first steps, as documented: tiny.onnx (+ tiny.json) and syn/."""
    folder = tmp_path_factory.mktemp("first-hour")
    with inside(folder):
        for verb in (("export",), ("eval", "make-synthetic")):
            assert run_cli(quickstart_step(verb)) == 0
    assert (folder / "tiny.onnx").is_file() and (folder / "syn" / "JPEGImages").is_dir()
    return folder


@pytest.fixture
def here(start: Path, tmp_path: Path) -> Iterator[Path]:
    """A fresh folder holding links to the quick start's files, as the working directory."""
    for name in ("tiny.onnx", "tiny.json", "syn"):
        os.symlink(start / name, tmp_path / name)
    with inside(tmp_path):
        yield tmp_path


def one_line(err: str, told: str | None = None) -> str:
    """The single line a refused command prints (no traceback, nothing else besides the line
    starting with `told`, which a command that ran says on the way, e.g. the engine it chose)."""
    lines = [s for s in err.splitlines() if s.strip() and not (told and s.startswith(told))]
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one line, got {len(lines)}:\n{err}"
    return lines[0]


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def one_image(here: Path) -> str:
    return str(next((here / "syn" / "JPEGImages").rglob("*.jpg")))


# item 1: an artifact without its sidecar; a damaged one


def test_a_graph_without_its_sidecar_opens(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The manifest is in the graph's metadata: a graph copied alone is a complete artifact."""
    (here / "alone").mkdir()
    shutil.copy(here / "tiny.onnx", here / "alone" / "tiny.onnx")
    code = run_cli(["extract", "--model", "alone/tiny.onnx", one_image(here), "--out", "f"])
    assert code == 0, capsys.readouterr().err
    assert len(list((here / "f").glob("*.safetensors"))) == 1
    alone = FeatureExtractor.load(here / "alone" / "tiny.onnx").manifest
    assert alone == Manifest.load(here / "tiny.json")


def test_tritons_model_onnx_opens(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Triton's `1/model.onnx` has no sidecar beside it (the repository keeps manifests apart)."""
    assert run_cli(quickstart_step(("triton-repo",))) == 0
    graph = here / "repo" / "tiny" / "1" / "model.onnx"
    assert not sidecar_path(graph).exists()
    extractor = FeatureExtractor.load(graph)
    assert extractor.manifest == Manifest.load(here / "tiny.json")


@pytest.mark.parametrize("sidecar", [True, False], ids=["with-sidecar", "without-sidecar"])
def test_a_truncated_graph_is_named_damaged(
    here: Path, sidecar: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    data = (here / "tiny.onnx").read_bytes()
    (here / "cut.onnx").write_bytes(data[: len(data) // 3])
    if sidecar:
        shutil.copy(here / "tiny.json", here / "cut.json")
    code = run_cli(["extract", "--model", "cut.onnx", one_image(here), "--out", "f"])
    line = one_line(capsys.readouterr().err)
    assert code == 2
    assert "cut.onnx is damaged" in line and "copy it again or re-export it" in line
    assert not (here / "f").exists()


# item 3: edge cases of extract


def test_extract_out_an_existing_file(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (here / "notes.txt").write_text("mine")
    code = run_cli(["extract", "--model", "tiny.onnx", "syn/JPEGImages", "--out", "notes.txt"])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and "notes.txt is a file: give a folder" in line
    assert (here / "notes.txt").read_text() == "mine"


def test_extract_an_empty_folder(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (here / "empty").mkdir()
    (here / "empty" / "readme.txt").write_text("no pictures here")
    code = run_cli(["extract", "--model", "tiny.onnx", "empty", "--out", "f"])
    line = one_line(capsys.readouterr().err)
    assert code == 2
    assert "no images in empty" in line and ".jpg" in line and ".png" in line
    assert not (here / "f").exists()


def test_a_text_file_named_png(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One line naming the file and what to do; the other images are still written; exit 1."""
    photos = here / "photos"
    shutil.copytree(here / "syn" / "JPEGImages", photos)
    (photos / "holiday.png").write_text("not a picture")
    count = len(list(photos.rglob("*.jpg")))
    code = run_cli(["extract", "--model", "tiny.onnx", "photos", "--out", "f"])
    line = one_line(capsys.readouterr().err, told="engine: ")
    assert code == 1
    assert f"{count} written" in line and "holiday.png" in line and "fix or remove it" in line
    assert "already in" not in line, "nothing was skipped: the summary claims no folder"
    assert len(list((here / "f").rglob("*.safetensors"))) == count
    assert not [n for n in files_under(here / "f") if "tmp" in n], "no temporary files left"


def test_the_summary_claims_no_folder_that_does_not_exist(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["extract", "--model", "tiny.onnx", one_image(here), "--out", "f"]) == 0
    first = capsys.readouterr().err
    assert "already in" not in first and "1 written, 0 skipped" in first
    assert run_cli(["extract", "--model", "tiny.onnx", one_image(here), "--out", "f"]) == 0
    assert "0 written, 1 skipped (already in f" in capsys.readouterr().err


# item 3: sizes outside the profile are answered with sizes inside it


def test_size_suggestions_lie_inside_the_profile(here: Path) -> None:
    manifest = Manifest.load(here / "tiny.json")  # static 64x64
    with pytest.raises(Exception, match=r"use 64x64, or re-export with a wider --size-range"):
        resolve_image_size(manifest, (100000, 100000))
    with pytest.raises(ClientError, match=r"outside the model's range.*use 64x64,") as refused:
        parse_size("100000x100000", manifest)
    assert refused.value.status == 422
    dynamic = dataclasses.replace(
        manifest, height=ShapeRange(64, 512, 1024), width=ShapeRange(128, 512, 768)
    )
    with pytest.raises(ClientError, match=r"use 1024x768, or re-export"):
        parse_size("100000x100000", dynamic)
    with pytest.raises(Exception, match=r"not a multiple of 64: use 448x320 or 512x384$"):
        resolve_image_size(dynamic, (500, 375))
    with pytest.raises(Exception, match=r"use 64x128,"):
        resolve_image_size(dynamic, (10, 10))


def test_size_range_names_both_bad_sizes(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["export", "--arch", "tiny", "--random-init", "-o", "x.onnx"]
    code = run_cli([*argv, "--size-range", "100x100", "300x300"])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and "100x100" in line and "300x300" in line and "256x256" in line
    assert not (here / "x.onnx").exists()


# item 6 and item 3: triton-repo


def test_triton_repo_on_bad_input_leaves_nothing(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_cli(["triton-repo", "tiny.onnx", "-o", "repo", "--max-batch", "4"])
    line = one_line(capsys.readouterr().err)
    assert code == 2 and "outside the model's batch range 1..1" in line
    assert not (here / "repo").exists()
    data = (here / "tiny.onnx").read_bytes()
    (here / "cut.onnx").write_bytes(data[:1000])
    assert run_cli(["triton-repo", "cut.onnx", "-o", "repo"]) == 2
    assert "damaged" in one_line(capsys.readouterr().err)
    assert not (here / "repo").exists()


def test_triton_repo_batch_one_has_no_dynamic_batching(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["triton-repo", "tiny.onnx", "-o", "repo", "--kind", "cpu"]) == 0
    note = one_line(capsys.readouterr().err)
    assert "largest batch is 1" in note and "dynamic batching is left out" in note
    config = parse_config((here / "repo" / "tiny" / "config.pbtxt").read_text())
    assert config.max_batch_size == 1 and not config.HasField("dynamic_batching")


def test_serve_says_sigterm_stops_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["serve", "--help"]) == 0
    assert "SIGTERM" in capsys.readouterr().out


# item 4: bench --reference under one denormal policy; a single batch size plots as bars


def test_bench_reference_flushes_denormals_for_every_engine(
    here: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every engine's timed runs see denormals flushed (1e-40 * 1 == 0), and the output says so;
    afterwards PyTorch is back to its default."""
    from cleandift_deploy.runtime import bench

    seen: list[bool] = []
    original = bench.latencies

    def probing(run, device, budget):  # type: ignore[no-untyped-def]
        seen.append(bool((torch.tensor([1e-40]) * 1.0 == 0).item()))
        return original(run, device, budget)

    monkeypatch.setattr(bench, "latencies", probing)
    argv = ["bench", "tiny.onnx", "--reference", "--iterations", "1", "--warmup", "0"]
    assert run_cli([*argv, "--no-flops", "--json", "b.json", "--plot", "b.png"]) == 0
    assert seen == [True, True], "the reference and the artifact are timed with denormals flushed"
    assert float(torch.tensor([1e-40]) * 1.0) != 0, "PyTorch's default is restored"
    assert "denormals flushed to zero while timing" in capsys.readouterr().out
    report = json.loads((here / "b.json").read_text())
    assert "same for every engine" in report["denormals"]


def test_a_single_batch_size_plots_bars_from_zero() -> None:
    from cleandift_deploy.runtime.bench_report import bench_figure

    rows = [
        {"backend": b, "batch": 1, "height": 64, "width": 64, "images_per_s": v,
         "latency_ms": {"p99": 1000 / v}}
        for b, v in (("torch", 24.0), ("onnxruntime-cpu", 25.0))
    ]  # fmt: skip
    figure = bench_figure({"rows": rows, "machine": "a CPU", "denormals": "flushed"})
    left, right = figure.axes
    assert len(left.patches) == 2 and len(right.patches) == 2, "one bar per engine"
    assert left.get_ylim()[0] == 0 and right.get_ylim()[0] == 0
    assert left.get_ylim()[1] > 25, "the axis shows the values, not 0.96..1.04 around one"


# item 2: pictures a person understands without reading code


@pytest.mark.parametrize("resize", ["squash", "pad", "letterbox"])
def test_extract_pca_picture_keeps_the_aspect_ratio(
    here: Path, resize: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only the cells the image covers are shown: a letterboxed image's bands stay out."""
    Image.fromarray(random_rgb(60, 150, np.random.default_rng(0))).save(here / "wide.png")
    out = f"f-{resize}"
    args = ["extract", "--model", "tiny.onnx", "wide.png", "--out", out, "--pca"]
    assert run_cli([*args, "--resize", resize]) == 0
    with Image.open(here / out / "wide.png.pca.png") as picture:
        width, height = picture.size
    assert abs(width / height - 150 / 60) < 0.02, f"squashed to {width}x{height}"


def test_a_match_picture_has_title_legend_and_the_true_point(tmp_path: Path) -> None:
    """Title above, legend below, and a wrong match's true point drawn (in yellow) where it is."""
    from cleandift_deploy.eval.draw import GAP, LINE_PX, MARGIN, TRUTH, draw_matches

    source, target = Image.new("RGB", (100, 80), "gray"), Image.new("RGB", (100, 80), "gray")
    points = np.array([[10.0, 10.0], [50.0, 40.0]])
    predicted, truth = (
        np.array([[12.0, 10.0], [90.0, 70.0]]),
        np.array([[10.0, 10.0], [30.0, 20.0]]),
    )
    path = tmp_path / "m.png"
    title = ["worst pair 1 of 5: p (cat), PCK@0.1: 1 of 2 points correct (50%)", "left: source"]
    draw_matches(
        source, target, points, predicted, path, np.array([True, False]),
        title=title, truth=truth, tolerance=8.0,
    )  # fmt: skip
    picture = np.asarray(Image.open(path).convert("RGB")).astype(int)
    scale = 320 / 80  # small photos are enlarged
    top = MARGIN + 2 * LINE_PX + MARGIN
    assert picture.shape[0] == top + 80 * scale + MARGIN + 3 * LINE_PX + MARGIN
    assert (picture[MARGIN : MARGIN + LINE_PX].min(axis=-1) < 80).any(), "a title is written"
    x = int(MARGIN + 100 * scale + GAP + 30 * scale)
    y = int(top + 20 * scale)
    near = picture[y - 4 : y + 5, x - 4 : x + 5]
    assert (np.abs(near - np.array(TRUTH)).sum(axis=-1) < 60).any(), "the true point is marked"
    legend = picture[-(3 * LINE_PX + MARGIN) :]
    assert (np.abs(legend - np.array(TRUTH)).sum(axis=-1) < 60).any(), "the legend explains it"


def test_the_demo_draws_matches_and_photo_beside_pca(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """matches.png (the docs show it) and pca_us6_*.png with the photo beside the features."""
    from cleandift_deploy import demo
    from cleandift_deploy.eval.datasets import load_pairs

    monkeypatch.setattr(demo, "OUT", here / "demo-out")
    pair = load_pairs(here / "syn", "spair", "test", limit=1)[0]
    images = [Image.open(p).convert("RGB") for p in (pair.source_path, pair.target_path)]
    extractor = FeatureExtractor.load(here / "tiny.onnx")
    features = extractor(images)["us6"]
    assert demo.draw_pair(pair, images, features, "onnxruntime") == here / "demo-out/matches.png"
    with Image.open(here / "demo-out" / "matches.png") as matches:
        assert matches.width > images[0].width + images[1].width
    for path, image in zip(demo.draw_pca(pair, images, features), images, strict=True):
        assert path.name in ("pca_us6_source.png", "pca_us6_target.png")
        with Image.open(path) as panel:
            shown = 320 * image.width / image.height  # photo and PCA at the photo's aspect
            assert panel.width >= 2 * shown and panel.height > 320
