"""Principal components for descriptors: sd-dino's co-PCA and a fitted basis kept on disk.

co-PCA (sd-dino `co_pca`): the tokens of BOTH images of a pair are stacked, the joint mean is
removed, and both are projected on the top components of the stacked matrix. The reference uses
`torch.pca_lowrank` (randomised: results move with the seed and between runs); the default here
is the exact SVD of the centred matrix in float64 with a sign convention (each component's
largest-magnitude entry is positive), so the same pair always gives the same descriptor.

Pairwise PCA depends on the pair, so its descriptors cannot be cached per image. A `PcaBasis`
fitted once on many images' tokens (and saved to safetensors) describes every image on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..atomic import atomic_path
from ..errors import CleanDiftError
from ..models.checkpoints import read_safetensors

PCA_METHODS = ("svd", "lowrank")


def _check_rows(rows: torch.Tensor, what: str) -> None:
    if rows.ndim != 2 or rows.shape[0] < 2:
        raise CleanDiftError(f"{what} must be [N>=2, C] token rows; got {tuple(rows.shape)}")
    if not torch.isfinite(rows).all():
        raise CleanDiftError(f"{what} contains NaN or infinite values")


def sign_fixed(components: torch.Tensor) -> torch.Tensor:
    """Components [q, C] flipped so that each one's largest-magnitude entry is positive."""
    largest = components.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(components.gather(1, largest))
    return components * torch.where(signs == 0, torch.ones_like(signs), signs)


def principal_components(
    centred: torch.Tensor, dims: int, method: str = "svd", seed: int = 0
) -> torch.Tensor:
    """Top `dims` principal directions [q, C] of already-centred rows [N, C] (q <= min(N, C)).

    "svd": exact (float64 SVD, sign convention). "lowrank": `torch.pca_lowrank` as sd-dino calls
    it (randomised; `seed` makes it repeatable; `center=False` as the rows are centred).
    """
    if method not in PCA_METHODS:
        raise CleanDiftError(f"unknown PCA method {method!r}: use {' or '.join(PCA_METHODS)}")
    q = min(int(dims), centred.shape[0], centred.shape[1])
    if method == "svd":
        _, _, vh = torch.linalg.svd(centred.double(), full_matrices=False)
        return sign_fixed(vh[:q]).to(centred.dtype)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        _, _, v = torch.pca_lowrank(centred.float(), q=q, center=False)
    return v.T.to(centred.dtype)


def co_pca(
    a: torch.Tensor, b: torch.Tensor, dims: int, method: str = "svd", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project two images' token rows [N1, C], [N2, C] on the top components of both together.

    Returns [N1, q], [N2, q] with q = min(dims, N1 + N2, C), in float32.
    """
    _check_rows(a, "co-PCA input a")
    _check_rows(b, "co-PCA input b")
    if a.shape[1] != b.shape[1]:
        raise CleanDiftError(f"co-PCA inputs have {a.shape[1]} and {b.shape[1]} channels")
    joint = torch.cat([a, b]).double()
    centred = joint - joint.mean(dim=0)
    components = principal_components(centred, dims, method, seed).double()
    projected = (centred @ components.T).float()
    return projected[: a.shape[0]], projected[a.shape[0] :]


def map_rows(feature_map: torch.Tensor) -> torch.Tensor:
    """[C, h, w] -> [h*w, C] token rows."""
    return feature_map.reshape(feature_map.shape[0], -1).T


def rows_map(rows: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[h*w, q] token rows -> [q, h, w]."""
    return rows.T.reshape(rows.shape[1], height, width).contiguous()


def co_pca_maps(
    a: torch.Tensor, b: torch.Tensor, dims: int, method: str = "svd", seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """co-PCA of two feature maps [C, h, w] and [C, h2, w2] -> [q, h, w], [q, h2, w2]."""
    pa, pb = co_pca(map_rows(a), map_rows(b), dims, method, seed)
    return rows_map(pa, *a.shape[1:]), rows_map(pb, *b.shape[1:])


@dataclass
class PcaBasis:
    """A fitted mean [C] and components [q, C]: projects any image's tokens on its own."""

    mean: torch.Tensor
    components: torch.Tensor

    @classmethod
    def fit(cls, rows: torch.Tensor, dims: int) -> PcaBasis:
        """The exact top-`dims` basis of token rows [N, C] (float64 SVD, sign convention)."""
        _check_rows(rows, "PCA fitting rows")
        rows = rows.double()
        mean = rows.mean(dim=0)
        components = principal_components(rows - mean, dims)
        return cls(mean.float(), components.float())

    def project(self, rows: torch.Tensor) -> torch.Tensor:
        """Token rows [N, C] -> [N, q]."""
        if rows.shape[-1] != self.mean.shape[0]:
            raise CleanDiftError(
                f"the PCA basis was fitted on {self.mean.shape[0]} channels, "
                f"not {rows.shape[-1]}: fit one for this model and tap"
            )
        return (rows.float() - self.mean) @ self.components.T

    def project_map(self, feature_map: torch.Tensor) -> torch.Tensor:
        """[C, h, w] -> [q, h, w]."""
        return rows_map(self.project(map_rows(feature_map)), *feature_map.shape[1:])


def save_bases(path: Path, bases: dict[str, PcaBasis]) -> None:
    """Write one basis per layer (`{layer}.mean`, `{layer}.components`) to safetensors."""
    tensors: dict[str, torch.Tensor] = {}
    for layer, basis in bases.items():
        tensors[f"{layer}.mean"] = basis.mean.contiguous()
        tensors[f"{layer}.components"] = basis.components.contiguous()
    with atomic_path(Path(path)) as temporary:
        save_file(tensors, str(temporary), metadata={"kind": "cleandift-pca-bases"})


def load_bases(path: Path) -> dict[str, PcaBasis]:
    """The bases written by `save_bases`, by layer."""
    tensors = read_safetensors(Path(path))
    layers = sorted({key.rsplit(".", 1)[0] for key in tensors})
    try:
        return {
            layer: PcaBasis(tensors[f"{layer}.mean"], tensors[f"{layer}.components"])
            for layer in layers
        }
    except KeyError as err:
        raise CleanDiftError(f"{path} is not a PCA basis file (missing {err})") from None
