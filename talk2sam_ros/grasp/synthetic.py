"""Synthetic RGB-D scenes with exact ground truth for the 3D grasp: a flat cable (a ribbon of
known width) drawn on a plane at a known pose in front of a pinhole camera with known
intrinsics (optionally plumb_bob distortion), with holes and noise in the depth, in either
depth encoding.

Every pixel is ray-cast: its (undistorted) viewing ray meets the plane at depth z, and the
pixel belongs to the cable when that point lies within width/2 of the cable's centreline in
plane coordinates. So mask, colour and depth agree to the pixel, and the ground truth
(plane, 3D centreline, tangent, width) is exact, not re-measured from the image.

Used by the tests, the demo's RGB-D scenes and ``talk2sam-bench``; numpy/scipy/OpenCV only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from .depth import CameraModel, camera_from_fields, decode_depth, encode_depth, rays

SHAPES = ("straight", "sine", "arc")


@dataclass(frozen=True)
class SceneSpec:
    """One scene. Plane: through (0, 0, distance_m), normal tilted by tilt_deg about an image
    axis at tilt_axis_deg from the camera x axis. Cable: centred at center_uv on the plane."""

    width: int = 640
    height: int = 480
    fx: float = 600.0
    fy: float = 600.0
    distortion: tuple[float, ...] = ()        # plumb_bob k1 k2 p1 p2 k3, or empty
    distance_m: float = 0.6
    tilt_deg: float = 0.0
    tilt_axis_deg: float = 0.0
    shape: str = "straight"
    length_m: float = 0.3
    width_m: float = 0.012
    heading_deg: float = 20.0                 # cable direction on the plane
    amplitude_m: float = 0.03                 # sine: lateral amplitude; arc: sagitta
    center_uv: tuple[float, float] = (0.0, 0.0)
    noise_m: float = 0.0                      # Gaussian depth noise, sigma
    hole_fraction: float = 0.0                # about this much of the image gets no reading
    encoding: str = "32FC1"                   # or 16UC1 (millimetres, so quantised to 1 mm)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, got {self.shape!r}")
        if not 0.0 <= self.hole_fraction < 1.0 or self.noise_m < 0:
            raise ValueError("hole_fraction must be in [0, 1) and noise_m >= 0")
        if not 0.0 <= abs(self.tilt_deg) < 80.0:
            raise ValueError("|tilt_deg| must be < 80")


@dataclass(frozen=True)
class RGBDScene:
    """A rendered scene and its ground truth (optical frame of the camera, metres)."""

    spec: SceneSpec
    camera: CameraModel
    rgb: np.ndarray              # (H, W, 3) uint8
    mask: np.ndarray             # (H, W) bool, the cable
    depth_m: np.ndarray          # (H, W) float32, NaN = no reading (after noise/holes/encoding)
    depth_raw: np.ndarray        # (H, W) in `encoding`: uint16 mm (0 = none) or float32 m
    plane_point: np.ndarray      # (3,)
    plane_normal: np.ndarray     # (3,) unit, pointing away from the camera
    centerline: np.ndarray       # (M, 3) dense ground-truth centreline on the plane
    tangents: np.ndarray         # (M, 3) unit tangents of it

    @property
    def encoding(self) -> str:
        return self.spec.encoding

    def nearest_on_centerline(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distances (N,) of (N, 3) points to the ground-truth centreline and the tangent
        (N, 3) there."""
        dist, idx = cKDTree(self.centerline).query(np.asarray(points, np.float64).reshape(-1, 3))
        return dist, self.tangents[idx]


def _curve_uv(spec: SceneSpec, samples: int) -> np.ndarray:
    """(samples, 2) centreline in plane coordinates, evenly spaced in its parameter."""
    s = np.linspace(-0.5, 0.5, samples) * spec.length_m
    if spec.shape == "straight":
        lateral = np.zeros_like(s)
    elif spec.shape == "sine":
        lateral = spec.amplitude_m * np.sin(2 * np.pi * s / (spec.length_m / 1.5))
    else:
        lateral = spec.amplitude_m * (1.0 - (2.0 * s / spec.length_m) ** 2)
    h = math.radians(spec.heading_deg)
    along, across = np.array([math.cos(h), math.sin(h)]), np.array([-math.sin(h), math.cos(h)])
    return np.asarray(spec.center_uv) + s[:, None] * along + lateral[:, None] * across


