"""XYXY box validation in source pixels (numpy only): shared by the model's transforms and the
node's torch-free prompt conversion, so both accept exactly the same boxes."""
from __future__ import annotations

import numpy as np


def check_boxes(boxes: object, original_size: tuple[int, int]) -> np.ndarray:
    """Validate XYXY source-pixel boxes, (4,) or (N, 4); return (N, 4) float32 clipped to the
    image. Raises ValueError on bad shapes, non-finite values or empty boxes."""
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"boxes must be numbers of shape (N, 4) XYXY: {exc}") from None
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4 or arr.shape[0] == 0:
        raise ValueError(f"boxes must have shape (N, 4) XYXY with N >= 1, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("boxes contain NaN or inf")
    h, w = original_size
    out = arr.copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    bad = (out[:, 2] <= out[:, 0]) | (out[:, 3] <= out[:, 1])
    if np.any(bad):
        raise ValueError(
            f"boxes {arr[bad].tolist()} are empty or inverted after clipping to the "
            f"{w}x{h} image (need x1 > x0 and y1 > y0)"
        )
    return out.astype(np.float32)
