"""Agreement between an artifact's outputs and the fp32 PyTorch reference, per output.

Measures cosine similarity per position (mean and min), relative L2 error, max abs error, NaN/Inf
count, and whether nearest-neighbour matches on a fixed set of query points are the same.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

QUERY_GRID = 8
"""Query points: an 8x8 grid over the source feature map (64 points, fixed)."""

THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"cosine_mean": 0.99999, "relative_l2": 1e-4},
    "fp16": {"cosine_mean": 0.999, "match_agreement": 0.99},
}
"""Pass thresholds per precision: `relative_l2` is an upper bound, the others lower bounds."""


@dataclass
class TapAgreement:
    """How closely one output matches the reference."""

    cosine_mean: float
    cosine_min: float
    relative_l2: float
    max_abs: float
    nonfinite: int
    match_agreement: float

    def failures(self, precision: str) -> list[str]:
        """The thresholds this output misses at `precision` (empty when it passes)."""
        found = [] if self.nonfinite == 0 else [f"{self.nonfinite} NaN/Inf values"]
        for name, bound in THRESHOLDS[precision].items():
            value = getattr(self, name)
            bad = value > bound if name == "relative_l2" else not value >= bound
            if bad:
                found.append(
                    f"{name} {value:.6g} (needs {'<=' if name == 'relative_l2' else '>='}"
                    f" {bound:g})"
                )
        return found


def _unit(features: np.ndarray) -> np.ndarray:
    """[B,C,h,w] -> [B,h*w,C] with unit-length vectors per position."""
    b, c = features.shape[:2]
    flat = features.reshape(b, c, -1).transpose(0, 2, 1).astype(np.float64)
    norms = np.linalg.norm(flat, axis=2, keepdims=True)
    return flat / np.maximum(norms, 1e-12)


def query_indices(height: int, width: int, grid: int = QUERY_GRID) -> np.ndarray:
    """Flat positions of the fixed query grid on an h x w map."""
    rows = np.unique(np.linspace(0, height - 1, min(grid, height)).round().astype(int))
    cols = np.unique(np.linspace(0, width - 1, min(grid, width)).round().astype(int))
    return (rows[:, None] * width + cols[None, :]).reshape(-1)


def nearest_neighbours(unit: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """For query positions in the first map, the best-matching position in the last map."""
    return np.argmax(unit[0, queries] @ unit[-1].T, axis=1)


def tap_agreement(reference: np.ndarray, candidate: np.ndarray) -> TapAgreement:
    """Compare one output `[B,C,h,w]` with the reference; matches go from item 0 to item B-1."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shape {candidate.shape} differs from reference {reference.shape}")
    ref = reference.astype(np.float64)
    finite = np.isfinite(candidate)
    cand = np.where(finite, candidate, 0.0).astype(np.float64)
    ref_unit, cand_unit = _unit(ref), _unit(cand)
    cosine = np.sum(ref_unit * cand_unit, axis=2)
    queries = query_indices(*reference.shape[2:])
    same = nearest_neighbours(ref_unit, queries) == nearest_neighbours(cand_unit, queries)
    return TapAgreement(
        cosine_mean=float(cosine.mean()),
        cosine_min=float(cosine.min()),
        relative_l2=float(
            float(np.linalg.norm(cand - ref)) / max(float(np.linalg.norm(ref)), 1e-30)
        ),
        max_abs=float(np.abs(cand - ref).max()),
        nonfinite=int((~finite).sum()),
        match_agreement=float(same.mean()),
    )


def compare_outputs(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]
) -> dict[str, TapAgreement]:
    """Agreement for every reference output (a missing candidate output is an error)."""
    missing = [name for name in reference if name not in candidate]
    if missing:
        raise KeyError(f"outputs missing from the artifact: {', '.join(missing)}")
    return {name: tap_agreement(reference[name], candidate[name]) for name in reference}


def failures(agreement: Mapping[str, TapAgreement], precision: str) -> list[str]:
    """Every threshold missed, as `tap: what` lines."""
    return [f"{tap}: {what}" for tap, a in agreement.items() for what in a.failures(precision)]


def as_record(agreement: Mapping[str, TapAgreement]) -> dict[str, dict[str, float]]:
    """Plain dicts, for the manifest and JSON reports."""
    return {tap: asdict(a) for tap, a in agreement.items()}
