"""Training: identity heads, falling loss on the tiny model, bit-exact resume, loadable student."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from train_helpers import TEST_TAPS, make_image_folder, tiny_trainer

from cleandift_deploy.models import FeatureUNet, load_unet
from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.train.data import ImageFolder
from cleandift_deploy.train.distill import Distiller
from cleandift_deploy.train.heads import ProjectionHeads
from cleandift_deploy.train.loop import Trainer, encode_latents, learning_rate
from cleandift_deploy.train.noising import noise_scheduler, stratified_timesteps

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Eight training images and four held-out ones, generated with different seeds."""
    root = tmp_path_factory.mktemp("images")
    return make_image_folder(root / "train", 8, seed=0), make_image_folder(root / "held", 4, 99)


def _held_out_similarity(trainer: Trainer, folder: Path) -> dict[str, float]:
    """Mean cosine similarity of projected student features to teacher features on images the
    run never saw, at fixed teacher timesteps and noise."""
    data = ImageFolder(folder, 64)
    generator = torch.Generator().manual_seed(5)
    images = torch.stack([data.load(i) for i in range(len(data))])
    latents = encode_latents(trainer.inputs.vae, images, "mean", generator)
    timesteps = stratified_timesteps(len(data), 3, generator)
    noise = torch.randn(timesteps.numel(), *latents.shape[1:], generator=generator)
    context = trainer.inputs.conditioning([None] * len(data))
    with torch.no_grad():
        losses = trainer.distiller.losses(latents, context, timesteps, noise)
    return {tap: -float(loss) for tap, loss in losses.items()}


def test_heads_are_the_identity_at_initialisation() -> None:
    heads = ProjectionHeads({"us3": 64, "us6": 32})
    features = {"us3": torch.randn(6, 64, 4, 4), "us6": torch.randn(6, 32, 8, 8)}
    timesteps = torch.randint(1, 999, (6,))
    projected = heads(features, timesteps)
    for tap, value in features.items():
        assert torch.equal(projected[tap], value), tap
    for parameter in heads.parameters():
        if parameter.ndim == 2:
            torch.nn.init.normal_(parameter, std=0.02)
    moved = heads(features, timesteps)
    assert not torch.allclose(moved["us6"], features["us6"], atol=1e-4)


def test_stratified_timesteps_cover_each_bin() -> None:
    timesteps = stratified_timesteps(500, 3, torch.Generator().manual_seed(0))
    width = 998 / 3
    for column in range(3):
        low, high = 1 + column * width, 1 + (column + 1) * width
        values = timesteps[:, column].float()
        assert values.min() >= int(low) and values.max() < high
        assert values.max() - values.min() > 0.9 * width


def test_warm_up_is_linear_then_constant() -> None:
    rates = [learning_rate(step, 1e-5, 100) for step in range(300)]
    assert rates[0] == pytest.approx(1e-7) and rates[49] == pytest.approx(5e-6)
    assert all(rate == 1e-5 for rate in rates[99:])
    assert learning_rate(0, 1e-5, 0) == 1e-5


