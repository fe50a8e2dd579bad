"""Extracting features from image files into one safetensors file per image.

Each output holds the tap tensors `[C, h, w]` and, as metadata, the image's original size, how it
was fitted, and the hash of the model's manifest, so a feature file always says which model made it.
Outputs that already exist are skipped (unless overwriting); images that cannot be decoded are
collected and reported at the end instead of stopping the run. For a graph with a probe inside
(`export --head`) each image also gets its map at the original size (`NAME.depth.png`, 16-bit
millimetres, or `NAME.labels.png`) and a picture beside the output.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from safetensors.torch import save

from ..atomic import atomic_path
from ..errors import CleanDiftError
from .extractor import FeatureExtractor
from .images import IMAGE_SUFFIXES, read_image
from .pca import save_pca_picture, shown_size
from .prediction_maps import write_prediction_files
from .preprocess import Placement

OUTPUT_SUFFIX = ".safetensors"
PCA_SUFFIX = ".pca.png"


@dataclass(frozen=True)
class Job:
    """One image to extract and where its features go."""

    image: Path
    output: Path


@dataclass
class ExtractReport:
    """What a run did: outputs written, outputs skipped because they existed, images that failed."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def _walk(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def plan_jobs(inputs: Sequence[Path], out: Path) -> list[Job]:
    """Files as given and folders walked recursively; outputs mirror each folder's layout.

    The output keeps the image's full name (`cat.jpg` -> `cat.jpg.safetensors`), so `cat.jpg`
    and `cat.png` never collide.
    """
    jobs: list[Job] = []
    for given in inputs:
        if given.is_dir():
            jobs.extend(
                Job(p, out / p.relative_to(given).with_name(p.name + OUTPUT_SUFFIX))
                for p in _walk(given)
            )
        elif given.is_file():
            jobs.append(Job(given, out / (given.name + OUTPUT_SUFFIX)))
        else:
            raise CleanDiftError(f"{given} does not exist: give image files or folders")
    if not jobs:
        looked = ", ".join(sorted(IMAGE_SUFFIXES))
        raise CleanDiftError(
            f"no images in {', '.join(str(g) for g in inputs)} (looked for {looked}, in "
            "subfolders too): give a folder or files with one of these extensions"
        )
    if out.exists() and not out.is_dir():
        raise CleanDiftError(
            f"--out {out} is a file: give a folder (one features file per image goes into it)"
        )
    outputs = [job.output for job in jobs]
    if len(set(outputs)) != len(outputs):
        raise CleanDiftError(
            "two inputs map to the same output name: give them from different folders"
        )
    return jobs


def feature_metadata(
    extractor: FeatureExtractor, placement: Placement, image: Path
) -> dict[str, str]:
    """The string metadata stored with each output."""
    height, width = extractor.image_size
    return {
        "image": str(image),
        "image_size": json.dumps(list(placement.original)),
        "input_size": json.dumps([height, width]),
        "content_size": json.dumps(list(placement.content)),
        "content_offset": json.dumps(list(placement.offset)),
        "resize": extractor.resize,
        "taps": json.dumps(list(extractor.taps)),
        "backend": extractor.backend_name,
        "manifest_sha256": extractor.manifest_sha256,
    }


def feature_file_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file whose bytes depend only on its content.

    safetensors writes the metadata in hash-map order, which changes from process to process;
    here the metadata keys are sorted (the header is re-encoded the same compact way and padded
    to 8 bytes), so the same features give the same bytes in any process or worker.
    """
    data = save(tensors, metadata=metadata)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    ordered = {"__metadata__": dict(sorted(header.pop("__metadata__", {}).items())), **header}
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + length :]


def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(feature_file_bytes(tensors, metadata))


def covered_cells(features: torch.Tensor, stride: int, placement: Placement) -> torch.Tensor:
    """The cells of a [C, h, w] map that the image covers (bands and padding left out)."""
    top, left = placement.offset[0] // stride, placement.offset[1] // stride
    bottom = -(-(placement.offset[0] + placement.content[0]) // stride)
    right = -(-(placement.offset[1] + placement.content[1]) // stride)
    return features[:, top:bottom, left:right]


def _write_batch(
    extractor: FeatureExtractor, jobs: list[Job], images: list[np.ndarray], pca: bool
) -> list[Path]:
    features = extractor.extract(images)
    written = []
    for index, (job, placement) in enumerate(zip(jobs, features.placements, strict=True)):
        tensors = {name: t[index].cpu().contiguous() for name, t in features.taps.items()}
        _save(job.output, tensors, feature_metadata(extractor, placement, job.image))
        probe = extractor.manifest.build.get("probe")
        if probe:
            stem = job.output.with_name(job.output.name[: -len(OUTPUT_SUFFIX)])
            task = probe["info"]["task"]
            output = tensors[extractor.taps[0]]
            write_prediction_files(stem, output, placement, images[index], task)
        elif pca:
            tap = extractor.taps[-1]
            picture = job.output.with_name(job.output.name[: -len(OUTPUT_SUFFIX)] + PCA_SUFFIX)
            stride = next(t.stride for t in extractor.manifest.taps if t.name == tap)
            cells = covered_cells(tensors[tap], stride, placement)
            save_pca_picture(cells, picture, shown_size(placement.original))
        written.append(job.output)
    return written


def pending_jobs(jobs: list[Job], overwrite: bool) -> tuple[list[Job], list[Path]]:
    """The jobs still to run, and the outputs skipped because they exist (unless overwriting)."""
    todo = [job for job in jobs if overwrite or not job.output.exists()]
    pending = set(todo)
    return todo, [job.output for job in jobs if job not in pending]


def batches(jobs: list[Job], size: int) -> list[list[Job]]:
    """Jobs in runs of the extractor's batch size: both the plain and the Ray path use these, so
    every image meets the model in the same company and the outputs are byte-identical."""
    return [jobs[start : start + size] for start in range(0, len(jobs), size)]


def extract_batch(
    extractor: FeatureExtractor, chunk: list[Job], pca: bool
) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Read one batch of images and write their outputs: (written, [(image, why unreadable)])."""
    readable: list[Job] = []
    images: list[np.ndarray] = []
    failed: list[tuple[Path, str]] = []
    for job in chunk:
        try:
            images.append(read_image(job.image))
            readable.append(job)
        except CleanDiftError as err:
            failed.append((job.image, str(err)))
    written = _write_batch(extractor, readable, images, pca) if readable else []
    return written, failed


def progress_bar(show: bool) -> Progress:
    """The bar `extract` shows: done / total and the time left."""
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn())
    return Progress(*columns, TimeRemainingColumn(), disable=not show)


def extract_files(
    extractor: FeatureExtractor,
    jobs: list[Job],
    *,
    overwrite: bool = False,
    pca: bool = False,
    show_progress: bool = True,
) -> ExtractReport:
    """Run every job in batches of the extractor's batch size, with a progress bar."""
    report = ExtractReport()
    todo, report.skipped = pending_jobs(jobs, overwrite)
    with progress_bar(show_progress) as progress:
        task = progress.add_task("extracting", total=len(todo))
        for chunk in batches(todo, extractor.batch_size):
            written, failed = extract_batch(extractor, chunk, pca)
            report.written.extend(written)
            report.failed.extend(failed)
            progress.advance(task, len(chunk))
    return report
