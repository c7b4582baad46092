"""Grasp point for thin objects (wires, cables, ropes) from a binary mask. Pure numpy/scipy.

Rule (also in docs/node.md):

1. Keep the largest 8-connected component of the mask.
2. Skeletonize it (``skimage.morphology.skeletonize``) and take the **longest geodesic path**
   through the skeleton (two Dijkstra sweeps over the 8-neighbour pixel graph) as the ordered
   centreline. Side branches (other skeleton pixels more than 1 px from that path, ignoring
   spurs shorter than the median object width) are the object's junctions and forks.
3. Local width along the path = 2 * (Euclidean distance to the background) - 1, smoothed with a
   running median so that single-pixel bumps do not count.
4. Candidates are path points at least ``end_margin`` of the path length away from both ends
   and at least ``junction_clearance`` local widths (+2 px) away from any side branch, so that
   a gripper closing there touches one strand only.
5. The grasp point is on the **widest** candidates (the most material to hold, the most
   tolerant to position error): candidates within ``width_tolerance_px`` of the widest count as
   equally wide, and the point is the middle of the longest contiguous stretch of them (ties:
   the stretch nearest the path middle), i.e. well inside a uniform part, never at a width
   step; a uniform cable is grasped at its middle. With no candidate the branch clearance is
   dropped, then the path middle is used.
6. The angle is the centreline direction at the point (the chord between the path points one
   width, at least 3 px, before and after it), in image coordinates (x right, y down),
   folded into [-pi/2, pi/2) because a centreline has no front and back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from skimage.morphology import skeletonize


@dataclass(frozen=True)
class GraspConfig:
    """How the grasp point is chosen (see the module docstring)."""

    end_margin: float = 0.2           # fraction of the centreline length kept clear at each end
    junction_clearance: float = 2.0   # distance to side branches, in local widths (+2 px)
    width_tolerance_px: float = 1.0   # widths this close to the maximum count as equal
    min_length_px: float = 10.0       # shorter centrelines are not graspable (valid = False)
    max_points: int = 200             # the published centreline is subsampled to this many

    def __post_init__(self) -> None:
        if not 0.0 <= self.end_margin < 0.5:
            raise ValueError(f"end_margin must be in [0, 0.5), got {self.end_margin}")
        if self.junction_clearance < 0 or self.width_tolerance_px < 0:
            raise ValueError("junction_clearance and width_tolerance_px must be >= 0")
        if self.min_length_px < 0 or self.max_points < 2:
            raise ValueError("min_length_px must be >= 0 and max_points >= 2")


@dataclass(frozen=True)
class Grasp:
    """A grasp suggestion in image pixels; x = column, y = row."""

    valid: bool
    centerline: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    point: tuple[float, float] = (0.0, 0.0)
    angle: float = 0.0        # radians, image coordinates, in [-pi/2, pi/2)
    width_px: float = 0.0
    length_px: float = 0.0
    reason: str = ""          # why it is not valid


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Bool (H, W) mask of the largest 8-connected component of `mask` (all false if empty)."""
    binary = np.asarray(mask).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count <= 1:
        return np.zeros(binary.shape, bool)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == best


_OFFSETS = ((0, 1, 1.0), (1, -1, math.sqrt(2.0)), (1, 0, 1.0), (1, 1, math.sqrt(2.0)))


def skeleton_graph(skeleton: np.ndarray) -> tuple[np.ndarray, object]:
    """Pixel coordinates (K, 2) (row, col) of `skeleton` and its 8-neighbour distance graph."""
    coords = np.argwhere(skeleton)
    index = np.full(skeleton.shape, -1, np.int64)
    index[coords[:, 0], coords[:, 1]] = np.arange(len(coords))
    rows, cols, weights = [], [], []
    h, w = skeleton.shape
    for dr, dc, weight in _OFFSETS:
        r2, c2 = coords[:, 0] + dr, coords[:, 1] + dc
        inside = (r2 >= 0) & (r2 < h) & (c2 >= 0) & (c2 < w)
        src = np.flatnonzero(inside)
        dst = index[r2[inside], c2[inside]]
        linked = dst >= 0
        rows.append(src[linked])
        cols.append(dst[linked])
        weights.append(np.full(int(linked.sum()), weight))
    r, c, wt = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
    graph = coo_matrix((np.r_[wt, wt], (np.r_[r, c], np.r_[c, r])),
                       shape=(len(coords), len(coords))).tocsr()
    return coords, graph


def longest_path(skeleton: np.ndarray) -> np.ndarray:
    """Ordered (K, 2) (row, col) pixels of the longest geodesic path through `skeleton`."""
    coords, graph = skeleton_graph(skeleton)
    if len(coords) == 0:
        return coords
    degree = np.diff(graph.indptr)
    ends = np.flatnonzero(degree == 1)
    start = int(ends[0]) if len(ends) else 0
    dist = dijkstra(graph, indices=start)
    first = int(np.argmax(np.where(np.isfinite(dist), dist, -1.0)))
    dist, pred = dijkstra(graph, indices=first, return_predecessors=True)
    node = int(np.argmax(np.where(np.isfinite(dist), dist, -1.0)))
    path = [node]
    for _ in range(len(coords)):
        node = int(pred[node])
        if node < 0:
            break
        path.append(node)
    return coords[path[::-1]]