def test_loss_falls_and_held_out_similarity_rises(
    image_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    train_dir, held_dir = image_dirs
    trainer = tiny_trainer(train_dir, tmp_path, steps=30)
    before = _held_out_similarity(trainer, held_dir)
    result = trainer.run()
    after = _held_out_similarity(trainer, held_dir)
    total = result.history.sum(dim=1)
    assert result.history.shape == (30, len(TEST_TAPS))
    assert float(total[-5:].mean()) < float(total[:5].mean()) - 0.05
    for tap in TEST_TAPS:
        assert after[tap] > before[tap] + 0.03, (tap, before[tap], after[tap])


def _state_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as handle:
        return {k: handle.get_tensor(k) for k in handle.keys()}, dict(handle.metadata())  # noqa: SIM118


def test_resume_matches_one_uninterrupted_run_bit_for_bit(
    image_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    train_dir = image_dirs[0]
    options = {"grad_accum": 2, "batch_size": 3, "latent": "sample", "warmup": 3}
    tiny_trainer(train_dir, tmp_path / "split", steps=2, **options).run()
    resumed = tiny_trainer(train_dir, tmp_path / "split", resume=True, steps=4, **options).run()
    straight = tiny_trainer(train_dir, tmp_path / "straight", steps=4, **options).run()
    split_state, split_meta = _state_tensors(resumed.state)
    straight_state, straight_meta = _state_tensors(straight.state)
    assert split_state.keys() == straight_state.keys()
    assert any(key.startswith("optimizer.") for key in split_state)
    different = [k for k in split_state if not torch.equal(split_state[k], straight_state[k])]
    assert different == []
    for key in ("step", "cursor", "optimizer_groups"):
        assert split_meta[key] == straight_meta[key]
    assert split_meta["step"] == "4" and split_meta["cursor"] == str(4 * 2 * 3)
    assert float(split_state["timestep"]) != 261.0


def test_saved_student_loads_and_matches_the_trained_one(
    image_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    trainer = tiny_trainer(image_dirs[0], tmp_path, steps=3, lr=1e-2)
    files = trainer.run().student
    learned = trainer.distiller.timestep.detach()
    full, plain = load_unet(files.full), load_unet(files.unet)
    assert full.arch == plain.arch == "tiny"
    assert full.learned_timestep == float(learned) and full.learned_timestep != 261.0
    assert plain.learned_timestep is None

    latents = torch.randn(2, 4, 16, 8)
    context = trainer.inputs.conditioning([None, None])
    with torch.no_grad():
        expected = trainer.distiller.student(latents, context, learned)
        loaded = FeatureUNet(full.unet, TEST_TAPS, timestep=full.timestep)(latents, context)
        from_plain = FeatureUNet(plain.unet, TEST_TAPS, timestep=None)(latents, context, learned)
        teacher = FeatureUNet(trainer.inputs.teacher.unet, TEST_TAPS, timestep=full.timestep)
        untrained = teacher(latents, context)
    for tap in TEST_TAPS:
        cosine = F.cosine_similarity(loaded[tap].flatten(), expected[tap].flatten(), dim=0)
        assert float(cosine) > 1 - 1e-6
        assert float((loaded[tap] - expected[tap]).abs().max()) < 1e-5
        assert torch.equal(loaded[tap], from_plain[tap])
        assert float((untrained[tap] - expected[tap]).abs().max()) > 1e-3


def test_gradient_checkpointing_gives_the_same_gradients(tiny: LoadedUNet) -> None:
    latents, context = torch.randn(2, 4, 8, 8), torch.randn(1, 77, 32)
    timesteps = stratified_timesteps(2, 3, torch.Generator().manual_seed(1))
    noise = torch.randn(6, 4, 8, 8)
    grads = []
    for checkpointing in (False, True):
        distiller = Distiller(
            tiny.unet, TEST_TAPS, noise_scheduler(None), gradient_checkpointing=checkpointing
        )
        flags = [getattr(m, "gradient_checkpointing", False) for m in distiller.student.modules()]
        assert any(flags) == checkpointing
        sum(distiller.losses(latents, context, timesteps, noise).values()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in distiller.trainable_parameters()]))
    plain, recomputed = grads
    assert float(plain.abs().max()) > 0
    relative = float((plain - recomputed).abs().max() / plain.abs().max())
    assert relative < 1e-5
    cosine = F.cosine_similarity(plain, recomputed, dim=0)
    assert float(cosine) > 1 - 1e-7


def _per_pair_losses(
    distiller: Distiller,
    latents: torch.Tensor,
    context: torch.Tensor,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """The reference recipe written out directly: the student runs once per (image, t) pair."""
    flat_t = timesteps.reshape(-1)
    clean = latents.repeat_interleave(timesteps.shape[1], dim=0)
    noisy = distiller.scheduler.add_noise(clean, noise, flat_t)
    with torch.no_grad():
        targets = distiller.teacher(noisy, context, flat_t.float())
    student = distiller.student(clean, context, distiller.timestep)
    projected = distiller.heads(student, flat_t)
    return {
        tap: -F.cosine_similarity(projected[tap], targets[tap], dim=1).mean()
        for tap in distiller.taps
    }


def test_student_once_per_image_equals_once_per_timestep(tiny: LoadedUNet) -> None:
    distiller = Distiller(tiny.unet, TEST_TAPS, noise_scheduler(None), seed=2)
    for parameter in distiller.heads.parameters():
        if parameter.ndim == 2:
            torch.nn.init.normal_(parameter, std=0.05)
    latents, context = torch.randn(2, 4, 8, 8), torch.randn(1, 77, 32)
    timesteps = stratified_timesteps(2, 3, torch.Generator().manual_seed(4))
    noise = torch.randn(6, 4, 8, 8)
    grads = []
    for compute in (distiller.losses, lambda *a: _per_pair_losses(distiller, *a)):
        distiller.zero_grad(set_to_none=True)
        losses = compute(latents, context, timesteps, noise)
        sum(losses.values()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in distiller.trainable_parameters()]))
        grads.append(torch.stack(list(losses.values())).detach())
    ours_grad, ours_loss, ref_grad, ref_loss = grads
    assert float((ours_loss - ref_loss).abs().max()) < 1e-6
    assert float((ours_grad - ref_grad).abs().max() / ref_grad.abs().max()) < 1e-5
    assert float(ref_grad[-1]) != 0.0
