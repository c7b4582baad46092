"""The node's scheduler without DDS: which frame runs with which prompt, counters, threads.

Real Scheduler objects; frames carry plain strings where the node puts messages. Waits are
bounded (take's timeout, join timeouts); a fake clock drives the rate limit.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from talk2sam_ros.ros.counters import Counters
from talk2sam_ros.ros.scheduler import UNSTAMPED, Job, Prompt, Request, Scheduler

NO_STOP = threading.Event()
SHORT = 0.05  # s: take() when nothing may be due


def _scheduler(**kwargs) -> tuple[Scheduler, Counters]:
    counters = Counters()
    return Scheduler(counters, **kwargs), counters


def _frame(s: Scheduler, sec: int, name: str | None = None) -> list[Prompt]:
    stamp = (sec, 0) if sec else UNSTAMPED
    return s.add_frame(stamp, f"header {sec}", name or f"image {sec}")


def _jobs(s: Scheduler, limit: int = 50) -> list[tuple[str, int | None]]:
    """Every job due now, as (image, prompt id)."""
    out = []
    for _ in range(limit):
        job = s.take(NO_STOP, SHORT)
        if job is None:
            return out
        out.append((job.frame.image, None if job.prompt is None else job.prompt.id))
    raise AssertionError("more jobs than expected")


def _stamped(prompt_id: int, boxes=None) -> Prompt:
    return Prompt(prompt_id, "cable", None if boxes is None else np.asarray(boxes, np.float32))


def test_the_standing_prompt_answers_the_newest_frame_and_older_ones_are_dropped():
    s, counters = _scheduler()
    s.set_standing(Prompt(1, "cable"))
    for sec in (1, 2, 3):
        _frame(s, sec)
    assert _jobs(s) == [("image 3", 1)]
    assert counters.snapshot()["frames_dropped"] == 2


def test_without_a_standing_prompt_frames_are_cached_idle_and_a_new_prompt_answers_the_newest():
    s, counters = _scheduler()
    _frame(s, 1)
    _frame(s, 2)
    assert _jobs(s) == []
    assert counters.snapshot()["frames_idle"] == 2
    s.set_standing(Prompt(7, "rope"))  # a prompt after a still image is answered
    assert _jobs(s) == [("image 2", 7)]
    assert s.set_standing(None).id == 7
    _frame(s, 3)
    assert _jobs(s) == []


def test_a_new_standing_prompt_answers_the_newest_frame_not_an_older_waiting_one():
    s, counters = _scheduler()
    s.set_standing(Prompt(1, "cable"))
    _frame(s, 1)  # waits for the worker
    s.set_standing(None)
    _frame(s, 2)  # cached, no prompt
    s.set_standing(Prompt(2, "rope"))
    assert _jobs(s) == [("image 2", 2)]
    assert counters.snapshot()["frames_dropped"] == 1


def test_idle_similarity_runs_frames_without_a_prompt():
    s, _ = _scheduler()
    s.configure(cache_size=8, idle=True, max_rate_hz=0.0)
    _frame(s, 1)
    assert _jobs(s) == [("image 1", None)]


def test_a_prompt_cleared_while_its_frame_waits_leaves_the_frame_idle():
    s, counters = _scheduler()
    s.set_standing(Prompt(1, "cable"))
    _frame(s, 1)
    s.set_standing(None)
    assert _jobs(s) == [] and counters.snapshot()["frames_idle"] == 1


def test_a_stamped_prompt_answers_its_cached_frame_once_and_leaves_the_standing_prompt():
    s, _ = _scheduler()
    standing = Prompt(1, "cable")
    s.set_standing(standing)
    _frame(s, 1)
    _frame(s, 2)
    assert s.request(_stamped(10), (1, 0)) is Request.QUEUED
    # the request first, then the newest frame with the standing prompt
    assert _jobs(s) == [("image 1", 10), ("image 2", 1)]
    assert s.standing is standing
    _frame(s, 3)
    assert _jobs(s) == [("image 3", 1)]  # never with the stamped prompt


def test_a_stamped_prompt_before_its_frame_waits_for_it():
    s, counters = _scheduler()
    assert s.request(_stamped(5), (5, 0)) is Request.HELD
    assert _jobs(s) == []
    assert _frame(s, 5) == []
    assert _jobs(s) == [("image 5", 5)]
    assert _jobs(s) == [] and counters.snapshot()["prompt_frame_missed"] == 0


def test_a_held_prompt_is_missed_when_a_newer_frame_comes_first():
    s, counters = _scheduler()
    s.request(_stamped(5), (5, 0))
    s.request(_stamped(9), (9, 0))
    missed = _frame(s, 6)  # frame 5 was lost on the way
    assert [p.id for p in missed] == [5]
    assert counters.snapshot()["prompt_frame_missed"] == 1
    assert _jobs(s) == []  # not applied to frame 6
    _frame(s, 9)
    assert _jobs(s) == [("image 9", 9)]


def test_a_stamped_prompt_for_a_frame_that_came_and_went_is_missed():
    s, counters = _scheduler(cache_size=2)
    for sec in (1, 2, 3):
        _frame(s, sec)
    assert s.request(_stamped(1), (1, 0)) is Request.MISSED  # evicted
    assert s.request(_stamped(2), (2, 5)) is Request.MISSED  # never received, older than 3
    assert counters.snapshot()["prompt_frame_missed"] == 2
    _frame(s, 4)
    assert _jobs(s) == []  # and it answers no other frame


def test_a_detector_sending_boxes_per_frame_gets_each_frame_answered_with_its_own_boxes():
    """Defect 5: frame N+1 was first run with frame N's boxes under its own header."""
    s, _ = _scheduler()
    answered = []
    for sec in range(1, 7):
        if sec % 2:  # the prompt overtakes the image, or comes after it
            s.request(_stamped(100 + sec), (sec, 0))
            _frame(s, sec)
        else:
            _frame(s, sec)
            answered += _jobs(s)  # nothing may run before the frame's own prompt
            s.request(_stamped(100 + sec), (sec, 0))
        answered += _jobs(s)
    assert answered == [(f"image {sec}", 100 + sec) for sec in range(1, 7)]


