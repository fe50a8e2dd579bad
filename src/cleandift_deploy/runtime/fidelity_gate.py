"""bf16 behind a fidelity gate: a bf16 engine runs only where it keeps the exact engine's matches.

bf16 (AMX / AVX512_BF16) is several times faster on the CPU but moves some nearest-neighbour
matches; how many depends on the model and the images. The gate measures it on the user's own
calibration images: both engines extract every image, and for each pair of consecutive images
every position of the first map is matched to the second (cosine nearest neighbour, as the
toolkit's dense matching does) with the exact features and with the bf16 features. The agreement
is the share of positions whose match is the same; the cosine compares the two engines' features
position by position. Each figure is the worst over taps and pairs.

The measurement is stored beside the artifact (`NAME.bf16-gate.json`) with what it depends on
(the graph file's hash, the manifest, the CPU, library versions, the calibration images, taps
and size) and reused while all of them match. A damaged record is ignored with a notice.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import write_text_atomic
from ..errors import CleanDiftError
from ..kernels import match_dense
from ..models.checkpoints import sha256_of
from .images import IMAGE_SUFFIXES, read_image
from .machine import cpu_description
from .preprocess import ImageInput, to_rgb_arrays

GATE_SUFFIX = ".bf16-gate.json"
GATE_FORMAT = 1
VERSIONED = ("cleandift-deploy", "torch", "onnxruntime", "openvino")


Extract = Callable[[list[np.ndarray]], Mapping[str, torch.Tensor]]
"""Images (uint8 HxWx3) -> `{tap: [B, C, h, w]}`: one engine behind the gate."""


@dataclass(frozen=True)
class Fidelity:
    """How closely the bf16 engine follows the exact one on the calibration images."""

    agreement: float
    """Worst share, over taps and image pairs, of positions whose nearest neighbour is unchanged."""
    cosine: float
    """Worst mean cosine, over taps and images, between the two engines' feature vectors."""
    images: int
    per_tap: dict[str, dict[str, float]]

    def summary(self) -> str:
        """One line for notices and `selection`."""
        return (
            f"{100 * self.agreement:.2f}% of matches kept, cosine {self.cosine:.6f} "
            f"on {self.images} calibration images"
        )


def _flat(features: torch.Tensor) -> torch.Tensor:
    """[C, h, w] -> [h*w, C] float32."""
    return features.float().flatten(1).T.contiguous()


def _nearest(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return match_dense(_flat(a), _flat(b)).indices[:, 0]  # type: ignore[union-attr]


def _tap_fidelity(exact: torch.Tensor, fast: torch.Tensor) -> dict[str, float]:
    """Agreement over consecutive pairs (wrapping) and the mean cosine, worst over images."""
    count = exact.shape[0]
    agreements = [
        (_nearest(exact[i], exact[(i + 1) % count]) == _nearest(fast[i], fast[(i + 1) % count]))
        .float()
        .mean()
        .item()
        for i in range(count)
    ]
    cosines = torch.nn.functional.cosine_similarity(exact.float(), fast.float(), dim=1)
    return {
        "agreement": min(agreements),
        "cosine": cosines.flatten(1).mean(dim=1).min().item(),
    }


def measure_fidelity(exact: Extract, fast: Extract, images: Sequence[np.ndarray]) -> Fidelity:
    """Run both engines on the images and compare their matches and features."""
    if len(images) < 2:
        raise CleanDiftError(
            f"the bf16 gate needs at least 2 calibration images (got {len(images)}): "
            "matches are measured between images"
        )
    batch = list(images)
    reference, candidate = exact(batch), fast(batch)
    per_tap = {tap: _tap_fidelity(reference[tap], candidate[tap]) for tap in reference}
    return Fidelity(
        agreement=min(v["agreement"] for v in per_tap.values()),
        cosine=min(v["cosine"] for v in per_tap.values()),
        images=len(batch),
        per_tap=per_tap,
    )


def library_version(name: str) -> str:
    """An installed distribution's version, or "not installed"."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_fingerprint() -> dict[str, Any]:
    """The CPU and library versions a measurement on this machine depends on."""
    return {
        "cpu": cpu_description(),
        "versions": {name: library_version(name) for name in VERSIONED},
    }


def images_digest(images: Sequence[np.ndarray]) -> str:
    """Names a calibration set by its pixels (order included)."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(str(image.shape).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def gate_key(
    artifact: Path,
    manifest_sha256: str,
    engines: tuple[str, str],
    images: Sequence[np.ndarray],
    taps: Sequence[str],
    image_size: tuple[int, int],
) -> dict[str, Any]:
    """Everything a stored measurement depends on; any change makes it stale."""
    return {
        "format": GATE_FORMAT,
        "artifact_sha256": sha256_of([Path(artifact)]),
        "manifest_sha256": manifest_sha256,
        "engines": list(engines),
        **machine_fingerprint(),
        "calibration_sha256": images_digest(images),
        "taps": list(taps),
        "image_size": list(image_size),
    }


def gate_path(artifact: Path) -> Path:
    """Where the measurement for an artifact is kept."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + GATE_SUFFIX)


def load_fidelity(artifact: Path, key: Mapping[str, Any]) -> Fidelity | None:
    """The stored measurement when it was taken under exactly `key`; None otherwise. A record
    that cannot be read is ignored with a one-line notice (it is measured again)."""
    path = gate_path(artifact)
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if record["key"] != dict(key):
            return None
        return Fidelity(**record["fidelity"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        print(f"notice: ignoring damaged {path.name} ({err}); measuring again", file=sys.stderr)
        return None


def store_fidelity(artifact: Path, key: Mapping[str, Any], fidelity: Fidelity) -> None:
    """Keep the measurement beside the artifact (atomically); a read-only folder only costs a
    notice, since the measurement can be taken again."""
    record = {"key": dict(key), "fidelity": asdict(fidelity)}
    try:
        write_text_atomic(gate_path(artifact), json.dumps(record, indent=2) + "\n")
    except OSError as err:
        print(f"notice: cannot keep {gate_path(artifact).name} ({err})", file=sys.stderr)


def calibration_images(source: str | Path | Sequence[ImageInput] | None) -> list[np.ndarray]:
    """The calibration set as uint8 RGB arrays: a folder (its images, sorted by name) or images."""
    if source is None:
        raise CleanDiftError(
            "precision='bf16' needs calibration images to measure what bf16 changes: pass "
            "calibration=FOLDER (--calibration-images DIR) with a few of your own images"
        )
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if not folder.is_dir():
            raise CleanDiftError(f"calibration images: {folder} is not a folder of images")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise CleanDiftError(
                f"calibration images: {folder} holds no {'/'.join(sorted(IMAGE_SUFFIXES))} files"
            )
        return [read_image(p) for p in files]
    return to_rgb_arrays(source)


def check_min_agreement(value: float) -> float:
    """A share in [0, 1]; above 1 is allowed (it always refuses bf16, which tests use)."""
    if not value >= 0.0:
        raise CleanDiftError(f"min_agreement must be a share like 0.99, got {value}")
    return value
