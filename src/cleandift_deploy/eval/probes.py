"""Probes on the evaluator's machinery: cached features for training, predictions, evaluation.

Features: each image's tap is extracted once into the feature cache (keyed by the model's
manifest hash, backend, tap, size and the image's content; a flipped copy is its own entry) and
training reads the cache. Predictions come either from a probe file on those features or from an
exported graph with the probe inside (`export --head`); both return the map at the model's input
size, mapped back to the original image (runtime/prediction_maps.py), so they compute the same.
`evaluate_dense` writes `results.json` (per image and mean, both depth forms, the trivial baseline,
the probe's and the model's hashes and manifest), per-image predictions as PNG (16-bit millimetres
or palette) from which the metrics recompute exactly, and pictures.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..atomic import write_text_atomic
from ..errors import CleanDiftError
from ..models.probe_heads import (
    IGNORE_INDEX,
    ProbeFile,
    ProbeInfo,
    check_channels,
    upsample,
)
from ..runtime.extractor import FeatureExtractor
from ..runtime.prediction_maps import (
    depth_picture,
    millimetres,
    segmentation_picture,
    to_original,
    write_millimetre_png,
    write_palette_png,
)
from ..runtime.preprocess import Placement
from ..train.distributed import World
from .cache import FeatureCache
from .dense_samples import DenseSample
from .depth_metrics import image_depth_metrics, mean_depth_metrics
from .nyu import eigen_mask
from .segmentation_metrics import confusion, iou_per_class, segmentation_summary

PROBE_PROMPT = "A photo of a room"
"""CleanDIFT's depth prompt (`src/depth.py`)."""
FEATURE_BUDGET = 4 << 30
"""Training keeps cached features in memory up to this many bytes (else re-reads the cache)."""

Progress = Callable[[int, int], None]


def check_squash(extractor: FeatureExtractor) -> None:
    """Probes see images squashed to the model's size, as CleanDIFT does."""
    if extractor.resize != "squash":
        raise CleanDiftError(
            f"probes use squashed images (CleanDIFT resizes to the model's size), not "
            f"{extractor.resize!r}: pass --resize squash"
        )


@dataclass
class CachedFeatures:
    """One tap of an extractor, through the feature cache."""

    extractor: FeatureExtractor
    tap: str
    cache: FeatureCache

    def channels(self) -> int:
        """The tap's channels, from the manifest."""
        return next(t.channels for t in self.extractor.manifest.taps if t.name == self.tap)

    def _parts(self, flipped: bool) -> dict[str, str]:
        return {
            "manifest": self.extractor.manifest_sha256,
            "backend": self.extractor.backend_name,
            "tap": self.tap,
            "size": "x".join(map(str, self.extractor.image_size)),
            "resize": self.extractor.resize,
            "flip": "1" if flipped else "0",
            "purpose": "probe",
        }

    def entry(self, sample: DenseSample, flipped: bool = False) -> dict[str, torch.Tensor]:
        """`features` [C, h, w] and the placement (`original`, `content`, `offset`)."""

        def compute() -> dict[str, torch.Tensor]:
            image = sample.image()
            if flipped:
                image = np.ascontiguousarray(image[:, ::-1])
            with torch.inference_mode():
                result = self.extractor.extract([image])
            placement = result.placements[0]
            return {
                "features": result.taps[self.tap][0].contiguous(),
                "original": torch.tensor(placement.original),
                "content": torch.tensor(placement.content),
                "offset": torch.tensor(placement.offset),
            }

        return self.cache.get_or_compute(
            self._parts(flipped), sample.image_path, compute, sample.image_hash()
        )


def placement_of(entry: dict[str, torch.Tensor]) -> Placement:
    """The placement stored beside cached features."""

    def pair(name: str) -> tuple[int, int]:
        return int(entry[name][0]), int(entry[name][1])

    return Placement(pair("original"), pair("content"), pair("offset"))


