"""Fitting sd-dino's PCA once, on many images, so descriptors are per image (cacheable).

sd-dino fits its PCA on the two images of each pair; a basis fitted here on a set of images
(e.g. the training split) replaces that with one fixed projection per tap, saved to safetensors
(`descriptors.save_bases`) and given to the eval method with `--set pca_bases=FILE`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..descriptors import PcaBasis, save_bases
from ..descriptors.pca import map_rows
from ..errors import CleanDiftError
from .extractor import FeatureExtractor
from .images import read_image

MAX_ROWS_PER_IMAGE = 4096
"""Token rows sampled per image and tap (all of them on grids up to 64 x 64)."""


def fit_bases(
    extractor: FeatureExtractor,
    images: Sequence[Path],
    taps: Sequence[str],
    dims: int,
    seed: int = 0,
    advance: Callable[[], None] | None = None,
) -> dict[str, PcaBasis]:
    """One exact PCA basis per tap over the token rows of `images` (sampled per image)."""
    if not images:
        raise CleanDiftError("no images to fit the PCA on")
    generator = torch.Generator().manual_seed(seed)
    rows: dict[str, list[torch.Tensor]] = {tap: [] for tap in taps}
    for path in images:
        with torch.inference_mode():
            found = extractor([read_image(path)])
        for tap in taps:
            tokens = map_rows(found[tap][0])
            if tokens.shape[0] > MAX_ROWS_PER_IMAGE:
                keep = torch.randperm(tokens.shape[0], generator=generator)[:MAX_ROWS_PER_IMAGE]
                tokens = tokens[keep]
            rows[tap].append(tokens)
        if advance is not None:
            advance()
    return {tap: PcaBasis.fit(torch.cat(parts), dims) for tap, parts in rows.items()}


def fit_and_save(
    model: Path,
    images: Sequence[Path],
    taps: Sequence[str],
    dims: int,
    out: Path,
    *,
    backend: str = "auto",
    resize: str = "letterbox",
    image_size: tuple[int, int] | None = None,
    advance: Callable[[], None] | None = None,
) -> dict[str, PcaBasis]:
    """Fit bases with an artifact's features and write them to `out`."""
    extractor = FeatureExtractor.load(
        model, backend, taps=taps, image_size=image_size, resize=resize
    )
    bases = fit_bases(extractor, images, extractor.taps, dims, advance=advance)
    save_bases(out, bases)
    return bases
