"""Playing a recorded bag into the real node through the harness (``talk2sam-demo --bag``).

The bag's colour frames (and its aligned depth and camera_info, on the node's ``depth`` /
``camera_info`` inputs when given) are published with their recorded headers under a prompt
schedule, either

- ``max``: one frame at a time, each with a stamped prompt (a request for that frame only), the
  next once it is answered: every frame is processed once; or
- ``recorded``: at the recorded timing under a standing prompt; the node drops what it cannot
  keep up with (newest kept), as on the robot, and re-runs its newest frame when the schedule
  changes the prompt.

The node's outputs are recorded by the harness client's ``on_output`` callback (a
bags.OutputRecorder told each played frame's recorded time).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from sensor_msgs.msg import CompressedImage

from talk2sam_ros.ros import conversions as conv
from talk2sam_ros.tools.bags import (OutputRecorder, PlayFrame, PromptChange, Stamp,
                                     played_stamp, prompt_index)
from talk2sam_ros.tools.harness import FrameResult, NodeError, NodeHarness, stamped_header

# ----------------------------------------------------------------------------- frames to play


@dataclass
class Played:
    """One colour frame of the bag and what became of it."""

    frame: PlayFrame
    stamp: Stamp
    prompt_id: int = 0  # 0: none
    status: str = "played"  # played | no_prompt | stamp_not_increasing | rejected
    reason: str = ""
    png: bool = False  # its PNGs are written (every png_every-th frame played)
    camera_info: Any = None  # the last one published before it (for its 3D figure)
    answer: FrameResult | None = None

    def release_image(self) -> None:
        """Drop the image too (its PNGs are written)."""
        self.png = False
        self.release()

    def release(self) -> None:
        """Drop the frame's messages once published, unless its PNGs still need the image
        (a long bag is never held in memory)."""
        image = self.frame.image if self.png else replace(self.frame.image, msg=None)
        self.frame = replace(self.frame, image=image, companions=())
        if not self.png:
            self.camera_info = None


def plan_frames(frames: Iterator[PlayFrame], schedule: tuple[PromptChange, ...],
                max_frames: int | None = None, png_every: int = 0,
                check: Callable[[Any], str] | None = None) -> Iterator[Played]:
    """Each colour frame with its played stamp and prompt id, or why it is not played: no
    prompt yet in the schedule, a stamp not after the previous frame's (the node keys frames
    and answers by stamp), or `check(msg)` rejecting it (the node's own image check).
    Stops after `max_frames` played frames."""
    last: Stamp | None = None
    played = 0
    for frame in frames:
        if max_frames is not None and played >= max_frames:
            return
        stamp = played_stamp(frame.image)
        for other in frame.companions:
            played_stamp(other)
        item = Played(frame, stamp, prompt_index(schedule, frame.at_s) + 1)
        if item.prompt_id == 0:
            item.status = "no_prompt"
        elif last is not None and stamp <= last:
            item.status, item.reason = "stamp_not_increasing", f"stamp {stamp} after {last}"
        elif check is not None and (reason := check(frame.image.msg)):
            item.status, item.reason = "rejected", reason
        if item.status == "played":
            item.png = png_every > 0 and played % png_every == 0
            last, played = stamp, played + 1
        yield item


def image_check(bridge: Any) -> Callable[[Any], str]:
    """The node's check of a raw Image (encoding, sizes, data length) as a function returning
    the reason ("" when it is fine); compressed frames are checked by the node only."""
    def check(msg: Any) -> str:
        if isinstance(msg, CompressedImage):
            return ""
        try:
            conv.check_image(msg, bridge)
        except conv.InputRejected as exc:
            return str(exc)
        return ""
    return check


def frame_rgb(msg: Any, bridge: Any) -> np.ndarray:
    """The colour frame as RGB (for its PNGs), decoded as the node decodes it."""
    if isinstance(msg, CompressedImage):
        return conv.compressed_to_rgb(msg, bridge)
    return conv.image_to_rgb(msg, bridge)


# ----------------------------------------------------------------------------- playback


@dataclass
class Player:
    """A running bag playback: the harness, the recorder, the prompt schedule (prompt ids are
    schedule index + 1) and where inputs go."""

    harness: NodeHarness
    recorder: OutputRecorder
    schedule: tuple[PromptChange, ...]
    image_topic: str = "image"  # the node's image input (image, or image/compressed)
    with_inputs: bool = False  # also write the played inputs into the output bag
    rate: str = "max"
    expected: list[str] | None = None  # outputs awaited after a result (None: all)
    camera_info: Any = None  # the last camera_info published
    standing: int = 0  # the standing prompt's schedule id (recorded rate), 0: none
    announced: bool = False

    def publish(self, msg: Any, role: str) -> None:
        """A bag message on the node's input for `role` (also into the output bag if asked)."""
        client = self.harness.client
        if role == "image":
            client.publish_image_msg(msg.msg)
        elif role == "depth":
            client.publish_depth(msg.msg, msg.msg.header)
        else:
            client.publish_camera_info(msg.msg, msg.msg.header)
            self.camera_info = msg.msg
        if self.with_inputs:
            self.recorder.write_input(self.image_topic if role == "image" else role, msg.msg,
                                      msg.time_ns)

    def prompt(self, pid: int, stamp_header: Any = None) -> None:
        """Schedule entry `pid` as a prompt: for the frame of `stamp_header` only, or (None)
        the standing prompt. Boxes are in the bag's colour pixels (frame_id left empty)."""
        change = self.schedule[pid - 1]
        self.harness.client.publish_prompt(
            pid, change.text, () if change.boxes is None else change.boxes, stamp=stamp_header)

    def text(self, pid: int) -> str:
        return self.schedule[pid - 1].text

    def announce(self) -> None:
        """Say once that the node answers (after its start-up, which can take a while)."""
        if not self.announced:
            self.announced = True
            print(f"[demo] the node answered a first frame; playing at {self.rate} rate",
                  flush=True)


def play_max(s: Player, items: Iterator[Played]) -> Iterator[Played]:
    """Each frame after its companions and a stamped prompt for it; waits for its answer."""
    h = s.harness
    for item in items:
        if item.status == "played":
            frame = item.frame
            s.recorder.expect(item.stamp, frame.image.time_ns)
            for other in frame.companions:
                s.publish(other, other.role)
            s.prompt(item.prompt_id, frame.image.msg.header)
            s.publish(frame.image, "image")
            item.camera_info = s.camera_info
            item.answer = h.wait_answer(item.stamp, item.prompt_id, s.text(item.prompt_id),
                                        others=s.expected)
            if item.answer is not None:
                s.announce()
                h.measured(item.answer)
                # The outputs the node sent for every frame so far are awaited for the next
                # (some come only for some frames, e.g. grasp_pose for an ok 3D grasp; any
                # that come later are recorded all the same).
                s.expected = [t for t in (h.output_topics if s.expected is None
                                          else s.expected) if t in item.answer.outputs]
        else:
            for other in item.frame.companions:  # depth keeps flowing, as recorded
                s.publish(other, other.role)
        item.release()
        yield item


def warm_up(s: Player, items: Iterator[Played]) -> Iterator[Played]:
    """Before a recorded-rate run: the first frame played (as a copy stamped now, so it is not
    recorded) answered under its prompt, which becomes the standing prompt. The model's lazy
    start-up then does not fall on the recording, and the answer's latency bounds the wait for
    the stragglers at the end."""
    h = s.harness
    first = None
    held: list[Played] = []
    for item in items:
        held.append(item)
        if item.status == "played":
            first = item
            break
    if first is not None:
        rgb = frame_rgb(first.frame.image.msg, h.client.bridge)
        s.prompt(first.prompt_id)
        s.standing = first.prompt_id
        header = stamped_header(first.frame.image.msg.header.frame_id)
        h.client.publish_image(rgb, "rgb8", header)
        answer = h.wait_answer(conv.stamp_key(header), first.prompt_id,
                               s.text(first.prompt_id))
        if answer is None:
            raise NodeError(f"the node did not answer a first frame within "
                            f"{h.answer_timeout_s:.0f} s; see {h.log_path}")
        h.measured(answer)
        s.announce()
    yield from held
    yield from items


def play_recorded(s: Player, items: Iterator[Played]) -> Iterator[Played]:
    """Every message at its recorded time (from the first one played); the standing prompt
    follows the schedule. Answers are collected after the last frame."""
    h = s.harness
    client = h.client
    items = warm_up(s, items)
    start, base_ns = 0.0, None
    played: list[Played] = []
    for item in items:  # (the warm-up runs on the first item)
        frame = item.frame
        if client.check is not None:
            client.check()  # e.g. the node exited: NodeError
        for msg in sorted((frame.image, *frame.companions), key=lambda m: m.time_ns):
            if base_ns is None:
                start, base_ns = time.monotonic(), msg.time_ns
            due = start + (msg.time_ns - base_ns) / 1e9
            while (wait := due - time.monotonic()) > 0:
                client.executor.spin_once(timeout_sec=min(wait, 0.01))
            if msg is not frame.image:
                s.publish(msg, msg.role)
            elif item.status == "played":
                if item.prompt_id != s.standing:
                    s.prompt(item.prompt_id)
                    s.standing = item.prompt_id
                s.recorder.expect(item.stamp, msg.time_ns)
                s.publish(msg, "image")
                item.camera_info = s.camera_info
        item.release()
        played.append(item)
    h.wait_stragglers()
    for item in played:
        if item.status == "played":
            outputs = client.outputs
            got = outputs.latest(item.stamp, "result", lambda m: m.prompt_id == item.prompt_id) \
                or outputs.latest(item.stamp, "result")
            item.answer = None if got is None else h.frame_result(item.stamp, got)
        yield item


# ----------------------------------------------------------------------------- the run


def frame_record(item: Played) -> dict[str, Any]:
    frame = item.frame
    rec: dict[str, Any] = {"index": frame.index, "at_s": round(frame.at_s, 6),
                           "stamp": f"{item.stamp[0]}.{item.stamp[1]:09d}",
                           "status": item.status, "prompt_id": item.prompt_id,
                           "answered": item.answer is not None}
    if item.reason:
        rec["reason"] = item.reason
    res = item.answer
    if res is not None:
        r = res.result
        rec.update(text=r.text, answered_prompt_id=int(r.prompt_id), latency_ms=res.latency_ms,
                   mask_area=int(r.mask_area),
                   score=float(max(r.scores)) if len(r.scores) else None,
                   boxes=[round(float(v), 1) for v in r.boxes])
        grasp = res.outputs.get("grasp")
        if grasp is not None:
            rec["grasp"] = "valid" if grasp.valid else "none"
            if grasp.depth_status:
                rec["depth_status"] = grasp.depth_status
    return rec


PLAYERS = {"max": play_max, "recorded": play_recorded}  # --bag-rate, the first the default
