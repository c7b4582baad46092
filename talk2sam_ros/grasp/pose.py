"""From the pixel grasp to a 3D grasp pose in the camera's optical frame (see docs/grasp.md).

Gripper convention (a parallel-jaw gripper; frame columns of the rotation):

* **z, approach**: towards the surface, away from the camera: the normal of a plane fitted
  (robustly, to all valid depth within ``plane_radius_m`` in 3D) around the grasp point; when
  the fit is impossible, narrower than ``min_plane_spread_m`` (a lone wire) or more oblique
  than ``max_tilt_deg`` to the viewing ray, the viewing ray itself (``approach_from == "ray"``).
* **y, along the object**: the 3D centreline tangent at the point, made perpendicular to z,
  pointing the way the pixel ``angle`` points (image right, or down for a vertical line).
* **x = y cross z, closing**: across the object, perpendicular to its 3D tangent; the jaws
  close along +-x. A parallel gripper is symmetric, so (x, y) and (-x, -y) grasp alike.

Position: the grasp pixel deprojected with K (undistorted) at the median of the valid depth
inside the mask within ``depth_radius_px``. If there is none, the nearest centreline point
that has depth is used and reported (``depth_pixel``, ``point_shift_px``). The position is on
the visible surface; a round cable's axis lies ``width_m / 2`` further along z.

Width in metres: the spread along x of the mask pixels around the point, intersected with the
local surface plane (sqrt(12) * standard deviation: the width of a uniform strip).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy.spatial.transform import Rotation

from .status import NO_GRASP, NO_VALID_DEPTH, NO_VALID_DEPTH_NEAR_POINT, OK
from .depth import CameraModel, deproject, depth_near, rays
from .pixel import Grasp


@dataclass(frozen=True)
class Grasp3DConfig:
    """How the 3D grasp is computed from depth (see the module docstring)."""

    depth_radius_px: float = 0.0      # readings pooled per point; 0 = max(2, width_px / 2)
    plane_radius_m: float = 0.02      # support plane fitted to depth this far around the point
    plane_max_radius_px: int = 40     # ... capped in pixels (far objects, cost)
    plane_max_points: int = 1500      # the window is subsampled to about this many points
    min_plane_points: int = 12        # fewer valid readings: approach along the viewing ray
    min_plane_spread_m: float = 0.002  # inliers narrower than this (a lone wire): the ray
    plane_inlier_m: float = 0.003     # residual floor of the robust (re-weighted) fit
    max_tilt_deg: float = 75.0        # planes more oblique to the ray are not trusted
    max_point_shift_px: float = 0.0   # the nearest centreline point with depth; 0 = any

    def __post_init__(self) -> None:
        if self.depth_radius_px < 0 or self.max_point_shift_px < 0:
            raise ValueError("depth_radius_px and max_point_shift_px must be >= 0")
        if not self.plane_radius_m > 0 or not self.plane_inlier_m > 0 or \
                self.min_plane_spread_m < 0:
            raise ValueError("plane_radius_m and plane_inlier_m must be > 0, "
                             "min_plane_spread_m >= 0")
        if self.plane_max_radius_px < 1 or self.plane_max_points < 3 or \
                self.min_plane_points < 3:
            raise ValueError("plane_max_radius_px >= 1, plane_max_points and "
                             "min_plane_points >= 3 required")
        if not 0.0 < self.max_tilt_deg < 90.0:
            raise ValueError(f"max_tilt_deg must be in (0, 90), got {self.max_tilt_deg}")


def _empty3() -> np.ndarray:
    return np.zeros((0, 3), np.float32)


@dataclass(frozen=True)
class Grasp3D:
    """The 3D side of one grasp, optical frame of the colour camera, metres."""

    status: str
    reason: str = ""
    position: np.ndarray = field(default_factory=lambda: np.zeros(3))
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))  # columns x, y, z
    quaternion: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)  # x, y, z, w
    width_m: float = 0.0
    centerline: np.ndarray = field(default_factory=_empty3)   # (M, 3) float32
    centerline_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    valid_depth_fraction: float = 0.0
    depth_pixel: tuple[float, float] = (0.0, 0.0)   # pixel whose depth gave the position
    point_shift_px: float = 0.0                     # its distance from the pixel grasp point
    approach_from: str = ""                         # "plane" or "ray"

    @property
    def ok(self) -> bool:
        return self.status == OK


def not_available(status: str, reason: str = "") -> Grasp3D:
    """A Grasp3D without a pose, e.g. for a frame without paired depth (status from pairing)."""
    return Grasp3D(status=status, reason=reason)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


class PlaneFit(NamedTuple):
    """A plane fitted to points: through `centroid` with unit `normal`."""

    centroid: np.ndarray
    normal: np.ndarray
    inliers: int
    spread: float   # standard deviation of the inliers along the plane's narrower direction


def fit_plane(points: np.ndarray, inlier_m: float, hypotheses: int = 64, refits: int = 3
              ) -> PlaneFit | None:
    """Robust plane through (N, 3) points, or None when there is none (fewer than 3
    points, collinear).

    RANSAC (as Open3D's segment_plane, vectorised: `hypotheses` planes through 3 points of a
    fixed-seed draw, the one with most points within inlier_m wins), then least-squares
    refits to the points within max(inlier_m, 3 robust sigmas). So a cable lying on a
    table, a box beside it or a table edge does not tilt the table's plane.
    """
    points = np.asarray(points, np.float64).reshape(-1, 3)
    if len(points) < 3:
        return None
    rng = np.random.default_rng(0)  # deterministic: the same depth gives the same pose
    sample = rng.integers(0, len(points), (hypotheses, 3))
    p0, p1, p2 = points[sample[:, 0]], points[sample[:, 1]], points[sample[:, 2]]
    normals = np.cross(p1 - p0, p2 - p0)
    norms = np.linalg.norm(normals, axis=1)
    good = norms > 1e-12
    if not good.any():
        return None
    normals, p0 = normals[good] / norms[good, None], p0[good]
    residual = np.abs(points @ normals.T - np.sum(p0 * normals, axis=1))
    inliers = residual[:, int(np.argmax((residual <= inlier_m).sum(axis=0)))] <= inlier_m
    sel, centroid, normal, values = points, np.zeros(3), np.zeros(3), np.zeros(3)
    for _ in range(refits):
        if inliers.sum() < 3:
            return None
        sel = points[inliers]
        centroid = sel.mean(axis=0)
        offsets = sel - centroid
        # least squares = smallest eigenvector of the 3x3 scatter (cheaper than an N x 3 SVD)
        values, vectors = np.linalg.eigh(offsets.T @ offsets)
        if values[1] <= 1e-12 * max(values[2], 1e-24):
            return None  # collinear: no plane
        normal = vectors[:, 0]
        residual = np.abs((points - centroid) @ normal)
        sigma = 1.4826 * float(np.median(residual[inliers]))
        inliers = residual <= max(inlier_m, 3.0 * sigma)
    spread = math.sqrt(max(float(values[1]), 0.0) / max(len(sel), 1))
    return PlaneFit(centroid, normal, int(inliers.sum()), spread)


def _window_points(depth_m: np.ndarray, camera: CameraModel, center: np.ndarray,
                   radius_px: int, max_points: int) -> np.ndarray:
    """Valid depth in the square window around `center`, subsampled, deprojected (N, 3)."""
    h, w = depth_m.shape
    cx, cy = int(round(center[0])), int(round(center[1]))
    x0, x1 = max(0, cx - radius_px), min(w, cx + radius_px + 1)
    y0, y1 = max(0, cy - radius_px), min(h, cy + radius_px + 1)
    side = max(x1 - x0, y1 - y0, 1)
    stride = max(1, int(math.ceil(side / math.sqrt(max_points))))
    patch = depth_m[y0:y1:stride, x0:x1:stride]
    ys, xs = np.nonzero(np.isfinite(patch))
    pixels = np.stack([x0 + xs * stride, y0 + ys * stride], axis=1)
    return deproject(camera, pixels, patch[ys, xs])


def _approach(depth_m: np.ndarray, camera: CameraModel, pixel: np.ndarray,
              position: np.ndarray, config: Grasp3DConfig) -> tuple[np.ndarray, str]:
    """Unit approach axis (away from the camera) and where it came from ("plane"/"ray")."""
    view = _unit(position)
    radius = int(np.clip(round(config.plane_radius_m * camera.fx / position[2]), 3,
                         config.plane_max_radius_px))
    points = _window_points(depth_m, camera, pixel, radius, config.plane_max_points)
    # only the surface around the point: a wall far behind a hanging cable is no support
    points = points[np.linalg.norm(points - position, axis=1) <= config.plane_radius_m]
    if len(points) >= config.min_plane_points:
        fit = fit_plane(points, config.plane_inlier_m)
        if fit is not None and fit.inliers >= config.min_plane_points and \
                fit.spread >= config.min_plane_spread_m:
            normal = fit.normal if fit.normal @ view >= 0 else -fit.normal
            tilt = math.degrees(math.acos(float(np.clip(normal @ view, -1.0, 1.0))))
            if tilt <= config.max_tilt_deg:
                return normal, "plane"
    return view, "ray"


def _on_plane(camera: CameraModel, pixels: np.ndarray, origin: np.ndarray,
              normal: np.ndarray) -> np.ndarray:
    """(N, 3) intersections of the rays of (N, 2) pixels with the plane (origin, normal)."""
    r = rays(camera, pixels)
    return r * ((origin @ normal) / (r @ normal))[:, None]


def _image_direction(centerline: np.ndarray, index: int, reach_px: float) -> np.ndarray:
    """Unit image direction of the (ordered) pixel centreline at `index`, the chord between
    the points `reach_px` before and after it, folded to point right (or down)."""
    s = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(centerline, axis=0), axis=1))]
    lo = int(np.searchsorted(s, s[index] - reach_px, side="left"))
    hi = min(int(np.searchsorted(s, s[index] + reach_px, side="right")), len(s) - 1)
    lo, hi = (lo, hi) if hi > lo else (max(0, index - 1), min(len(s) - 1, index + 1))
    d = centerline[hi] - centerline[lo]
    angle = math.atan2(float(d[1]), float(d[0]))
    angle = (angle + math.pi / 2.0) % math.pi - math.pi / 2.0
    return np.array([math.cos(angle), math.sin(angle)])


def _width_on_plane(mask: np.ndarray, camera: CameraModel, pixel: np.ndarray,
                    direction: np.ndarray, width_px: float, position: np.ndarray,
                    x_axis: np.ndarray, y_axis: np.ndarray, z_axis: np.ndarray,
                    half_length_m: float) -> float:
    """Object width (m) across x at the point, measured on the local surface plane.

    The mask pixels of a slab |y| <= half_length_m around the point are intersected with the
    plane, and their spread across the object gives the width: a strip sampled by pixels has
    a uniform cross-section, whose width is sqrt(12) * standard deviation. Unlike the pixel
    width (2 * distance transform - 1, 1 px low for even pixel counts), this is unbiased to a
    fraction of a pixel, which is 25 % of a 4 px cable. Fallback: the pixel width's two edges
    intersected with the plane.
    """
    across = np.array([-direction[1], direction[0]]) * (width_px / 2.0)
    edges = _on_plane(camera, np.stack([pixel - across, pixel + across]), position, z_axis)
    edge_width = abs(float((edges[1] - edges[0]) @ x_axis))
    h, w = mask.shape
    r = int(math.ceil(max(3.0, 1.5 * width_px)))
    cx, cy = int(round(pixel[0])), int(round(pixel[1]))
    x0, y0 = max(0, cx - r), max(0, cy - r)
    ys, xs = np.nonzero(mask[y0:min(h, cy + r + 1), x0:min(w, cx + r + 1)])
    if len(xs) < 3:
        return edge_width
    points = _on_plane(camera, np.stack([xs + x0, ys + y0], axis=1), position, z_axis)
    a, b = (points - position) @ x_axis, (points - position) @ y_axis
    a = a[(np.abs(b) <= half_length_m) & (np.abs(a) <= 1.5 * max(edge_width, 1e-6))]
    return math.sqrt(12.0) * float(a.std()) if len(a) >= 3 else edge_width


def jaw_outline(width_m: float) -> np.ndarray:
    """(2K, 3) segments of a parallel-jaw gripper in the grasp frame (pairs of points):
    fingers at x = +-(opening / 2) reaching just past the surface (z > 0), palm and wrist
    behind (z < 0). The markers and the figure draw the same shape."""
    opening = 1.3 * width_m + 0.01
    finger = max(0.03, 2.0 * width_m)
    half, tip, palm = opening / 2.0, 0.2 * width_m + 0.002, -finger
    return np.array([
        [-half, 0, tip], [-half, 0, palm], [half, 0, tip], [half, 0, palm],   # fingers
        [-half, 0, palm], [half, 0, palm],                                   # palm
        [0, 0, palm], [0, 0, palm - 0.02],                                   # wrist
    ], np.float64)


def mask_depth_fraction(mask: np.ndarray, depth_m: np.ndarray) -> float:
    """Fraction of the mask's pixels that have a valid depth reading (0 for an empty mask)."""
    area = int(np.count_nonzero(mask))
    return float(np.count_nonzero(mask & np.isfinite(depth_m))) / area if area else 0.0


