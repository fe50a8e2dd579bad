"""`open_model`: what a user names as "the model" (an artifact file, or a model source for the
PyTorch backend) opened as a `FeatureExtractor`. Used by `extract`, the server and Ray Data."""

from __future__ import annotations

from pathlib import Path

from ..errors import CleanDiftError
from ..models.taps import DEFAULT_TAP
from .extractor import FeatureExtractor
from .precision import EXACT, PrecisionRequest
from .selection import ARTIFACT_KINDS


def open_model(
    model: str,
    backend: str,
    device: str | None,
    taps: tuple[str, ...] | None,
    image_size: tuple[int, int] | None,
    resize: str | None,
    batch_size: int | None,
    threads: int | None = None,
    cuda_graphs: bool = True,
    precision: PrecisionRequest = EXACT,
) -> FeatureExtractor:
    """An artifact through `FeatureExtractor.load`, or a model source through PyTorch.
    bf16 behind the fidelity gate needs an artifact (the measurement is kept beside it)."""
    if Path(model).suffix in ARTIFACT_KINDS:
        return FeatureExtractor.load(
            model,
            backend,
            device,
            taps=taps,
            image_size=image_size,
            resize=resize,
            batch_size=batch_size,
            threads=threads,
            cuda_graphs=cuda_graphs,
            **precision.load_options(),
        )
    if precision.precision != "fp32":
        raise CleanDiftError(
            f"--precision {precision.precision} measures bf16 against an exported artifact: "
            "export the model first (or run --backend torch-bf16 by name)"
        )
    return FeatureExtractor.from_source(
        model,
        taps=taps or (DEFAULT_TAP,),
        image_size=image_size,
        resize=resize or "squash",
        batch_size=batch_size or 1,
        device=device or "cpu",
        precision="bf16" if backend == "torch-bf16" else "fp32",
    )
