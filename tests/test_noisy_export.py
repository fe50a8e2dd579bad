"""Noisy (DIFT-style) features: schedule, fixed draws, the in-graph ensemble against an independent
diffusers reference, fp16, random noise, the TensorRT-RTX build, the CLI and its recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler
from export_helpers import (
    assert_fp16_agreement,
    assert_fp32_agreement,
    random_images,
    reference_taps,
    run_cli,
    run_onnx,
)

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.export import ExportOptions, export_onnx
from cleandift_deploy.export.compare import compare_artifact
from cleandift_deploy.export.tensorrt_build import BuildOptions, build_engine
from cleandift_deploy.manifest import Manifest, sidecar_path
from cleandift_deploy.models import load_vae, random_prompt_embedding
from cleandift_deploy.models.freeu import FreeU
from cleandift_deploy.models.graph_module import build_export_graph
from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.models.noise import EnsembleNoiser, NoiseSpec, alphas_cumprod, fixed_draws
from cleandift_deploy.runtime.extractor import FeatureExtractor
from cleandift_deploy.runtime.torch_reference import ReferenceSpec, build_reference
from cleandift_deploy.serve.app import FeatureService, ServeConfig
from cleandift_deploy.serve.hub import describe

TAPS = ("us3", "us6")
NOISE = NoiseSpec(timestep=261, ensemble=3, seed=7)


def sd_scheduler() -> DDIMScheduler:
    """Stable Diffusion's scheduler configuration, as DIFT builds it from the model folder."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )


@pytest.fixture(scope="module")
def tiny_vae() -> AutoencoderKL:
    """The VAE a random-init tiny export uses."""
    return load_vae(None, "tiny", random_init=True)


@pytest.fixture(scope="module")
def noisy_fp32(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny model, two taps, ensemble 3 at t=261, dynamic batch 1-3 and size 64-128 px."""
    out = tmp_path_factory.mktemp("noisy") / "noisy.onnx"
    options = ExportOptions(
        taps=TAPS,
        batch=(1, 2, 3),
        size_range=((64, 64), (128, 128)),
        image_size=(64, 64),
        noise=NOISE,
        check_agreement=False,
    )
    export_onnx(tiny, out, options)
    return out


@pytest.fixture(scope="module")
def noisy_fp16(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mixed fp16, ensemble 2 with FreeU, batch 1-2, 64-128 px (also the TensorRT-RTX input)."""
    out = tmp_path_factory.mktemp("noisy16") / "noisy16.onnx"
    options = ExportOptions(
        taps=TAPS,
        batch=(1, 1, 2),
        size_range=((64, 64), (128, 128)),
        image_size=(64, 64),
        precision="fp16",
        noise=NoiseSpec(timestep=100, ensemble=2, latent="mean"),
        freeu=FreeU(),
        check_agreement=False,
    )
    export_onnx(tiny, out, options)
    return out


def diffusers_noisy_taps(
    loaded: LoadedUNet, vae: AutoencoderKL, images: np.ndarray, spec: NoiseSpec
) -> dict[str, np.ndarray]:
    """DIFT's computation with diffusers' own parts: per-copy encoding, `add_noise`, the full
    hooked UNet on the batch of copies, mean over copies; fed the graph's fixed draws."""
    batch, n = images.shape[0], spec.ensemble
    pixels = torch.from_numpy(images).float() / 127.5 - 1.0
    copies = pixels.repeat_interleave(n, dim=0)
    draws = fixed_draws(spec, 4, images.shape[2] // 8, images.shape[3] // 8)
    posterior_eps, noise_eps = (d.repeat(batch, 1, 1, 1) for d in draws)
    with torch.no_grad():
        posterior = vae.encode(copies).latent_dist
    z = (
        posterior.mean + posterior.std * posterior_eps
        if spec.latent == "sample"
        else posterior.mean
    )
    latents = z * vae.config.scaling_factor
    noisy = sd_scheduler().add_noise(latents, noise_eps, torch.tensor([spec.timestep]))
    context = random_prompt_embedding("tiny")
    found = reference_taps(loaded, noisy, context, TAPS, timestep=float(spec.timestep))
    return {
        name: value.reshape(batch, n, *value.shape[1:]).mean(1) for name, value in found.items()
    }


def test_schedule_is_stable_diffusions() -> None:
    scheduler = sd_scheduler()
    assert torch.equal(alphas_cumprod(), scheduler.alphas_cumprod)
    clean, eps = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    for t in (0, 50, 261, 999):
        abar = alphas_cumprod()[t]
        ours = abar.sqrt() * clean + (1 - abar).sqrt() * eps
        torch.testing.assert_close(ours, scheduler.add_noise(clean, eps, torch.tensor([t])))


def test_fixed_draws_are_slices_of_larger_ones() -> None:
    small = fixed_draws(NOISE, 4, 5, 7)
    large = fixed_draws(NOISE, 4, 12, 9)
    assert small.shape == (2, 3, 4, 5, 7)
    assert torch.equal(small, large[..., :5, :7])
    assert not torch.equal(small[0], small[1])  # posterior eps and diffusion noise differ
    other_seed = fixed_draws(NoiseSpec(261, 3, seed=8), 4, 5, 7)
    assert (small - other_seed).abs().max() > 1.0


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 64, 64), (3, 128, 64)])
def test_noisy_graph_matches_diffusers(
    tiny: LoadedUNet,
    tiny_vae: AutoencoderKL,
    noisy_fp32: Path,
    batch: int,
    height: int,
    width: int,
) -> None:
    images = random_images(batch, height, width)
    got = run_onnx(noisy_fp32, {"image": images})
    expected = diffusers_noisy_taps(tiny, tiny_vae, images, NOISE)
    for name in TAPS:
        assert_fp32_agreement(expected[name], got[name])


