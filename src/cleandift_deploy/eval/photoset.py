"""A known-truth correspondence set in SPair-71k's layout, from scikit-image's photographs.

Each pair is one bundled photograph and a random warp of it (homography + photometric change), so
every keypoint's true match is known exactly. Keypoints are corners on the photo's subject, one
fixed list per photo (like SPair's per-category keypoint ids); a point whose image leaves the
target is dropped from that pair. The same readers and evaluator run on it unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..atomic import atomic_path, write_text_atomic
from ..errors import CleanDiftError
from .homography import Warp, inside, map_points, photometric, random_homography, warp_image

KEYPOINTS = 30
PAIR_POINTS = 20
MIN_POINTS = 4
MARGIN = 2.0
SPLITS = ("trn", "val", "test")


@dataclass(frozen=True)
class Photo:
    """A bundled photograph, the category it stands for and its subject's box (x1,y1,x2,y2)."""

    name: str
    category: str
    subject: tuple[int, int, int, int]


PHOTOS = (
    Photo("astronaut", "person", (20, 10, 500, 510)),
    Photo("chelsea", "cat", (40, 0, 420, 300)),
    Photo("coffee", "cup", (75, 10, 560, 385)),
    Photo("rocket", "rocket", (160, 100, 480, 427)),
    Photo("camera", "cameraman", (0, 96, 344, 512)),
    Photo("coins", "coins", (12, 24, 380, 300)),
)


def load_photo(name: str) -> Image.Image:
    """A scikit-image photograph as an RGB Pillow image (grey ones repeated to three channels)."""
    import skimage.data

    pixels = np.asarray(getattr(skimage.data, name)())
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(pixels[..., :3]).astype(np.uint8))


def fit_photo(photo: Photo, image: Image.Image, max_side: int | None) -> tuple[Photo, Image.Image]:
    """The photo shrunk so its longer side is at most `max_side` (small sets for quick runs)."""
    if max_side is None or max(image.size) <= max_side:
        return photo, image
    factor = max_side / max(image.size)
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    x1, y1, x2, y2 = (round(v * factor) for v in photo.subject)
    resized = image.resize(size, Image.Resampling.LANCZOS)
    return replace(photo, subject=(x1, y1, x2, y2)), resized


def subject_keypoints(image: Image.Image, photo: Photo, rng: np.random.Generator) -> np.ndarray:
    """Up to `KEYPOINTS` well-spread corners inside the subject's box, (x, y) float."""
    from skimage.feature import corner_harris, corner_peaks

    grey = np.asarray(image.convert("L"), dtype=np.float64) / 255
    x1, y1, x2, y2 = photo.subject
    spacing = max(3, round(max(image.size) / 50))
    peaks = corner_peaks(
        corner_harris(grey[y1:y2, x1:x2]), min_distance=spacing, threshold_rel=0.02
    )
    points = peaks[:, ::-1].astype(np.float64) + np.array([x1, y1])
    if len(points) > KEYPOINTS:
        points = points[np.sort(rng.choice(len(points), KEYPOINTS, replace=False))]
    return points


