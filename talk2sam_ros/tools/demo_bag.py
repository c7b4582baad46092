"""``talk2sam-demo --bag``: a recorded ROS 2 bag through the real node, its outputs into a bag.

The bag's colour frames (and, with ``--depth-topic``/``--camera-info-topic``, its aligned depth
and camera_info) are published to the node over DDS with their recorded headers, under the
prompt schedule (``--text``/``--box`` from the start, or ``--prompts`` YAML), either

- ``--bag-rate max`` (default): one frame at a time, each with a stamped prompt (a request for
  that frame only), the next once it is answered: every frame is processed once; or
- ``--bag-rate recorded``: at the recorded timing under a standing prompt; the node drops what
  it cannot keep up with (newest kept), as on the robot, and re-runs its newest frame when the
  schedule changes the prompt.

Every output the node publishes (the outputs of its topic table, talk2sam_ros.ros.params) goes
into the output bag at its source frame's recorded time, with the source frame's header. PNGs of
every N-th frame played and summary.json / summary.md go to the output folder, as in the demo.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from sensor_msgs.msg import CompressedImage

from talk2sam_ros.common.cli import UsageError
from talk2sam_ros.ros import conversions as conv
from talk2sam_ros.ros.messages import message_class
from talk2sam_ros.ros.params import PARAM_BY_NAME, PUBLICATIONS, SUBSCRIPTIONS, TOPIC_BY_NAME
from talk2sam_ros.tools.bags import (BagTopics, InputBag, OutputBag, OutputRecorder,
                                     PlayFrame, PromptChange, Stamp, check_output_path,
                                     load_prompt_schedule, play_frames, played_stamp,
                                     prompt_index, prompt_schedule)
from talk2sam_ros.tools.demo import (BAG_RATES, DemoConfig, DemoError, DemoFrame, fmt,
                                     latency_summary, latency_table, node_counters, plan_node,
                                     save_frame_pngs, write_summary)
from talk2sam_ros.tools.harness import FrameResult, NodeError, NodeHarness, stamped_header
from talk2sam_ros.weights.registry import cache_dir_path

DEPTH_ROLES = ("depth", "camera_info")  # node inputs a bag may also feed, as in the topic table


@dataclass(frozen=True)
class BagDemoConfig:
    """The bag mode: `node` holds the node and weights options shared with the demo."""

    node: DemoConfig
    bag: Path
    topics: BagTopics
    schedule: tuple[PromptChange, ...]
    rate: str = "max"
    output_bag: Path | None = None  # None: <out>/outputs
    storage: str = "mcap"
    namespace: str = ""
    with_inputs: bool = False
    png_every: int = 10
    max_frames: int | None = None


def config_from_args(args: argparse.Namespace, node: DemoConfig) -> BagDemoConfig:
    """The bag options of the demo's command line (demo.build_parser)."""
    if not args.image_topic:
        raise UsageError("--bag needs --image-topic (the bag's colour topic)")
    if bool(args.depth_topic) != bool(args.camera_info_topic):
        raise UsageError("--depth-topic and --camera-info-topic go together")
    if args.prompts and (args.text or args.box):
        raise UsageError("--prompts replaces --text/--box: give one or the other")
    if args.png_every is not None and args.png_every < 0:
        raise UsageError(f"--png-every must be >= 0, got {args.png_every}")
    if args.prompts:
        schedule = load_prompt_schedule(args.prompts)
    else:
        schedule = prompt_schedule([{"t": 0.0, "text": args.text or "cable",
                                     "boxes": args.box}], "--text/--box")
    return BagDemoConfig(
        node=node, bag=Path(args.bag),
        topics=BagTopics(args.image_topic, args.depth_topic or "", args.camera_info_topic or ""),
        schedule=schedule, rate=args.bag_rate or BAG_RATES[0],
        output_bag=Path(args.output_bag).resolve() if args.output_bag else None,
        storage=args.output_storage or "mcap", namespace=args.output_namespace or "",
        with_inputs=args.with_inputs, png_every=10 if args.png_every is None else args.png_every,
        max_frames=args.max_frames)