def _arclength(points: np.ndarray) -> np.ndarray:
    steps = np.linalg.norm(np.diff(points.astype(np.float64), axis=0), axis=1)
    return np.r_[0.0, np.cumsum(steps)]


def _branch_distance(skeleton: np.ndarray, path: np.ndarray, min_branch: int) -> np.ndarray:
    """Distance (px) from each path point to the nearest side branch (inf when none)."""
    on_path = np.zeros_like(skeleton)
    on_path[path[:, 0], path[:, 1]] = True
    near = ndimage.binary_dilation(on_path, structure=np.ones((3, 3), bool))
    far = skeleton & ~near
    labels, count = ndimage.label(far, structure=np.ones((3, 3), bool))
    if count == 0:
        return np.full(len(path), np.inf)
    sizes = ndimage.sum_labels(far, labels, index=np.arange(1, count + 1))
    branches = np.isin(labels, 1 + np.flatnonzero(sizes >= min_branch))
    if not branches.any():
        return np.full(len(path), np.inf)
    distance = ndimage.distance_transform_edt(~branches)
    return distance[path[:, 0], path[:, 1]]


def _subsample(points: np.ndarray, max_points: int) -> np.ndarray:
    if len(points) <= max_points:
        return points
    keep = np.unique(np.round(np.linspace(0, len(points) - 1, max_points)).astype(int))
    return points[keep]


def _middle_of_longest_run(selected: np.ndarray, s: np.ndarray, length: float) -> int:
    """Index of the middle (by arclength) of the longest run of `selected` path points.

    Equally long runs: the one whose middle is closest to the middle of the path.
    """
    padded = np.r_[False, selected, False].astype(np.int8)
    starts = np.flatnonzero(np.diff(padded) == 1)
    stops = np.flatnonzero(np.diff(padded) == -1) - 1
    runs = s[stops] - s[starts]
    middles = (s[stops] + s[starts]) / 2.0
    best = np.lexsort((np.abs(middles - length / 2.0), -np.round(runs, 3)))[0]
    lo, hi = starts[best], stops[best] + 1
    return int(lo + np.argmin(np.abs(s[lo:hi] - middles[best])))


def grasp_from_mask(mask: np.ndarray, config: GraspConfig = GraspConfig()) -> Grasp:
    """Grasp suggestion for the largest component of a (H, W) binary mask (rule: module doc)."""
    component = largest_component(mask)
    if not component.any():
        return Grasp(valid=False, reason="empty mask")
    # Work in the component's bounding box (+1 px border so the distance transform sees
    # background all round); coordinates are shifted back at the end.
    rows, cols = np.nonzero(component)
    r0, c0 = rows.min(), cols.min()
    crop = np.pad(component[r0:rows.max() + 1, c0:cols.max() + 1], 1)
    offset = np.array([r0 - 1, c0 - 1])
    half_width = cv2.distanceTransform(crop.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    skeleton = skeletonize(crop)
    path = longest_path(skeleton)
    if len(path) < 2:
        return Grasp(valid=False, reason="centreline shorter than 2 px")
    s = _arclength(path)
    length = float(s[-1])
    centerline = _subsample((path + offset)[:, ::-1].astype(np.float32), config.max_points)
    if length < config.min_length_px:
        return Grasp(valid=False, centerline=centerline, length_px=length,
                     reason=f"centreline {length:.1f} px < min_length_px "
                            f"{config.min_length_px}")
    width = np.maximum(2.0 * half_width[path[:, 0], path[:, 1]] - 1.0, 1.0)
    typical = float(np.median(width))
    window = int(max(3, round(typical)) | 1)
    smooth = ndimage.median_filter(width, size=window, mode="nearest")
    branch = _branch_distance(skeleton, path, min_branch=max(2, int(math.ceil(typical))))
    margin = config.end_margin * length
    inner = (s >= margin) & (s <= length - margin)
    clear = branch >= config.junction_clearance * smooth + 2.0
    choice = None
    for candidates in (inner & clear, inner):
        if candidates.any():
            best = smooth[candidates].max()
            widest = candidates & (smooth >= best - config.width_tolerance_px)
            choice = _middle_of_longest_run(widest, s, length)
            break
    if choice is None:
        choice = int(np.argmin(np.abs(s - length / 2.0)))
    reach = max(3.0, float(smooth[choice]))
    before = int(np.searchsorted(s, s[choice] - reach, side="left"))
    after = min(int(np.searchsorted(s, s[choice] + reach, side="right")), len(s) - 1)
    (ry0, rx0), (ry1, rx1) = path[before], path[after]
    angle = math.atan2(float(ry1 - ry0), float(rx1 - rx0))
    angle = (angle + math.pi / 2.0) % math.pi - math.pi / 2.0
    py, px = path[choice] + offset
    return Grasp(valid=True, centerline=centerline, point=(float(px), float(py)), angle=angle,
                 width_px=float(smooth[choice]), length_px=length)
