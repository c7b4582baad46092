"""talk2sam_node end to end: a real node process (tiny preset) and a client over DDS on loopback.

One node process for the module; the tests run in file order and share its prompt state.
"""
from __future__ import annotations

import numpy as np
import pytest
from node_harness import (OUTPUTS, Client, key, module_domain, running_node, sample_picture,
                          start_node, stamped_header)
from rosutil import stop
from sensor_msgs.msg import Image

PERSON_BOX = [10.0, 10.0, 80.0, 100.0]


@pytest.fixture(scope="module")
def ros(tmp_path_factory):
    domain = module_domain(1)
    log = tmp_path_factory.mktemp("node") / "talk2sam_node.log"
    with running_node(domain, log, lambda: start_node(log, domain, "-p",
                                                      "diagnostics_period_s:=0.25"),
                      Client, Client.wait_active) as running:
        yield running


@pytest.fixture(scope="module")
def reference():
    """The same tiny model in this process: what the node must compute for a frame."""
    from talk2sam_ros.model import Talk2SAMPredictor, build_talk2sam

    return Talk2SAMPredictor(build_talk2sam("tiny"))


def _image(client: Client, msg) -> np.ndarray:
    return client.bridge.imgmsg_to_cv2(msg)


def test_image_and_prompt_give_every_output_with_the_source_header(ros, reference):
    client = ros.client
    rgb = sample_picture()
    header = client.publish_image(rgb, "bgr8")
    client.publish_prompt(42, "person", boxes=PERSON_BOX)
    result = client.wait_output("result", header, 42)
    assert result is not None, ros.log_tail()
    msgs = {topic: client.wait_output(topic, header, timeout=10) for topic in OUTPUTS}
    for topic, msg in msgs.items():
        assert msg is not None, topic
        assert msg.header.frame_id == "camera_optical" and key(msg.header) == key(header)
    for topic, encoding in [("mask", "mono8"), ("mask_labels", "mono8"), ("similarity", "32FC1"),
                            ("similarity_color", "bgr8"), ("overlay", "bgr8")]:
        msg = msgs[topic]
        assert (msg.encoding, msg.width, msg.height) == (encoding, 160, 120), topic
    mask = _image(client, msgs["mask"])
    assert set(np.unique(mask)) <= {0, 255}
    labels = _image(client, msgs["mask_labels"])
    np.testing.assert_array_equal(labels > 0, mask > 0)
    similarity = _image(client, msgs["similarity"])
    assert np.isfinite(similarity).all() and similarity.min() >= 0 and similarity.max() <= 1
    overlay = _image(client, msgs["overlay"])
    assert np.any(overlay != rgb[:, :, ::-1])

    assert (result.prompt_id, result.text) == (42, "person")
    assert (result.image_width, result.image_height) == (160, 120)
    assert list(result.boxes) == PERSON_BOX and not result.boxes_from_text
    assert list(result.box_indices) == [0]
    assert len(result.scores) == 1 and list(result.areas) == [result.mask_area]
    assert result.mask_area == int((mask > 0).sum())
    assert not result.reused_encoding and result.frame_age_ms > 0
    stages = {t.stage for t in result.timing}
    assert {"convert", "encode_image", "predict", "predict.decode"} <= stages
    assert result.frames_received >= 1 and result.frames_processed >= 1

    grasp = msgs["grasp"]
    assert grasp.prompt_id == 42
    if grasp.valid:
        x, y = int(grasp.grasp_point.x), int(grasp.grasp_point.y)
        assert mask[y, x] == 255 and len(grasp.centerline.points) >= 2

    # The node saw exactly this picture (bgr8 -> RGB) and ran the same model on it.
    reference.set_image(rgb)
    expected = reference.predict(text="person", boxes=[PERSON_BOX])
    agree = np.mean((mask > 0) == (expected.logits[0] > 0.0))
    assert agree > 0.995, agree
    np.testing.assert_allclose(similarity, expected.similarity, atol=1e-4)


def test_text_only_prompt_from_category_reuses_the_newest_frame(ros):
    client = ros.client
    header = client.received["result"][-1].header
    client.publish_category("person")
    result = client.wait_output("result", header, prompt_id=-1)
    assert result is not None, ros.log_tail()
    assert result.text == "person" and result.boxes_from_text and not result.box_indices
    assert len(result.boxes) >= 4 and len(result.boxes) == 4 * len(result.scores)
    assert result.reused_encoding  # same frame as the previous prompt: no new encoding
    mask = client.wait_output("mask", header)
    assert mask is not None