def grasp_pose_from_depth(mask: np.ndarray, grasp: Grasp, depth_m: np.ndarray,
                          camera: CameraModel, config: Grasp3DConfig = Grasp3DConfig()
                          ) -> Grasp3D:
    """The 3D grasp of `grasp` (from :func:`grasp_from_mask` on `mask`).

    mask: (H, W) bool, the mask the pixel grasp was computed on. depth_m: (H, W) float32
    metres registered to it, NaN = invalid (``decode_depth`` + ``match_depth_to_image``).
    camera: the colour camera, W x H. Raises ValueError when the sizes differ (the caller
    checks them first with ``check_depth_size``/``check_camera_matches``).
    """
    mask = np.asarray(mask, bool)
    if mask.shape != depth_m.shape or mask.shape != (camera.height, camera.width):
        raise ValueError(f"mask {mask.shape[::-1]}, depth {depth_m.shape[::-1]} and camera "
                         f"{camera.width}x{camera.height} sizes differ")
    fraction = mask_depth_fraction(mask, depth_m)
    if not grasp.valid:
        return Grasp3D(status=NO_GRASP, reason=grasp.reason, valid_depth_fraction=fraction)
    if fraction == 0.0:
        return Grasp3D(status=NO_VALID_DEPTH, reason="no valid depth reading on the mask",
                       valid_depth_fraction=fraction)
    radius = config.depth_radius_px or max(2.0, grasp.width_px / 2.0)
    line_px = np.asarray(grasp.centerline, np.float64).reshape(-1, 2)
    line_z, _ = depth_near(depth_m, mask, line_px, radius)
    has_z = np.isfinite(line_z)
    index = np.flatnonzero(has_z).astype(np.int32)
    line_3d = deproject(camera, line_px[has_z], line_z[has_z]).astype(np.float32)
    point = np.asarray(grasp.point, np.float64)
    z, _ = depth_near(depth_m, mask, point[None], radius)
    direction = np.array([math.cos(grasp.angle), math.sin(grasp.angle)])
    if np.isfinite(z[0]):
        pixel, depth, shift = point, float(z[0]), 0.0
    else:
        dist = np.linalg.norm(line_px - point, axis=1)
        dist[~has_z] = np.inf
        best = int(np.argmin(dist)) if len(dist) else -1
        limit = config.max_point_shift_px or np.inf
        if best < 0 or not np.isfinite(dist[best]) or not dist[best] <= limit:
            return Grasp3D(status=NO_VALID_DEPTH_NEAR_POINT,
                           reason="no valid depth at the grasp point nor on the centreline"
                                  + ("" if limit == np.inf else f" within {limit:g} px"),
                           centerline=line_3d, centerline_index=index,
                           valid_depth_fraction=fraction)
        pixel, depth, shift = line_px[best], float(line_z[best]), float(dist[best])
        direction = _image_direction(line_px, best, max(3.0, grasp.width_px))
    position = deproject(camera, pixel[None], np.array([depth]))[0]
    z_axis, source = _approach(depth_m, camera, pixel, position, config)
    reach = max(3.0, grasp.width_px)
    ends = _on_plane(camera, np.stack([pixel - reach * direction, pixel + reach * direction]),
                     position, z_axis)
    tangent = ends[1] - ends[0]
    y_axis = _unit(tangent - (tangent @ z_axis) * z_axis)
    x_axis = np.cross(y_axis, z_axis)
    width = _width_on_plane(mask, camera, pixel, direction, grasp.width_px, position,
                            x_axis, y_axis, z_axis, float(np.linalg.norm(tangent)) / 2.0)
    rotation = np.stack([x_axis, y_axis, z_axis], axis=1)
    quat = Rotation.from_matrix(rotation).as_quat()
    return Grasp3D(status=OK, position=position, rotation=rotation,
                   quaternion=tuple(float(q) for q in quat / np.linalg.norm(quat)),
                   width_m=width, centerline=line_3d, centerline_index=index,
                   valid_depth_fraction=fraction,
                   depth_pixel=(float(pixel[0]), float(pixel[1])), point_shift_px=shift,
                   approach_from=source)
