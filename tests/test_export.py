"""ONNX export: agreement with an independent PyTorch reference, shapes, pruning, manifest,
mixed fp16, external data and calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from export_helpers import (
    assert_fp16_agreement,
    assert_fp32_agreement,
    diffusers_latents,
    random_images,
    reference_taps,
    run_onnx,
)
from model_helpers import SMALL21

from cleandift_deploy.export import ExportOptions, export_onnx
from cleandift_deploy.export.artifact_files import read_manifest_metadata
from cleandift_deploy.manifest import Manifest, sidecar_path
from cleandift_deploy.models import build_unet, load_vae, random_prompt_embedding, random_unet
from cleandift_deploy.models.loading import LoadedUNet

TAPS = ("us3", "us6")


def dynamic_options() -> ExportOptions:
    """Two taps, dynamic batch 1-3 and size 64-128 px, fp32."""
    return ExportOptions(
        taps=TAPS, batch=(1, 2, 3), size_range=((64, 64), (128, 128)), image_size=(64, 64)
    )


@pytest.fixture(scope="module")
def tiny_vae() -> torch.nn.Module:
    """The VAE a random-init tiny export uses (seed 0)."""
    return load_vae(None, "tiny", random_init=True)


@pytest.fixture(scope="module")
def dynamic_fp32(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny model, two taps, dynamic batch 1-3 and size 64-128 px, fp32."""
    out = tmp_path_factory.mktemp("fp32") / "tiny.onnx"
    export_onnx(tiny, out, dynamic_options())
    return out


