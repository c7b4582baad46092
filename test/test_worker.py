"""The node's worker thread without DDS: a model failure on a frame is one log line, counted.

Real Worker, Scheduler, Counters, cv_bridge and Image message; the model is replaced by one
that fails the way torch does (a multi-line RuntimeError), since a real model failing on
demand is not available on CPU. The logger records what the worker logs. Waits are bounded.
"""
from __future__ import annotations

import threading
import time

import numpy as np
from std_msgs.msg import Header

from talk2sam_ros.ros import conversions as conv
from talk2sam_ros.ros.counters import Counters
from talk2sam_ros.ros.params import PARAMS, node_config_from_params
from talk2sam_ros.ros.scheduler import Prompt, Scheduler
from talk2sam_ros.ros.worker import Worker

TORCH_LIKE = ("CUDA error: an illegal memory access was encountered\n"
              "CUDA kernel errors might be asynchronously reported at some other API call.\n"
              "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n")


class _FailingModel:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def set_image(self, rgb: np.ndarray) -> None:
        raise self.exc


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def error(self, line: str, **_: object) -> None:
        self.lines.append(line)

    warning = info = debug = error


def _worker(exc: Exception, log: _Log, rejected: list[str]) -> tuple[Worker, Scheduler,
                                                                    Counters]:
    counters = Counters()
    scheduler = Scheduler(counters)
    cfg = node_config_from_params({spec.name: spec.default for spec in PARAMS})
    worker = Worker(scheduler, _FailingModel(exc), {}, conv.make_bridge(), counters, log,
                    lambda: cfg, lambda counter, what, reason: rejected.append(reason),
                    time.monotonic_ns, lambda: True, warn=lambda *a, **k: None)
    return worker, scheduler, counters


def _frame(scheduler: Scheduler, sec: int) -> None:
    header = Header(frame_id="camera")
    header.stamp.sec = sec
    image = conv.make_bridge().cv2_to_imgmsg(np.zeros((8, 8, 3), np.uint8), "rgb8")
    image.header = header
    scheduler.add_frame(conv.stamp_key(header), header, image)


def _wait(done, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        threading.Event().wait(0.02)
    return done()


def test_a_model_failure_is_one_counted_log_line_and_the_worker_goes_on():
    log, rejected = _Log(), []
    worker, scheduler, counters = _worker(RuntimeError(TORCH_LIKE), log, rejected)
    scheduler.set_standing(Prompt(1, "cable"))
    worker.start()
    try:
        for sec in (1, 2):  # two frames: the worker survives the first failure
            _frame(scheduler, sec)
            assert _wait(lambda: counters.snapshot()["errors"] >= sec)
            assert counters.snapshot()["errors"] == sec and worker.alive
    finally:
        assert worker.stop(10.0)
    assert len(log.lines) == 2, log.lines
    for line in log.lines:
        assert "\n" not in line and "RuntimeError: CUDA error" in line and "DSA" in line, line


def test_a_frame_rejected_with_a_multi_line_reason_is_one_line():
    log, rejected = _Log(), []
    worker, scheduler, _ = _worker(ValueError("bad frame\n  detail\n"), log, rejected)
    scheduler.set_standing(Prompt(1, "cable"))
    worker.start()
    try:
        _frame(scheduler, 1)
        assert _wait(lambda: len(rejected) == 1)
    finally:
        assert worker.stop(10.0)
    assert rejected == ["bad frame detail"] and not log.lines