def _holes(rng: np.random.Generator, h: int, w: int, fraction: float) -> np.ndarray:
    """Bool (H, W) of round blobs covering about `fraction` of the image (bounded tries)."""
    holes = np.zeros((h, w), bool)
    if fraction <= 0:
        return holes
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(1000):
        if holes.mean() >= fraction:
            break
        r = rng.uniform(2, 0.04 * min(h, w))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        holes |= (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    return holes


def render_scene(spec: SceneSpec = SceneSpec()) -> RGBDScene:
    """Ray-cast `spec` (see the module docstring); deterministic for a given spec."""
    rng = np.random.default_rng(spec.seed)
    w, h = spec.width, spec.height
    k = [spec.fx, 0.0, (w - 1) / 2.0, 0.0, spec.fy, (h - 1) / 2.0, 0.0, 0.0, 1.0]
    camera = camera_from_fields(w, h, k, list(spec.distortion),
                                "plumb_bob" if spec.distortion else "")
    axis = math.radians(spec.tilt_axis_deg)
    tilt_axis = np.array([math.cos(axis), math.sin(axis), 0.0])
    turn = Rotation.from_rotvec(math.radians(spec.tilt_deg) * tilt_axis)
    e1, e2, normal = turn.apply(np.eye(3))  # plane axes u, v and the normal (away from camera)
    origin = np.array([0.0, 0.0, spec.distance_m])

    yy, xx = np.mgrid[0:h, 0:w]
    ray = rays(camera, np.stack([xx.ravel(), yy.ravel()], axis=1))
    t = (origin @ normal) / (ray @ normal)
    hit = ray * t[:, None]
    offset = hit - origin
    uv = np.stack([offset @ e1, offset @ e2], axis=1)

    samples = max(200, int(spec.length_m / 1e-4))
    curve = _curve_uv(spec, samples)
    dist, _ = cKDTree(curve).query(uv, distance_upper_bound=spec.width_m)
    dist = dist.reshape(h, w)
    mask = dist < spec.width_m / 2.0

    # colour: a textured plane, a darker cable with a lighter centre (cylinder-like shading)
    shade = 0.5 + 0.25 * np.sin(uv[:, 0] * 80.0) * np.cos(uv[:, 1] * 60.0)
    rgb = np.stack([150 + 60 * shade, 140 + 50 * shade, 120 + 40 * shade], axis=1)
    rgb = rgb.reshape(h, w, 3)
    profile = np.clip(1.0 - (2.0 * np.nan_to_num(dist, posinf=1.0) / spec.width_m) ** 2, 0, 1)
    cable = np.array([30.0, 35.0, 45.0])[None, None] + 80.0 * profile[..., None]
    rgb = np.where(mask[..., None], cable, rgb).clip(0, 255).astype(np.uint8)

    depth = hit[:, 2].reshape(h, w).astype(np.float64)
    depth[~(t.reshape(h, w) > 0)] = np.nan
    if spec.noise_m > 0:
        depth = depth + rng.normal(0.0, spec.noise_m, depth.shape)
    depth[_holes(rng, h, w, spec.hole_fraction)] = np.nan
    raw = encode_depth(depth.astype(np.float32), spec.encoding)
    decoded = decode_depth(spec.encoding, w, h, raw.strides[0], False, raw.tobytes(),
                           min_m=1e-3, max_m=1e3)

    centerline = origin + curve[:, :1] * e1 + curve[:, 1:] * e2
    tangents = np.gradient(centerline, axis=0)
    tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
    return RGBDScene(spec=spec, camera=camera, rgb=rgb, mask=mask, depth_m=decoded,
                     depth_raw=raw, plane_point=origin, plane_normal=normal,
                     centerline=centerline, tangents=tangents)


def punch_hole(scene: RGBDScene, center_px: tuple[float, float], radius_px: float
               ) -> RGBDScene:
    """The scene with no depth reading within `radius_px` of a pixel (e.g. the grasp point:
    depth cameras often miss thin dark objects)."""
    h, w = scene.depth_m.shape
    yy, xx = np.mgrid[0:h, 0:w]
    hole = (xx - center_px[0]) ** 2 + (yy - center_px[1]) ** 2 <= radius_px ** 2
    depth = np.where(hole, np.float32(np.nan), scene.depth_m)
    raw = scene.depth_raw.copy()
    raw[hole] = 0 if scene.encoding == "16UC1" else np.nan
    return replace(scene, depth_m=depth, depth_raw=raw)


def scene_specs() -> dict[str, SceneSpec]:
    """The named scenes the tests, the demo and the bench share."""
    return {
        "flat_straight": SceneSpec(),
        "tilted_sine": SceneSpec(shape="sine", tilt_deg=30.0, tilt_axis_deg=10.0,
                                 heading_deg=-15.0),
        "tilted_arc_16uc1": SceneSpec(shape="arc", tilt_deg=-25.0, tilt_axis_deg=80.0,
                                      heading_deg=70.0, encoding="16UC1", distance_m=0.5),
        "noisy_holes": SceneSpec(shape="sine", tilt_deg=20.0, noise_m=0.002,
                                 hole_fraction=0.15, encoding="16UC1", seed=3),
        "distorted": SceneSpec(shape="arc", tilt_deg=15.0, heading_deg=35.0,
                               distortion=(-0.25, 0.08, 0.001, -0.0005, 0.0),
                               center_uv=(0.06, 0.04)),
    }