def node_inputs(topics: BagTopics) -> dict[str, type]:
    """The node's extra inputs the bag feeds (role = the node's topic name) and their message
    classes, from the node's topic table; an error if this node has no such input."""
    inputs: dict[str, type] = {}
    for role in DEPTH_ROLES:
        if topics.by_role().get(role):
            if role not in SUBSCRIPTIONS:
                raise DemoError(f"this talk2sam node has no {role} input (its inputs: "
                                f"{', '.join(SUBSCRIPTIONS)}): play the bag without "
                                f"--{role.replace('_', '-')}-topic")
            inputs[role] = message_class(TOPIC_BY_NAME[role].msg_type)
    return inputs


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
class Session:
    """A running bag playback: the harness, the recorder and the settings."""

    harness: NodeHarness
    recorder: OutputRecorder
    cfg: BagDemoConfig
    image_topic: str  # the node's image input (image, or image/compressed)
    schedule: tuple[PromptChange, ...]
    expected: list[str] = field(default_factory=list)  # outputs awaited after a result
    standing: int = 0  # the standing prompt's schedule id (recorded rate), 0: none
    announced: bool = False

    def publish(self, msg: Any, role: str) -> None:
        """A bag message on the node's input for `role` (also into the output bag if asked)."""
        client = self.harness.client
        if role == "image":
            client.publish_image_msg(msg.msg)
        else:
            client.publish_input(role, msg.msg)
        if self.cfg.with_inputs:
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
            print(f"[demo] the node answered a first frame; playing at {self.cfg.rate} rate",
                  flush=True)


def play_max(s: Session, items: Iterator[Played]) -> Iterator[Played]:
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
            item.answer = h.wait_answer(item.stamp, item.prompt_id, s.text(item.prompt_id),
                                        others=s.expected or None)
            if item.answer is not None:
                s.announce()
                h.measured(item.answer)
                # what the node published for this frame: awaited for the next ones
                s.expected = [t for t in item.answer.outputs if t != "result"]
        else:
            for other in item.frame.companions:  # depth keeps flowing, as recorded
                s.publish(other, other.role)
        item.release()
        yield item


def warm_up(s: Session, items: Iterator[Played]) -> Iterator[Played]:
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


def play_recorded(s: Session, items: Iterator[Played]) -> Iterator[Played]:
    """Every message at its recorded time (from the first one played); the standing prompt
    follows the schedule. Answers are collected after the last frame."""
    h = s.harness
    client = h.client
    items = warm_up(s, items)
    start, base_ns = 0.0, None
    played: list[Played] = []
    for item in items:  # (the warm-up runs on the first item)
        frame = item.frame
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


def run_bag_demo(cfg: BagDemoConfig) -> dict[str, Any]:
    """The bag mode of the demo; returns the summary (also written to the output folder)."""
    out = cfg.node.out
    with InputBag(cfg.bag) as bag:
        bag.check(cfg.topics)  # every bad-input error before anything starts
        compressed = bag.topics[cfg.topics.image] == "sensor_msgs/msg/CompressedImage"
        inputs = node_inputs(cfg.topics)
        output_path = check_output_path(cfg.output_bag or out / "outputs", cfg.storage)
        out.mkdir(parents=True, exist_ok=True)
        extra: dict[str, Any] = {}
        if compressed:
            extra["image_transport"] = "compressed"
        if inputs and "use_depth" in PARAM_BY_NAME:
            extra["use_depth"] = True
        node = plan_node(cfg.node, cache_dir_path(cfg.node.weights_dir), extra)
        image_topic = "image/compressed" if compressed else "image"
        recorder = OutputRecorder(None, cfg.namespace)
        print(f"[demo] starting the node (preset {cfg.node.preset}, {cfg.node.device}); log: "
              f"{out / 'node.log'}", flush=True)
        harness = NodeHarness(node.settings, out / "node.log", cfg.node.timeout_s,
                              outputs=PUBLICATIONS, image_topic=image_topic,
                              compressed=compressed, inputs=inputs, on_output=recorder)
        with harness as h:
            print(f"[demo] node active on ROS_DOMAIN_ID {h.domain}; playing {cfg.bag} "
                  f"({bag.count(cfg.topics.image)} frames on {cfg.topics.image}, "
                  f"{cfg.rate} rate) into {output_path}", flush=True)
            with OutputBag(output_path, cfg.storage) as obag:
                recorder.bag = obag
                items = plan_frames(play_frames(bag.messages(cfg.topics), bag.start_ns),
                                    cfg.schedule, cfg.max_frames, cfg.png_every,
                                    image_check(h.client.bridge))
                session = Session(h, recorder, cfg, image_topic, cfg.schedule)
                player = play_max if cfg.rate == "max" else play_recorded
                played = list(_with_pngs(player(session, items), out, cfg, h.client.bridge))
                h.spin(0.5)  # the last frame's late outputs
            counts = dict(obag.counts)
    answers = [item.answer for item, _ in played if item.answer is not None]
    records = [rec for _, rec in played]
    by_status = {s: sum(1 for r in records if r["status"] == s) for s in
                 ("played", "no_prompt", "stamp_not_increasing", "rejected")}
    output_topics = {t: n for t, n in counts.items()
                     if t.rsplit("/", 1)[-1] in PUBLICATIONS}
    summary = {
        "mode": "bag", "preset": cfg.node.preset, "device": cfg.node.device,
        "output_dir": str(out), "weights": node.weights, "quality_note": node.quality_note,
        "ros_domain_id": h.domain, "bag": str(cfg.bag), "topics": cfg.topics.by_role(),
        "rate": cfg.rate, "output_bag": str(output_path), "output_storage": cfg.storage,
        "output_counts": counts, "output_topics": output_topics,
        "frames_in_bag": len(records), "frames_skipped": {k: v for k, v in by_status.items()
                                                          if k != "played"},
        "frames_played": by_status["played"], "frames_processed": len(answers),
        "frames_unanswered": by_status["played"] - len(answers),
        "depth_status": _tally(r.get("depth_status") for r in records),
        **latency_summary(answers),
        "node_counters": node_counters(answers[-1].result) if answers else None,
        "outputs_not_from_played_frames": recorder.unplaced,
        "frames": records,
    }
    write_summary(out, summary, summary_markdown(summary))
    return summary


