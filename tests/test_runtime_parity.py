"""Backend parity (PyTorch reference vs ONNX Runtime), input kinds, batching and resize policies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from runtime_helpers import TINY_TAPS, agreement, export_tiny, random_rgb

from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.runtime.extractor import FeatureExtractor
from cleandift_deploy.runtime.preprocess import PAD_VALUE, prepare
from cleandift_deploy.runtime.torch_reference import ReferenceSpec

FP32_COSINE = 0.99999


@pytest.fixture(scope="module")
def dynamic_onnx(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Batch 1..3, sizes 64..128 px, taps us3 and us6."""
    out = tmp_path_factory.mktemp("dynamic") / "tiny.onnx"
    return export_tiny(
        tiny, out, image_size=(64, 64), size_range=((64, 64), (128, 128)), batch=(1, 2, 3)
    )


@pytest.fixture(scope="module")
def ort(dynamic_onnx: Path) -> FeatureExtractor:
    return FeatureExtractor.load(dynamic_onnx)


@pytest.fixture(scope="module")
def reference(dynamic_onnx: Path) -> FeatureExtractor:
    return FeatureExtractor.load(dynamic_onnx, backend="torch")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(torch.initial_seed())


@pytest.mark.parametrize("size", [(64, 64), (128, 64), (64, 128)])
def test_onnxruntime_matches_pytorch(
    dynamic_onnx: Path, reference: FeatureExtractor, rng: np.random.Generator, size: tuple[int, int]
) -> None:
    ort = FeatureExtractor.load(dynamic_onnx, image_size=size)
    torch_ref = FeatureExtractor.load(dynamic_onnx, backend="torch", image_size=size)
    images = [
        random_rgb(int(rng.integers(50, 200)), int(rng.integers(50, 200)), rng) for _ in range(3)
    ]
    got, want = ort(images), torch_ref(images)
    assert ort.backend_name == "onnxruntime-cpu" and torch_ref.backend_name == "torch-cpu"
    assert tuple(got) == TINY_TAPS
    for tap in TINY_TAPS:
        stride = {"us3": 32, "us6": 16}[tap]
        assert got[tap].shape == (3, 64, size[0] // stride, size[1] // stride)
        figures = agreement(want[tap], got[tap])
        assert figures["cosine_min"] >= FP32_COSINE, (tap, figures)
        assert figures["relative_l2"] < 1e-4, (tap, figures)
        assert figures["max_abs"] < 1e-3 * float(want[tap].abs().max()), (tap, figures)


def test_from_source_equals_reference_of_artifact(
    tiny: LoadedUNet, reference: FeatureExtractor, rng: np.random.Generator
) -> None:
    direct = FeatureExtractor.from_source(
        tiny, spec=ReferenceSpec(taps=TINY_TAPS), image_size=(64, 64)
    )
    images = [random_rgb(64, 64, rng) for _ in range(2)]
    got, want = direct(images), reference(images)
    for tap in TINY_TAPS:
        assert torch.equal(got[tap], want[tap])


def test_input_kinds_give_the_same_features(
    ort: FeatureExtractor, rng: np.random.Generator
) -> None:
    arrays = [random_rgb(64, 64, rng) for _ in range(2)]
    pil = [Image.fromarray(a) for a in arrays]
    floats = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1
    from_arrays, from_pil, from_floats = ort(arrays), ort(pil), ort(floats)
    single = ort(arrays[1])
    for tap in TINY_TAPS:
        assert torch.equal(from_arrays[tap], from_pil[tap])
        assert torch.equal(from_arrays[tap], from_floats[tap])
        assert torch.allclose(from_arrays[tap][1:], single[tap], atol=1e-6)


def test_large_batches_are_split(dynamic_onnx: Path, rng: np.random.Generator) -> None:
    images = [random_rgb(64, 64, rng) for _ in range(7)]
    whole = FeatureExtractor.load(dynamic_onnx)
    assert whole.batch_size == 3
    one_by_one = FeatureExtractor.load(dynamic_onnx, batch_size=1)
    got, want = whole(images), one_by_one(images)
    for tap in TINY_TAPS:
        assert got[tap].shape[0] == 7
        assert torch.allclose(got[tap], want[tap], atol=1e-5), tap


def test_small_batches_are_padded_to_the_minimum(
    tiny: LoadedUNet, tmp_path: Path, reference: FeatureExtractor, rng: np.random.Generator
) -> None:
    fixed = FeatureExtractor.load(export_tiny(tiny, tmp_path / "b2.onnx", batch=(2, 2, 2)))
    images = [random_rgb(64, 64, rng) for _ in range(3)]
    got, want = fixed(images), reference(images)
    for tap in TINY_TAPS:
        assert got[tap].shape[0] == 3
        assert agreement(want[tap], got[tap])["cosine_min"] >= FP32_COSINE


def test_pad_keeps_aspect_and_fills_grey(rng: np.random.Generator) -> None:
    wide = random_rgb(50, 100, rng)
    batch = prepare([wide], (64, 64), "pad")
    assert batch.placements[0].original == (50, 100)
    assert batch.placements[0].content == (32, 64)
    pixels = batch.pixels[0]
    assert bool((pixels[:, 32:, :] == PAD_VALUE).all())
    assert not bool((pixels[:, :32, :] == PAD_VALUE).all())
    squashed = prepare([wide], (64, 64), "squash")
    assert squashed.placements[0].content == (64, 64)
    expected = np.asarray(Image.fromarray(wide).resize((64, 32), Image.Resampling.BICUBIC))
    assert np.array_equal(pixels[:, :32].permute(1, 2, 0).numpy(), expected)


def test_pad_policy_runs_end_to_end(dynamic_onnx: Path, rng: np.random.Generator) -> None:
    padded = FeatureExtractor.load(dynamic_onnx, resize="pad")
    reference = FeatureExtractor.load(dynamic_onnx, backend="torch", resize="pad")
    images = [random_rgb(40, 90, rng)]
    result = padded.extract(images)
    assert result.placements[0].content == (28, 64)
    for tap in TINY_TAPS:
        assert agreement(reference(images)[tap], result.taps[tap])["cosine_min"] >= FP32_COSINE


def test_latent_and_prompt_inputs(tiny: LoadedUNet, tmp_path: Path) -> None:
    path = export_tiny(tiny, tmp_path / "lat.onnx", vae=False, prompt_input=True, batch=(1, 2, 2))
    ort = FeatureExtractor.load(path)
    reference = FeatureExtractor.load(path, backend="torch")
    latents = torch.randn(3, 4, 8, 8)
    context = torch.randn(1, 77, 32)
    got, want = ort(latents, context), reference(latents, context)
    for tap in TINY_TAPS:
        assert got[tap].shape[0] == 3
        assert agreement(want[tap], got[tap])["cosine_min"] >= FP32_COSINE
    other = ort(latents, torch.randn(1, 77, 32))
    assert not torch.allclose(other["us6"], got["us6"], atol=1e-4)
