"""Public entry points: argument checks and the choice of implementation.

Dense matching (``match_dense``), ``impl="auto"``:
  * CUDA tensors, k == 1: the fused Triton kernel (``triton_dense``);
  * CPU tensors, k == 1, at least 4096 x 4096 pairs, where bf16 GEMM is meaningfully faster
    than fp32 (AMX-bf16 or AVX512_BF16 in the CPU flags, and a one-time measurement in this
    process of at least ``cpu_features.MIN_BF16_SPEEDUP``): the exact bf16 prefilter
    (``dense_prefilter``; 9216 x 9216, C=1280, 2 threads: 1.6x the torch reference on AMX,
    1.7x on AMD EPYC with AVX512_BF16);
  * everything else: the blocked path (``dense_cpu``), which also runs on CUDA for k > 1.
  ``choose_dense_impl(a, b, k)`` says which path ``auto`` takes for given inputs.
  ``impl="reference" | "blocked" | "prefilter" | "triton"`` forces one (``"triton"`` on CPU
  tensors needs ``TRITON_INTERPRET=1`` set before triton is first imported).

Query points (``match_points``) always use the exact-upsampled matcher (``query``), plain torch
on the input's device; ``impl="reference"`` runs the upsample-then-match oracle instead.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from ._checks import (
    check_features,
    check_finite,
    check_points,
    check_same_channels,
    check_size,
)
from .cpu_features import prefers_bf16_gemm
from .dense_cpu import blocked_match_dense
from .dense_prefilter import prefilter_match_dense
from .oracles import reference_match_dense, reference_match_points
from .query import match_query_points
from .types import MutualMatches, NearestNeighbours, PointMatches

UPSAMPLE_MODES = ("bilinear", "none")
POINT_MODES = ("nn", "window-softargmax")
DENSE_IMPLS = ("auto", "reference", "blocked", "prefilter", "triton")


def _choice(value: str, allowed: tuple[str, ...], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def match_points(
    src: torch.Tensor,
    tgt: torch.Tensor,
    points: torch.Tensor,
    src_size: tuple[int, int],
    tgt_size: tuple[int, int],
    *,
    upsample: str = "bilinear",
    mode: str = "nn",
    radius: int = 5,
    beta: float = 0.02,
    impl: str = "auto",
) -> PointMatches:
    """Find each source point's best match in the target image, by cosine similarity.

    src [C, h, w] and tgt [C, h2, w2] are feature maps (float32/16/bf16, CPU or CUDA) of images
    of size src_size = (H, W) and tgt_size = (H2, W2); points [K, 2] are (x, y) source pixels,
    pixel (i, j) being centred at x = j, y = i.

    upsample="bilinear": the answer of upsampling both maps to image size (bilinear,
    align_corners=False), L2-normalising every pixel, taking the pixel nearest each point and a
    hard argmax over all target pixels (first index on ties) -- computed without building either
    upsampled map. upsample="none": the same on the coarse grids; matches are cell centres
    mapped to pixels, (c + 0.5) * W2 / w2 - 0.5.

    mode="window-softargmax": the expected position under softmax(score / beta) over the
    positions within ``radius`` cells of the hard argmax (a (2r+1)^2-cell window on the coarse
    grid; with bilinear upsampling the window is the same area in pixels, round(r * H2 / h2)
    pixels each side), as in the GeoAware-SC / CleanDIFT evaluation (r=5, beta=0.02).

    Returns (points [K, 2] float32 (x, y) in target pixels, scores [K] float32): the score is
    the cosine similarity at the hard argmax. Zero feature vectors have cosine 0, not NaN.
    """
    check_features(src, "src", 3, "[C, h, w]")
    check_features(tgt, "tgt", 3, "[C, h2, w2]")
    check_same_channels(src, tgt, 0, 0)
    check_finite({"src": src, "tgt": tgt})
    src_size, tgt_size = check_size(src_size, "src_size"), check_size(tgt_size, "tgt_size")
    check_points(points, src_size)
    _choice(upsample, UPSAMPLE_MODES, "upsample")
    _choice(mode, POINT_MODES, "mode")
    _choice(impl, ("auto", "reference"), "impl")
    if radius < 0 or beta <= 0:
        raise ValueError(f"need radius >= 0 and beta > 0, got radius={radius}, beta={beta}")
    fn = reference_match_points if impl == "reference" else match_query_points
    return fn(
        src, tgt, points, src_size, tgt_size, upsample=upsample, mode=mode, radius=radius, beta=beta
    )


def match_dense(
    a: torch.Tensor, b: torch.Tensor, *, mutual: bool = False, k: int = 1, impl: str = "auto"
) -> NearestNeighbours | MutualMatches:
    """Cosine nearest neighbours of every row of a [N, C] among the rows of b [M, C].

    mutual=False: ``NearestNeighbours(indices [N, k], scores [N, k])``, best first; with k == 1
    ties go to the lowest index (with k > 1 the order among exactly equal scores is unspecified).
    mutual=True (k must be 1): ``MutualMatches(pairs [P, 2], scores [P])``, the pairs (i, j)
    where b[j] is a[i]'s nearest neighbour and a[i] is b[j]'s, sorted by i. Use
    ``as_kornia_matches`` for kornia's ``match_mnn`` layout. Zero rows have cosine 0 with all.
    """
    check_features(a, "a", 2, "[N, C]")
    check_features(b, "b", 2, "[M, C]")
    check_same_channels(a, b, 1, 1)
    check_finite({"a": a, "b": b})
    _choice(impl, DENSE_IMPLS, "impl")
    if not 1 <= k <= b.shape[0]:
        raise ValueError(f"k must be between 1 and the number of rows of b ({b.shape[0]}), got {k}")
    if mutual and k != 1:
        raise ValueError("mutual matching is defined for k=1 only; pass k=1 or mutual=False")
    if impl == "auto":
        impl = choose_dense_impl(a, b, k)
    if impl == "reference":
        return reference_match_dense(a, b, mutual=mutual, k=k)
    if impl == "blocked":
        return blocked_match_dense(a, b, mutual=mutual, k=k)
    if k != 1:
        raise ValueError(f"impl={impl!r} computes k=1 only; use impl='blocked' for k > 1")
    if impl == "prefilter":
        return prefilter_match_dense(a, b, mutual=mutual)
    return _triton_module().triton_match_dense(a, b, mutual=mutual)


PREFILTER_MIN_PAIRS = 4096 * 4096
"""Below this many (row, column) pairs the bf16 prefilter's fixed costs outweigh its faster GEMM
(measured: slower than the blocked path at 2304 x 2304, 1.6x faster at 9216 x 9216, C=1280)."""


def choose_dense_impl(a: torch.Tensor, b: torch.Tensor, k: int = 1) -> str:
    """The path ``match_dense(a, b, k=k, impl="auto")`` takes: the fastest exact one for this
    device, size and k (see the module docstring)."""
    if k != 1:
        return "blocked"
    if a.is_cuda:
        return "triton"
    large = a.shape[0] * b.shape[0] >= PREFILTER_MIN_PAIRS
    on_cpu = a.device.type == "cpu"
    return "prefilter" if large and on_cpu and prefers_bf16_gemm() else "blocked"


def _triton_module() -> ModuleType:
    """Import the Triton kernels on first use, failing with advice when they cannot run."""
    try:
        return importlib.import_module(".triton_dense", __package__)
    except (ImportError, RuntimeError) as exc:
        raise RuntimeError(
            "the Triton kernels need a CUDA GPU, or TRITON_INTERPRET=1 set before triton is "
            f"imported to run them on the CPU ({exc})"
        ) from exc


def as_kornia_matches(matches: MutualMatches) -> tuple[torch.Tensor, torch.Tensor]:
    """Mutual matches in ``kornia.feature.match_mnn``'s layout: (distances [P, 1], idxs [P, 2]).

    kornia reports L2 distances between descriptors; for unit vectors that is sqrt(2 - 2 cos).
    """
    dist = (2.0 - 2.0 * matches.scores).clamp_min(0).sqrt()
    return dist[:, None], matches.pairs
