"""The node's input side without DDS (talk2sam_ros.ros.inputs): messages checked into the
scheduler's prompts, frame checks, QoS profiles, the prompt log policy.

Real messages and NodeConfig; the node's behaviour over DDS is in test_node*.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from rclpy.qos import ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from talk2sam_ros.msg import TextBoxPrompt
from talk2sam_ros.ros import conversions as conv
from talk2sam_ros.ros import inputs
from talk2sam_ros.ros.params import node_config_from_params
from talk2sam_ros.ros.scheduler import UNSTAMPED

CFG = node_config_from_params({"preset": "tiny", "max_boxes": 2, "max_text_length": 12})


def _prompt(text: str, boxes: list[float], sec: int = 0) -> TextBoxPrompt:
    msg = TextBoxPrompt(id=7, text=text, boxes=boxes)
    msg.header.stamp.sec, msg.header.frame_id = sec, "cam"
    return msg


def test_prompt_message_becomes_a_prompt_for_its_stamp():
    prompt, stamp = inputs.prompt_from_msg(_prompt("  cable ", [1, 2, 30, 40]), CFG)
    assert (prompt.id, prompt.text, prompt.frame_id, stamp) == (7, "cable", "cam", UNSTAMPED)
    np.testing.assert_array_equal(prompt.boxes, [[1, 2, 30, 40]])
    prompt, stamp = inputs.prompt_from_msg(_prompt("rope", [], sec=5), CFG)
    assert (prompt.boxes, stamp) == (None, (5, 0))


@pytest.mark.parametrize("text, boxes, reason", [
    ("a" * 13, [], "max_text_length 12"),
    ("cable", [0, 0, 1, 1] * 3, "max_boxes"),
    ("cable", [0, 0, 1], "multiple of 4"),
])
def test_refused_prompts_say_why(text, boxes, reason):
    with pytest.raises(conv.InputRejected, match=reason):
        inputs.prompt_from_msg(_prompt(text, boxes), CFG)


def test_category_is_a_text_only_standing_prompt_and_empty_clears():
    prompt = inputs.category_prompt(String(data=" black cable "), CFG)
    assert (prompt.id, prompt.text, prompt.boxes) == (inputs.CATEGORY_PROMPT_ID, "black cable",
                                                     None)
    assert inputs.category_prompt(String(data="   "), CFG) is None
    with pytest.raises(conv.InputRejected):
        inputs.category_prompt(String(data="x" * 13), CFG)


def test_frame_checks():
    bridge = conv.make_bridge()
    with pytest.raises(conv.InputRejected, match="no data"):
        inputs.check_frame(CompressedImage(format="png"), bridge)
    inputs.check_frame(CompressedImage(format="png", data=b"\x89PNG"), bridge)  # decoded later
    good = Image(height=2, width=3, encoding="rgb8", step=9, data=bytes(18))
    inputs.check_frame(good, bridge)
    with pytest.raises(conv.InputRejected):
        inputs.check_frame(Image(height=2, width=3, encoding="rgb8", step=9, data=bytes(17)),
                           bridge)


def test_qos_profiles():
    assert inputs.qos_profile(3, "reliable").reliability == ReliabilityPolicy.RELIABLE
    best = inputs.qos_profile(5, "best_effort")
    assert (best.depth, best.reliability) == (5, ReliabilityPolicy.BEST_EFFORT)
    assert inputs.PROMPT_QOS.reliability == ReliabilityPolicy.RELIABLE


class _Lines:
    """Collects what PromptLog writes, per level (the log policy is under test)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, line: str) -> None:
        self.lines.append(("info", line))

    def debug(self, line: str) -> None:
        self.lines.append(("debug", line))

    def warning(self, line: str, **_: object) -> None:
        self.lines.append(("warning", line))


def test_prompt_log_reports_a_new_text_at_info_and_repeats_at_debug():
    lines = _Lines()
    log = inputs.PromptLog(lines)
    cable, _ = inputs.prompt_from_msg(_prompt("cable", [0, 0, 5, 5]), CFG)
    rope, stamp = inputs.prompt_from_msg(_prompt("rope", [], sec=3), CFG)
    log.received(cable, UNSTAMPED)
    log.received(cable, UNSTAMPED)
    log.received(rope, stamp)
    log.missed(rope, stamp)
    assert [level for level, _ in lines.lines] == ["info", "debug", "info", "warning"]
    assert lines.lines[0][1] == "prompt 7: 'cable', 1 box(es)"
    assert lines.lines[2][1].endswith("for frame 3.000000000")
    assert "frame 3.000000000 is not among the cached frames" in lines.lines[3][1]
