"""The object's points for a planner's collision scene: masked pixels with valid depth,
deprojected, subsampled evenly to at most ``max_points`` (deterministic, no RNG)."""
from __future__ import annotations

import numpy as np

from .depth import CameraModel, deproject


def object_points(mask: np.ndarray, depth_m: np.ndarray, camera: CameraModel, max_points: int,
                  rgb: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, 3) float32 optical-frame points in metres of the mask's pixels with valid depth,
    N <= max_points, and their (N, 3) uint8 RGB colours when `rgb` (H, W, 3) is given.

    Only the kept pixels are undistorted, so the cost follows max_points, not the mask area.
    """
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    flat = np.flatnonzero(np.asarray(mask, bool) & np.isfinite(depth_m))
    if len(flat) > max_points:
        flat = flat[np.linspace(0, len(flat) - 1, max_points).round().astype(np.int64)]
    ys, xs = np.divmod(flat, depth_m.shape[1])
    pixels = np.stack([xs, ys], axis=1)
    points = deproject(camera, pixels, depth_m[ys, xs]).astype(np.float32)
    colours = None if rgb is None else np.ascontiguousarray(rgb[ys, xs, :3], np.uint8)
    return points, colours