def _tally(values: Iterator[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        if v:
            counts[v] = counts.get(v, 0) + 1
    return counts


def _with_pngs(items: Iterator[Played], out: Path, cfg: BagDemoConfig, bridge: Any
               ) -> Iterator[tuple[Played, dict[str, Any]]]:
    """(item, its summary record), with the PNGs of every png_every-th played frame."""
    for item in items:
        rec = frame_record(item)
        if item.png and item.answer is not None:
            change = cfg.schedule[item.prompt_id - 1]
            frame = DemoFrame(f"t{item.frame.at_s:.3f}s",
                              frame_rgb(item.frame.image.msg, bridge), change.text,
                              change.boxes, source=str(cfg.bag))
            rec["files"] = save_frame_pngs(out, item.frame.index, frame, item.answer)
            item.release_image()
        yield item, rec


def summary_markdown(s: Mapping[str, Any]) -> str:
    skipped = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in s["frames_skipped"].items()
                        if v) or "none"
    lines = [f"# talk2sam-demo --bag: preset `{s['preset']}` on {s['device']}", "",
             f"Weights: {s['weights']}. {s['quality_note']}", "",
             f"Bag {s['bag']} ({', '.join(f'{k} {v}' for k, v in s['topics'].items())}), "
             f"{s['rate']} rate: {s['frames_in_bag']} colour frames, {s['frames_played']} "
             f"played, {s['frames_processed']} processed, {s['frames_unanswered']} "
             f"unanswered; skipped: {skipped}.", "",
             f"Output bag ({s['output_storage']}): {s['output_bag']}", "",
             "| topic | messages |", "|---|---:|"]
    lines += [f"| `{t}` | {n} |" for t, n in sorted(s["output_counts"].items())]
    if s["depth_status"]:
        lines += ["", "3D grasp depth_status: " + ", ".join(
            f"{k} {v}" for k, v in sorted(s["depth_status"].items()))]
    lines += ["", *latency_table(dict(s)), "",
              "| # | stamp | status | prompt | mask px | score | grasp | ms |",
              "|---:|---|---|---|---:|---:|---|---:|"]
    for r in s["frames"]:
        lines.append(f"| {r['index']} | {r['stamp']} | {r['status']} | {r.get('text', '-')} | "
                     f"{r.get('mask_area', '-')} | {fmt(r.get('score'), 2)} | "
                     f"{r.get('grasp', '-')} | {fmt(r.get('latency_ms'))} |")
    return "\n".join(lines) + "\n"
