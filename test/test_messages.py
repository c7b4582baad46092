"""Our messages: TextBoxPrompt crosses a process boundary over DDS on loopback with every field
intact, and the node's output builders (talk2sam_ros.ros.messages) describe a real prediction."""
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
    log = (tmp_path / "publisher.log").read_text()
    assert ok, f"received ids {sorted(got)}; publisher log:\n{log}"
    for p in PROMPTS:
        m = got[p["id"]]
        assert m.text == p["text"]
        assert m.header.frame_id == p["frame"]
        assert (m.header.stamp.sec, m.header.stamp.nanosec) == (1700000000 + p["id"], 123456789)
        np.testing.assert_array_equal(np.asarray(m.boxes, np.float32),
                                      np.asarray(p["boxes"], np.float32))
        assert len(m.boxes) % 4 == 0


# ---------------------------------------------------------------------- output builders
# talk2sam_ros.ros.messages on a real tiny-model prediction, without DDS.

@pytest.fixture(scope="module")
def prediction():
    """The tiny model's prediction for two boxes on the astronaut (120 x 160)."""
    from node_harness import sample_picture

    from talk2sam_ros.model import Talk2SAMPredictor, build_talk2sam

    predictor = Talk2SAMPredictor(build_talk2sam("tiny"))
    rgb = sample_picture()
    predictor.set_image(rgb)
    return rgb, predictor.predict(text="person", boxes=[[10, 10, 80, 100], [90, 20, 150, 60]])


def _header():
    from std_msgs.msg import Header

    header = Header(frame_id="camera_optical")
    header.stamp.sec, header.stamp.nanosec = 17, 42
    return header


def test_result_message_describes_the_prediction(prediction):
    from rclpy.serialization import deserialize_message, serialize_message

    from talk2sam_ros.msg import SegmentationResult
    from talk2sam_ros.ros import messages as build
    from talk2sam_ros.ros.counters import Counters
    from talk2sam_ros.ros.scheduler import Prompt

    rgb, res = prediction
    seg = build.Segmentation.from_prediction(res, 0.0, rgb.shape[:2])
    counters = Counters()
    counters.add("frames_received", 3)
    counters.add("images_rejected")
    header = _header()
    msg = build.result_message(header, Prompt(5, "person"), seg, np.array([0, 2]), (120, 160),
                               True, 12.5, [("convert", 1.5), ("predict", 3.0)],
                               counters.snapshot())
    header.stamp.sec = 99  # the message has its own copy
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (17, 42)
    assert (msg.prompt_id, msg.text, msg.image_width, msg.image_height) == (5, "person", 160, 120)
    np.testing.assert_allclose(msg.boxes, np.asarray(res.boxes, np.float32).ravel())
    assert list(msg.box_indices) == [0, 2] and not msg.boxes_from_text
    masks = np.asarray(res.logits) > 0.0
    assert list(msg.areas) == [int(m.sum()) for m in masks]
    assert msg.mask_area == int(masks.any(axis=0).sum())
    np.testing.assert_allclose(msg.scores, res.scores, rtol=1e-6)
    assert [(t.stage, t.ms) for t in msg.timing] == [("convert", 1.5), ("predict", 3.0)]
    assert (msg.frames_received, msg.inputs_rejected, msg.reused_encoding) == (3, 1, True)
    back = deserialize_message(serialize_message(msg), SegmentationResult)
    assert list(back.areas) == list(msg.areas) and back.frame_age_ms == pytest.approx(12.5)


def test_map_and_mask_outputs_are_built_only_when_wanted(prediction):
    from talk2sam_ros.ros import conversions as conv
    from talk2sam_ros.ros import messages as build

    rgb, res = prediction
    bridge = conv.make_bridge()
    seg = build.Segmentation.from_prediction(res, 0.0, rgb.shape[:2])
    assert build.map_outputs(None, rgb, _header(), 0.5, {"similarity"}, bridge) == {}
    maps = build.map_outputs(res.similarity, rgb, _header(), 0.5, {"similarity_color"}, bridge)
    assert list(maps) == ["similarity_color"] and maps["similarity_color"].encoding == "bgr8"
    assert build.mask_outputs(seg, _header(), set(), bridge) == {}
    out = build.mask_outputs(seg, _header(), {"mask", "mask_labels"}, bridge)
    mask = bridge.imgmsg_to_cv2(out["mask"])
    np.testing.assert_array_equal(mask > 0, seg.union)
    assert set(np.unique(mask)) <= {0, 255}
    labels = bridge.imgmsg_to_cv2(out["mask_labels"])
    assert set(np.unique(labels)) <= {0, 1, 2} and np.array_equal(labels > 0, seg.union)
    overlay = build.overlay_message(rgb, seg, "person", 0.5, None, _header(), bridge)
    assert (overlay.encoding, overlay.width, overlay.height) == ("bgr8", 160, 120)


def test_grasp_message_carries_the_geometry_and_says_when_there_is_none():
    from talk2sam_ros.grasp import grasp_from_mask
    from talk2sam_ros.ros import messages as build

    bar = np.zeros((60, 100), bool)
    bar[28:33, 10:90] = True  # a 5 px wide horizontal cable
    grasp = grasp_from_mask(bar)
    msg = build.grasp_message(grasp, _header(), 7)
    assert msg.valid and msg.prompt_id == 7
    assert (msg.grasp_point.x, msg.grasp_point.y) == pytest.approx(grasp.point)
    assert msg.grasp_point.z == pytest.approx(grasp.width_px) == pytest.approx(msg.width_px)
    assert msg.angle == pytest.approx(grasp.angle)
    assert len(msg.centerline.points) == len(grasp.centerline)
    empty = build.grasp_message(grasp_from_mask(np.zeros((60, 100), bool)), _header(), 8)
    assert not empty.valid and empty.width_px == 0.0 and len(empty.centerline.points) == 0


def _values(**changes):
    from talk2sam_ros.ros.counters import Counters

    return {**Counters().snapshot(), "encode_count": 0, "state": "active",
            "configure_error": "", "device": "cpu", "worker": "idle", "model_loaded": True,
            "prompt": "", **changes}


@pytest.mark.parametrize("changes, level, words", [
    ({}, "OK", "active, 0 processed"),
    ({"errors": 2}, "WARN", "2 failed"),
    ({"worker": "stopping"}, "WARN", "a stopped worker is still running a frame"),
    ({"state": "unconfigured", "configure_error": "checkpoint_sam_hq='x': no such file"},
     "ERROR", "configure failed: checkpoint_sam_hq='x': no such file"),
])
def test_diagnostics_message_levels(changes, level, words):
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticStatus

    from talk2sam_ros.ros import messages as build

    values = _values(**changes)
    array = build.diagnostics_message(values, "talk2sam: /robot/talk2sam", Time(sec=3))
    (status,) = array.status
    assert status.level == getattr(DiagnosticStatus, level) and words in status.message
    assert status.name == "talk2sam: /robot/talk2sam" and array.header.stamp.sec == 3
    assert {kv.key: kv.value for kv in status.values} == {k: str(v) for k, v in values.items()}


def test_every_topic_type_resolves_to_a_message_class():
    from sensor_msgs.msg import Image

    from talk2sam_ros.ros.messages import message_class
    from talk2sam_ros.ros.params import TOPICS

    assert message_class("sensor_msgs/Image") is Image
    for topic in TOPICS:
        assert message_class(topic.msg_type).__name__ == topic.msg_type.split("/")[1]