def test_three_prompts_on_one_frame_cost_one_image_encoding(ros):
    client = ros.client
    client.publish_prompt(0, "")  # clear: the next frame is only cached
    idle = client.counter("frames_idle")
    header = client.publish_image(sample_picture()[::-1].copy(), "rgb8")
    assert client.spin_until(lambda: int(client.diagnostics[-1]["frames_idle"]) > idle, 20)
    encodings = client.counter("encode_count")
    texts = {101: "cable", 102: "person", 103: "black cable"}
    for prompt_id, text in texts.items():
        client.publish_prompt(prompt_id, text, stamp=header)
    results = {i: client.wait_output("result", header, i) for i in texts}
    assert all(results.values()), ros.log_tail()
    assert [results[i].reused_encoding for i in sorted(texts)] == [False, True, True]
    assert [results[i].text for i in sorted(texts)] == list(texts.values())
    assert client.counter("encode_count") == encodings + 1
    assert int(client.latest_diagnostics()["reused_encodings"]) >= 2


def test_repeated_prompt_text_is_logged_once(ros):
    """A detector re-sending boxes with the same text every frame does not flood the log."""
    client = ros.client
    received = client.counter("prompts_received")
    for prompt_id in range(201, 206):
        client.publish_prompt(prompt_id, "guitar string", boxes=PERSON_BOX)
    assert client.spin_until(
        lambda: int(client.diagnostics[-1]["prompts_received"]) >= received + 5, 20)
    log = ros.log.read_text(errors="replace")
    assert "prompt 201: 'guitar string'" in log, ros.log_tail()
    assert not any(f"prompt {i}:" in log for i in range(202, 206)), ros.log_tail()


def test_prompt_for_an_uncached_frame_applies_to_the_following_frames(ros):
    client = ros.client
    missed = client.counter("prompt_frame_missed")
    client.publish_prompt(7, "person", boxes=PERSON_BOX, stamp=stamped_header(sec=5))
    assert client.spin_until(
        lambda: int(client.diagnostics[-1]["prompt_frame_missed"]) == missed + 1, 20)
    header = client.publish_image(sample_picture())
    assert client.wait_output("result", header, 7) is not None, ros.log_tail()


def test_boxes_are_clipped_and_boxes_outside_dropped(ros):
    client = ros.client
    client.publish_prompt(8, "person", boxes=[-20, -30, 50, 40, 500, 500, 600, 600, 90, 5, 60, 50])
    header = client.publish_image(sample_picture())
    result = client.wait_output("result", header, 8)
    assert result is not None, ros.log_tail()
    # box 1 clipped, box 2 (outside) dropped, box 3 inverted -> sorted
    assert list(result.boxes) == [0, 0, 50, 40, 60, 5, 90, 50]
    assert list(result.box_indices) == [0, 2]  # which request box each result box is
    labels = _image(client, client.wait_output("mask_labels", header))
    assert set(np.unique(labels)) <= {0, 1, 2}


def test_rejected_inputs_are_counted_and_the_node_goes_on(ros):
    client = ros.client
    before = client.latest_diagnostics()
    client.image_pub.publish(Image(height=2, width=2, encoding="32FC1", step=8, data=bytes(16)))
    client.publish_prompt(9, "person", boxes=[1, 2, 3])  # not a multiple of 4
    client.publish_prompt(10, "person", boxes=PERSON_BOX, frame_id="other_camera")
    header = client.publish_image(sample_picture())  # boxes in another camera's frame
    assert client.spin_until(lambda: int(client.diagnostics[-1]["frames_rejected"])
                             > int(before["frames_rejected"]), 30), ros.log_tail()
    after = client.latest_diagnostics()
    assert int(after["images_rejected"]) == int(before["images_rejected"]) + 1
    assert int(after["prompts_rejected"]) == int(before["prompts_rejected"]) + 1
    assert client.output("result", header, 10) is None
    log = ros.log.read_text()
    assert "rejected image: image encoding '32FC1' is not supported" in log
    assert "rejected prompt 9: prompt has 3 box values, not a multiple of 4" in log
    # the same frame written with tf2's optional leading slash
    client.publish_prompt(11, "person", boxes=PERSON_BOX, frame_id="/camera_optical")
    header = client.publish_image(sample_picture())
    assert client.wait_output("result", header, 11) is not None, ros.log_tail()


