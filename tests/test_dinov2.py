"""DINOv2 backbone: the token grid against transformers' own hidden states, the official-checkpoint
conversion, pickles refused, and the CLI's architecture list."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from export_helpers import run_cli
from safetensors.torch import load_file

from cleandift_deploy.cli.dinov2 import DINO_ARCH_NAMES
from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.models.dinov2 import (
    DINO_ARCHS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DinoFeatures,
    _from_state,
    build_backbone,
    load_dino,
    random_dino,
)
from cleandift_deploy.models.dinov2_convert import official_to_transformers


def _normalised(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


@pytest.mark.parametrize(("arch", "layer"), [("dinov2_tiny", None), ("dinov2_tiny_reg", 0)])
def test_token_grid_is_the_pre_norm_block_output_without_cls_and_registers(
    arch: str, layer: int | None
) -> None:
    loaded = random_dino(arch, seed=2)
    images = torch.randint(0, 256, (2, 3, 56, 98), dtype=torch.uint8)
    with torch.no_grad():
        (grid,) = DinoFeatures(loaded, layer)(images)
        hidden = loaded.model(_normalised(images), output_hidden_states=True).hidden_states
    block = (layer if layer is not None else loaded.num_layers - 1) + 1
    skip = 1 + DINO_ARCHS[arch].registers
    expected = hidden[block][:, skip:].transpose(1, 2).reshape(2, 32, 4, 7)
    assert grid.shape == (2, 32, 4, 7)
    torch.testing.assert_close(grid, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(CleanDiftError, match=r"blocks 0\.\.1"):
        DinoFeatures(loaded, 5)


def _hub_state(model: torch.nn.Module, folder: Path) -> dict[str, torch.Tensor]:
    """The weights as transformers' `save_pretrained` writes them: the hub layout."""
    model.save_pretrained(folder)  # type: ignore[operator]
    return load_file(str(folder / "model.safetensors"))


def _official_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The hub layout's names -> the official checkpoint's (written out independently)."""
    out: dict[str, torch.Tensor] = {
        "cls_token": state["embeddings.cls_token"],
        "pos_embed": state["embeddings.position_embeddings"],
        "mask_token": state["embeddings.mask_token"].reshape(1, -1),
        "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": state["layernorm.weight"],
        "norm.bias": state["layernorm.bias"],
    }
    layers = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")}
    for i in layers:
        p = f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.norm1.{kind}"] = state[f"{p}norm1.{kind}"]
            out[f"blocks.{i}.norm2.{kind}"] = state[f"{p}norm2.{kind}"]
            qkv = [state[f"{p}attention.attention.{n}.{kind}"] for n in ("query", "key", "value")]
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(qkv)
            out[f"blocks.{i}.attn.proj.{kind}"] = state[f"{p}attention.output.dense.{kind}"]
            if f"{p}mlp.fc1.{kind}" in state:
                out[f"blocks.{i}.mlp.fc1.{kind}"] = state[f"{p}mlp.fc1.{kind}"]
                out[f"blocks.{i}.mlp.fc2.{kind}"] = state[f"{p}mlp.fc2.{kind}"]
            else:
                out[f"blocks.{i}.mlp.w12.{kind}"] = state[f"{p}mlp.weights_in.{kind}"]
                out[f"blocks.{i}.mlp.w3.{kind}"] = state[f"{p}mlp.weights_out.{kind}"]
        out[f"blocks.{i}.ls1.gamma"] = state[f"{p}layer_scale1.lambda1"]
        out[f"blocks.{i}.ls2.gamma"] = state[f"{p}layer_scale2.lambda1"]
    return out


def test_convert_official_checkpoint_round_trip(tmp_path: Path) -> None:
    loaded = random_dino("dinov2_tiny", seed=4)
    state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    for value in state.values():  # layer scales start at 1: make them informative
        value.add_(torch.randn_like(value) * 0.01)
    loaded.model.load_state_dict(state)
    pth, out = tmp_path / "dinov2_tiny.pth", tmp_path / "dinov2_tiny.safetensors"
    hub = _hub_state(loaded.model, tmp_path / "hf")
    torch.save(_official_names(hub), pth)
    assert run_cli(["convert-dinov2", str(pth), "-o", str(out)]) == 0
    assert load_file(str(out)).keys() == hub.keys()  # the hub layout, whatever the version
    converted = load_dino(out)
    assert converted.arch == "dinov2_tiny"
    assert not converted.checkpoint_sha256.startswith("random")
    images = torch.randint(0, 256, (1, 3, 84, 84), dtype=torch.uint8)
    with torch.no_grad():
        (ours,) = DinoFeatures(converted)(images)
        (original,) = DinoFeatures(loaded)(images)
    assert torch.equal(ours, original)


def test_convert_keeps_swiglu_fused_and_refuses_unknown_keys(tmp_path: Path) -> None:
    config = {**DINO_ARCHS["dinov2_tiny"].config(), "use_swiglu_ffn": True}
    model = build_backbone(config)
    for value in model.state_dict().values():
        value.copy_(torch.randn_like(value))
    hub = _hub_state(model, tmp_path / "hf")
    converted = official_to_transformers(_official_names(hub))
    assert converted.keys() == hub.keys()
    assert all(torch.equal(converted[k], hub[k]) for k in hub)
    reloaded = _from_state(config, converted, "converted")
    images = torch.randn(1, 3, 56, 56)
    with torch.no_grad():
        expected = model.eval()(images).last_hidden_state  # type: ignore[operator]
        torch.testing.assert_close(reloaded(images).last_hidden_state, expected)
    with pytest.raises(CleanDiftError, match="unknown DINOv2 weight"):
        official_to_transformers({"head.weight": torch.zeros(2)})


def test_pickles_are_refused_outside_convert(tmp_path: Path) -> None:
    pth = tmp_path / "dinov2_vitb14.pth"
    torch.save({"cls_token": torch.zeros(1, 1, 4)}, pth)
    with pytest.raises(CleanDiftError, match="pickle"):
        load_dino(pth)
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "dinov2"}')
    torch.save({}, folder / "pytorch_model.bin")
    with pytest.raises(CleanDiftError, match="pickle"):
        load_dino(folder)


def test_convert_refuses_code_pickles(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"cls_token": torch.zeros(1), "extra": object()}, bad)  # not weights-only
    code = run_cli(["convert-dinov2", str(bad), "-o", str(tmp_path / "out.safetensors")])
    assert code == 2
    assert not (tmp_path / "out.safetensors").exists()


def test_cli_architecture_list_matches_the_models() -> None:
    assert set(DINO_ARCH_NAMES) == set(DINO_ARCHS)
