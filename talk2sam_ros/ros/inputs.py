"""The segmentation node's input side: QoS of its topics, incoming messages checked into the
scheduler's objects, the prompt log policy and DDS's lost-message events.

Kept out of ros/node.py so that the node stays a thin adapter (wiring and lifecycle only).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rclpy.event_handler import QoSMessageLostInfo, SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from talk2sam_ros.msg import TextBoxPrompt
from talk2sam_ros.ros import conversions as conv
from talk2sam_ros.ros.params import NodeConfig
from talk2sam_ros.ros.scheduler import UNSTAMPED, Prompt, Stamp
from talk2sam_ros.ros.worker import LOG_PERIOD_S, stamp_text

CATEGORY_PROMPT_ID = -1  # prompts from `category` (text only) carry this id in their results
# Prompts are small commands: a deep reliable queue loses no burst.
PROMPT_QOS = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                        reliability=ReliabilityPolicy.RELIABLE)

# warn(counter, line, kind, count): the node's counted, throttled warning
Warn = Callable[..., None]


def qos_profile(depth: int, reliability: str) -> QoSProfile:
    """KEEP_LAST `depth`, volatile; reliability "reliable" or "best_effort"."""
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable"
                      else ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)


def check_frame(msg: Image | CompressedImage, bridge: Any) -> None:
    """The O(1) checks of an incoming frame (InputRejected with the reason); compressed
    frames are decoded, and checked further, on the worker."""
    if isinstance(msg, CompressedImage):
        if len(msg.data) == 0:
            raise conv.InputRejected("compressed image has no data")
    else:
        conv.check_image(msg, bridge)


def prompt_from_msg(msg: TextBoxPrompt, cfg: NodeConfig) -> tuple[Prompt, Stamp]:
    """A `prompt` message as the scheduler's Prompt and the stamp it asks for (UNSTAMPED: the
    standing prompt). InputRejected for a text or boxes the node refuses."""
    text = conv.clean_text(msg.text, cfg.max_text_length)
    boxes = conv.boxes_from_msg(msg.boxes, cfg.max_boxes)
    return Prompt(int(msg.id), text, boxes, msg.header.frame_id), conv.stamp_key(msg.header)


def category_prompt(msg: String, cfg: NodeConfig) -> Prompt | None:
    """A `category` message as a text-only standing Prompt (None: the empty text clears)."""
    text = conv.clean_text(msg.data, cfg.max_text_length)
    return Prompt(CATEGORY_PROMPT_ID, text) if text else None


class PromptLog:
    """Log lines of received prompts. A detector re-sends its boxes every frame: the text is
    logged at info level when it changes, the rest at debug level, so 30 Hz prompts do not
    flood the console. Used from the executor thread only."""

    def __init__(self, logger: Any) -> None:
        self._logger = logger
        self._last_text: str | None = None

    def received(self, prompt: Prompt, stamp: Stamp) -> None:
        line = (f"prompt {prompt.id}: {prompt.text[:80]!r}, "
                f"{0 if prompt.boxes is None else len(prompt.boxes)} box(es)"
                + ("" if stamp == UNSTAMPED else f" for frame {stamp_text(stamp)}"))
        changed, self._last_text = prompt.text != self._last_text, prompt.text
        (self._logger.info if changed else self._logger.debug)(line)

    def missed(self, prompt: Prompt, stamp: Stamp | None = None) -> None:
        frame = "its frame" if stamp is None else f"frame {stamp_text(stamp)}"
        self._logger.warning(
            f"prompt {prompt.id}: {frame} is not among the cached frames (it came and went, "
            "or never arrived): not applied to any other frame",
            throttle_duration_sec=LOG_PERIOD_S)


def lost_events(warn: Warn, counter: str, what: str) -> SubscriptionEventCallbacks:
    """DDS's message_lost event of a subscription, counted and logged (docs/transport.md)."""
    def lost(info: QoSMessageLostInfo) -> None:
        if info.total_count_change > 0:
            warn(counter, f"{info.total_count_change} {what}(s) lost in transport "
                 f"({info.total_count} since the subscription started): the publisher "
                 "needs the Fast DDS image profile, see docs/transport.md",
                 kind="lost", count=info.total_count_change)
    return SubscriptionEventCallbacks(message_lost=lost)


def subscribe(node: Node, cfg: NodeConfig, warn: Warn, *, image: Callable, prompt: Callable,
              category: Callable, depth: Callable, camera_info: Callable) -> list[Any]:
    """The subscriptions of one activation: `image` (or `<image>/compressed`), `prompt`,
    `category` and, with use_depth, `depth` and `camera_info`; each argument its callback."""
    image_qos = qos_profile(cfg.qos_depth, cfg.qos_reliability)
    # compressed: `<resolved image>/compressed`, as image_transport names it
    image_type, image_topic = ((CompressedImage, node.resolve_topic_name("image") + "/compressed")
                               if cfg.image_transport == "compressed" else (Image, "image"))
    subs = [node.create_subscription(image_type, image_topic, image, image_qos,
                                     event_callbacks=lost_events(
                                         warn, "frames_lost_in_transport", "image frame")),
            node.create_subscription(TextBoxPrompt, "prompt", prompt, PROMPT_QOS),
            node.create_subscription(String, "category", category, PROMPT_QOS)]
    if cfg.use_depth:
        subs += [node.create_subscription(Image, "depth", depth, image_qos,
                                          event_callbacks=lost_events(
                                              warn, "depth_lost_in_transport", "depth frame")),
                 node.create_subscription(CameraInfo, "camera_info", camera_info, image_qos)]
    return subs