class CachedProbeData:
    """Training items (every sample, and its mirror image with `flips`) read from the cache;
    targets prepared once: depth resized to the feature grid, labels to the model's input size."""

    def __init__(
        self,
        source: CachedFeatures,
        samples: Sequence[DenseSample],
        task: str,
        flips: bool = False,
        on_progress: Progress | None = None,
    ) -> None:
        self.source = source
        self.samples = list(samples)
        self.task = task
        self.items = [(i, False) for i in range(len(self.samples))]
        if flips:
            self.items += [(i, True) for i in range(len(self.samples))]
        self._targets: list[torch.Tensor] = []
        self._features: dict[int, torch.Tensor] = {}
        kept = 0
        for index, (sample_index, flipped) in enumerate(self.items):
            sample = self.samples[sample_index]
            features = source.entry(sample, flipped)["features"]
            self._targets.append(self._prepare(sample.target(), flipped, features.shape[-2:]))
            if kept + features.numel() * 4 <= FEATURE_BUDGET:
                self._features[index] = features.float()
                kept += features.numel() * 4
            if on_progress is not None:
                on_progress(index + 1, len(self.items))

    def _prepare(self, target: np.ndarray, flipped: bool, grid: torch.Size) -> torch.Tensor:
        if flipped:
            target = np.ascontiguousarray(target[:, ::-1])
        if self.task == "depth":
            depth = torch.from_numpy(target.astype(np.float32))[None, None]
            return F.interpolate(depth, tuple(grid), mode="bilinear", align_corners=False)[0]
        labels = torch.from_numpy(target.astype(np.int64))[None, None].float()
        size = self.source.extractor.image_size
        return F.interpolate(labels, size=size, mode="nearest")[0, 0].long()

    def __len__(self) -> int:
        return len(self.items)

    def features(self, index: int) -> torch.Tensor:
        """`[C, h, w]` float32 features of item `index`."""
        if index in self._features:
            return self._features[index]
        sample_index, flipped = self.items[index]
        return self.source.entry(self.samples[sample_index], flipped)["features"].float()

    def target(self, index: int) -> torch.Tensor:
        """Depth `[1, h, w]` on the feature grid or labels `[H, W]`."""
        return self._targets[index]

    def target_statistics(self) -> dict[str, float]:
        """The trivial baseline's value: mean valid depth, or the majority class."""
        if self.task == "depth":
            values = torch.cat([t[t > 0] for t in self._targets])
            return {"mean_depth": float(values.mean())}
        labels = torch.cat([t[t != IGNORE_INDEX].flatten() for t in self._targets])
        return {"majority_class": int(torch.bincount(labels).argmax())}


class ProbePredictor:
    """A probe file on (cached) features: the map at the input size, then the original size."""

    def __init__(self, source: CachedFeatures, probe: ProbeFile) -> None:
        check_channels(probe.info, source.channels(), "the model")
        self.source = source
        self.probe = probe
        self.info = probe.info

    def __call__(self, sample: DenseSample) -> torch.Tensor:
        """`[K, H0, W0]`: depth (K = 1, metres) or logits at the original size."""
        entry = self.source.entry(sample)
        with torch.inference_mode():
            coarse = self.probe.probe(entry["features"][None].float())
            canvas = upsample(coarse, self.source.extractor.image_size)[0]
        return to_original(canvas, placement_of(entry))


class GraphPredictor:
    """An exported graph with the probe inside: its `depth` / `logits` output."""

    def __init__(self, extractor: FeatureExtractor, info: ProbeInfo) -> None:
        self.extractor = extractor
        self.info = info

    def __call__(self, sample: DenseSample) -> torch.Tensor:
        """`[K, H0, W0]` at the original size."""
        with torch.inference_mode():
            result = self.extractor.extract([sample.image()])
        return to_original(result.taps[self.info.output][0], result.placements[0])


Predictor = ProbePredictor | GraphPredictor


