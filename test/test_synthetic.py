"""Synthetic thin-object generator: layout, determinism, thinness, loader round trip."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from talk2sam_ros.training.data import list_samples, read_gt, read_image
from talk2sam_ros.training.synthetic import (CATEGORIES, generate_synthetic_dataset,
                                             load_backgrounds, render_sample)


def test_layout_and_loader_round_trip(tmp_path: Path) -> None:
    out = generate_synthetic_dataset(tmp_path / "syn", n=10, seed=5, image_size=(72, 96),
                                     val_fraction=0.3, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert sum(meta["counts"]["train"].values()) == 7
    assert sum(meta["counts"]["val"].values()) == 3
    train = list_samples(f"folder:{out}:train")
    val = list_samples(f"folder:{out}:val")
    assert len(train) == 7 and len(val) == 3
    assert {s.category for s in train + val} == set(CATEGORIES)
    for s in train + val:
        assert s.stem.startswith(s.category.replace(" ", "_"))  # filename rule agrees with CSV
        img, gt = read_image(s.image), read_gt(s.mask)
        assert img.shape == (72, 96, 3) and gt.shape == (72, 96)
        assert set(np.unique(gt)) <= {0, 255}
        assert (gt > 128).sum() >= 30  # the target is visible


def test_deterministic_reuse_and_overwrite(tmp_path: Path) -> None:
    a = generate_synthetic_dataset(tmp_path / "a", n=4, seed=1, image_size=64, progress=False)
    b = generate_synthetic_dataset(tmp_path / "b", n=4, seed=1, image_size=64, progress=False)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files and files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    stamp = (a / files[0]).stat().st_mtime_ns
    generate_synthetic_dataset(a, n=4, seed=1, image_size=64, progress=False)  # reused
    assert (a / files[0]).stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError):
        generate_synthetic_dataset(a, n=6, seed=2, image_size=64, progress=False)
    generate_synthetic_dataset(a, n=2, seed=2, image_size=64, progress=False, overwrite=True)
    assert len(list((a / "train" / "images").glob("*.png"))) == 1
    # a generation interrupted by Ctrl-C / kill (no meta.json, its marker left) is redone
    # instead of being taken for somebody else's dataset
    c = tmp_path / "interrupted"
    generate_synthetic_dataset(c, n=4, seed=1, image_size=64, progress=False)
    (c / "meta.json").unlink()
    (c / ".generating").write_text("{}")
    (c / "train" / "images" / files[0].name).unlink(missing_ok=True)
    generate_synthetic_dataset(c, n=4, seed=1, image_size=64, progress=False)
    assert (c / "meta.json").is_file() and not (c / ".generating").exists()
    assert sorted(p.relative_to(c) for p in c.rglob("*.png")) == files
    with pytest.raises(ValueError, match="unknown synthetic categories"):
        generate_synthetic_dataset(tmp_path / "c", n=4, categories=("cable", "ladder"))


@pytest.mark.parametrize("category", CATEGORIES)
def test_objects_are_thin(category: str) -> None:
    backgrounds = load_backgrounds(("camera", "coffee"))
    assert len(backgrounds) == 2 and backgrounds[0].shape[2] == 3
    for seed in range(3):
        rng = np.random.default_rng([seed, 99])
        img, mask = render_sample(rng, (128, 128), category, backgrounds, distractor_prob=0.0)
        assert img.dtype == np.uint8 and mask.dtype == bool and mask.sum() >= 30
        # 1-8 px strokes: (almost) no mask pixel is more than 4.5 px from the background;
        # only where a curve folds onto itself or strokes cross can it be thicker
        dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
        assert (dist[mask] > 4.5).mean() < 0.02, (category, seed)
        again, again_mask = render_sample(np.random.default_rng([seed, 99]), (128, 128),
                                          category, backgrounds, distractor_prob=0.0)
        assert np.array_equal(again, img) and np.array_equal(again_mask, mask)