@pytest.fixture(scope="module")
def static_fp16(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny model, us6, batch 1-2 at 64 px, mixed fp16."""
    out = tmp_path_factory.mktemp("fp16") / "tiny16.onnx"
    export_onnx(tiny, out, ExportOptions(batch=(1, 2, 2), precision="fp16", check_agreement=False))
    return out


def _image_reference(
    loaded: LoadedUNet, vae: torch.nn.Module, images: np.ndarray, taps: tuple[str, ...]
) -> dict[str, np.ndarray]:
    latents = diffusers_latents(vae, images)
    return reference_taps(loaded, latents, random_prompt_embedding("tiny"), taps)


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 64, 64), (3, 128, 64), (2, 64, 128)])
def test_dynamic_image_graph_matches_pytorch(
    tiny: LoadedUNet,
    tiny_vae: torch.nn.Module,
    dynamic_fp32: Path,
    batch: int,
    height: int,
    width: int,
) -> None:
    images = random_images(batch, height, width)
    got = run_onnx(dynamic_fp32, {"image": images})
    expected = _image_reference(tiny, tiny_vae, images, TAPS)
    assert list(got) == list(TAPS)
    strides = {"us3": 32, "us6": 16}
    for tap in TAPS:
        assert got[tap].shape == (batch, 64, height // strides[tap], width // strides[tap])
        assert_fp32_agreement(expected[tap], got[tap])


def test_manifest_in_sidecar_and_metadata(dynamic_fp32: Path) -> None:
    sidecar = Manifest.load(sidecar_path(dynamic_fp32))
    assert read_manifest_metadata(dynamic_fp32) == sidecar
    assert sidecar.kind == "onnx" and sidecar.arch == "tiny"
    assert (sidecar.input.name, sidecar.input.dtype) == ("image", "uint8")
    assert sidecar.input.value_range == (0.0, 255.0)
    assert [(t.name, t.channels, t.stride) for t in sidecar.taps] == [
        ("us3", 64, 32),
        ("us6", 64, 16),
    ]
    assert (sidecar.batch.min, sidecar.batch.opt, sidecar.batch.max) == (1, 2, 3)
    assert (sidecar.height.min, sidecar.height.max) == (64, 128)
    assert sidecar.timestep == 261.0 and sidecar.prompt == "" and not sidecar.prompt_input
    assert {"torch", "onnx", "diffusers", "cleandift-deploy"} <= set(sidecar.versions)
    assert sidecar.agreement["failures"] == []
    for figures in sidecar.agreement["taps"].values():
        assert figures["cosine_min"] >= 0.99999 and figures["nonfinite"] == 0
    assert sidecar.build["nodes_cleaned"] < sidecar.build["nodes_traced"]


def test_graph_holds_nothing_after_the_deepest_tap(tiny: LoadedUNet, dynamic_fp32: Path) -> None:
    model = onnx.load(str(dynamic_fp32))
    names = [t.name for t in model.graph.initializer] + [n.name for n in model.graph.node]
    unet_later = ("up_blocks.2", "up_blocks.3", "conv_norm_out", "conv_out")
    assert not [n for n in names if "features" in n and any(p in n for p in unet_later)]
    assert not [n for n in names if "decoder" in n or "post_quant" in n]
    assert "up_blocks.1" in " ".join(names)
    stored = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    unet = tiny.unet
    later_params = sum(p.numel() for b in unet.up_blocks[2:] for p in b.parameters())
    full = sum(p.numel() for p in unet.parameters()) + sum(
        p.numel() for p in load_vae(None, "tiny", random_init=True).encoder.parameters()
    )
    kept = full - later_params
    assert 0.9 * kept < stored < kept + later_params / 2, (stored, kept, later_params)


def test_fp16_graph_agrees_and_keeps_unsafe_ops_in_fp32(
    tiny: LoadedUNet, tiny_vae: torch.nn.Module, static_fp16: Path
) -> None:
    images = random_images(2, 64, 64)
    got = run_onnx(static_fp16, {"image": images})
    expected = _image_reference(tiny, tiny_vae, images, ("us6",))
    assert got["us6"].dtype == np.float32
    assert_fp16_agreement(expected["us6"], got["us6"])
    model = onnx.shape_inference.infer_shapes(onnx.load(str(static_fp16)))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    by_op: dict[str, set[int]] = {}
    for node in model.graph.node:
        by_op.setdefault(node.op_type, set()).add(types.get(node.input[0], 0))
    for op in ("Softmax", "InstanceNormalization", "LayerNormalization", "Resize"):
        assert by_op[op] == {onnx.TensorProto.FLOAT}, op
    assert by_op["Conv"] == {onnx.TensorProto.FLOAT16}
    time_nodes = [n for n in model.graph.node if "/time_embedding/" in n.name]
    assert time_nodes, "the dynamic-batch graph computes the time embedding"
    for node in time_nodes:
        assert types[node.output[0]] == onnx.TensorProto.FLOAT, node.name
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


@pytest.fixture(scope="module")
def small21() -> LoadedUNet:
    """A second small config (SD2.1-like: linear projections, upcast attention, other widths)."""
    with torch.random.fork_rng():
        torch.manual_seed(11)
        unet = build_unet(dict(SMALL21)).eval()
    return LoadedUNet(unet, "custom", "random-init:custom", "random-init-seed11")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_latent_graph_with_prompt_input_matches_pytorch(
    small21: LoadedUNet, tmp_path: Path, precision: str
) -> None:
    out = tmp_path / "small21.onnx"
    options = ExportOptions(
        taps=("mid", "us6"),
        timestep=500.0,
        prompt_input=True,
        vae=False,
        image_size=(128, 64),
        batch=(1, 2, 4),
        precision=precision,
        check_agreement=False,
    )
    manifest = export_onnx(small21, out, options)
    assert manifest.input.name == "latents" and manifest.timestep == 500.0
    latents = torch.randn(3, 4, 16, 8)
    context = torch.randn(3, 77, 48)
    got = run_onnx(out, {"latents": latents.numpy(), "encoder_hidden_states": context.numpy()})
    expected = reference_taps(small21, latents, context, ("mid", "us6"), timestep=500.0)
    check = assert_fp32_agreement if precision == "fp32" else assert_fp16_agreement
    for tap in ("mid", "us6"):
        check(expected[tap], got[tap])
    other_t = reference_taps(small21, latents, context, ("us6",), timestep=261.0)["us6"]
    assert not np.allclose(other_t, got["us6"], atol=1e-3)


def test_large_models_use_one_external_file_and_file_based_passes(
    tiny: LoadedUNet, tiny_vae: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As for the 3 GB SD2.1 UNet: shape inference through files, weights in ONE data file."""
    from cleandift_deploy.export import cleanup

    monkeypatch.setattr(cleanup, "PROTOBUF_LIMIT", 0)
    out = tmp_path / "huge.onnx"
    options = ExportOptions(precision="fp16", external_data_threshold=0, check_agreement=False)
    manifest = export_onnx(tiny, out, options)
    assert manifest.build["external_data"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "huge.json",
        "huge.onnx",
        "huge.onnx.data",
    ]
    data = tmp_path / "huge.onnx.data"
    assert out.stat().st_size < data.stat().st_size / 4
    assert data.stat().st_mode == out.stat().st_mode
    onnx.checker.check_model(str(out))
    images = random_images(1, 64, 64)
    expected = _image_reference(tiny, tiny_vae, images, ("us6",))
    assert_fp16_agreement(expected["us6"], run_onnx(out, {"image": images})["us6"])


def test_weights_left_on_disk_by_the_tracer_are_not_read_while_folding(
    tiny: LoadedUNet, dynamic_fp32: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past 2 GB the tracer writes one file per weight; folding reads only the weights it
    evaluates (not those that meet activations), and the graph is the in-memory export's."""
    from cleandift_deploy.export import cleanup, exporter
    from cleandift_deploy.export.trace import trace_to_onnx

    traced_bytes = []

    def trace_with_weights_on_disk(*args: Any) -> onnx.ModelProto:
        model = trace_to_onnx(*args)
        traced_bytes.append(cleanup.weight_bytes(model))
        path = str(args[-1])
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=False)
        return onnx.load(path, load_external_data=False)

    held_while_folding = []
    fold_once = cleanup._fold_once
    monkeypatch.setattr(exporter, "trace_to_onnx", trace_with_weights_on_disk)
    monkeypatch.setattr(
        cleanup,
        "_fold_once",
        lambda model: held_while_folding.append(cleanup.weight_bytes(model)) or fold_once(model),
    )
    out = tmp_path / "tiny.onnx"
    manifest = export_onnx(tiny, out, dynamic_options())
    assert 0 < max(held_while_folding) < traced_bytes[0] / 10
    assert (
        manifest.build["nodes_cleaned"]
        == Manifest.load(sidecar_path(dynamic_fp32)).build["nodes_cleaned"]
    )
    assert not manifest.agreement["failures"]
    images = random_images(2, 64, 128)
    expected, found = run_onnx(dynamic_fp32, {"image": images}), run_onnx(out, {"image": images})
    for tap in TAPS:
        np.testing.assert_array_equal(found[tap], expected[tap])


OVERFLOW_CONV = "down_blocks.1.resnets.0.conv1"


def _write_images(folder: Path, count: int) -> Path:
    from PIL import Image

    folder.mkdir()
    for index in range(count):
        pixels = random_images(1, 80, 96)[0].transpose(1, 2, 0)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    return folder


def test_calibration_keeps_an_overflowing_block_in_fp32(tmp_path: Path) -> None:
    loaded = random_unet("tiny", seed=5)
    conv = loaded.unet.get_submodule(OVERFLOW_CONV)
    with torch.no_grad():
        conv.weight.mul_(3e5)
    vae = load_vae(None, "tiny", random_init=True)
    images = random_images(2, 64, 64)
    expected = _image_reference(loaded, vae, images, ("us6",))["us6"]
    plain = tmp_path / "plain.onnx"
    export_onnx(
        loaded, plain, ExportOptions(precision="fp16", batch=(1, 2, 2), check_agreement=False)
    )
    overflowed = run_onnx(plain, {"image": images})["us6"]
    assert not np.isfinite(overflowed).all()
    calibrated = tmp_path / "calibrated.onnx"
    options = ExportOptions(
        precision="fp16",
        batch=(1, 2, 2),
        calibration_images=_write_images(tmp_path / "calib", 2),
        check_agreement=False,
    )
    manifest = export_onnx(loaded, calibrated, options)
    keep = manifest.build["fp32_keep_list"]
    scope = "/down_blocks.1/resnets.0/conv1/"
    assert any(scope in name and name.endswith("Conv") for name in keep), keep
    assert len(keep) < 40
    assert_fp16_agreement(expected, run_onnx(calibrated, {"image": images})["us6"])
