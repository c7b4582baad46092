"""Pictures of a prediction: colour-mapped similarity and mask/box/text overlays.

ROS-free numpy/OpenCV, shared by the node (rviz outputs) and the evaluation plots. Every
function takes and returns (H, W, 3) uint8 **RGB** at the source resolution (the node converts
to bgr8 when publishing; matplotlib shows RGB as is).
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# Distinct RGB colours for masks/boxes, cycled by index (tab10 without grey).
PALETTE = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
                    (148, 103, 189), (140, 86, 75), (227, 119, 194), (188, 189, 34),
                    (23, 190, 207)], np.uint8)


def colormap(values: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """(H, W) float map -> (H, W, 3) uint8 RGB (turbo colour map); NaN/inf shown as lo."""
    span = max(hi - lo, 1e-12)
    scaled = np.nan_to_num((np.asarray(values, np.float32) - lo) / span, nan=0.0,
                           posinf=1.0, neginf=0.0)
    levels = (scaled.clip(0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)


def blend_similarity(rgb: np.ndarray, similarity: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with its similarity map (values in [0, 1]) colour-mapped on top.

    alpha: weight of the colour map (0 = image only, 1 = colour map only).
    """
    if rgb.shape[:2] != similarity.shape:
        raise ValueError(f"image {rgb.shape[:2]} and similarity {similarity.shape} differ in size")
    return cv2.addWeighted(colormap(similarity), float(alpha), rgb, 1.0 - float(alpha), 0.0)


def label_image(masks: np.ndarray, scores: Sequence[float] | None = None) -> np.ndarray:
    """(N, H, W) bool masks -> (H, W) int32 labels, mask i = label i+1, 0 = background.

    Where masks overlap the higher-scoring one wins (the later one without scores).
    """
    masks = np.asarray(masks, bool)
    labels = np.zeros(masks.shape[1:], np.int32)
    order = np.arange(len(masks)) if scores is None else np.argsort(np.asarray(scores),
                                                                     kind="stable")
    for i in order:
        labels[masks[i]] = i + 1
    return labels


def draw_overlay(rgb: np.ndarray, masks: np.ndarray | None = None,
                 boxes: np.ndarray | None = None, text: str = "",
                 scores: Sequence[float] | None = None, alpha: float = 0.5,
                 centerline: np.ndarray | None = None,
                 grasp_point: tuple[float, float] | None = None) -> np.ndarray:
    """The image with masks tinted, boxes outlined, the prompt text and an optional grasp.

    masks: (N, H, W) bool; boxes: (N, 4) XYXY px (box i gets mask i's colour); scores: (N,)
    shown next to each box; centerline: (K, 2) x, y px polyline; grasp_point: x, y px.
    """
    out = rgb.copy()
    h, w = out.shape[:2]
    thick = max(1, round(max(h, w) / 400))
    if masks is not None and len(masks):
        labels = label_image(masks, scores)
        colours = np.concatenate([np.zeros((1, 3), np.uint8),
                                  PALETTE[np.arange(len(masks)) % len(PALETTE)]])
        tint = colours[labels]
        inside = labels > 0
        out[inside] = (out[inside] * (1.0 - alpha) + tint[inside] * alpha + 0.5).astype(np.uint8)
    for i, box in enumerate(np.zeros((0, 4)) if boxes is None else np.asarray(boxes)):
        colour = tuple(int(v) for v in PALETTE[i % len(PALETTE)])
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thick)
        if scores is not None and i < len(scores):
            _put_text(out, f"{float(scores[i]):.2f}", (x0, max(y0 - 3, 0)), colour, thick)
    if centerline is not None and len(centerline) > 1:
        points = np.round(np.asarray(centerline)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(out, [points], False, (255, 255, 0), thick)
    if grasp_point is not None:
        centre = tuple(int(round(float(v))) for v in grasp_point)
        cv2.drawMarker(out, centre, (255, 0, 255), cv2.MARKER_CROSS, 6 * thick + 6, 2 * thick)
    if text:
        _put_text(out, text, (4, 4), (255, 255, 255), thick, top_left=True)
    return out


def _put_text(image: np.ndarray, text: str, origin: tuple[int, int],
              colour: tuple[int, int, int], thick: int, top_left: bool = False) -> None:
    """Text with a dark backing box; non-ASCII characters become '?' (Hershey fonts are ASCII)."""
    ascii_text = text.encode("ascii", "replace").decode("ascii")[:80]
    scale = 0.4 * thick
    (tw, th), base = cv2.getTextSize(ascii_text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x, y = origin
    if top_left:
        y += th
    cv2.rectangle(image, (x - 1, y - th - 1), (x + tw + 1, y + base), (0, 0, 0), -1)
    cv2.putText(image, ascii_text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick,
                cv2.LINE_AA)
