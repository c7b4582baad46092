"""Output messages of the segmentation node, built from a prediction (pure functions, no node).

Every output copies the source frame's header. The node decides which outputs are wanted
(enabled and subscribed) and publishes what these functions return.
"""
from __future__ import annotations

import importlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from cv_bridge import CvBridge
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Point32, Polygon
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from talk2sam_ros.common.visualize import blend_similarity, draw_overlay, label_image
from talk2sam_ros.grasp import Grasp
from talk2sam_ros.msg import GraspCandidate, SegmentationResult, StageTiming
from talk2sam_ros.ros import conversions as conv
from talk2sam_ros.ros.scheduler import Prompt


def message_class(msg_type: str) -> type:
    """The message class of "package/Type" (e.g. sensor_msgs/Image)."""
    package, name = msg_type.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


@dataclass(frozen=True)
class Segmentation:
    """A prediction thresholded into masks, in source pixels.

    masks: (N, H, W) bool, one per box; scores: (N,) float32; boxes: (N, 4) float32 XYXY;
    union: (H, W) bool.
    """

    masks: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    union: np.ndarray
    boxes_from_text: bool

    @classmethod
    def from_prediction(cls, prediction: Any, threshold: float,
                        shape: tuple[int, int]) -> Segmentation:
        """From a Talk2SAMPredictor.predict result (logits > threshold)."""
        masks = np.asarray(prediction.logits) > threshold
        union = masks.any(axis=0) if len(masks) else np.zeros(shape, bool)
        return cls(masks=masks, scores=np.asarray(prediction.scores, np.float32),
                   boxes=np.asarray(prediction.boxes, np.float32).reshape(-1, 4), union=union,
                   boxes_from_text=bool(prediction.boxes_from_text))


def map_outputs(similarity: np.ndarray | None, rgb: np.ndarray, header: Header, alpha: float,
                wanted: Collection[str], bridge: CvBridge) -> dict[str, Image]:
    """`similarity` (32FC1) and `similarity_color` (bgr8 colour map on the image), if wanted."""
    out: dict[str, Image] = {}
    if similarity is None:
        return out
    if "similarity" in wanted:
        out["similarity"] = conv.float_to_msg(similarity, header, bridge)
    if "similarity_color" in wanted:
        out["similarity_color"] = conv.rgb_to_bgr8_msg(
            blend_similarity(rgb, similarity, alpha), header, bridge)
    return out


def mask_outputs(seg: Segmentation, header: Header, wanted: Collection[str],
                 bridge: CvBridge) -> dict[str, Image]:
    """`mask` (mono8 0/255 union) and `mask_labels` (box i = label i+1), if wanted."""
    out: dict[str, Image] = {}
    if "mask" in wanted:
        out["mask"] = conv.mask_to_msg(seg.union, header, bridge)
    if "mask_labels" in wanted:
        out["mask_labels"] = conv.labels_to_msg(label_image(seg.masks, seg.scores), header,
                                                bridge)
    return out


def overlay_message(rgb: np.ndarray, seg: Segmentation, text: str, alpha: float,
                    grasp: Grasp | None, header: Header, bridge: CvBridge) -> Image:
    """bgr8 picture: masks tinted, boxes with scores, the text, centreline and grasp point."""
    picture = draw_overlay(rgb, seg.masks, seg.boxes, text, seg.scores, alpha,
                           centerline=None if grasp is None else grasp.centerline,
                           grasp_point=grasp.point if grasp is not None and grasp.valid
                           else None)
    return conv.rgb_to_bgr8_msg(picture, header, bridge)


def grasp_message(grasp: Grasp, header: Header, prompt_id: int) -> GraspCandidate:
    """GraspCandidate: centreline polygon (px) and, when valid, point (z = width), angle."""
    msg = GraspCandidate(header=conv.copy_header(header), prompt_id=prompt_id,
                         valid=bool(grasp.valid))
    msg.centerline = Polygon(points=[Point32(x=float(x), y=float(y), z=0.0)
                                     for x, y in grasp.centerline])
    if grasp.valid:
        msg.grasp_point = Point(x=float(grasp.point[0]), y=float(grasp.point[1]),
                                z=float(grasp.width_px))
        msg.angle = float(grasp.angle)
        msg.width_px = float(grasp.width_px)
    return msg


def result_message(header: Header, prompt: Prompt, seg: Segmentation, kept: np.ndarray,
                   image_size: tuple[int, int], reused: bool, age_ms: float,
                   timing: Sequence[tuple[str, float]],
                   counts: Mapping[str, int]) -> SegmentationResult:
    """SegmentationResult of one prompt on one frame.

    kept: for each result box, its index in the prompt's boxes (empty for text-only boxes);
    image_size: (height, width); counts: Counters.snapshot().
    """
    height, width = image_size
    msg = SegmentationResult(header=conv.copy_header(header), prompt_id=prompt.id,
                             text=prompt.text, image_width=width, image_height=height)
    msg.boxes = seg.boxes.ravel().tolist()
    msg.boxes_from_text = seg.boxes_from_text
    msg.box_indices = [] if seg.boxes_from_text else [int(i) for i in kept]
    msg.scores = seg.scores.tolist()
    msg.areas = seg.masks.reshape(len(seg.masks), -1).sum(axis=1).astype(int).tolist()
    msg.mask_area = int(seg.union.sum())
    msg.reused_encoding = reused
    msg.frame_age_ms = float(age_ms)
    msg.timing = [StageTiming(stage=stage, ms=float(ms)) for stage, ms in timing]
    msg.frames_received = counts["frames_received"]
    msg.frames_processed = counts["frames_processed"]
    msg.frames_dropped = counts["frames_dropped"]
    msg.inputs_rejected = counts["inputs_rejected"]
    return msg


def diagnostics_message(values: Mapping[str, Any], name: str,
                        stamp: Any) -> DiagnosticArray:
    """One DiagnosticStatus: ERROR after a failed configure (its reason as the message),
    WARN once a frame failed (errors, out_of_memory), frames were lost in transport
    (docs/transport.md) or while a stopped worker still runs, else OK; every value as a
    KeyValue. stamp: builtin_interfaces/Time."""
    status = DiagnosticStatus(name=name, hardware_id=str(values["device"]))
    bad = int(values["errors"]) + int(values["out_of_memory"])
    lost = int(values["frames_lost_in_transport"]) + int(values["depth_lost_in_transport"])
    status.level = DiagnosticStatus.WARN if bad or lost or values["worker"] == "stopping" \
        else DiagnosticStatus.OK
    status.message = (f"{values['state']}, {values['frames_processed']} processed, "
                      f"{values['frames_dropped']} dropped, {values['inputs_rejected']} "
                      f"rejected, {bad} failed")
    if lost:
        status.message += f", {lost} lost in transport (see docs/transport.md)"
    if values["worker"] == "stopping":
        status.message += ", a stopped worker is still running a frame"
    if values["configure_error"]:
        status.level = DiagnosticStatus.ERROR
        status.message = f"configure failed: {values['configure_error']}"
    status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
    array = DiagnosticArray(status=[status])
    array.header.stamp = stamp
    return array
