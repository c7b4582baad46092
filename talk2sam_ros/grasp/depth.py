"""Depth images and pinhole cameras for the RGB-D grasp: decode, validate, resize, undistort,
deproject. Pure numpy/OpenCV on plain fields (no ROS types: ``ros/grasp3d_messages.py`` passes
the message fields in), so the node, the demo and the tests share one implementation.

Conventions (REP 103/104 optical frame): x right, y down, z forward along the optical axis, metres.
A depth image holds z (not the distance along the ray), registered to the colour image:
pixel (u, v) of the depth image is pixel (u, v) of the colour image.

Valid readings: finite and inside ``[min_m, max_m]``; 0 (the "no reading" value of ``16UC1``),
NaN and inf never are. Decoded depth is float32 metres with NaN for every invalid reading, so
later stages test validity with ``np.isfinite`` only.

The ``check_*`` functions return ``""`` for usable input, else one line saying what is wrong
(for the node's rate-limited log and its diagnostics counters); the converters raise
:class:`DepthInputError` with that same line.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .status import BAD_CAMERA_INFO, BAD_DEPTH

# encoding -> (dtype, metres per unit). 16UC1 is millimetres (RealSense, OAK-D, Azure Kinect,
# ZED all publish it so); 32FC1 is metres (REP 118).
DEPTH_ENCODINGS: dict[str, tuple[str, float]] = {"16UC1": ("u2", 1e-3), "32FC1": ("f4", 1.0)}
# distortion_model -> numbers of D coefficients accepted (CameraInfo leaves D empty when
# there is no distortion). "equidistant" is OpenCV's fisheye model (k1..k4).
DISTORTION_MODELS: dict[str, tuple[int, ...]] = {
    "plumb_bob": (0, 5), "rational_polynomial": (0, 8, 12, 14), "equidistant": (0, 4),
    "": (0,), "none": (0,)}
MAX_SIDE = 16384  # as for colour images: no depth camera sends more per side
# Relative aspect-ratio difference still taken as "the same" (rounding of odd binned sizes).
ASPECT_TOLERANCE = 0.01


class DepthInputError(ValueError):
    """A depth image or camera model the 3D stage cannot use; the text is the one log line,
    `status` the GraspCandidate.depth_status it leads to (bad_depth or bad_camera_info)."""

    def __init__(self, reason: str, status: str = BAD_DEPTH) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class CameraModel:
    """Intrinsics of the colour camera (sensor_msgs/CameraInfo's K, D, size)."""

    width: int
    height: int
    k: np.ndarray                 # (3, 3) float64
    d: np.ndarray                 # (n,) float64, may be empty
    distortion_model: str = "plumb_bob"

    @property
    def fx(self) -> float:
        return float(self.k[0, 0])

    @property
    def fy(self) -> float:
        return float(self.k[1, 1])

    @property
    def distorted(self) -> bool:
        return bool(self.d.size) and bool(np.any(self.d != 0.0))


def check_camera_fields(width: int, height: int, k: Sequence[float], d: Sequence[float],
                        distortion_model: str) -> str:
    """"" when the CameraInfo fields describe a usable pinhole camera, else the reason."""
    if width <= 0 or height <= 0 or width > MAX_SIDE or height > MAX_SIDE:
        return f"camera_info size {width}x{height} is not a camera image size"
    kk = np.asarray(k, np.float64).ravel()
    if kk.size != 9:
        return f"camera_info K has {kk.size} values, expected 9"
    if not np.isfinite(kk).all():
        return "camera_info K contains NaN or inf"
    fx, skew, cx, zero1, fy, cy, zero2, zero3, one = kk
    if fx <= 0 or fy <= 0:
        return f"camera_info K has focal lengths fx={fx:g}, fy={fy:g} (must be > 0; an " \
               "all-zero K means the camera is not calibrated)"
    if (zero1, zero2, zero3, one) != (0.0, 0.0, 0.0, 1.0):
        return "camera_info K is not an intrinsic matrix (bottom row must be 0 0 1, K[1,0] 0)"
    if not (-width <= cx <= 2 * width and -height <= cy <= 2 * height):
        return f"camera_info principal point ({cx:g}, {cy:g}) is far outside the " \
               f"{width}x{height} image"
    model = distortion_model.strip()
    if model not in DISTORTION_MODELS:
        return f"camera_info distortion_model {model!r} is not supported " \
               f"(supported: {', '.join(m for m in DISTORTION_MODELS if m)})"
    dd = np.asarray(d, np.float64).ravel()
    if dd.size not in DISTORTION_MODELS[model]:
        return f"camera_info D has {dd.size} coefficients; {model or 'no model'} takes " \
               f"{' or '.join(map(str, DISTORTION_MODELS[model]))}"
    if not np.isfinite(dd).all():
        return "camera_info D contains NaN or inf"
    return ""


def camera_from_fields(width: int, height: int, k: Sequence[float], d: Sequence[float],
                       distortion_model: str) -> CameraModel:
    """CameraModel from CameraInfo fields; raises DepthInputError with the reason."""
    reason = check_camera_fields(width, height, k, d, distortion_model)
    if reason:
        raise DepthInputError(reason, BAD_CAMERA_INFO)
    return CameraModel(width=int(width), height=int(height),
                       k=np.asarray(k, np.float64).reshape(3, 3).copy(),
                       d=np.asarray(d, np.float64).ravel().copy(),
                       distortion_model=distortion_model.strip())


def check_camera_matches(camera: CameraModel, width: int, height: int) -> str:
    """"" when `camera` describes the W x H colour image, else the reason. A camera_info of
    another size is rejected (its K would be for other pixels)."""
    if (camera.width, camera.height) != (width, height):
        return f"camera_info is {camera.width}x{camera.height} but the image is " \
               f"{width}x{height}"
    return ""


def check_depth_fields(encoding: str, width: int, height: int, step: int,
                       data_length: int) -> str:
    """"" when the depth Image's fields are well formed, else the reason (O(1))."""
    if encoding not in DEPTH_ENCODINGS:
        return f"depth encoding {encoding!r} is not supported (supported: " \
               f"{', '.join(DEPTH_ENCODINGS)}: 16UC1 millimetres or 32FC1 metres)"
    if width <= 0 or height <= 0:
        return f"empty depth image ({width}x{height})"
    if width > MAX_SIDE or height > MAX_SIDE:
        return f"depth image {width}x{height} exceeds {MAX_SIDE} px per side"
    itemsize = np.dtype(DEPTH_ENCODINGS[encoding][0]).itemsize
    if step < width * itemsize:
        return f"depth step {step} < width*bytes {width * itemsize} ({width}x{height} " \
               f"{encoding})"
    if step % itemsize:
        return f"depth step {step} is not a multiple of {itemsize} bytes ({encoding})"
    if data_length != step * height:
        return f"depth data has {data_length} bytes, expected step*height = {step * height} " \
               f"({width}x{height} {encoding}, step {step})"
    return ""


def check_depth_range(min_m: float, max_m: float) -> str:
    """"" when [min_m, max_m] is a usable range of valid depth, else the reason."""
    if not (math.isfinite(min_m) and math.isfinite(max_m) and 0.0 <= min_m < max_m):
        return f"depth range [{min_m}, {max_m}] m must be finite with 0 <= min < max"
    return ""


def valid_depth(depth_m: np.ndarray, min_m: float, max_m: float) -> np.ndarray:
    """Bool mask of the valid readings of a float depth map in metres (the one validity rule)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(depth_m) & (depth_m >= min_m) & (depth_m <= max_m)


def decode_depth(encoding: str, width: int, height: int, step: int, is_bigendian: bool,
                 data: bytes | bytearray | memoryview | np.ndarray, min_m: float,
                 max_m: float) -> np.ndarray:
    """(H, W) float32 metres from raw depth Image fields; NaN for every invalid reading.

    Handles a padded ``step`` and either byte order. Raises DepthInputError for malformed
    fields and for an image with no valid reading at all.
    """
    buffer = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) \
        else data.view(np.uint8).ravel()
    reason = check_depth_fields(encoding, width, height, step, buffer.size) or \
        check_depth_range(min_m, max_m)
    if reason:
        raise DepthInputError(reason)
    code, scale = DEPTH_ENCODINGS[encoding]
    dtype = np.dtype(code).newbyteorder(">" if is_bigendian else "<")
    rows = buffer.reshape(height, step)[:, : width * dtype.itemsize]
    raw = rows.view(dtype).reshape(height, width)
    depth = raw.astype(np.float32) * np.float32(scale)
    depth[~valid_depth(depth, min_m, max_m)] = np.nan
    reason = check_depth_values(depth)
    if reason:
        raise DepthInputError(reason + f" (valid range [{min_m:g}, {max_m:g}] m)")
    return depth


def check_depth_values(depth_m: np.ndarray) -> str:
    """"" when a decoded depth map has at least one valid reading, else the reason."""
    if not np.isfinite(depth_m).any():
        return "depth image has no valid reading (all 0, NaN, inf or out of range)"
    return ""


def encode_depth(depth_m: np.ndarray, encoding: str) -> np.ndarray:
    """Inverse of the decoding for synthetic scenes and tests: float metres (NaN = no reading)
    -> uint16 millimetres (0 = no reading) or float32 metres."""
    if encoding == "16UC1":
        mm = np.where(np.isfinite(depth_m), np.round(depth_m * 1000.0), 0.0)
        return np.clip(mm, 0, 65535).astype(np.uint16)
    if encoding == "32FC1":
        return np.asarray(depth_m, np.float32)
    raise DepthInputError(f"depth encoding {encoding!r} is not supported "
                          f"(supported: {', '.join(DEPTH_ENCODINGS)})")


def check_depth_size(depth_width: int, depth_height: int, width: int, height: int) -> str:
    """"" when a depth image of that size can be registered to the W x H colour image (same
    size, or the same aspect ratio: resized), else the reason."""
    if (depth_width, depth_height) == (width, height):
        return ""
    if depth_width <= 0 or depth_height <= 0 or width <= 0 or height <= 0:
        return f"depth {depth_width}x{depth_height} or image {width}x{height} is empty"
    ratio = (depth_width / depth_height) / (width / height)
    if abs(ratio - 1.0) > ASPECT_TOLERANCE:
        return f"depth is {depth_width}x{depth_height} but the image is {width}x{height} " \
               "(another aspect ratio: not registered to the colour image?)"
    return ""


def match_depth_to_image(depth_m: np.ndarray, width: int, height: int) -> np.ndarray:
    """Depth resized (nearest: no invented readings between a cable and its background) to
    the W x H colour image; raises DepthInputError when the aspect ratios differ."""
    h, w = depth_m.shape
    reason = check_depth_size(w, h, width, height)
    if reason:
        raise DepthInputError(reason)
    if (w, h) == (width, height):
        return depth_m
    return cv2.resize(depth_m, (width, height), interpolation=cv2.INTER_NEAREST)


# Undistortion: iterate until 1e-10 (normalised units) instead of OpenCV's 5 fixed
# iterations, which leave ~0.1 px error at the corners of wide-angle lenses.
_UNDISTORT_CRITERIA = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 50, 1e-10)


def normalized_coordinates(camera: CameraModel, pixels: np.ndarray) -> np.ndarray:
    """(N, 2) float64 undistorted normalised image coordinates (x/z, y/z) of (N, 2) pixels
    (x = column, y = row) of the distorted image."""
    pts = np.asarray(pixels, np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return pts
    if not camera.distorted:
        # K's skew term: x = (u - cx - s * y) / fx
        y = (pts[:, 1] - camera.k[1, 2]) / camera.fy
        x = (pts[:, 0] - camera.k[0, 2] - camera.k[0, 1] * y) / camera.fx
        return np.stack([x, y], axis=1)
    src = pts.reshape(-1, 1, 2)
    if camera.distortion_model == "equidistant":
        out = cv2.fisheye.undistortPoints(src, camera.k, camera.d, criteria=_UNDISTORT_CRITERIA)
    else:
        out = cv2.undistortPointsIter(src, camera.k, camera.d, None, None, _UNDISTORT_CRITERIA)
    return out.reshape(-1, 2).astype(np.float64)


def rays(camera: CameraModel, pixels: np.ndarray) -> np.ndarray:
    """(N, 3) float64 viewing rays (x/z, y/z, 1) of (N, 2) pixels: point = ray * depth."""
    xy = normalized_coordinates(camera, pixels)
    return np.concatenate([xy, np.ones((len(xy), 1))], axis=1)


def deproject(camera: CameraModel, pixels: np.ndarray, z: np.ndarray) -> np.ndarray:
    """(N, 3) float64 points in the optical frame, metres, of (N, 2) pixels at depths z (N,)."""
    return rays(camera, pixels) * np.asarray(z, np.float64).reshape(-1, 1)


def project(camera: CameraModel, points: np.ndarray) -> np.ndarray:
    """(N, 2) float64 pixels of (N, 3) optical-frame points (with the camera's distortion)."""
    pts = np.asarray(points, np.float64).reshape(-1, 1, 3)
    if len(pts) == 0:
        return np.zeros((0, 2))
    zero = np.zeros(3)
    if camera.distortion_model == "equidistant":
        out, _ = cv2.fisheye.projectPoints(pts, zero, zero, camera.k, camera.d)
    else:
        out, _ = cv2.projectPoints(pts, zero, zero, camera.k, camera.d)
    return out.reshape(-1, 2)


def disk_offsets(radius_px: float) -> np.ndarray:
    """(M, 2) int (dx, dy) offsets of the pixels within `radius_px` of a pixel (incl. itself)."""
    r = max(0, int(math.floor(radius_px)))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    inside = dx * dx + dy * dy <= radius_px * radius_px + 1e-9
    return np.stack([dx[inside], dy[inside]], axis=1)


def depth_near(depth_m: np.ndarray, mask: np.ndarray, pixels: np.ndarray,
               radius_px: float) -> tuple[np.ndarray, np.ndarray]:
    """Robust depth at each of (N, 2) pixels: the median of the valid readings inside `mask`
    within `radius_px`. Returns (depth (N,) float64, NaN where none; count (N,) of readings).
    Vectorised: N * (disk size) samples, no loop over pixels."""
    pts = np.rint(np.asarray(pixels, np.float64).reshape(-1, 2)).astype(np.int64)
    offsets = disk_offsets(radius_px)
    h, w = depth_m.shape
    xs = pts[:, None, 0] + offsets[None, :, 0]
    ys = pts[:, None, 1] + offsets[None, :, 1]
    inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    xs, ys = np.clip(xs, 0, w - 1), np.clip(ys, 0, h - 1)
    samples = depth_m[ys, xs].astype(np.float64)
    samples[~(inside & mask[ys, xs])] = np.nan
    count = np.isfinite(samples).sum(axis=1)
    # median of the finite samples per row: np.sort puts NaN last, so the valid ones are the
    # first `count` (np.nanmedian's masked-array path is 10x slower on these small rows)
    ordered = np.sort(samples, axis=1)
    rows = np.arange(len(pts))
    lo, hi = np.maximum(count - 1, 0) // 2, np.maximum(count, 1) // 2
    median = 0.5 * (ordered[rows, lo] + ordered[rows, hi])
    median[count == 0] = np.nan
    return median, count