def test_noise_moves_the_features(tiny: LoadedUNet, tiny_vae: AutoencoderKL) -> None:
    """The figures above are not those of clean latents: t=261 noise changes every tap."""
    images = random_images(1, 64, 64)
    noisy = diffusers_noisy_taps(tiny, tiny_vae, images, NOISE)
    clean = diffusers_noisy_taps(tiny, tiny_vae, images, NoiseSpec(0, 1, latent="mean"))
    for name in TAPS:
        relative = np.linalg.norm(noisy[name] - clean[name]) / np.linalg.norm(clean[name])
        assert relative > 0.05, (name, relative)


def test_ensemble_is_the_mean_of_single_copies(tiny: LoadedUNet) -> None:
    spec = NoiseSpec(timestep=261, ensemble=4, seed=3)
    options = ExportOptions(taps=TAPS, image_size=(64, 64), noise=spec)
    ensemble = build_export_graph(tiny, options).module
    images = torch.from_numpy(random_images(2, 64, 64))
    with torch.no_grad():
        together = ensemble(images)
    image_model = ensemble.image_model
    draws = image_model.noiser.draws
    singles = []
    for copy in range(spec.ensemble):
        image_model.noiser = EnsembleNoiser(NoiseSpec(261, 1), 4)
        image_model.noiser.draws = draws[:, copy : copy + 1].clone()
        with torch.no_grad():
            singles.append(ensemble(images))
    for index in range(len(TAPS)):
        mean = torch.stack([s[index] for s in singles]).mean(0)
        torch.testing.assert_close(together[index], mean, rtol=1e-5, atol=1e-5)
        assert (singles[0][index] - singles[1][index]).abs().max() > 1e-3


def test_vae_once_equals_per_copy_encoding(tiny_vae: AutoencoderKL) -> None:
    """One encoder pass + mean + std * eps == N encoder passes sampling with the same eps."""
    from cleandift_deploy.models import VAEEncoder

    n = 3
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        mean, std = VAEEncoder(tiny_vae).eval().posterior(pixels)
        per_copy = tiny_vae.encode(pixels.repeat_interleave(n, 0)).latent_dist
        sampled = per_copy.sample(torch.Generator().manual_seed(11))
    eps = torch.randn(sampled.shape, generator=torch.Generator().manual_seed(11))
    once = mean.repeat_interleave(n, 0) + std.repeat_interleave(n, 0) * eps
    torch.testing.assert_close(once, sampled * tiny_vae.config.scaling_factor)


def test_manifest_reference_and_compare(tiny: LoadedUNet, noisy_fp32: Path) -> None:
    manifest = Manifest.load(sidecar_path(noisy_fp32))
    assert manifest.timestep == 261.0
    assert manifest.noise["timestep"] == 261 and manifest.noise["ensemble"] == 3
    assert manifest.noise["seed"] == 7 and manifest.noise["latent"] == "sample"
    assert manifest.freeu == {}
    backend, described = build_reference(tiny, ReferenceSpec.like(manifest))
    assert described.noise == manifest.noise
    images = random_images(2, 128, 128)  # past the reference's default size: draws grow
    got = run_onnx(noisy_fp32, {"image": images})
    expected = backend.run({"image": torch.from_numpy(images)})
    for name in TAPS:
        assert_fp32_agreement(expected[name].numpy(), got[name])
    assert compare_artifact(noisy_fp32).failures == []


