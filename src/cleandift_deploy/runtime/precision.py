"""What precision a user asked a model to run in: light enough for the CLI to import at --help."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_MIN_AGREEMENT = 0.99
"""The bar fp16 exports are held to elsewhere: 99% of nearest-neighbour matches unchanged."""


@dataclass(frozen=True)
class PrecisionRequest:
    """What a user asked for: exact fp32, or bf16 behind the gate with these images and bar."""

    precision: str = "fp32"
    calibration: str | Path | None = None
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    calibrate_on_requests: int = 0
    """`serve` only: measure the gate on the first this-many request images instead of a
    folder (the exact engine answers until then)."""

    @property
    def deferred(self) -> bool:
        """Whether the gate waits for request images (the model opens exact first)."""
        return self.precision == "bf16" and self.calibrate_on_requests > 0

    def load_options(self) -> dict[str, Any]:
        """Keyword arguments for `FeatureExtractor.load` (exact while the gate is deferred)."""
        if self.deferred:
            return {"precision": "fp32"}
        return {
            "precision": self.precision,
            "calibration": self.calibration,
            "min_agreement": self.min_agreement,
        }


EXACT = PrecisionRequest()
