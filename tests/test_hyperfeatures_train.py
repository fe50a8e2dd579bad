"""Hyperfeature training: the loss falls and held-out PCK rises on a small synthetic set, the UNet
runs once per image (the cache), a run resumes exactly, and the CLI writes its outputs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hyperfeature_helpers import write_spair_set

from cleandift_deploy.cli import cli
from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.eval.datasets import load_pairs
from cleandift_deploy.eval.pck import pck, reference_length
from cleandift_deploy.eval.photoset import make_synthetic
from cleandift_deploy.eval.protocol import MethodOptions
from cleandift_deploy.methods.hyperfeatures.aggregation import AggregationNetwork
from cleandift_deploy.methods.hyperfeatures.checkpoint import load_aggregator, save_aggregator
from cleandift_deploy.methods.hyperfeatures.extract import ExtractSettings
from cleandift_deploy.methods.hyperfeatures.train import HyperTrainSettings
from cleandift_deploy.methods.hyperfeatures.training_run import RunOptions, run_training
from cleandift_deploy.methods.registry import build_method

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 training and 8 held-out pairs, each a fresh texture and a rotated, scaled copy."""
    return write_spair_set(tmp_path_factory.mktemp("blobs"), {"trn": 24, "test": 8}, size=128)


def _options(data: Path, out: Path, steps: int, **extra: object) -> RunOptions:
    return RunOptions(
        data=data,
        out=out,
        extract=ExtractSettings(latent="mean", image_size=64),
        train=HyperTrainSettings(steps=steps, save_every=max(steps // 2, 1)),
        **extra,  # type: ignore[arg-type]
    )


def _quiet(*_args: object) -> None:
    return None


def _held_out_pck(data: Path, checkpoint: Path, cache: Path, alpha: float) -> tuple[float, int]:
    method = build_method(
        "hyperfeatures", MethodOptions(checkpoint=checkpoint, cache=cache, settings={})
    )
    scores = [
        pck(method.predict(p), p.target_points, alpha * reference_length(p, "bbox"))
        for p in load_pairs(data, "spair", "test")
    ]
    return float(np.mean(scores)), method.store.cache.extractions  # type: ignore[attr-defined]


def test_loss_falls_and_held_out_pck_rises(tiny, blobs: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = run_training(tiny, _options(blobs, out, 60), _quiet, _quiet)
    assert result.extractions == 48  # every training image's UNet maps exactly once
    losses = np.array(result.history)
    assert len(losses) == 60 and np.isfinite(losses).all()
    assert losses[-15:].mean() < 0.7 * losses[:15].mean()
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the run's initial network (seed 0)
        untrained = AggregationNetwork(result.network.channels, 1)
    save_aggregator(tmp_path / "untrained.safetensors", untrained, replace(result.info, step=0))
    cache = tmp_path / "eval-cache"
    before, _ = _held_out_pck(blobs, tmp_path / "untrained.safetensors", cache, 0.05)
    after, extractions = _held_out_pck(blobs, result.files["aggregator"], cache, 0.05)
    assert extractions == 0  # the second evaluation reads every map from the cache
    assert after > before + 0.05, (before, after)
    for name in ("loss", "mixing_weights"):
        assert result.files[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_continues_exactly(tiny, blobs: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    straight = run_training(tiny, _options(blobs, tmp_path / "a", 6, cache=cache), _quiet, _quiet)
    run_training(tiny, _options(blobs, tmp_path / "b", 3, cache=cache), _quiet, _quiet)
    resumed = run_training(
        tiny, _options(blobs, tmp_path / "b", 6, cache=cache, resume=True), _quiet, _quiet
    )
    assert resumed.history == straight.history
    network, info = load_aggregator(resumed.files["aggregator"])
    assert info.step == 6
    for key, value in straight.network.state_dict().items():
        torch.testing.assert_close(network.state_dict()[key], value, atol=0, rtol=0)
    with pytest.raises(CleanDiftError, match="already holds a run"):
        run_training(tiny, _options(blobs, tmp_path / "b", 8, cache=cache), _quiet, _quiet)


def test_cli_trains_on_the_synthetic_set(tmp_path: Path) -> None:
    data = tmp_path / "synthetic"
    make_synthetic(data, {"trn": 3, "test": 1})
    args = [
        "train-hyperfeatures", "--arch", "tiny", "--random-init", "--data", str(data),
        "--out", str(tmp_path / "run"), "--steps", "3", "--save-every", "2",
        "--image-size", "64", "--latent", "mean",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args, standalone_mode=False)
    assert result.exit_code == 0, result.output
    for name in ("aggregator.safetensors", "state.safetensors", "loss.png", "mixing_weights.png"):
        assert (tmp_path / "run" / name).is_file()
    network, info = load_aggregator(tmp_path / "run")
    assert (info.variant, info.timesteps, info.step) == ("one-step", (-1.0,), 3)
    assert network.weights().shape == (1, 12)


def test_foreign_aggregator_file_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CleanDiftError, match="not a hyperfeature aggregation network"):
        load_aggregator(tmp_path / "other.safetensors")
    with pytest.raises(CleanDiftError, match="train-hyperfeatures"):
        load_aggregator(tmp_path / "missing.safetensors")
