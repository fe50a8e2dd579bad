"""`extract --ray`: the same per-image safetensors files as `extract`, written by Ray Data actors.

The driver lists the files, drops outputs that already exist (resumable), and cuts the rest into
the batches plain `extract` would run (`runtime.extract_files.batches`). Each batch is one row of
a Ray dataset; `map_batches` hands rows to a pool of actors (`compute=ActorPoolStrategy(size=N)`),
each holding one extractor, which read, run and write exactly as plain `extract` does
(`extract_batch`), so the files are byte-identical. Unreadable images come back as rows and are
reported at the end; the driver shows one progress bar over images.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CleanDiftError
from ..manifest import artifact_manifest
from ..runtime.extract_files import (
    ExtractReport,
    Job,
    batches,
    extract_batch,
    pending_jobs,
    progress_bar,
)
from ..runtime.precision import EXACT, PrecisionRequest
from ..runtime.preprocess import check_policy
from ..runtime.request_checks import resolve_batch_size, resolve_image_size, select_taps
from ..runtime.selection import ARTIFACT_KINDS, artifact_kind
from ..runtime.threads import threads_per_worker
from .ray_session import ray_session


@dataclass(frozen=True)
class ModelSpec:
    """What `open_model` needs to open the model inside each actor."""

    model: str
    backend: str = "auto"
    device: str | None = None
    taps: tuple[str, ...] | None = None
    image_size: tuple[int, int] | None = None
    resize: str | None = None
    batch_size: int | None = None
    precision: PrecisionRequest = EXACT


@dataclass(frozen=True)
class RayOptions:
    """Where the actors run: a cluster address (None: a local instance), how many, their GPUs."""

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0


def planned_batch_size(spec: ModelSpec) -> int:
    """The batch size the extractor will have, checked against an artifact's manifest on the
    driver, so a bad request ends in one line before any actor starts."""
    if Path(spec.model).suffix not in ARTIFACT_KINDS:
        if not Path(spec.model).exists():
            raise CleanDiftError(f"{spec.model} does not exist: give an artifact or a model source")
        return spec.batch_size or 1
    path = Path(spec.model)
    artifact_kind(path)
    manifest = artifact_manifest(path)
    select_taps(manifest, spec.taps)
    resolve_image_size(manifest, spec.image_size)
    if spec.resize is not None:
        check_policy(spec.resize)
    return resolve_batch_size(manifest, spec.batch_size)


class BatchWriter:
    """A Ray Data actor: opens the model once, then extracts one batch of jobs per row."""

    def __init__(
        self, spec: ModelSpec, pca: bool, batch_size: int, cwd: str, threads: int | None
    ) -> None:
        from ..runtime.opening import open_model

        os.chdir(cwd)  # paths are given as on the driver's command line
        self.extractor = open_model(
            spec.model,
            spec.backend,
            spec.device,
            spec.taps,
            spec.image_size,
            spec.resize,
            spec.batch_size,
            threads,
            precision=spec.precision,
        )
        if self.extractor.batch_size != batch_size:
            raise CleanDiftError(
                f"the worker's batch size {self.extractor.batch_size} differs from the "
                f"planned {batch_size}: pass --batch-size"
            )
        self.pca = pca

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each row: the JSON list of [image, output] of one batch -> counts and failures."""
        done, written, failed = [], [], []
        for encoded in rows["jobs"]:
            chunk = [Job(Path(image), Path(output)) for image, output in json.loads(encoded)]
            paths, bad = extract_batch(self.extractor, chunk, self.pca)
            done.append(len(chunk))
            written.append(json.dumps([str(p) for p in paths]))
            failed.append(json.dumps([[str(p), why] for p, why in bad]))
        return {
            "done": np.array(done),
            "written": np.array(written, dtype=object),
            "failed": np.array(failed, dtype=object),
        }


def _quiet_ray_data() -> None:
    """Our own progress bar instead of Ray Data's, and no execution-plan log lines."""
    from ray.data import DataContext

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def ray_extract_files(
    spec: ModelSpec,
    jobs: list[Job],
    options: RayOptions,
    *,
    overwrite: bool = False,
    pca: bool = False,
    show_progress: bool = True,
) -> ExtractReport:
    """Run the pending jobs on Ray Data actors; the report has the same content as `extract`'s."""
    batch_size = planned_batch_size(spec)
    report = ExtractReport()
    todo, report.skipped = pending_jobs(jobs, overwrite)
    if not todo:
        return report
    rows = [
        {"jobs": json.dumps([[str(job.image), str(job.output)] for job in chunk])}
        for chunk in batches(todo, batch_size)
    ]
    with ray_session(options.address, options.workers) as local:
        import ray.data
        from ray.data import ActorPoolStrategy

        _quiet_ray_data()
        threads = threads_per_worker(options.workers) if local else None
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            BatchWriter,
            batch_size=1,
            compute=ActorPoolStrategy(size=options.workers),
            fn_constructor_kwargs={
                "spec": spec,
                "pca": pca,
                "batch_size": batch_size,
                "cwd": os.getcwd(),
                "threads": threads,
            },
            num_cpus=1,
            num_gpus=options.gpus_per_worker or None,
        )
        with progress_bar(show_progress) as progress:
            task = progress.add_task("extracting (ray)", total=len(todo))
            try:
                for row in dataset.iter_rows():
                    report.written.extend(Path(p) for p in json.loads(row["written"]))
                    report.failed.extend((Path(p), why) for p, why in json.loads(row["failed"]))
                    progress.advance(task, int(row["done"]))
            except ray.exceptions.RayError as err:
                raise CleanDiftError(f"a Ray worker failed: {_last_line(err)}") from None
    order = {job.image: index for index, job in enumerate(todo)}
    report.failed.sort(key=lambda failure: order[failure[0]])
    return report


def _last_line(err: Exception) -> str:
    """The innermost message of a Ray error (its text carries the worker's whole traceback)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
