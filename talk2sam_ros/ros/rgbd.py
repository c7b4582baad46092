"""The segmentation node's RGB-D stage (parameter use_depth; docs/grasp.md), without a node.

For one processed frame: the depth image and CameraInfo paired with it by stamp (a
:class:`~talk2sam_ros.grasp.DepthPairing` that the node's subscriptions fill), decoded once per
frame and kept on the frame for its further prompts; the 3D grasp of the pixel grasp; and the
messages of the wanted 3D outputs. Whatever is wrong with the inputs comes back as the 3D
status and its one-line reason, for the node's counted, rate-limited log; nothing here raises
on bad input.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from talk2sam_ros.common.timing import Stopwatch
from talk2sam_ros.grasp import (CameraModel, DepthInputError, DepthPairing, Grasp, Grasp3D,
                                Grasp3DConfig, grasp_pose_from_depth, not_available,
                                object_points)
from talk2sam_ros.grasp import status as st
from talk2sam_ros.grasp.pairing import Pairing
from talk2sam_ros.ros import grasp3d_messages as gm
from talk2sam_ros.ros.params import RGBD_PUBLICATIONS, NodeConfig
from talk2sam_ros.ros.scheduler import Frame, Prompt

# Outputs that need the 3D grasp (the GraspCandidate's 3D fields go out on `grasp`); the cloud
# needs the depth only.
POSE_OUTPUTS = frozenset({"grasp", "grasp_pose", "grasp_markers"})
RGBD_OUTPUTS = frozenset({"grasp", *RGBD_PUBLICATIONS})
# Statuses that say nothing is wrong: counted, not logged (an invalid pixel grasp is a 2D
# matter, visible on `grasp.valid`).
QUIET_STATUSES = frozenset({st.OK, st.NO_GRASP})
# Pairing found both messages: what becomes of them no longer depends on later arrivals.
_SETTLED = frozenset({st.OK, st.BAD_DEPTH, st.BAD_CAMERA_INFO})
_INFINITE_NS = 1 << 62  # camera_info_latest: any stamp
_NOTHING = not_available(st.NO_GRASP)  # draws no marker: every id DELETEd
_POLL_S = 0.002  # waiting for a depth on its way


def pairing_limits(cfg: NodeConfig) -> tuple[int, int]:
    """(depth, camera_info) pairing tolerances in ns from the parameters."""
    depth_ns = int(round(cfg.depth_max_dt_ms * 1e6))
    return depth_ns, _INFINITE_NS if cfg.camera_info_latest else depth_ns


def make_pairing(cfg: NodeConfig) -> DepthPairing:
    """The node's pairing buffers. As deep as the frame cache (+4 for depth that arrives
    ahead or faster than colour), so every cached frame, e.g. one a stamped prompt asks for
    late, still finds its depth."""
    depth_ns, info_ns = pairing_limits(cfg)
    return DepthPairing(depth_ns, capacity=cfg.frame_cache_size + 4, info_max_dt_ns=info_ns)


def configure_pairing(pairing: DepthPairing, cfg: NodeConfig) -> None:
    """Apply live changes of depth_max_dt_ms / camera_info_latest to the next match."""
    pairing.max_dt_ns, pairing.info_max_dt_ns = pairing_limits(cfg)


@dataclass(frozen=True)
class FrameDepth:
    """A frame's depth in metres (registered, resized to the colour image, NaN = invalid) and
    its camera, or the status and reason why there is none."""

    status: str
    reason: str = ""
    depth_m: np.ndarray | None = None
    camera: CameraModel | None = None
    frame_warning: str = ""  # depth / camera_info frame_id differs (the data are still used)
    camera_info_dt_ns: int = 0  # camera_info stamp - colour stamp

    @property
    def ok(self) -> bool:
        return self.status == st.OK


def may_still_come(match: Pairing) -> bool:
    """Whether the frame's own depth / camera_info may be on its way: that stream delivers,
    but the nearest message so far is older than the frame by more than the tolerance."""
    return (match.status == st.DEPTH_STALE and (match.depth_dt_ns or 0) < 0) or \
        (match.status == st.CAMERA_INFO_STALE and (match.camera_info_dt_ns or 0) < 0)


def await_match(pairing: DepthPairing, stamp_ns: int, wait_s: float,
                stop: threading.Event | None = None) -> Pairing:
    """pairing.match(stamp_ns), waiting up to `wait_s` (polling every 2 ms; `stop` ends the
    wait) while the frame's depth or camera_info may still come (a depth camera's aligned
    depth can arrive after a fast model is done)."""
    deadline = time.monotonic() + wait_s
    stop = stop or threading.Event()
    for _ in range(int(wait_s / _POLL_S) + 2):
        match = pairing.match(stamp_ns)
        if match.ok or not may_still_come(match) or time.monotonic() >= deadline \
                or stop.is_set():
            return match
        stop.wait(_POLL_S)
    return pairing.match(stamp_ns)


def pair_depth(pairing: DepthPairing, header: Any, width: int, height: int, min_m: float,
               max_m: float, wait_s: float = 0.0,
               stop: threading.Event | None = None) -> FrameDepth:
    """The depth and camera for the colour frame `header` (W x H), checked and decoded; see
    await_match for `wait_s` and `stop`."""
    match = await_match(pairing, gm.header_stamp_ns(header), wait_s, stop)
    if not match.ok:
        return FrameDepth(match.status, match.reason)
    try:
        depth_m, camera = gm.depth_for_frame(match.depth, match.camera_info, width, height,
                                             min_m, max_m)
    except DepthInputError as exc:
        return FrameDepth(exc.status, str(exc))
    return FrameDepth(st.OK, depth_m=depth_m, camera=camera,
                      frame_warning=gm.frame_warning(header.frame_id,
                                                     match.depth.header.frame_id,
                                                     match.camera_info.header.frame_id),
                      camera_info_dt_ns=int(match.camera_info_dt_ns or 0))


def frame_depth(frame: Frame, pairing: DepthPairing, cfg: NodeConfig,
                stop: threading.Event | None = None) -> tuple[FrameDepth, bool]:
    """(the frame's FrameDepth, whether it was computed now), waiting up to depth_wait_ms
    for a depth still on its way. Kept on `frame.paired` once pairing has found both
    messages, so further prompts on the frame do not decode again; a frame still without
    depth is paired again next time (its depth may have arrived)."""
    key = (cfg.depth_min_m, cfg.depth_max_m)
    cached = frame.paired.get("depth")
    if cached is not None and cached[0] == key:
        return cached[1], False
    height, width = frame.rgb.shape[:2]
    depth = pair_depth(pairing, frame.header, width, height, *key,
                       wait_s=cfg.depth_wait_ms / 1000.0, stop=stop)
    if depth.status in _SETTLED:
        frame.paired["depth"] = (key, depth)
    return depth, True


class MarkerNamespaces:
    """Whose markers are on screen, so that each frame's markers replace the last frame's.

    Each prompt draws in namespace ``grasp/<prompt_id>``; several prompts on one frame all stay,
    and a prompt that does not answer the next frame (a new standing prompt, a detector's next
    id) has its markers deleted with that frame's. Holds only the current frame's prompts.
    """

    def __init__(self) -> None:
        self._drawn: dict[int, int] = {}  # prompt id -> frame seq

    def replace(self, prompt_id: int, frame_seq: int) -> list[int]:
        """Record that `prompt_id` draws on frame `frame_seq`; returns the prompt ids whose
        markers (from earlier frames) are to be deleted now."""
        gone = [p for p, seq in self._drawn.items() if seq != frame_seq and p != prompt_id]
        for p in gone:
            del self._drawn[p]
        self._drawn[prompt_id] = frame_seq
        return gone


@dataclass
class Grasp3DOutputs:
    """What the 3D stage made for one (frame, prompt)."""

    status: str  # the 3D status of this result (counters)
    reason: str
    grasp: Grasp3D | None  # None when only the cloud was wanted
    messages: dict[str, Any] = field(default_factory=dict)  # topic -> message
    timing: list[tuple[str, float]] = field(default_factory=list)  # grasp3d.* sub-stages


def grasp3d_outputs(depth: FrameDepth, mask: np.ndarray, grasp: Grasp | None,
                    rgb: np.ndarray, header: Any, prompt: Prompt, wanted: Collection[str],
                    cfg: NodeConfig, markers: MarkerNamespaces, frame_seq: int,
                    config: Grasp3DConfig = Grasp3DConfig()) -> Grasp3DOutputs:
    """The 3D grasp of `grasp` (the pixel grasp on the union `mask`) and the messages of the
    `wanted` 3D outputs: ``grasp_pose`` only for an ok grasp, ``grasp_markers`` always (ADD or
    DELETE, plus deletions of earlier frames' prompts), ``object_points`` always (empty
    without depth). `grasp` may be None when no output in POSE_OUTPUTS is wanted."""
    laps: dict[str, float] = {}
    watch = Stopwatch(laps=laps).start()
    g3 = None
    if set(wanted) & POSE_OUTPUTS:
        if not depth.ok:
            g3 = not_available(depth.status, depth.reason)
        else:
            g3 = grasp_pose_from_depth(mask, grasp, depth.depth_m, depth.camera, config)
        watch.lap("grasp3d.pose")
    out = Grasp3DOutputs(status=g3.status if g3 else depth.status,
                         reason=g3.reason if g3 else depth.reason, grasp=g3)
    if g3 is not None and g3.ok and "grasp_pose" in wanted:
        out.messages["grasp_pose"] = gm.pose_msg(g3, header)
    if g3 is not None and "grasp_markers" in wanted:
        array = gm.markers_msg(g3, header, prompt.text, prompt.id)
        for gone in markers.replace(prompt.id, frame_seq):
            array.markers.extend(gm.markers_msg(_NOTHING, header, "", gone).markers)
        out.messages["grasp_markers"] = array
        watch.lap("grasp3d.markers")
    if "object_points" in wanted:
        points, colours = (object_points(mask, depth.depth_m, depth.camera,
                                         cfg.max_cloud_points, rgb) if depth.ok
                           else (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)))
        out.messages["object_points"] = gm.cloud_msg(points, header, colours)
        watch.lap("grasp3d.cloud")
    out.timing = list(laps.items())
    return out
