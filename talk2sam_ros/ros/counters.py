"""Event counters and log throttling of the segmentation node (pure Python, thread-safe)."""
from __future__ import annotations

import math
import re
import threading
from collections.abc import Hashable

from talk2sam_ros.grasp.status import DESCRIPTIONS as GRASP3D_STATUSES


def grasp3d_counter(status: str) -> str:
    """The counter of the frames whose 3D grasp ended with `status` (use_depth)."""
    return f"grasp3d_{status}"


class Counters:
    """Thread-safe event counters (the node resets them on activate)."""

    NAMES = ("frames_received", "frames_processed", "frames_dropped", "frames_idle",
             "images_rejected", "prompts_received", "prompts_rejected", "frames_rejected",
             "prompt_frame_missed", "requests_dropped", "encodings", "reused_encodings",
             "errors", "out_of_memory",
             # transport (docs/transport.md): what DDS gave up on, and the holes in each image
             # publisher's sequence numbers (lost on the wire or overwritten in our queue)
             "frames_lost_in_transport", "frames_missing_by_sequence",
             # RGB-D (use_depth): inputs, their transport losses, one counter per 3D status
             "depth_received", "camera_info_received", "depth_lost_in_transport",
             "depth_frame_mismatch", "camera_info_reused",
             *(grasp3d_counter(s) for s in GRASP3D_STATUSES))

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def reset(self) -> None:
        with self._lock:
            self._values = dict.fromkeys(self.NAMES, 0)

    def snapshot(self) -> dict[str, int]:
        """Every counter, plus inputs_rejected (the sum of the three rejection counters)."""
        with self._lock:
            values = dict(self._values)
        values["inputs_rejected"] = (values["images_rejected"] + values["prompts_rejected"]
                                     + values["frames_rejected"])
        return values


class Throttle:
    """Allows an event per key once per `period` seconds (thread-safe, bounded memory)."""

    def __init__(self, period: float, max_keys: int = 256) -> None:
        self.period, self.max_keys = period, max_keys
        self._last: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def allow(self, key: Hashable, now: float) -> bool:
        with self._lock:
            if now - self._last.get(key, -math.inf) < self.period:
                return False
            if len(self._last) >= self.max_keys:
                self._last.clear()
            self._last[key] = now
            return True


def reason_kind(reason: str) -> str:
    """The kind of a rejection reason: its text without numbers and quoted values."""
    return re.sub(r"\d+", "#", re.sub(r"'[^']*'", "''", reason))