class DepthScorer:
    """Per-image depth metrics (of the prediction as saved, in millimetres) and the baseline."""

    picture = staticmethod(depth_picture)

    def __init__(self, info: ProbeInfo, eigen_crop: bool) -> None:
        self.stats = info.training.get("targets", {})
        self.eigen_crop = eigen_crop
        self.rows: list[dict[str, Any]] = []
        self.baseline_rows: list[dict[str, Any]] = []

    def add(self, name: str, prediction: torch.Tensor, truth: np.ndarray, path: Path) -> np.ndarray:
        """Save the prediction, score it; returns what the picture shows (metres)."""
        metres = millimetres(prediction[0].numpy()).astype(np.float64) / 1000.0
        write_millimetre_png(path, metres)
        if self.eigen_crop:
            truth = np.where(eigen_mask(truth.shape), truth, 0)
        self.rows.append({"image": name, **image_depth_metrics(metres, truth)})
        if "mean_depth" in self.stats:
            constant = np.full_like(metres, self.stats["mean_depth"])
            self.baseline_rows.append(image_depth_metrics(constant, truth))
        return metres

    def summary(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Means over images, and the trivial baseline's (mean training depth)."""
        baseline = None
        if self.baseline_rows:
            means = mean_depth_metrics(self.baseline_rows)
            baseline = {"kind": "mean training depth", **self.stats, **means}
        return dict(mean_depth_metrics(self.rows)), baseline


class SegmentationScorer:
    """A confusion matrix over the split (and per image), and the majority-class baseline."""

    picture = staticmethod(segmentation_picture)

    def __init__(self, info: ProbeInfo, eigen_crop: bool) -> None:
        self.classes = info.classes
        self.stats = info.training.get("targets", {})
        self.rows: list[dict[str, Any]] = []
        self.matrix = np.zeros((info.classes, info.classes), dtype=np.int64)
        self.baseline = np.zeros_like(self.matrix)

    def add(self, name: str, prediction: torch.Tensor, truth: np.ndarray, path: Path) -> np.ndarray:
        """Save the argmax classes, score them; returns them for the picture."""
        labels = prediction.argmax(dim=0).numpy().astype(np.uint8)
        write_palette_png(path, labels)
        matrix = confusion(truth, labels, self.classes)
        self.matrix += matrix
        iou = iou_per_class(matrix)
        miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else None
        self.rows.append({"image": name, "miou": miou})
        if "majority_class" in self.stats:
            constant = np.full_like(labels, self.stats["majority_class"])
            self.baseline += confusion(truth, constant, self.classes)
        return labels

    def summary(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """mIoU over the split's confusion matrix, and the majority class's."""
        baseline = None
        if "majority_class" in self.stats:
            baseline = {"kind": "majority class", **self.stats}
            baseline.update(segmentation_summary(self.baseline))
        return segmentation_summary(self.matrix), baseline


@dataclass
class DenseEvaluation:
    """What `evaluate_dense` measured (also written to results.json)."""

    document: dict[str, Any]
    predictions: list[Path]
    pictures: list[Path]


def evaluate_dense(
    predictor: Predictor,
    samples: Sequence[DenseSample],
    out: Path,
    *,
    describe: dict[str, Any],
    eigen_crop: bool = False,
    pictures: int = 8,
    on_progress: Progress | None = None,
) -> DenseEvaluation:
    """Predict every sample, write predictions, pictures and `results.json`."""
    info = predictor.info
    out = Path(out)
    scorer_type = DepthScorer if info.task == "depth" else SegmentationScorer
    scorer = scorer_type(info, eigen_crop)
    written: list[Path] = []
    drawn: list[Path] = []
    for index, sample in enumerate(samples):
        truth = sample.target()
        prediction = predictor(sample)
        if tuple(prediction.shape[-2:]) != truth.shape:
            raise CleanDiftError(
                f"{sample.name}: image is {prediction.shape[-2]}x{prediction.shape[-1]} but its "
                f"target is {truth.shape[0]}x{truth.shape[1]}: the image and its map must match"
            )
        path = out / "predictions" / f"{sample.name}.png"
        shown = scorer.add(sample.name, prediction, truth, path)
        written.append(path)
        if index < pictures:
            drawn.append(out / "pictures" / f"{sample.name}.png")
            scorer.picture(sample.image(), shown, drawn[-1], truth)
        if on_progress is not None:
            on_progress(index + 1, len(samples))
    metrics, baseline = scorer.summary()
    unit = "16-bit millimetres" if info.task == "depth" else "palette class indices"
    document = {
        **describe,
        "task": info.task,
        "probe_info": asdict(info),
        "images": len(scorer.rows),
        "eigen_crop": eigen_crop,
        "metrics": metrics,
        "baseline": baseline,
        "per_image": scorer.rows,
        "predictions": f"predictions/NAME.png ({unit})",
    }
    write_text_atomic(out / "results.json", json.dumps(document, indent=2) + "\n")
    return DenseEvaluation(document, written, drawn)


def probe_record(source: CachedFeatures, task: str, head: str, classes: int) -> ProbeInfo:
    """The record of a new probe on `source`'s tap (provenance of the features included)."""
    manifest = source.extractor.manifest
    return ProbeInfo(
        task=task,
        tap=source.tap,
        channels=source.channels(),
        head=head,
        classes=classes,
        image_size=list(source.extractor.image_size),
        features={
            "manifest_sha256": source.extractor.manifest_sha256,
            "backend": source.extractor.backend_name,
            "arch": manifest.arch,
            "source": manifest.source,
            "checkpoint_sha256": manifest.checkpoint_sha256,
            "prompt": manifest.prompt,
            "timestep": manifest.timestep,
        },
    )


def train_on_cache(
    source: CachedFeatures,
    samples: Sequence[DenseSample],
    info: ProbeInfo,
    settings: Any,
    out: Path,
    *,
    flips: bool = False,
    resume: bool = False,
    on_cache: Progress | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    world: World | None = None,
) -> Any:
    """Fill the cache (one extraction per image and orientation), then train the head on it
    (as this rank of `world` under torchrun: `train.distributed`)."""
    from ..train.probes import train_probe

    check_squash(source.extractor)
    data = CachedProbeData(source, samples, info.task, flips, on_cache)
    info.training = {
        "images": len(samples),
        "flips": flips,
        "targets": data.target_statistics(),
        "extractions": source.cache.extractions,
    }
    return train_probe(info, data, settings, out, resume, on_step, world)
