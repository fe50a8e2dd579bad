"""Readers of the SPair-71k, PF-PASCAL and PF-WILLOW layouts, built here in each layout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.eval.datasets import load_pairs


def save_image(path: Path, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(str(path))).integers(0, 256, (size[1], size[0], 3))
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def spair_pair(root: Path, split: str, index: int, category: str, **fields: object) -> Path:
    """One SPair pair file and its two images; `fields` override the record."""
    src, trg = f"s{index}", f"t{index}"
    save_image(root / "JPEGImages" / category / f"{src}.jpg", (40, 30))
    save_image(root / "JPEGImages" / category / f"{trg}.jpg", (50, 20))
    record = {
        "src_imname": f"{src}.jpg", "trg_imname": f"{trg}.jpg",
        "src_imsize": [40, 30, 3], "trg_imsize": [50, 20, 3],
        "src_bndbox": [1, 2, 30, 25], "trg_bndbox": [3, 1, 45, 19],
        "src_kps": [[1.5, 2], [10, 12]], "trg_kps": [[4, 5], [20, 8.5]], "kps_ids": ["3", "7"],
        "category": category, "mirror": 0, "viewpoint_variation": index % 3,
        "scale_variation": 0, "truncation": 0, "occlusion": 0,
        **fields,
    }  # fmt: skip
    path = root / "PairAnnotation" / split / f"{index:06d}-{src}-{trg}:{category}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


@pytest.fixture
def spair(tmp_path: Path) -> Path:
    for index, category in enumerate(["car", "car", "dog", "car"]):
        spair_pair(tmp_path, "test", index, category)
    spair_pair(tmp_path, "trn", 9, "dog")
    return tmp_path


def test_spair_pairs_carry_sizes_boxes_and_points(spair: Path) -> None:
    pairs = load_pairs(spair, "spair", "test")
    assert [p.category for p in pairs] == ["car", "car", "dog", "car"]
    first = pairs[0]
    assert first.pair_id == "000000-s0-t0:car"
    assert first.source_size == (40, 30) and first.target_size == (50, 20)
    assert first.target_bbox == (3.0, 1.0, 45.0, 19.0)
    np.testing.assert_array_equal(first.source_points, [[1.5, 2], [10, 12]])
    np.testing.assert_array_equal(first.target_points, [[4, 5], [20, 8.5]])
    assert first.target_path == spair / "JPEGImages" / "car" / "t0.jpg"


def test_spair_split_categories_limit_and_filters(spair: Path) -> None:
    assert [p.pair_id for p in load_pairs(spair, "spair", "trn")] == ["000009-s9-t9:dog"]
    assert len(load_pairs(spair, "spair", "test", categories=["dog"])) == 1
    limited = load_pairs(spair, "spair", "test", limit=1)
    assert [p.category for p in limited] == ["car", "dog"]
    easy = load_pairs(spair, "spair", "test", filters={"viewpoint_variation": 0})
    assert [p.pair_id for p in easy] == ["000000-s0-t0:car", "000003-s3-t3:car"]
    with pytest.raises(CleanDiftError, match="unknown SPair filter"):
        load_pairs(spair, "spair", "test", filters={"colour": 1})


def test_spair_corrupt_pair_file_names_the_file(spair: Path) -> None:
    bad = spair_pair(spair, "test", 5, "dog")
    bad.write_text("{not json")
    with pytest.raises(CleanDiftError, match=re.escape(f"cannot read pair file {bad}")):
        load_pairs(spair, "spair", "test")


def test_spair_missing_image_names_the_image(spair: Path) -> None:
    (spair / "JPEGImages" / "dog" / "t2.jpg").unlink()
    with pytest.raises(CleanDiftError, match=r"missing image: .*dog/t2\.jpg does not exist"):
        load_pairs(spair, "spair", "test")


def test_spair_wrong_keypoint_count_names_file_and_fields(spair: Path) -> None:
    bad = spair_pair(spair, "test", 6, "dog", trg_kps=[[1, 1]])
    with pytest.raises(CleanDiftError, match=re.escape(f"{bad}: src_kps and trg_kps have 2 and 1")):
        load_pairs(spair, "spair", "test")


def test_spair_missing_field_and_folder(spair: Path, tmp_path: Path) -> None:
    bad = spair_pair(spair, "test", 7, "dog")
    record = json.loads(bad.read_text())
    del record["trg_bndbox"]
    bad.write_text(json.dumps(record))
    with pytest.raises(
        CleanDiftError, match=re.escape(f"pair file {bad} has no field 'trg_bndbox'")
    ):
        load_pairs(spair, "spair", "test")
    with pytest.raises(CleanDiftError, match=r"missing folder .*PairAnnotation/val"):
        load_pairs(spair, "spair", "val")
    with pytest.raises(CleanDiftError, match="no dataset folder"):
        load_pairs(tmp_path / "absent", "spair", "test")


def write_pfpascal(root: Path, rows: list[list[str]]) -> Path:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        save_image(root / "JPEGImages" / name, (60, 45))
    lines = ["source_image,target_image,class,XA,YA,XB,YB"]
    lines += [",".join(row) for row in rows]
    path = root / "test_pairs_pf_pascal.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pfpascal_rows_become_pairs(tmp_path: Path) -> None:
    write_pfpascal(
        tmp_path,
        [
            ["JPEGImages/a.jpg", "JPEGImages/b.jpg", "7", "1;2;3", "4;5;6", "7;8;9", "10;11;12"],
            ["JPEGImages/b.jpg", "JPEGImages/c.jpg", "12", "5", "6", "7", "8"],
        ],
    )
    pairs = load_pairs(tmp_path, "pfpascal", "test")
    assert [(p.pair_id, p.category) for p in pairs] == [("0", "car"), ("1", "dog")]
    np.testing.assert_array_equal(pairs[0].source_points, [[1, 4], [2, 5], [3, 6]])
    np.testing.assert_array_equal(pairs[0].target_points, [[7, 10], [8, 11], [9, 12]])
    assert pairs[0].target_size == (60, 45) and pairs[0].target_bbox is None
    assert [p.category for p in load_pairs(tmp_path, "pfpascal", "test", ["dog"])] == ["dog"]


def test_pfpascal_wrong_lengths_and_missing_images(tmp_path: Path) -> None:
    path = write_pfpascal(
        tmp_path, [["JPEGImages/a.jpg", "JPEGImages/b.jpg", "7", "1;2", "4;5", "7", "10"]]
    )
    with pytest.raises(
        CleanDiftError, match=re.escape(f"{path} row 1: XA/YA and XB/YB have 2 and 1")
    ):
        load_pairs(tmp_path, "pfpascal", "test")
    write_pfpascal(tmp_path, [["JPEGImages/zz.jpg", "JPEGImages/b.jpg", "7", "1", "4", "7", "1"]])
    with pytest.raises(CleanDiftError, match=r"missing image: .*zz\.jpg"):
        load_pairs(tmp_path, "pfpascal", "test")
    with pytest.raises(CleanDiftError, match=r"missing PF-PASCAL val pair list"):
        load_pairs(tmp_path, "pfpascal", "val")


def test_pfwillow_rows_become_pairs(tmp_path: Path) -> None:
    for name in ("x.png", "y.png"):
        save_image(tmp_path / "car(G)" / name, (70, 50))
    values = [str(v) for v in range(40)]
    header = ["imageA", "imageB", *[f"c{i}" for i in range(40)]]
    row = ["PF-dataset/car(G)/x.png", "PF-dataset/car(G)/y.png", *values]
    (tmp_path / "test_pairs.csv").write_text(",".join(header) + "\n" + ",".join(row) + "\n")
    (pair,) = load_pairs(tmp_path, "pfwillow", "test")
    assert pair.category == "car(G)" and pair.source_size == (70, 50)
    np.testing.assert_array_equal(pair.source_points[:2], [[0, 10], [1, 11]])
    np.testing.assert_array_equal(pair.target_points[-1], [29, 39])
    (tmp_path / "test_pairs.csv").write_text(",".join(header) + "\n" + ",".join(row[:-1]) + "\n")
    with pytest.raises(CleanDiftError, match=r"test_pairs\.csv row 1 has 41 fields, not 42"):
        load_pairs(tmp_path, "pfwillow", "test")
