"""Depth and camera_info paired with each colour frame by stamp (message_filters is not on
PyPI, and its ApproximateTimeSynchronizer drops colour frames that have no partner; here every
colour frame gets all its 2D outputs and, without a partner, a status saying why).

:class:`DepthPairing` keeps the last ``capacity`` depth frames and camera_infos (any objects,
e.g. the messages) with their stamps in nanoseconds. :meth:`DepthPairing.match` picks, for a
colour stamp, the depth and the camera_info nearest in stamp (ties: the newer arrival) within
``max_dt_ns``, else a status from :mod:`talk2sam_ros.grasp.status` and a one-line reason.
Thread-safe: the subscriptions add, the worker thread matches. Call it when the frame is
processed (after the model), so that a depth published with the colour frame has arrived.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from .status import CAMERA_INFO_STALE, DEPTH_STALE, NO_CAMERA_INFO, NO_DEPTH, OK


def stamp_ns(sec: int, nanosec: int) -> int:
    """A builtin_interfaces/Time as integer nanoseconds."""
    return int(sec) * 1_000_000_000 + int(nanosec)


@dataclass(frozen=True)
class Pairing:
    """What :meth:`DepthPairing.match` found for one colour frame."""

    status: str                      # ok, no_depth, no_camera_info, depth_stale, camera_info_stale
    reason: str = ""
    depth: Any = None
    camera_info: Any = None
    depth_dt_ns: int | None = None   # depth stamp - colour stamp
    camera_info_dt_ns: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK


class StampBuffer:
    """The last `capacity` (stamp_ns, item) pairs; nearest() by stamp, O(capacity)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._items: deque[tuple[int, Any]] = deque(maxlen=capacity)
        self.received = 0

    def add(self, stamp: int, item: Any) -> None:
        self._items.append((int(stamp), item))
        self.received += 1

    def __len__(self) -> int:
        return len(self._items)

    def nearest(self, stamp: int) -> tuple[int, Any] | None:
        """(dt_ns = item stamp - stamp, item) of the item nearest in stamp; ties: the newer
        arrival. None when empty."""
        best = None
        for item_stamp, item in self._items:
            dt = item_stamp - stamp
            if best is None or abs(dt) <= abs(best[0]):
                best = (dt, item)
        return best

    def clear(self) -> None:
        self._items.clear()
        self.received = 0


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.1f} ms"


class DepthPairing:
    """Bounded buffers of depth frames and camera_infos, matched to colour frames by stamp.

    info_max_dt_ns: the tolerance for camera_info (None: max_dt_ns, as for depth); a driver
    or bag that publishes camera_info rarely can be served with a large one (the node's
    camera_info_latest), since a camera's intrinsics do not change while it runs.
    """

    def __init__(self, max_dt_ns: int, capacity: int = 8,
                 info_max_dt_ns: int | None = None) -> None:
        if max_dt_ns < 0 or (info_max_dt_ns is not None and info_max_dt_ns < 0):
            raise ValueError(f"max_dt_ns and info_max_dt_ns must be >= 0, got {max_dt_ns}, "
                             f"{info_max_dt_ns}")
        self.max_dt_ns = int(max_dt_ns)
        self.info_max_dt_ns = None if info_max_dt_ns is None else int(info_max_dt_ns)
        self._depth = StampBuffer(capacity)
        self._info = StampBuffer(capacity)
        self._lock = threading.Lock()

    def add_depth(self, stamp: int, depth: Any) -> None:
        with self._lock:
            self._depth.add(stamp, depth)

    def add_camera_info(self, stamp: int, camera_info: Any) -> None:
        with self._lock:
            self._info.add(stamp, camera_info)

    @property
    def received(self) -> tuple[int, int]:
        """(depth frames, camera_infos) received since construction or clear()."""
        with self._lock:
            return self._depth.received, self._info.received

    def clear(self) -> None:
        """Forget everything (deactivation): later frames pair only with new messages."""
        with self._lock:
            self._depth.clear()
            self._info.clear()

    def match(self, stamp: int) -> Pairing:
        """The depth frame and camera_info for the colour frame stamped `stamp` (ns)."""
        with self._lock:
            depth, info = self._depth.nearest(stamp), self._info.nearest(stamp)
            n_depth, n_info = self._depth.received, self._info.received
        if depth is None and info is None:
            return Pairing(NO_DEPTH, "no depth frame and no camera_info received yet")
        if depth is None:
            return Pairing(NO_DEPTH, f"camera_info arrives ({n_info} so far) but no depth "
                                     "frame has been received")
        if info is None:
            return Pairing(NO_CAMERA_INFO, f"depth frames arrive ({n_depth} so far) but no "
                                           "camera_info has been received")
        limit = _ms(self.max_dt_ns)
        if abs(depth[0]) > self.max_dt_ns:
            return Pairing(DEPTH_STALE,
                           f"nearest depth frame is {_ms(abs(depth[0]))} "
                           f"{'newer' if depth[0] > 0 else 'older'} than the image "
                           f"(depth_max_dt_ms {limit})", depth_dt_ns=depth[0])
        info_limit = self.max_dt_ns if self.info_max_dt_ns is None else self.info_max_dt_ns
        if abs(info[0]) > info_limit:
            return Pairing(CAMERA_INFO_STALE,
                           f"nearest camera_info is {_ms(abs(info[0]))} "
                           f"{'newer' if info[0] > 0 else 'older'} than the image "
                           f"({'depth_max_dt_ms' if self.info_max_dt_ns is None else 'limit'}"
                           f" {_ms(info_limit)})", depth_dt_ns=depth[0],
                           camera_info_dt_ns=info[0])
        return Pairing(OK, depth=depth[1], camera_info=info[1], depth_dt_ns=depth[0],
                       camera_info_dt_ns=info[0])
