"""Dataset loaders on small fixture folders in each real layout (written by the tests)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from talk2sam_ros.training.data import (AugmentConfig, DatasetSpec, SegmentationDataset, augment,
                                        box_from_mask, category_from_filename, jitter_boxes,
                                        list_samples, normalize_category, part_boxes,
                                        prompt_boxes)


def _write_pair(img_path: Path, gt_path: Path, seed: int, size: tuple[int, int] = (24, 32)
                ) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img_path.parent.mkdir(parents=True, exist_ok=True)
    gt_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(img_path), rng.integers(0, 255, (*size, 3), dtype=np.uint8))
    gt = np.zeros(size, np.uint8)
    gt[4:6, 3 + seed % 5: 20] = 255  # a thin bar
    cv2.imwrite(str(gt_path), gt)
    return gt


def test_category_rules() -> None:
    assert category_from_filename("dis5k", "7#Electrical#1#Cable#3142447262_1f6832e91c_o") == \
        "cable"
    assert category_from_filename("dis5k", "11#Furniture#17#Table#49706461457_de5227b966_o") \
        == "table"
    assert category_from_filename("dis5k", "1#Sports#3#TennisRacket#123") == "tennis racket"
    assert category_from_filename("dis5k", "no_hashes_here") == ""
    assert category_from_filename("big", "11083112904_5d97c7f8e1_o_sofa") == "sofa"
    assert category_from_filename("big", "2592483813_c8f9b3ef2e_potted_plant") == "potted plant"
    assert category_from_filename("thinobject5k", "bicycle_PNG5380") == "bicycle"
    assert category_from_filename("thinobject5k", "electric-guitar_12") == "electric guitar"
    assert category_from_filename("folder", "cable_00012") == "cable"
    assert normalize_category("  Power_Line-Tower ") == "power line tower"
    with pytest.raises(ValueError, match="unknown dataset kind"):
        category_from_filename("coco", "x")


def test_spec_parsing() -> None:
    spec = DatasetSpec.parse("dis5k:/data/DIS5K:DIS-VD?exclude=x.txt&limit=5")
    assert (spec.kind, str(spec.root), spec.split, spec.limit) == ("dis5k", "/data/DIS5K",
                                                                   "DIS-VD", 5)
    assert str(spec.exclude) == "x.txt"
    assert DatasetSpec.parse(str(spec)) == spec
    for bad in ("dis5k", "coco:/x", "big:/x:test?bogus=1", ":x"):
        with pytest.raises(ValueError):
            DatasetSpec.parse(bad)


def test_dis5k_layout_exclude_and_csv(tmp_path: Path) -> None:
    root = tmp_path / "DIS5K"
    stems = {"DIS-TR": ["7#Electrical#1#Cable#111_aa_o", "4#Sports#9#Skiing#222_bb_o"],
             "DIS-VD": ["7#Electrical#2#PowerLine#333_cc_o"],
             "DIS-TE1": ["11#Furniture#17#Table#444_dd_o"],
             "DIS-TE2": ["3#Tools#5#Rake#555_ee_o"]}
    for i, (split, names) in enumerate(stems.items()):
        for j, stem in enumerate(names):
            _write_pair(root / split / "im" / f"{stem}.jpg", root / split / "gt" / f"{stem}.png",
                        i * 10 + j)
    tr = list_samples(f"dis5k:{root}:train")
    assert [s.category for s in tr] == ["skiing", "cable"]  # sorted by stem
    assert tr[0].dataset == "dis5k/DIS-TR"
    exclude = tmp_path / "non_thin.txt"
    exclude.write_text("# scene/action names\nSkiing\n11#Furniture#17#Table#444_dd_o\n")
    assert [s.category for s in list_samples(f"dis5k:{root}:train?exclude={exclude}")] == \
        ["cable"]
    test = list_samples(f"dis5k:{root}:test?exclude={exclude}")  # TE1..4, Table dropped by stem
    assert [s.category for s in test] == ["rake"]
    csv = tmp_path / "cats.csv"
    csv.write_text("stem,category\n7#Electrical#2#PowerLine#333_cc_o,overhead wire\n")
    vd = list_samples(f"dis5k:{root}:DIS-VD?categories={csv}")
    assert [s.category for s in vd] == ["overhead wire"]
    assert list_samples(f"dis5k:{root}:DIS-VD")[0].category == "power line"


def test_thinobject5k_layouts(tmp_path: Path) -> None:
    root = tmp_path / "ThinObject5K"
    for i, stem in enumerate(["bicycle_PNG5380", "fence_PNG12", "harp_3"]):
        _write_pair(root / "images" / f"{stem}.jpg", root / "masks" / f"{stem}.png", i)
    (root / "list").mkdir()
    (root / "list" / "trainval.txt").write_text("bicycle_PNG5380.png\nfence_PNG12.png\n")
    (root / "list" / "test.txt").write_text("harp_3.png\n")
    assert [s.category for s in list_samples(f"thinobject5k:{root}:train")] == ["bicycle",
                                                                                "fence"]
    assert [s.category for s in list_samples(f"thinobject5k:{root}:test")] == ["harp"]
    # SAM-HQ's layout: images_<split> / masks_<split>
    sam = tmp_path / "sam_hq_layout"
    _write_pair(sam / "images_train" / "kite_PNG1.jpg", sam / "masks_train" / "kite_PNG1.png", 1)
    s = list_samples(f"thinobject5k:{sam}:train")
    assert len(s) == 1 and s[0].category == "kite"
    (root / "list" / "test.txt").write_text("missing_1.png\n")
    with pytest.raises(FileNotFoundError, match="missing_1"):
        list_samples(f"thinobject5k:{root}:test")


def test_big_layout_default_category_and_csv(tmp_path: Path) -> None:
    root = tmp_path / "BIG"
    for i, stem in enumerate(["11083112904_5d97c7f8e1_o_sofa", "3015_bicycle", "77777_8a8a8a"]):
        _write_pair(root / "val" / f"{stem}_im.jpg", root / "val" / f"{stem}_gt.png", i)
    with pytest.raises(ValueError, match="no category for .*77777_8a8a8a"):
        list_samples(f"big:{root}:val")
    got = list_samples(f"big:{root}:val", default_category="object")
    assert [s.category for s in got] == ["sofa", "bicycle", "object"]
    csv = tmp_path / "big.csv"
    csv.write_text("filename,category\n77777_8a8a8a_im.jpg,Street Lamp\n")
    got = list_samples(f"big:{root}:val?categories={csv}&limit=2")
    assert [s.category for s in got] == ["sofa", "bicycle"]
    assert list_samples(f"big:{root}:val?categories={csv}")[2].category == "street lamp"
    # a spreadsheet's export: byte-order mark, spaces around names, a short row
    csv.write_bytes("\ufefffilename , category\n77777_8a8a8a_im.jpg , Street Lamp\n3015_bicycle\n"
                    .encode("utf-8"))
    got = list_samples(f"big:{root}:val?categories={csv}")
    assert [s.category for s in got] == ["sofa", "bicycle", "street lamp"]


def test_folder_layout_and_dataset_items(tmp_path: Path) -> None:
    root = tmp_path / "syn" / "train"
    gts = [_write_pair(root / "images" / f"wire_{i:05d}.png", root / "masks" / f"wire_{i:05d}.png",
                       i) for i in range(3)]
    (root / "categories.csv").write_text("stem,category\nwire_00001,antenna\n")
    samples = list_samples(f"folder:{tmp_path / 'syn'}:train")
    assert [s.category for s in samples] == ["wire", "antenna", "wire"]
    ds = SegmentationDataset(samples, AugmentConfig(hflip=0.0), seed=3)
    item = ds[1]
    assert item["image"].shape == (24, 32, 3) and item["image"].dtype == np.uint8
    assert np.array_equal(item["gt"], gts[1] > 128)
    assert item["boxes"].tolist() == [box_from_mask(gts[1] > 128).tolist()]
    assert item["text"] == "antenna" and item["key"].endswith("wire_00001")


def test_boxes() -> None:
    m = np.zeros((20, 30), bool)
    m[2:5, 3:9] = True  # part A (18 px)
    m[10:18, 20:22] = True  # part B (16 px)
    assert box_from_mask(m).tolist() == [3, 2, 21, 17]  # inclusive max index (SAM-HQ)
    parts = part_boxes(m)
    assert parts.tolist() == [[3, 2, 8, 4], [20, 10, 21, 17]]
    assert part_boxes(m, min_area_frac=0.6).tolist() == [[3, 2, 21, 17]]  # fallback: tight box
    assert box_from_mask(np.zeros((4, 6), bool)).tolist() == [0, 0, 5, 3]
    rng = np.random.default_rng(0)
    jit = jitter_boxes(box_from_mask(m)[None], m.shape, rng, 0.1)
    assert np.all(np.abs(jit - box_from_mask(m)) <= 0.1 * np.array([18, 15, 18, 15]) + 1e-4)
    assert not np.array_equal(jit, box_from_mask(m)[None])
    assert np.all(jit[:, :2] >= 0) and np.all(jit[:, 2] <= 29) and np.all(jit[:, 3] <= 19)
    multi = prompt_boxes(m, AugmentConfig(multi_box=True), np.random.default_rng(0))
    assert multi.shape == (2, 4)


def test_augment_keeps_thin_structures_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)
    gt = np.zeros((64, 80), bool)
    gt[30, 10:70] = True  # 1 px wire
    cfg = AugmentConfig(hflip=0.5, crop_prob=1.0, crop_min=0.5, brightness=0.2, contrast=0.2,
                        saturation=0.2, noise_std=3.0)
    for seed in range(20):
        a_img, a_gt = augment(img, gt, cfg, np.random.default_rng(seed))
        b_img, b_gt = augment(img, gt, cfg, np.random.default_rng(seed))
        assert np.array_equal(a_img, b_img) and np.array_equal(a_gt, b_gt)
        assert a_gt.sum() == gt.sum()  # the crop keeps the whole object, nothing is resampled
        assert a_img.shape[:2] == a_gt.shape and a_img.dtype == np.uint8
        assert a_gt.any(axis=1).sum() == 1  # still one 1 px row
    assert not AugmentConfig(hflip=0.0).image_level and AugmentConfig().image_level
