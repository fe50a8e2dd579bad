"""Distributed training on the CPU (gloo, two processes, one thread each): results that do not
depend on the world size, resume across world sizes, refused batches, a failing rank.

Tolerance for "equal weights": both runs compute the same mathematics, but in another order (the
convolutions see batches of 2 instead of 4, and DDP sums two half-batch means), so gradients agree
to fp32 rounding (~1e-7 relative), not bit for bit. Adam's first steps move each weight by about
lr * g / |g|: an element whose gradient is at the rounding level can flip sign and move by up to
2 lr (measured: 0.03% of the student's weights, by <= 0.8 lr). So the check is on the whole
update: ||dW_2ranks - dW_1rank|| / ||dW_1rank|| <= 1e-2 (measured 4e-4), the per-step losses
within 1e-5 relative, and the same check must fail for a run that saw another global batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
from train_helpers import make_image_folder

from cleandift_deploy.cli import main
from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.eval.photoset import make_synthetic
from cleandift_deploy.methods.hyperfeatures.aggregation import AggregationNetwork
from cleandift_deploy.methods.hyperfeatures.checkpoint import load_aggregator
from cleandift_deploy.models import load_unet, random_unet
from cleandift_deploy.models.probe_heads import ProbeInfo, load_probe
from cleandift_deploy.train.data import SampleOrder
from cleandift_deploy.train.distill import Distiller
from cleandift_deploy.train.distributed import (
    PEER_STOPPED,
    RankSampler,
    World,
    freeze_except,
    nearest_valid,
    rank_positions,
    sample_generator,
    session,
    split_batch,
)
from cleandift_deploy.train.job import DistillJob, run_job
from cleandift_deploy.train.launch import root_failure
from cleandift_deploy.train.loop import TrainSettings
from cleandift_deploy.train.noising import noise_scheduler
from cleandift_deploy.train.probes import ProbeTrainSettings, train_probe
from cleandift_deploy.train.state import STATE_NAME, read_state

pytestmark = pytest.mark.usefixtures("single_thread")
SEED = 3
COMMON = (
    "--arch", "tiny", "--random-init", "--image-size", "64", "--taps", "us3,us6",
    "--lr", "1e-3", "--warmup", "0", "--seed", str(SEED),
)  # fmt: skip
UPDATE_TOLERANCE = 1e-2


def _settings(**overrides: object) -> TrainSettings:
    values: dict[str, object] = {
        "taps": ("us3", "us6"),
        "steps": 2,
        "batch_size": 4,
        "grad_accum": 2,
        "lr": 1e-3,
        "warmup": 0,
        "seed": SEED,
        "gradient_checkpointing": True,
    }
    values.update(overrides)
    return TrainSettings(**values)  # type: ignore[arg-type]


def _job(data: Path, out: Path, resume: bool = False, **overrides: object) -> DistillJob:
    return DistillJob(
        data, out, _settings(**overrides), arch="tiny", random_init=True, image_size=64,
        device="cpu", resume=resume,
    )  # fmt: skip


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`python -m cleandift_deploy ARGS` in a fresh process (one thread per rank)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    src = str(Path(__file__).parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "cleandift_deploy", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return _run("train", *COMMON, *args, timeout=timeout)


def _update_difference(run: Path, reference: Path) -> float:
    """||dW_run - dW_ref|| / ||dW_ref|| over the student, dW = final - initial weights."""
    initial = random_unet("tiny", seed=SEED).unet.state_dict()
    a, b = load_file(run / STATE_NAME), load_file(reference / STATE_NAME)
    num = den = 0.0
    for key, start in initial.items():
        delta_a = a[f"student.{key}"].double() - start.double()
        delta_b = b[f"student.{key}"].double() - start.double()
        num += float(((delta_a - delta_b) ** 2).sum())
        den += float((delta_b**2).sum())
    return (num / den) ** 0.5


def _history(run: Path) -> torch.Tensor:
    return load_file(run / STATE_NAME)["history"]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("ddp") / "images", 6, seed=0)


@pytest.fixture(scope="module")
def two_ranks(images: Path) -> Path:
    """2 ranks x batch 2 (global 4), 2 micro-batches per step, gradient checkpointing, 2 steps."""
    out = images.parent / "two-ranks"
    done = _cli(
        "--nproc-per-node", "2", "--data", str(images), "--out", str(out), "--steps", "2",
        "--batch-size", "4", "--grad-accum", "2", "--gradient-checkpointing",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_batch_split_and_sample_streams_do_not_depend_on_world_size() -> None:
    assert split_batch(8, 2) == 4
    with pytest.raises(CleanDiftError, match="use 4 or 6"):
        split_batch(5, 2)
    assert nearest_valid(1, 4) == (4,)
    one, two = World(0, 1), [World(r, 2) for r in range(2)]
    assert [*rank_positions(8, 4, two[0]), *rank_positions(8, 4, two[1])] == [
        *rank_positions(8, 4, one)
    ]
    single = RankSampler(10, 4, one, seed=1)
    ranks = [RankSampler(10, 4, w, seed=1) for w in two]
    for sampler in (single, *ranks):
        sampler.set_epoch(2)
    merged = [i for b in range(3) for s in ranks for i in list(s)[b * 2 : b * 2 + 2]]
    assert merged == list(single) and len(merged) == 12  # 10 padded to 3 batches of 4
    assert list(single)[:10] == SampleOrder(10, 1).indices(20, 10)  # epoch 2 of the stream
    draws = [torch.rand(3, generator=sample_generator(1, i, 5)) for i in (7, 7, 8)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])


def test_only_parameters_that_get_gradients_stay_trainable() -> None:
    unet = random_unet("tiny", seed=0).unet
    distiller = Distiller(unet, ("us3",), noise_scheduler(None))
    frozen = freeze_except(distiller, distiller.trainable_parameters())
    assert any(name.startswith("student_unet.conv_out") for name in frozen)
    latents, context = torch.randn(1, 4, 8, 8), torch.randn(1, 77, unet.config.cross_attention_dim)
    losses = distiller(latents, context, torch.tensor([[500]]), torch.randn(1, 4, 8, 8))
    sum(losses.values()).backward()  # type: ignore[union-attr]
    missing = [n for n, p in distiller.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []  # DDP can run without find_unused_parameters


def test_two_ranks_equal_one_rank_and_resume_with_one_rank(images: Path, two_ranks: Path) -> None:
    one = images.parent / "one-rank"
    run_job(_job(images, one, steps=2), World())
    assert torch.allclose(_history(two_ranks), _history(one), rtol=1e-5, atol=0)
    assert _update_difference(two_ranks, one) <= UPDATE_TOLERANCE
    other_batch = images.parent / "other-batch"
    run_job(_job(images, other_batch, steps=2, batch_size=2), World())
    assert _update_difference(other_batch, one) > 10 * UPDATE_TOLERANCE  # the check can fail

    resumed, straight = images.parent / "resumed", images.parent / "straight"
    resumed.mkdir()
    (resumed / STATE_NAME).write_bytes((two_ranks / STATE_NAME).read_bytes())
    run_job(_job(images, resumed, resume=True, steps=4), World())
    run_job(_job(images, straight, steps=4), World())
    assert read_state(resumed / STATE_NAME).progress.step == 4
    assert torch.allclose(_history(resumed), _history(straight), rtol=1e-5, atol=0)
    assert _update_difference(resumed, straight) <= UPDATE_TOLERANCE


def test_indivisible_batch_is_refused_before_any_process_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["--nproc-per-node", "2", "--batch-size", "5", "--data", str(tmp_path), "--out"]
    with pytest.raises(SystemExit) as exit_:
        main(["train", *COMMON, *args, str(out)])
    assert exit_.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("cannot be split evenly over 2 processes: use 4 or 6")
    )
    assert not out.exists()


def _error_file(path: Path, line: str, stamp: int) -> str:
    """An error file as `distributed.report_failure` writes it."""
    message = {"message": line, "extraInfo": {"py_callstack": "", "timestamp": str(stamp)}}
    path.write_text(json.dumps({"message": message}))
    return str(path)


def test_the_launcher_names_the_rank_that_failed_not_the_one_it_stopped(tmp_path: Path) -> None:
    # rank 0 stopped for rank 1's failure within the same second: the stamps cannot order them
    stopped = f"rank 0: {PEER_STOPPED} (Connection closed by peer)"
    failures = {
        0: ProcessFailure(0, 11, 1, _error_file(tmp_path / "0.json", stopped, 100)),
        1: ProcessFailure(1, 12, 2, _error_file(tmp_path / "1.json", "rank 1: cannot read a", 100)),
        2: ProcessFailure(2, 13, -9, str(tmp_path / "none.json")),
    }
    assert root_failure(ChildFailedError("train", failures)) == "rank 1: cannot read a"
    del failures[1]
    assert root_failure(ChildFailedError("train", failures)).startswith("rank 2: exited with")


def test_a_failing_rank_stops_the_job_and_keeps_the_last_checkpoint(images: Path) -> None:
    data = images.parent / "with-bad-image"
    data.mkdir()
    for image in images.iterdir():
        (data / image.name).write_bytes(image.read_bytes())
    # the image rank 1 reads at step 3: a truncated JPEG passes the folder scan (PIL cannot
    # verify JPEGs) but cannot be decoded
    position = rank_positions(2 * 2, 2, World(1, 2))[0]
    index = SampleOrder(len(list(data.iterdir())), SEED).indices(position, 1)[0]
    png = sorted(data.iterdir())[index]
    victim = png.with_suffix(".jpg")
    Image.open(png).save(victim, quality=95)
    png.unlink()
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    out = images.parent / "faulty"
    done = _cli(
        "--nproc-per-node", "2", "--data", str(data), "--out", str(out), "--steps", "4",
        "--batch-size", "2", "--save-every", "2", "--bf16",
    )  # fmt: skip
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training stopped, rank 1: cannot read"), done.stderr[-2000:]
    assert victim.name in last
    assert read_state(out / STATE_NAME).progress.step == 2  # the last complete checkpoint
    load_unet(out / "student" / "student_full.safetensors")


def test_ray_train_writes_the_same_run_folder_as_torchrun(images: Path, two_ranks: Path) -> None:
    out = images.parent / "ray"
    done = _cli(
        "--ray-workers", "2", "--data", str(images), "--out", str(out), "--steps", "2",
        "--batch-size", "4", "--grad-accum", "2", "--gradient-checkpointing", timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "State API may be temporarily unavailable" not in done.stdout + done.stderr

    def files(run: Path) -> list[str]:
        return sorted(str(p.relative_to(run)) for p in run.rglob("*"))

    assert files(out) == files(two_ranks)
    ours, theirs = load_file(out / STATE_NAME), load_file(two_ranks / STATE_NAME)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # same world size: same bits


def test_hyperfeature_aggregator_two_ranks_equal_one_rank(tmp_path: Path) -> None:
    data = tmp_path / "synthetic"
    make_synthetic(data, {"trn": 4})
    args = [
        "train-hyperfeatures", "--arch", "tiny", "--random-init", "--data", str(data),
        "--steps", "3", "--image-size", "64", "--latent", "mean", "--batch-size", "2",
        "--seed", "1",
    ]  # fmt: skip
    done = _run(*args, "--nproc-per-node", "2", "--out", str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    main([*args, "--out", str(tmp_path / "one")])
    two, info = load_aggregator(tmp_path / "two")
    one, _ = load_aggregator(tmp_path / "one")
    with torch.random.fork_rng():
        torch.manual_seed(1)
        start = AggregationNetwork(info.channels, len(info.timesteps)).state_dict()

    def update_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
        pairs = [(a.state_dict()[k] - v, b.state_dict()[k] - v) for k, v in start.items()]
        num = sum(float(((x - y) ** 2).sum()) for x, y in pairs)
        return (num / sum(float((y**2).sum()) for _, y in pairs)) ** 0.5

    assert update_difference(two, one) <= UPDATE_TOLERANCE  # (the metric's failing case: above)


class _ProbeItems:
    """9 random items (batches of 4: the last one holds 1, so one of two ranks gets none) with a
    depth map and a label map each."""

    def __init__(self, task: str) -> None:
        generator = torch.Generator().manual_seed(5)
        self.task = task
        self.items = torch.randn(9, 8, 4, 4, generator=generator)
        self.depth = torch.rand(9, 1, 4, 4, generator=generator) * 5 + 0.5
        self.labels = torch.randint(0, 3, (9, 8, 8), generator=generator)
        self.labels[0, :2] = 255

    def __len__(self) -> int:
        return 9

    def features(self, index: int) -> torch.Tensor:
        return self.items[index]

    def target(self, index: int) -> torch.Tensor:
        return self.depth[index] if self.task == "depth" else self.labels[index]


PROBES = {
    "depth": ProbeInfo(channels=8, classes=16, min_depth=0.5, max_depth=6.0),
    "segmentation": ProbeInfo(task="segmentation", channels=8, head="linear", classes=3),
}


def _train_probes(out: Path, world: World) -> None:
    settings = ProbeTrainSettings(epochs=2, batch_size=4, lr=1e-2, warmup_epochs=0.5)
    for task, info in PROBES.items():
        train_probe(info, _ProbeItems(task), settings, out / task, world=world)


def _probe_rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    with session("cpu") as world:
        _train_probes(Path(out), world)


def test_probes_two_ranks_equal_one_rank(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_probe_rank, args=(port, str(tmp_path / "two")), nprocs=2, join=True)
    _train_probes(tmp_path / "one", World())
    for task in PROBES:
        one = json.loads((tmp_path / "one" / task / "history.json").read_text())["per_step"]
        two = json.loads((tmp_path / "two" / task / "history.json").read_text())["per_step"]
        assert len(one) == len(two) == 6
        assert np.allclose(two, one, rtol=1e-5, atol=1e-6), (task, one, two)
        a = load_probe(tmp_path / "one" / task / "probe.safetensors").probe.state_dict()
        b = load_probe(tmp_path / "two" / task / "probe.safetensors").probe.state_dict()
        assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a), task
