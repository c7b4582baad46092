"""Hand-computed cases for talk2sam_ros.common.metrics (mask IoU, SAM-HQ boundary IoU)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from talk2sam_ros.common.metrics import (binarize_gt, boundary_iou, boundary_iou_coco, boundary_width,
                                  mask_iou, mask_to_boundary)


def _blank(h: int = 100, w: int = 100) -> np.ndarray:
    return np.zeros((h, w), bool)


def test_single_pixel() -> None:
    gt = _blank(10, 10)
    gt[5, 5] = True
    assert mask_iou(gt, gt) == 1.0
    assert boundary_iou(gt, gt) == 1.0
    pred = _blank(10, 10)
    pred[5, 6] = True
    assert mask_iou(gt, pred) == 0.0
    # d = max(1, round(0.02 * sqrt(200))) = 1: a lone pixel is its own boundary.
    assert mask_to_boundary(gt).sum() == 1
    assert boundary_iou(gt, pred) == 0.0
    both = gt | pred
    assert mask_iou(gt, both) == 0.5
    assert boundary_iou(gt, both) == 0.5


def test_empty_masks() -> None:
    empty = _blank(8, 8)
    full = ~empty
    assert mask_iou(empty, empty) == 1.0
    assert boundary_iou(empty, empty) == 1.0
    assert math.isnan(mask_iou(empty, empty, empty=float("nan")))
    assert math.isnan(boundary_iou(empty, empty, empty=float("nan")))
    assert mask_iou(empty, full) == 0.0 and mask_iou(full, empty) == 0.0
    assert boundary_iou(empty, full) == 0.0 and boundary_iou(full, empty) == 0.0


def test_full_and_no_overlap() -> None:
    a = _blank()
    a[20:80, 20:80] = True
    assert mask_iou(a, a) == 1.0 and boundary_iou(a, a) == 1.0
    b = _blank()
    b[0:10, 0:10] = True
    assert mask_iou(a, b) == 0.0 and boundary_iou(a, b) == 0.0
    # uint8 0/255 and 0/1 inputs count non-zero as foreground
    assert mask_iou(a.astype(np.uint8) * 255, a.astype(np.uint8)) == 1.0


def test_thin_lines() -> None:
    gt = _blank()
    gt[50, 10:90] = True  # 1 px wide, 80 px long
    shifted = _blank()
    shifted[51, 10:90] = True
    assert mask_iou(gt, shifted) == 0.0
    assert boundary_iou(gt, shifted) == 0.0
    thick = _blank()
    thick[50:52, 10:90] = True  # 2 px wide: 160 px
    assert mask_iou(gt, thick) == 80 / 160
    # d = round(0.02 * 141.42) = 3 erodes both lines away: boundary == mask
    assert boundary_width(gt.shape) == 3
    assert np.array_equal(mask_to_boundary(thick), thick)
    assert boundary_iou(gt, thick) == 80 / 160


def test_square_band_hand_computed() -> None:
    gt = _blank()
    gt[20:80, 20:80] = True  # 60 x 60
    pred = _blank()
    pred[20:80, 20:79] = True  # 60 x 59
    # d = 3: interiors are 54 x 54 (2916) and 54 x 53 (2862)
    assert mask_to_boundary(gt).sum() == 3600 - 2916
    assert mask_to_boundary(pred).sum() == 3540 - 2862
    assert mask_iou(gt, pred) == 3540 / 3600
    # boundary intersection = pred minus gt interior; union = gt minus pred interior
    assert boundary_iou(gt, pred) == pytest.approx((3540 - 2916) / (3600 - 2862))
    assert boundary_iou_coco(gt, pred) == pytest.approx(min(3540 / 3600, 624 / 738))


def test_border_counts_as_boundary_and_ratio() -> None:
    full = np.ones((10, 10), bool)
    assert mask_to_boundary(full).sum() == 100 - 64  # d = 1: outer ring
    big = np.ones((300, 400), bool)  # diagonal 500
    assert boundary_width(big.shape, 0.02) == 10
    assert mask_to_boundary(big, 0.02).sum() == 300 * 400 - 280 * 380
    assert boundary_width(big.shape, 0.005) == 2  # round(2.5) -> banker's rounding gives 2


def test_binarize_and_errors() -> None:
    raw = np.array([[0, 128], [129, 255]], np.uint8)
    assert binarize_gt(raw).tolist() == [[False, False], [True, True]]
    assert binarize_gt(np.dstack([raw] * 3)).tolist() == [[False, False], [True, True]]
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(_blank(4, 4), _blank(4, 5))
    with pytest.raises(ValueError, match="2-D"):
        boundary_iou(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
