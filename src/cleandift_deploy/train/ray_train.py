"""`train --ray-workers N`: the same distillation function on Ray Train's `TorchTrainer`.

Ray starts N workers (one per GPU with `--gpus-per-worker 1`, else one CPU slot each) and sets
up their torch process group (gloo on the CPU, NCCL on GPUs); every worker then runs `run_job`,
exactly what a torchrun rank runs, so the run folder (student, state, loss curve) is the same and
`--resume` works from either launcher. Each step's losses are reported through `ray.train.report`;
rank 0 writes the checkpoints into the run folder itself and reports their path with the metrics
(on a cluster the run folder must be on storage every node sees, like the data folder).

Without `--address` a local Ray instance is started (`ray.init(num_cpus=N)`, its dashboard on
127.0.0.1 only).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import CleanDiftError
from .distributed import TIMEOUT_ENV, session, split_batch, timeout
from .job import DistillJob, run_job


class RayTrainFailed(CleanDiftError):
    """The Ray Train run ended with an error (the message carries the worker's)."""


def _worker(config: dict[str, Any]) -> None:
    """What every Ray Train worker runs: the job as this rank of Ray's process group."""
    import ray.train

    job: DistillJob = config["job"]

    def report(step: int, losses: dict[str, float]) -> None:
        metrics: dict[str, Any] = {"step": step, **losses}
        if step % job.settings.save_every == 0 or step == job.settings.steps:
            metrics["checkpoint"] = str(job.out / "state.safetensors")
        ray.train.report(metrics)

    with session(job.device) as world:
        run_job(job, world, on_step=report)


def _init_ray(address: str | None, workers: int, gpus_per_worker: float) -> None:
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    else:
        gpus = int(workers * gpus_per_worker + 0.999) if gpus_per_worker else None
        # The dashboard serves the state API that Ray Train's placement-group cleaner polls;
        # without it the cleaner warns every second of the run. It listens on 127.0.0.1 only.
        ray.init(num_cpus=workers, num_gpus=gpus, include_dashboard=True, log_to_driver=True)


def _error_line(error: BaseException) -> str:
    """The first line of the worker's own error inside Ray's wrappers."""
    text = str(error).strip()
    for line in text.splitlines():
        if "CleanDiftError" in line or line.startswith("rank "):
            return line.split("CleanDiftError: ", 1)[-1]
    return text.splitlines()[-1] if text else type(error).__name__


def run_on_ray(
    job: DistillJob,
    workers: int,
    address: str | None = None,
    gpus_per_worker: float = 0.0,
    storage: Path | None = None,
) -> None:
    """Train `job` on `workers` Ray Train workers (refusing an indivisible batch first)."""
    split_batch(job.settings.batch_size, workers)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _init_ray(address, workers, gpus_per_worker)
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = gpus_per_worker > 0
    resources = {"CPU": 1.0, **({"GPU": gpus_per_worker} if use_gpu else {})}
    env = {"OMP_NUM_THREADS": os.environ["OMP_NUM_THREADS"], TIMEOUT_ENV: str(timeout().seconds)}
    job = dataclasses.replace(job, device="cuda" if use_gpu else "cpu")
    with tempfile.TemporaryDirectory(prefix="ray-train-") as scratch:
        trainer = TorchTrainer(
            _worker,
            train_loop_config={"job": job},
            torch_config=TorchConfig(
                backend="nccl" if use_gpu else "gloo", timeout_s=int(timeout().total_seconds())
            ),
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=use_gpu, resources_per_worker=resources
            ),
            run_config=RunConfig(
                name=f"cleandift-{job.out.name}",
                storage_path=str(storage or scratch),
                worker_runtime_env={"env_vars": env},
            ),
        )
        try:
            result = trainer.fit()
        except Exception as err:
            raise RayTrainFailed(f"Ray Train run failed: {_error_line(err)}") from None
    if result.error is not None:
        raise RayTrainFailed(f"Ray Train run failed: {_error_line(result.error)}")
