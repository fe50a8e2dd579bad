"""load_unet / load_vae on every supported layout, strictly, safetensors only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from model_helpers import SMALL21
from safetensors.torch import save_file

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.models import build_unet, load_unet, load_vae
from cleandift_deploy.models.configs import TINY
from cleandift_deploy.models.loading import FULL_PREFIX, identify_arch


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, tiny) -> Path:
    """A diffusers-style pipeline folder with unet/ and vae/ of the tiny architecture."""
    root = tmp_path_factory.mktemp("pipeline")
    tiny.unet.save_pretrained(root / "unet", safe_serialization=True)
    torch.manual_seed(3)
    vae = load_vae(None, "tiny", random_init=True)
    vae.save_pretrained(root / "vae", safe_serialization=True)
    return root


def test_pipeline_and_unet_folders_load_the_same_weights(pipeline: Path, tiny) -> None:
    for source in (pipeline, pipeline / "unet"):
        loaded = load_unet(source)
        _same_weights(loaded.unet, tiny.unet)
        assert loaded.arch == "tiny"
        assert loaded.root == pipeline
        assert loaded.timestep == 261.0 and loaded.learned_timestep is None
        assert len(loaded.checkpoint_sha256) == 64


def test_vae_loads_from_the_pipeline_folder(pipeline: Path) -> None:
    vae = load_vae(pipeline, "tiny")
    torch.manual_seed(3)
    _same_weights(vae, load_vae(None, "tiny", random_init=True))
    assert not any(p.is_meta for p in vae.parameters())


def test_unet_file_with_named_inferred_or_adjacent_config(tmp_path: Path, tiny) -> None:
    file = tmp_path / "cleandift_tiny_unet.safetensors"
    save_file(tiny.unet.state_dict(), str(file))
    _same_weights(load_unet(file, arch="tiny").unet, tiny.unet)
    _same_weights(load_unet(file).unet, tiny.unet)
    small = build_unet(dict(SMALL21))
    other = tmp_path / "small" / "model_unet.safetensors"
    other.parent.mkdir()
    save_file(small.state_dict(), str(other))
    (other.parent / "config.json").write_text(json.dumps(dict(small.config)))
    loaded = load_unet(other)
    _same_weights(loaded.unet, small)
    assert loaded.arch == "custom"


def test_full_checkpoint_gives_the_student_and_learned_timestep(tmp_path: Path, tiny) -> None:
    student = {FULL_PREFIX + k: v + 1.0 for k, v in tiny.unet.state_dict().items()}
    teacher = {"unet_feature_extractor_base." + k: v for k, v in tiny.unet.state_dict().items()}
    extras = {
        "timestep": torch.tensor(187.5),
        "adapters.us6.layers.0.norm.linear.weight": torch.ones(3),
    }
    file = tmp_path / "cleandift_tiny_full.safetensors"
    save_file({**student, **teacher, **extras}, str(file))
    loaded = load_unet(file, arch="tiny")
    assert loaded.learned_timestep == pytest.approx(187.5)
    assert loaded.timestep == pytest.approx(187.5)
    key = "conv_in.weight"
    torch.testing.assert_close(loaded.unet.state_dict()[key], tiny.unet.state_dict()[key] + 1.0)


def test_partial_checkpoint_names_missing_keys(tmp_path: Path, tiny) -> None:
    state = dict(tiny.unet.state_dict())
    for key in [k for k in state if k.startswith("up_blocks.3")]:
        del state[key]
    state["extra.weight"] = torch.zeros(1)
    file = tmp_path / "partial_unet.safetensors"
    save_file(state, str(file))
    with pytest.raises(
        CleanDiftError, match=r"missing keys \d+ \(up_blocks\.3.*unexpected keys 1 \(extra"
    ):
        load_unet(file, arch="tiny")


def test_wrong_architecture_is_refused(tmp_path: Path, tiny) -> None:
    file = tmp_path / "tiny_unet.safetensors"
    save_file(tiny.unet.state_dict(), str(file))
    with pytest.raises(CleanDiftError, match=r"shape mismatches|missing keys"):
        load_unet(file, arch="sd15")


def test_unknown_layout_pickles_and_corrupt_files_are_refused(tmp_path: Path) -> None:
    pickle_file = tmp_path / "model.bin"
    pickle_file.write_bytes(b"\x80\x04not really")
    with pytest.raises(CleanDiftError, match="pickle"):
        load_unet(pickle_file)
    corrupt = tmp_path / "model_unet.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(CleanDiftError, match=r"cannot read .* as safetensors"):
        load_unet(corrupt, arch="tiny")
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY.unet))
    (folder / "diffusion_pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CleanDiftError, match="only pickle weights"):
        load_unet(folder)
    with pytest.raises(CleanDiftError, match="cannot tell the architecture"):
        save_file({"w": torch.ones(2)}, str(tmp_path / "odd.safetensors"))
        load_unet(tmp_path / "odd.safetensors")


def test_identify_arch_names_the_real_configs() -> None:
    from cleandift_deploy.models.configs import ARCHS

    assert {name: identify_arch(a.unet_config()) for name, a in ARCHS.items()} == {
        name: name for name in ARCHS
    }
    assert identify_arch(dict(SMALL21)) == "custom"