def test_visual_outputs_are_only_computed_when_subscribed(ros):
    client = ros.client
    for sub in [s for s in client.node.subscriptions if s.topic_name in ("/overlay", "/grasp")]:
        client.node.destroy_subscription(sub)
    assert client.spin_until(lambda: client.node.count_subscribers("/overlay") == 0
                             and client.node.count_subscribers("/grasp") == 0, 10)
    client.spin_for(0.5)  # let the node's graph cache see the subscriptions go
    client.publish_prompt(12, "person", boxes=PERSON_BOX)
    header = client.publish_image(sample_picture())
    result = client.wait_output("result", header, 12)
    assert result is not None, ros.log_tail()
    stages = {t.stage for t in result.timing}
    assert "overlay" not in stages and "grasp" not in stages
    assert "publish_maps" in stages


def test_similarity_without_prompt_publishes_only_the_maps(ros):
    client = ros.client
    results = client.set_parameters(publish_similarity_without_prompt=True, idle_text="cable")
    assert all(r.successful for r in results)
    client.publish_prompt(0, "")  # no prompt from here on
    header = client.publish_image(sample_picture())
    similarity = client.wait_output("similarity", header)
    assert similarity is not None, ros.log_tail()
    assert client.wait_output("similarity_color", header, timeout=10) is not None
    assert client.output("result", header) is None and client.output("mask", header) is None
    assert client.set_parameters(publish_similarity_without_prompt=False)[0].successful


def test_sigint_stops_the_node_cleanly(ros):
    assert ros.proc.poll() is None, ros.log_tail()
    assert stop(ros.proc, timeout=30) == 0, ros.log_tail()
    log = ros.log.read_text()
    assert "Traceback" not in log, log[-3000:]


def test_rejection_logs_are_throttled_per_kind_of_reason():
    from talk2sam_ros.ros.node import Throttle, reason_kind

    assert reason_kind("image encoding '🙂' is not supported") == \
        reason_kind("image encoding 'yuv422' is not supported")
    assert reason_kind("empty image (0x2)") == reason_kind("empty image (5x0)")
    assert reason_kind("prompt has 9 box values, not a multiple of 4") != \
        reason_kind("prompt has 65 boxes, more than max_boxes 64")
    throttle = Throttle(2.0, max_keys=3)
    assert throttle.allow("a", 0.0) and not throttle.allow("a", 1.9) and throttle.allow("a", 2.0)
    assert throttle.allow("b", 1.0) and throttle.allow("c", 1.0)
    assert throttle.allow("d", 1.0)  # full: forgets old keys rather than growing


def test_weights_are_resolved_from_parameters_and_the_registry(tmp_path):
    from talk2sam_ros import weights
    from talk2sam_ros.ros.params import node_config_from_params

    def resolve_checkpoints(cfg):
        spec = cfg.inference_spec
        return weights.resolve_checkpoints(spec.preset, spec.checkpoints,
                                           weights_dir=spec.weights_dir,
                                           allow_random_weights=spec.allow_random_weights)

    assert resolve_checkpoints(node_config_from_params({"preset": "tiny"})) == {}
    cfg = node_config_from_params({"preset": "b", "weights_dir": str(tmp_path)})
    with pytest.raises(weights.MissingWeightsError, match="talk2sam-weights download --preset b"):
        resolve_checkpoints(cfg)
    registry = weights.load_registry()
    names = registry.presets["b"]
    for part, name in names.items():  # files in the cache, found by registry name
        (tmp_path / registry.files[name].filename).write_bytes(b"x")
    own = tmp_path / "mine.pth"
    own.write_bytes(b"x")
    found = resolve_checkpoints(node_config_from_params(
        {"preset": "b", "weights_dir": str(tmp_path), "checkpoint_clip": str(own)}))
    assert found["clip"] == own and set(found) == set(names)
    assert found["sam_hq"] == tmp_path / registry.files[names["sam_hq"]].filename
    with pytest.raises(weights.MissingWeightsError, match="checkpoint_dinov2='nope'"):
        resolve_checkpoints(node_config_from_params({"preset": "tiny",
                                                     "checkpoint_dinov2": "nope"}))
    partial = resolve_checkpoints(node_config_from_params(
        {"preset": "l", "weights_dir": str(tmp_path / "empty"), "allow_random_weights": True}))
    assert partial == {}