def test_unstamped_frames_are_answered_only_by_the_standing_prompt():
    s, _ = _scheduler()
    _frame(s, 0)
    assert s.request(_stamped(3), (3, 0)) is Request.HELD  # no stamped frame seen yet
    assert _jobs(s) == []
    s.set_standing(Prompt(1, "cable"))
    assert _jobs(s) == [("image 0", 1)]


def test_clear_forgets_frames_and_work_but_keeps_the_standing_prompt_and_the_last_stamp():
    s, _ = _scheduler()
    s.set_standing(Prompt(1, "cable"))
    _frame(s, 1)
    s.request(_stamped(8), (8, 0))
    s.clear()
    assert _jobs(s) == [] and s.find((1, 0)) is None
    assert s.standing.id == 1
    assert s.request(_stamped(2), (1, 0)) is Request.MISSED  # a frame from before
    _frame(s, 8)
    assert _jobs(s) == [("image 8", 1)]  # the held request went with the clear


def test_queued_and_held_requests_are_bounded():
    s, counters = _scheduler(max_requests=3)
    _frame(s, 1)
    for i in range(5):
        s.request(_stamped(i), (1, 0))
    assert counters.snapshot()["requests_dropped"] == 2  # the oldest two
    assert _jobs(s) == [("image 1", 2), ("image 1", 3), ("image 1", 4)]
    for i in range(5):
        s.request(_stamped(10 + i), (50 + i, 0))
    assert counters.snapshot()["requests_dropped"] == 4
    _frame(s, 54)
    assert _jobs(s) == [("image 54", 14)]
    counts = counters.snapshot()
    assert counts["prompt_frame_missed"] == 2 and counts["frames_dropped"] == 0  # 52, 53


def test_the_rate_limit_holds_a_due_frame_back_until_its_time():
    now = [100.0]
    s, _ = _scheduler(clock=lambda: now[0])
    s.configure(cache_size=8, idle=False, max_rate_hz=0.5)
    s.set_standing(Prompt(1, "cable"))
    _frame(s, 1)
    assert _jobs(s) == [("image 1", 1)]
    _frame(s, 2)
    assert _jobs(s) == []  # 2 s between starts
    now[0] += 2.0
    assert _jobs(s) == [("image 2", 1)]
    s.configure(cache_size=8, idle=False, max_rate_hz=0.0)  # lifting it applies at once
    _frame(s, 3)
    assert _jobs(s) == [("image 3", 1)]


def test_a_smaller_cache_keeps_the_newest_frames():
    s, _ = _scheduler(cache_size=4)
    for sec in (1, 2, 3, 4):
        _frame(s, sec)
    s.configure(cache_size=2, idle=False, max_rate_hz=0.0)
    assert s.find((2, 0)) is None and s.find((3, 0)).image == "image 3"
    assert s.find((4, 0)).paired == {}  # room for inputs paired by stamp (depth, CameraInfo)


def test_a_waiting_worker_wakes_for_a_frame_and_for_its_stop_event():
    s, _ = _scheduler()
    s.set_standing(Prompt(1, "cable"))
    got: list[Job | None] = []
    stop = threading.Event()
    worker = threading.Thread(target=lambda: got.append(s.take(stop, 30.0)))
    worker.start()
    _frame(s, 1)
    worker.join(10.0)
    assert not worker.is_alive() and got[0].frame.image == "image 1"
    worker = threading.Thread(target=lambda: got.append(s.take(stop, 30.0)))
    worker.start()
    stop.set()
    s.wake()
    worker.join(10.0)
    assert not worker.is_alive() and got[1] is None


def test_concurrent_frames_prompts_and_a_worker_account_for_every_frame():
    s, counters = _scheduler()
    s.set_standing(Prompt(1, "cable"))
    stop = threading.Event()
    taken: list[Job] = []

    def work() -> None:
        while not stop.is_set():
            job = s.take(stop, 0.2)
            if job is not None:
                taken.append(job)

    worker = threading.Thread(target=work)
    worker.start()
    try:
        for sec in range(1, 301):
            _frame(s, sec)
            if sec % 10 == 0:  # a stamped request for a recent frame now and then
                s.request(_stamped(1000 + sec), (sec - 1, 0))
                time.sleep(0.001)  # let the worker in
        for _ in range(100):  # until the worker has taken the last frame
            if any(j.frame.image == "image 300" for j in taken):
                break
            worker.join(0.05)
    finally:
        stop.set()
        s.wake()
        worker.join(10.0)
    assert not worker.is_alive()
    standing = [j for j in taken if j.prompt.id == 1]
    requests = [j for j in taken if j.prompt.id != 1]
    counts = counters.snapshot()
    assert len(standing) + counts["frames_dropped"] == 300  # each frame processed or dropped
    assert standing[-1].frame.image == "image 300"  # the newest is never dropped
    seqs = [j.frame.seq for j in standing]
    assert seqs == sorted(seqs)
    assert all(j.frame.stamp == (j.prompt.id - 1001, 0) for j in requests)
    assert len(requests) + counts["requests_dropped"] == 30


@pytest.mark.parametrize("stamp", [(1, 0), (0, 1)])
def test_any_non_zero_stamp_is_a_stamp(stamp):
    s, _ = _scheduler()
    s.add_frame(stamp, "header", "image")
    assert s.request(_stamped(4), stamp) is Request.QUEUED
