"""The known-truth set from scikit-image photographs: exact point maps, SPair layout, all splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cleandift_deploy.eval.datasets import load_pairs
from cleandift_deploy.eval.homography import map_points, random_homography, warp_image
from cleandift_deploy.eval.photoset import make_synthetic


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warped_coordinate_ramps_read_back_the_mapped_points(seed: int) -> None:
    """Warp images whose pixels hold their own x and y: at a mapped point the target holds the
    source point's coordinates (bilinear read), so image warp and point map agree exactly."""
    rng = np.random.default_rng(seed)
    width, height = 120, 90
    warp = random_homography((width, height), rng)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramps = [np.asarray(warp_image(Image.fromarray(r, "F"), warp.matrix, (width, height)))
             for r in (xs, ys)]  # fmt: skip
    points = rng.uniform([5, 5], [width - 6, height - 6], size=(200, 2))
    mapped = map_points(warp.matrix, points)
    ok = (mapped >= 1).all(axis=1) & (mapped[:, 0] < width - 2) & (mapped[:, 1] < height - 2)
    assert ok.sum() > 20
    read = np.stack([bilinear(r, mapped[ok]) for r in ramps], axis=1)
    # Pillow samples the source ramp bilinearly at each target pixel, so reading back between
    # pixels is exact up to the ramp's curvature under the projective map (well below 0.05 px).
    assert np.abs(read - points[ok]).max() < 0.05
    shifted = np.stack([bilinear(r, mapped[ok] + 1.0) for r in ramps], axis=1)
    assert np.abs(shifted - points[ok]).max() > 0.5


def bilinear(image: np.ndarray, points: np.ndarray) -> np.ndarray:
    x0, y0 = np.floor(points[:, 0]).astype(int), np.floor(points[:, 1]).astype(int)
    fx, fy = points[:, 0] - x0, points[:, 1] - y0
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def test_photo_set_is_an_spair_layout_with_all_splits(tmp_path: Path) -> None:
    counts = make_synthetic(tmp_path, {"trn": 3, "val": 1, "test": 5}, seed=4)
    assert counts == {"trn": 3, "val": 1, "test": 5}
    for split, expected in counts.items():
        pairs = load_pairs(tmp_path, "spair", split)
        assert len(pairs) == expected
    for pair_file in (tmp_path / "PairAnnotation" / "test").glob("*.json"):
        record = json.loads(pair_file.read_text())
        source = np.array(record["src_kps"])
        target = np.array(record["trg_kps"])
        assert 4 <= len(source) <= 20
        np.testing.assert_allclose(map_points(np.array(record["homography"]), source), target)
        width, height, _ = record["trg_imsize"]
        assert (target >= 0).all() and (target[:, 0] <= width - 1).all()
        assert (target[:, 1] <= height - 1).all()
        x1, y1, x2, y2 = record["trg_bndbox"]
        assert 0 <= x1 < x2 <= width - 1 and 0 <= y1 < y2 <= height - 1
        image_file = (
            tmp_path
            / "ImageAnnotation"
            / record["category"]
            / (record["trg_imname"][:-4] + ".json")
        )
        assert json.loads(image_file.read_text())["bndbox"] == record["trg_bndbox"]


def test_the_target_shows_the_source_content_at_the_mapped_points(tmp_path: Path) -> None:
    """Photometric changes aside, local patches around mapped points match their source
    patches far better than patches a few pixels off."""
    make_synthetic(tmp_path, {"test": 4}, seed=7)
    good, bad = [], []
    for pair in load_pairs(tmp_path, "spair", "test"):
        source = np.asarray(Image.open(pair.source_path).convert("L"), dtype=np.float64)
        target = np.asarray(Image.open(pair.target_path).convert("L"), dtype=np.float64)
        src = pair.source_points.round().astype(int)
        trg = pair.target_points.round().astype(int)
        values = source[src[:, 1], src[:, 0]]
        good.extend(np.abs(values - target[trg[:, 1], trg[:, 0]]))
        bad.extend(np.abs(values - target[(trg[:, 1] + 15) % target.shape[0], trg[:, 0]]))
    assert np.median(good) < 0.6 * np.median(bad)


def test_make_synthetic_command_writes_every_split(tmp_path: Path, capsys) -> None:
    from cleandift_deploy.cli import main

    main(["eval", "make-synthetic", "--out", str(tmp_path), "--pairs", "4", "--max-side", "96"])
    assert "pairs: trn 4, val 1, test 4" in capsys.readouterr().out
    assert [len(load_pairs(tmp_path, "spair", s)) for s in ("trn", "val", "test")] == [4, 1, 4]
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "make-synthetic", "--out", str(tmp_path / "x"), "--pairs", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: --pairs must be at least 1")
