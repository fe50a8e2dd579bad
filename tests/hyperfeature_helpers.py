"""A tiny SPair-layout set of warped synthetic photographs (trn and test splits)."""

from __future__ import annotations

import json
from pathlib import Path

from cleandift_deploy.eval.synthetic import visible_points, warped_pair


def write_spair_set(root: Path, pairs: dict[str, int], size: int = 96, points: int = 12) -> Path:
    """`pairs` per split (e.g. {"trn": 6, "test": 3}); each pair a textured image and a rotated,
    scaled copy with exactly known keypoints; images are not shared across splits."""
    images = root / "JPEGImages" / "blob"
    images.mkdir(parents=True, exist_ok=True)
    seed = 0
    for split, count in pairs.items():
        folder = root / "PairAnnotation" / split
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            seed += 1
            pair = warped_pair(size, angle_deg=8.0 + 3 * index, scale=1.05, seed=seed)
            source = visible_points(pair, points, seed=seed)
            target = pair.map_points(source)
            names = (f"{seed:04d}a.png", f"{seed:04d}b.png")
            pair.source.save(images / names[0])
            pair.target.save(images / names[1])
            record = {
                "category": "blob",
                "src_imname": names[0],
                "trg_imname": names[1],
                "src_imsize": [size, size, 3],
                "trg_imsize": [size, size, 3],
                "src_bndbox": [0, 0, size - 1, size - 1],
                "trg_bndbox": [0, 0, size - 1, size - 1],
                "src_kps": source.tolist(),
                "trg_kps": target.tolist(),
            }
            (folder / f"{seed:06d}-a-b:blob.json").write_text(json.dumps(record))
    return root
