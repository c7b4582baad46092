"""Segmentation metrics shared by evaluation, training validation and the benchmark.

Pure numpy/OpenCV, no torch and no ROS. Masks are H x W arrays; ``bool`` is used as is, any other
dtype counts non-zero as foreground. Raw 0..255 ground truth must be binarised first with
:func:`binarize_gt` (``> 128``, the SAM-HQ convention); predictions come from ``logits > 0``.

Definitions follow SAM-HQ's evaluation (``train/utils/misc.py``), which the Talk2SAM paper
compares against:

* ``mask_iou`` = |G & P| / |G | P|.
* ``boundary_iou`` = |Gb & Pb| / |Gb | Pb| where Xb is the inner boundary band of X of width
  ``d = max(1, round(dilation_ratio * sqrt(H^2 + W^2)))`` obtained by eroding X (zero-padded by one
  pixel, so the image border counts as boundary) d times with a 3x3 kernel. This is the *pure*
  boundary IoU of SAM-HQ, not the boundary-iou-api COCO score ``min(mask IoU, boundary IoU)``;
  :func:`boundary_iou_coco` gives the latter.

Both-empty case (documented decision): SAM-HQ divides by zero and yields NaN. Here an empty union
means the prediction agrees perfectly with an empty ground truth, so both functions return 1.0
(a non-empty prediction on an empty GT, or the reverse, gives 0.0). Pass ``empty=float('nan')``
to get SAM-HQ's behaviour (``nan``-aware means then skip those images).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = [
    "binarize_gt",
    "boundary_iou",
    "boundary_iou_coco",
    "boundary_width",
    "mask_iou",
    "mask_to_boundary",
]

GT_THRESHOLD = 128  # SAM-HQ: gt > 128 is foreground


def _as_bool(mask: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D H x W mask, got shape {arr.shape}")
    return arr if arr.dtype == np.bool_ else arr != 0


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    g, p = _as_bool(gt, "gt"), _as_bool(pred, "pred")
    if g.shape != p.shape:
        raise ValueError(f"gt and pred shapes differ: {g.shape} vs {p.shape}")
    return g, p


def binarize_gt(gt: np.ndarray, threshold: int = GT_THRESHOLD) -> np.ndarray:
    """H x W (or H x W x C: first channel) 0..255 ground truth -> bool ``gt > threshold``."""
    arr = np.asarray(gt)
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.dtype == np.bool_:
        return arr
    return arr > threshold


def _ratio(inter: int, union: int, empty: float) -> float:
    return empty if union == 0 else inter / union


def mask_iou(gt: np.ndarray, pred: np.ndarray, empty: float = 1.0) -> float:
    """Intersection over union of two H x W masks; ``empty`` when both are empty."""
    g, p = _check_pair(gt, pred)
    return _ratio(int(np.count_nonzero(g & p)), int(np.count_nonzero(g | p)), empty)


def boundary_width(shape: tuple[int, int], dilation_ratio: float = 0.02) -> int:
    """Band width d in pixels for an H x W image: max(1, round(ratio * diagonal))."""
    h, w = shape
    return max(1, int(round(dilation_ratio * math.sqrt(h * h + w * w))))


def mask_to_boundary(mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """Inner boundary band of ``mask`` (bool H x W), as in boundary-iou-api / SAM-HQ."""
    m = _as_bool(mask, "mask").astype(np.uint8)
    h, w = m.shape
    d = boundary_width((h, w), dilation_ratio)
    padded = cv2.copyMakeBorder(m, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1:h + 1, 1:w + 1]
    return (m - eroded).astype(bool)


def boundary_iou(gt: np.ndarray, pred: np.ndarray, dilation_ratio: float = 0.02,
                 empty: float = 1.0) -> float:
    """SAM-HQ boundary IoU of two H x W masks (band width from ``dilation_ratio``)."""
    g, p = _check_pair(gt, pred)
    gb, pb = mask_to_boundary(g, dilation_ratio), mask_to_boundary(p, dilation_ratio)
    return _ratio(int(np.count_nonzero(gb & pb)), int(np.count_nonzero(gb | pb)), empty)


def boundary_iou_coco(gt: np.ndarray, pred: np.ndarray, dilation_ratio: float = 0.02,
                      empty: float = 1.0) -> float:
    """boundary-iou-api's per-pair score: min(mask IoU, boundary IoU)."""
    return min(mask_iou(gt, pred, empty), boundary_iou(gt, pred, dilation_ratio, empty))
