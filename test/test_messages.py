"""TextBoxPrompt crosses a process boundary over DDS on loopback with every field intact."""
from __future__ import annotations

import numpy as np
import pytest
from rosutil import REPO, spin_until, start_python, stop

from scripts.publish_prompts import PROMPTS  # noqa: E402  (test/ is on sys.path)

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402

from talk2sam_ros.msg import TextBoxPrompt  # noqa: E402


def test_prompt_roundtrip_across_processes(rclpy_context, tmp_path):
    node = Node("prompt_listener_test", context=rclpy_context)
    got: dict[int, TextBoxPrompt] = {}
    node.create_subscription(TextBoxPrompt, "prompt", lambda m: got.setdefault(m.id, m), 10)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    proc = start_python([str(REPO / "test/scripts/publish_prompts.py"), "--seconds", "40"],
                        tmp_path / "publisher.log")
    try:
        ok = spin_until(executor, lambda: len(got) == len(PROMPTS), timeout=40)
    finally:
        stop(proc)
        executor.shutdown()
        node.destroy_node()
    assert ok, f"received ids {sorted(got)}; publisher log:\n{(tmp_path / 'publisher.log').read_text()}"
    for p in PROMPTS:
        m = got[p["id"]]
        assert m.text == p["text"]
        assert m.header.frame_id == p["frame"]
        assert (m.header.stamp.sec, m.header.stamp.nanosec) == (1700000000 + p["id"], 123456789)
        np.testing.assert_array_equal(np.asarray(m.boxes, np.float32),
                                      np.asarray(p["boxes"], np.float32))
        assert len(m.boxes) % 4 == 0
