"""NYUv2 depth readers: the official labelled `.mat` (HDF5) with `splits.mat`, and a folder layout.

`.mat` (nyu_depth_v2_labeled.mat, MATLAB v7.3 = HDF5): `images` [1449, 3, 640, 480] uint8 and
`depths` [1449, 640, 480] float32 metres (stored transposed: a sample is 480 x 640).
`splits.mat` holds `trainNdxs` (795) and `testNdxs` (654), 1-based; the standard test split is
the 654 images. Folder layout: `ROOT/<split>/rgb/NAME.png` and `ROOT/<split>/depth/NAME.png`
(16-bit millimetres). Depth beyond 10 m is invalid (probe3d). The Eigen crop (rows 45:471,
columns 41:601 of a 480 x 640 image) restricts evaluation to the area with valid Kinect depth.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CleanDiftError
from .dense_samples import DenseSample, check_metres, read_millimetre_png

MAX_DEPTH = 10.0
EIGEN_CROP = (45, 471, 41, 601)
"""(top, bottom, left, right) of the Eigen crop on 480 x 640 NYUv2 images."""
SPLIT_KEYS = {"train": "trainNdxs", "test": "testNdxs"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def load_nyu(root: Path, split: str = "test", limit: int | None = None) -> list[DenseSample]:
    """The split's samples from a `.mat` file (splits.mat beside it) or a folder layout."""
    root = Path(root)
    if root.suffix == ".mat":
        samples = _mat_samples(root, split)
    elif root.is_dir():
        samples = _folder_samples(root, split)
    else:
        raise CleanDiftError(f"{root} is neither NYUv2's .mat file nor a folder")
    return samples[:limit] if limit is not None else samples


def eigen_mask(shape: tuple[int, int]) -> np.ndarray:
    """True inside the Eigen crop; refused for images that are not 480 x 640."""
    if shape != (480, 640):
        raise CleanDiftError(
            f"the Eigen crop is defined on 480 x 640 NYUv2 images, not {shape[0]} x {shape[1]}: "
            "drop --eigen-crop"
        )
    top, bottom, left, right = EIGEN_CROP
    mask = np.zeros(shape, dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def _folder_samples(root: Path, split: str) -> list[DenseSample]:
    rgb, depth = root / split / "rgb", root / split / "depth"
    for folder in (rgb, depth):
        if not folder.is_dir():
            raise CleanDiftError(
                f"{folder} does not exist: the NYU folder layout is ROOT/{split}/rgb/*.png and "
                f"ROOT/{split}/depth/*.png (16-bit millimetres)"
            )
    images = sorted(p for p in rgb.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise CleanDiftError(f"{rgb} holds no images")
    samples = []
    for image in images:
        target = depth / f"{image.stem}.png"
        if not target.is_file():
            raise CleanDiftError(f"{image}: no depth map {target}")
        samples.append(
            DenseSample(image.stem, image, partial(read_millimetre_png, target, MAX_DEPTH))
        )
    return samples


def read_split_indices(path: Path, split: str) -> np.ndarray:
    """0-based indices of `split` ("train" or "test") from splits.mat (v5 or v7.3)."""
    if split not in SPLIT_KEYS:
        raise CleanDiftError(f"NYUv2 splits are train and test, not {split!r}")
    if not path.is_file():
        raise CleanDiftError(f"{path} does not exist: put the official splits.mat beside the .mat")
    key = SPLIT_KEYS[split]
    data: Any
    try:
        import scipy.io

        data = scipy.io.loadmat(str(path))
    except NotImplementedError:  # v7.3 files are HDF5
        data = _read_h5_arrays(path, (key,))
    except (OSError, ValueError) as err:
        raise CleanDiftError(f"{path}: cannot read ({err})") from None
    if key not in data:
        raise CleanDiftError(f"{path}: no field {key} (expected trainNdxs and testNdxs)")
    indices = np.asarray(data[key]).astype(np.int64).reshape(-1) - 1
    if indices.size == 0 or indices.min() < 0:
        raise CleanDiftError(f"{path}: field {key} must hold 1-based image indices")
    return indices


def _read_h5_arrays(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as handle:
        return {k: np.asarray(handle[k]) for k in keys if k in handle}


class _MatFile:
    """Lazy per-index access to the HDF5 datasets (opened on first use, per process)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: Any = None

    def dataset(self, name: str) -> Any:
        import h5py

        if self._handle is None:
            try:
                self._handle = h5py.File(self.path, "r")
            except OSError as err:
                raise CleanDiftError(f"{self.path}: not an HDF5 (.mat v7.3) file ({err})") from None
        if name not in self._handle:
            raise CleanDiftError(f"{self.path}: no dataset {name!r} (need images and depths)")
        return self._handle[name]

    def image(self, index: int) -> np.ndarray:
        data = np.asarray(self.dataset("images")[index])
        if data.ndim != 3 or data.shape[0] != 3 or data.dtype != np.uint8:
            raise CleanDiftError(
                f"{self.path}: images[{index}] is {data.dtype} {list(data.shape)}, "
                "expected uint8 [3, W, H]"
            )
        return np.ascontiguousarray(np.transpose(data, (2, 1, 0)))

    def depth(self, index: int) -> np.ndarray:
        data = np.asarray(self.dataset("depths")[index], dtype=np.float32)
        if data.ndim != 2:
            raise CleanDiftError(f"{self.path}: depths[{index}] is {list(data.shape)}, not 2-D")
        check_metres(data, f"{self.path} depths[{index}]")
        depth = np.ascontiguousarray(data.T)
        depth[~np.isfinite(depth) | (depth > MAX_DEPTH)] = 0
        return depth


def _mat_samples(path: Path, split: str) -> list[DenseSample]:
    if not path.is_file():
        raise CleanDiftError(f"{path} does not exist")
    indices = read_split_indices(path.with_name("splits.mat"), split)
    mat = _MatFile(path)
    count = mat.dataset("images").shape[0]
    if indices.max() >= count:
        raise CleanDiftError(
            f"splits.mat names image {int(indices.max()) + 1} but {path} holds {count}"
        )
    return [
        DenseSample(
            f"nyu_{i + 1:04d}",
            path,
            partial(mat.depth, int(i)),
            partial(mat.image, int(i)),
        )
        for i in indices
    ]