def test_old_manifests_load_as_clean(noisy_fp32: Path) -> None:
    data = json.loads(Manifest.load(sidecar_path(noisy_fp32)).to_json())
    del data["noise"], data["freeu"]
    old = Manifest.from_json(json.dumps(data))
    assert old.noise == {} and old.freeu == {}
    assert NoiseSpec.from_record(old.noise) is None and FreeU.from_record(old.freeu) is None


def test_fp16_noisy_freeu_graph(tiny: LoadedUNet, noisy_fp16: Path) -> None:
    manifest = Manifest.load(sidecar_path(noisy_fp16))
    assert manifest.freeu == {"b1": 1.2, "b2": 1.4, "s1": 0.9, "s2": 0.2}
    backend, _ = build_reference(tiny, ReferenceSpec.like(manifest))
    images = random_images(2, 128, 64)
    got = run_onnx(noisy_fp16, {"image": images})
    expected = backend.run({"image": torch.from_numpy(images)})
    for name in TAPS:
        assert_fp16_agreement(expected[name].numpy(), got[name])


def test_noisy_freeu_graph_builds_with_tensorrt_rtx(noisy_fp16: Path) -> None:
    engine = noisy_fp16.with_suffix(".engine")
    options = BuildOptions(compute_capabilities=("8.6",), opt_level=0, workspace_gb=4.0)
    manifest = build_engine(noisy_fp16, engine, options)
    assert engine.stat().st_size > 1_000_000
    assert manifest.noise["ensemble"] == 2 and manifest.freeu["b1"] == 1.2


def test_random_noise_differs_per_call(tiny: LoadedUNet, tmp_path: Path) -> None:
    out = tmp_path / "random.onnx"
    noise = NoiseSpec(timestep=261, ensemble=2, random=True)
    with pytest.raises(CleanDiftError, match="--no-agreement"):
        export_onnx(tiny, out, ExportOptions(taps=("us3",), noise=noise))
    export_onnx(tiny, out, ExportOptions(taps=("us3",), noise=noise, check_agreement=False))
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert "RandomNormalLike" in ops
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    images = random_images(1, 64, 64)
    first, second = (session.run(["us3"], {"image": images})[0] for _ in range(2))
    assert np.abs(first - second).max() > 1e-3
    assert Manifest.load(sidecar_path(out)).noise["random"] is True
    with pytest.raises(CleanDiftError, match="fresh noise on every call"):
        compare_artifact(out)


def test_cli_recipes_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "geoaware.onnx"
    base = ["export", "--arch", "tiny", "--random-init", "--image-size", "64", "64"]
    args = [*base, "-o", str(out), "--method", "geoaware", "--noise-seed", "5", "--no-agreement"]
    assert run_cli(args) == 0
    manifest = Manifest.load(sidecar_path(out))
    assert manifest.tap_names == ("us2", "us5", "us8")
    assert manifest.noise["timestep"] == 50 and manifest.noise["latent"] == "mean"
    assert manifest.noise["seed"] == 5 and manifest.timestep == 50.0
    assert manifest.freeu["s2"] == 0.2
    assert manifest.build["method"] == "geoaware"
    assert describe("geoaware", FeatureService(ServeConfig(str(out))))["method"] == "geoaware"
    bad = [
        (["--ensemble", "2"], "add --noise-timestep"),
        (["--method", "dift", "--no-vae"], "drop --no-vae"),
        (["--noise-timestep", "261", "--timestep", "100"], "differs from --noise-timestep"),
        (["--noise-timestep", "1000"], "outside 0..999"),
        (["--method", "dift", "--ensemble", "0"], "1 or more"),
    ]
    for extra, message in bad:
        assert run_cli([*base, "-o", str(tmp_path / "bad.onnx"), *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
        assert not (tmp_path / "bad.onnx").exists()


def test_every_backend_sees_the_same_noise(noisy_fp32: Path) -> None:
    """ONNX Runtime, OpenVINO and the PyTorch reference of the artifact, through the runtime."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31, ())))
    images = [rng.integers(0, 256, (100, 90, 3), dtype=np.uint8) for _ in range(3)]
    found = {
        backend: FeatureExtractor.load(noisy_fp32, backend=backend)(images)
        for backend in ("onnxruntime", "openvino", "torch")
    }
    for backend in ("onnxruntime", "openvino"):
        for name in TAPS:
            assert_fp32_agreement(found["torch"][name].numpy(), found[backend][name].numpy())
