"""Which frame the worker runs next, and with which prompt: the segmentation node's work state.

Pure Python (no rclpy, no torch) behind one lock: the executor thread adds frames and prompts,
the worker thread takes jobs. The rule (docs/node.md, "Which prompt answers which frame"):

- The **standing prompt** (an unstamped TextBoxPrompt, or `category`) is state. It answers the
  newest frame (a frame replaced before the worker got to it is dropped and counted) and, when
  it is set, the newest cached frame at once, so a prompt after a still image is answered.
- A **stamped prompt** (non-zero header stamp) is a request for the one frame with exactly
  that stamp, answered once: at once when the frame is cached, on the frame's arrival when it
  has not come yet. When that frame came and went (evicted from the cache, or older than the
  last frame received) the request is missed and counted. A stamped prompt never answers
  another frame and leaves the standing prompt as it is.

A frame carries the colour image and, in `paired`, what the worker derived from inputs
matched to it by stamp (the RGB-D stage keeps the frame's decoded depth there for its further
prompts, ros/rgbd.py; only the worker thread touches it); the worker receives the frame whole.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from talk2sam_ros.ros.counters import Counters

Stamp = tuple[int, int]  # (sec, nanosec) of a header stamp
UNSTAMPED: Stamp = (0, 0)


@dataclass(frozen=True)
class Prompt:
    """Text plus optional (N, 4) float32 XYXY boxes in source pixels of `frame_id`."""

    id: int
    text: str
    boxes: np.ndarray | None = None
    frame_id: str = ""


@dataclass(eq=False)
class Frame:
    """A received colour frame; `rgb` is filled by the worker when it is first needed."""

    seq: int
    stamp: Stamp
    header: Any  # the message header, copied to every output
    image: Any  # the image message, decoded on the worker
    received: float  # the scheduler's clock (time.monotonic)
    paired: dict[str, Any] = field(default_factory=dict)
    rgb: np.ndarray | None = None


@dataclass(frozen=True)
class Job:
    """One model run: `frame` with `prompt` (None: the idle similarity map only)."""

    frame: Frame
    prompt: Prompt | None


class Request(Enum):
    """What became of a stamped prompt."""

    QUEUED = "queued"  # its frame is cached: the worker runs it
    HELD = "held"  # its frame has not arrived yet: answered when it does
    MISSED = "missed"  # its frame is gone: counted, not applied to any other frame


class Scheduler:
    """Latest-frame scheduling with a standing prompt and stamped per-frame requests.

    counters: frames_dropped, frames_idle, prompt_frame_missed and requests_dropped are
    counted here. max_requests: stamped requests queued for the worker, and held for frames
    still to come (each bounded: the oldest is dropped first).
    """

    def __init__(self, counters: Counters, cache_size: int = 8, max_requests: int = 16,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._cond = threading.Condition()
        self._counters = counters
        self._clock = clock
        self._max_requests = max_requests
        self._frames: deque[Frame] = deque(maxlen=cache_size)
        self._pending: Frame | None = None  # newest frame, for the standing prompt
        self._requests: deque[Job] = deque()  # stamped prompts with their cached frame
        self._held: deque[tuple[Stamp, Prompt]] = deque()  # stamped prompts before their frame
        self._standing: Prompt | None = None
        self._idle = False  # run frames without a standing prompt (idle similarity)
        self._period = 0.0  # shortest time between job starts (max_rate_hz)
        self._last_start = -float("inf")
        self._seq = 0
        self._last_stamp: Stamp | None = None  # of the last stamped frame received

    # ------------------------------------------------------------------ settings
    def configure(self, *, cache_size: int, idle: bool, max_rate_hz: float) -> None:
        """Frame cache size, idle similarity and rate limit (applied to the next job)."""
        with self._cond:
            if cache_size != self._frames.maxlen:
                self._frames = deque(self._frames, maxlen=cache_size)
            self._idle = idle
            self._period = 1.0 / max_rate_hz if max_rate_hz > 0 else 0.0
            self._cond.notify_all()

    @property
    def standing(self) -> Prompt | None:
        with self._cond:
            return self._standing

    # ------------------------------------------------------------------ inputs (executor)
    def add_frame(self, stamp: Stamp, header: Any, image: Any) -> list[Prompt]:
        """Cache a new frame and queue what answers it. Returns the held stamped prompts
        that this frame shows to be missed (their frame would have come before it)."""
        with self._cond:
            self._seq += 1
            frame = Frame(self._seq, stamp, header, image, self._clock())
            self._frames.append(frame)
            missed: list[Prompt] = []
            if stamp != UNSTAMPED:
                self._last_stamp = stamp  # follows the stream, also when time jumps back
                missed = self._answer_held(frame)
            if self._standing is None and not self._idle:
                self._counters.add("frames_idle")
            else:
                if self._pending is not None:
                    self._counters.add("frames_dropped")
                self._pending = frame
            self._cond.notify_all()
            return missed

    def set_standing(self, prompt: Prompt | None) -> Prompt | None:
        """Replace the standing prompt (None clears it); returns the previous one."""
        with self._cond:
            previous, self._standing = self._standing, prompt
            if prompt is not None and self._frames and self._pending is not self._frames[-1]:
                if self._pending is not None:  # older than the newest (came while no prompt)
                    self._counters.add("frames_dropped")
                self._pending = self._frames[-1]
            self._cond.notify_all()
            return previous

    def request(self, prompt: Prompt, stamp: Stamp) -> Request:
        """A stamped prompt for the frame with `stamp` (not UNSTAMPED)."""
        with self._cond:
            frame = self._find(stamp)
            if frame is not None:
                self._queue(Job(frame, prompt))
                return Request.QUEUED
            if self._last_stamp is not None and stamp <= self._last_stamp:
                self._counters.add("prompt_frame_missed")
                return Request.MISSED
            if len(self._held) >= self._max_requests:
                self._held.popleft()
                self._counters.add("requests_dropped")
            self._held.append((stamp, prompt))
            return Request.HELD

    def find(self, stamp: Stamp) -> Frame | None:
        """The cached frame with exactly this stamp (for inputs paired by stamp)."""
        with self._cond:
            return self._find(stamp)

    def clear(self) -> None:
        """Forget cached frames and queued work (deactivate); the standing prompt stays."""
        with self._cond:
            self._frames.clear()
            self._pending = None
            self._requests.clear()
            self._held.clear()
            self._last_start = -float("inf")
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake a waiting worker (it then sees its stop event)."""
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ worker
    def take(self, stop: threading.Event, timeout: float) -> Job | None:
        """The next job once it is due (stamped requests first, then the newest frame with
        the standing prompt); None after `timeout` seconds or when `stop` is set."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not stop.is_set():
                wait = deadline - time.monotonic()
                if self._requests or self._pending is not None:
                    due = self._last_start + self._period - self._clock()
                    if due <= 0:
                        job = self._pop()
                        if job is not None:
                            return job
                        continue
                    wait = min(wait, due)
                if wait <= 0:
                    return None
                self._cond.wait(wait)
        return None

    # ------------------------------------------------------------------ internals (locked)
    def _find(self, stamp: Stamp) -> Frame | None:
        return next((f for f in reversed(self._frames) if f.stamp == stamp), None)

    def _queue(self, job: Job) -> None:
        if len(self._requests) >= self._max_requests:
            self._requests.popleft()
            self._counters.add("requests_dropped")
        self._requests.append(job)
        self._cond.notify_all()

    def _answer_held(self, frame: Frame) -> list[Prompt]:
        missed: list[Prompt] = []
        waiting: deque[tuple[Stamp, Prompt]] = deque()
        for stamp, prompt in self._held:
            if stamp == frame.stamp:
                self._queue(Job(frame, prompt))
            elif stamp < frame.stamp:
                missed.append(prompt)
            else:
                waiting.append((stamp, prompt))
        self._held = waiting
        if missed:
            self._counters.add("prompt_frame_missed", len(missed))
        return missed

    def _pop(self) -> Job | None:
        if self._requests:
            job = self._requests.popleft()
        else:
            frame, self._pending = self._pending, None
            if frame is None:
                return None
            if self._standing is None and not self._idle:
                self._counters.add("frames_idle")  # the prompt was cleared while it waited
                return None
            job = Job(frame, self._standing)
        self._last_start = self._clock()
        return job