def warped_box(matrix: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> list:
    """The bounding box of a box's warped corners, clipped to a (W, H) image."""
    x1, y1, x2, y2 = box
    corners = map_points(matrix, np.array([[x1, y1], [x2, y1], [x1, y2], [x2, y2]], float))
    low = np.clip(corners.min(axis=0), 0, [size[0] - 1, size[1] - 1])
    high = np.clip(corners.max(axis=0), 0, [size[0] - 1, size[1] - 1])
    return [float(low[0]), float(low[1]), float(high[0]), float(high[1])]


class PhotoSet:
    """Writes the layout: photos, annotations per image, pair files per split."""

    def __init__(self, out: Path, seed: int, max_side: int | None = None) -> None:
        self.out = Path(out)
        fitted = [fit_photo(photo, load_photo(photo.name), max_side) for photo in PHOTOS]
        self.photos = [photo for photo, _ in fitted]
        self.images = [image for _, image in fitted]
        rng = np.random.default_rng(seed)
        self.keypoints = [
            subject_keypoints(image, photo, rng)
            for image, photo in zip(self.images, self.photos, strict=True)
        ]
        for photo, image, points in zip(self.photos, self.images, self.keypoints, strict=True):
            self._save_image(photo, photo.name, image, points, list(map(float, photo.subject)))

    def _save_image(
        self, photo: Photo, name: str, image: Image.Image, points: np.ndarray, box: list
    ) -> None:
        path = self.out / "JPEGImages" / photo.category / f"{name}.jpg"
        with atomic_path(path) as temporary:
            image.save(temporary, format="JPEG", quality=92)
        valid = inside(points, image.size) if len(points) else np.zeros(0, bool)
        kps = {
            str(i): (p.tolist() if ok else None)
            for i, (p, ok) in enumerate(zip(points, valid, strict=True))
        }
        annotation = {
            "filename": f"{name}.jpg",
            "category": photo.category,
            "image_width": image.width,
            "image_height": image.height,
            "bndbox": box,
            "kps": kps,
            "azimuth_id": 0,
        }
        folder = self.out / "ImageAnnotation" / photo.category
        write_text_atomic(folder / f"{name}.json", json.dumps(annotation) + "\n")

    def write_pair(self, split: str, index: int, rng: np.random.Generator) -> None:
        """One photo, a random warp of it, and the pair file with the mapped keypoints."""
        which = int(rng.integers(len(self.photos)))
        photo, image, points = self.photos[which], self.images[which], self.keypoints[which]
        needed = max(1, min(MIN_POINTS, len(points) // 2))
        for _ in range(50):
            warp = random_homography(image.size, rng)
            mapped = map_points(warp.matrix, points)
            keep = np.flatnonzero(inside(mapped, image.size, MARGIN))
            if len(keep) >= needed:
                break
        else:
            raise CleanDiftError(
                f"no warp of {photo.name} keeps {needed} keypoints: use a larger --max-side"
            )
        keep = np.sort(rng.choice(keep, min(PAIR_POINTS, len(keep)), replace=False))
        target = photometric(warp_image(image, warp.matrix, image.size), rng)
        name = f"{photo.name}_{split}_{index:05d}"
        box = warped_box(warp.matrix, photo.subject, image.size)
        all_mapped = np.where(inside(mapped, image.size)[:, None], mapped, -1.0)
        self._save_image(photo, name, target, all_mapped, box)
        record = pair_record(photo, image.size, warp, points, mapped, keep, box, name)
        stem = f"{index:06d}-{photo.name}-{name}:{photo.category}"
        write_text_atomic(
            self.out / "PairAnnotation" / split / f"{stem}.json", json.dumps(record) + "\n"
        )


def pair_record(
    photo: Photo,
    size: tuple[int, int],
    warp: Warp,
    points: np.ndarray,
    mapped: np.ndarray,
    keep: np.ndarray,
    box: list,
    target_name: str,
) -> dict[str, Any]:
    """An SPair pair annotation; difficulty fields follow the warp (0 easy .. 2 hard)."""
    rotation, scale = abs(warp.angle_deg), warp.scale
    box_area = (box[2] - box[0]) * (box[3] - box[1])
    x1, y1, x2, y2 = photo.subject
    return {
        "src_imname": f"{photo.name}.jpg",
        "trg_imname": f"{target_name}.jpg",
        "src_imsize": [size[0], size[1], 3],
        "trg_imsize": [size[0], size[1], 3],
        "src_bndbox": list(map(float, photo.subject)),
        "trg_bndbox": box,
        "src_kps": points[keep].tolist(),
        "trg_kps": mapped[keep].tolist(),
        "kps_ids": [int(i) for i in keep],
        "category": photo.category,
        "mirror": 0,
        "viewpoint_variation": int(rotation > 10) + int(rotation > 20),
        "scale_variation": int(abs(np.log(scale)) > 0.15) + int(abs(np.log(scale)) > 0.3),
        "truncation": int(box_area < 0.9 * scale**2 * (x2 - x1) * (y2 - y1)),
        "occlusion": 0,
        "homography": warp.matrix.tolist(),
    }


def make_synthetic(
    out: Path,
    pairs: dict[str, int],
    seed: int = 0,
    advance: Callable[[], None] | None = None,
    max_side: int | None = None,
) -> dict[str, int]:
    """Write the set to `out`: `pairs[split]` pairs for each split (photos at most `max_side`
    pixels on their longer side when given); returns the counts."""
    unknown = set(pairs) - set(SPLITS)
    if unknown:
        raise CleanDiftError(f"unknown split {', '.join(sorted(unknown))}: use {SPLITS}")
    photoset = PhotoSet(out, seed, max_side)
    for offset, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, offset])
        for index in range(pairs.get(split, 0)):
            photoset.write_pair(split, index, rng)
            if advance is not None:
                advance()
    return {split: pairs.get(split, 0) for split in SPLITS}
