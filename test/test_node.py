"""talk2sam_node end to end: a real node process (tiny preset) and a client over DDS on loopback.

One node process for the module (start-up imports torch). Every test sets the state it needs
(the standing prompt, parameters) and undoes its parameter changes, so each passes alone and
in any order.
"""
from __future__ import annotations

import numpy as np
import pytest
from node_harness import (OUTPUTS, RGBD_OUTPUTS, Client, key, module_domain, running_node,
                          sample_picture, start_node, stamped_header, unsubscribed)
from rcl_interfaces.srv import SetParametersAtomically
from rclpy.parameter import Parameter
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


def _set_standing(client: Client, prompt_id: int = 0, text: str = "", boxes=()) -> None:
    """Make this the node's standing prompt (empty text: none) and wait until it is."""
    received = client.counter("prompts_received")
    client.publish_prompt(prompt_id, text, boxes=boxes)
    expected = f"{prompt_id}: {text}" if text else ""
    assert client.spin_until(
        lambda: int(client.diagnostics[-1]["prompts_received"]) > received
        and client.diagnostics[-1]["prompt"] == expected, 20), client.diagnostics[-1]


def _answers(client: Client, header) -> list:
    return [r for r in client.received["result"] if key(r.header) == key(header)]


def test_image_and_prompt_give_every_output_with_the_source_header(ros, reference):
    client = ros.client
    rgb = sample_picture()
    _set_standing(client, 42, "person", PERSON_BOX)
    header = client.publish_image(rgb, "bgr8")
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

    # the grasp is the geometry of the published mask (valid for this fixed-seed model)
    from talk2sam_ros.grasp import grasp_from_mask
    from talk2sam_ros.ros.params import node_config_from_params

    grasp = msgs["grasp"]
    expected_grasp = grasp_from_mask(mask > 0, node_config_from_params({}).grasp)
    assert grasp.prompt_id == 42 and grasp.valid and expected_grasp.valid
    assert (grasp.grasp_point.x, grasp.grasp_point.y) == pytest.approx(expected_grasp.point)
    assert grasp.width_px == pytest.approx(expected_grasp.width_px)
    assert mask[int(grasp.grasp_point.y), int(grasp.grasp_point.x)] == 255
    assert len(grasp.centerline.points) == len(expected_grasp.centerline) >= 2

    # The node saw exactly this picture (bgr8 -> RGB) and ran the same model on it.
    reference.set_image(rgb)
    expected = reference.predict(text="person", boxes=[PERSON_BOX])
    agree = np.mean((mask > 0) == (expected.logits[0] > 0.0))
    assert agree > 0.995, agree
    np.testing.assert_allclose(similarity, expected.similarity, atol=1e-4)


def test_text_only_prompt_from_category_reuses_the_newest_frame(ros):
    client = ros.client
    _set_standing(client, 43, "person", PERSON_BOX)
    header = client.publish_image(sample_picture())
    assert client.wait_output("result", header, 43) is not None, ros.log_tail()
    client.publish_category("person")  # a new standing prompt: the newest frame at once
    result = client.wait_output("result", header, prompt_id=-1)
    assert result is not None, ros.log_tail()
    assert result.text == "person" and result.boxes_from_text and not result.box_indices
    assert len(result.boxes) >= 4 and len(result.boxes) == 4 * len(result.scores)
    assert result.reused_encoding  # same frame as the previous prompt: no new encoding


def test_three_prompts_on_one_frame_cost_one_image_encoding(ros):
    client = ros.client
    _set_standing(client)  # none: the next frame is only cached
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
    header = client.publish_image(sample_picture())
    for prompt_id in (206, 207):  # stamped, for that frame
        client.publish_prompt(prompt_id, "guitar string", boxes=PERSON_BOX, stamp=header)
    assert client.wait_output("result", header, 207) is not None, ros.log_tail()
    log = ros.log.read_text(errors="replace")
    assert "prompt 201: 'guitar string'" in log, ros.log_tail()
    assert not any(f"prompt {i}:" in log for i in range(202, 208)), ros.log_tail()


def test_stamped_prompts_answer_only_their_own_frame(ros):
    """A detector sending each frame's boxes as a stamped prompt: every frame is answered once,
    with its own boxes, whether its prompt comes after the image or before it; a prompt for a
    frame that is gone answers no other frame."""
    client = ros.client
    _set_standing(client)  # the detector alone
    before = client.latest_diagnostics()
    picture = sample_picture()
    first, second = [10.0, 10.0, 80.0, 100.0], [20.0, 30.0, 150.0, 110.0]
    h1 = client.publish_image(picture)
    client.publish_prompt(301, "person", boxes=first, stamp=h1)
    assert client.wait_output("result", h1, 301) is not None, ros.log_tail()
    h2 = client.publish_image(picture[:, ::-1].copy())
    client.spin_for(1.0)  # time the worker had to answer it with the previous frame's boxes
    client.publish_prompt(302, "person", boxes=second, stamp=h2)
    assert client.wait_output("result", h2, 302) is not None, ros.log_tail()
    h3 = stamped_header()
    client.publish_prompt(303, "person", boxes=first, stamp=h3)  # before its frame
    client.spin_for(0.5)
    client.publish_image(picture, header=h3)
    assert client.wait_output("result", h3, 303) is not None, ros.log_tail()
    client.publish_prompt(304, "person", boxes=first, stamp=stamped_header(sec=5))  # gone
    assert client.spin_until(lambda: int(client.diagnostics[-1]["prompt_frame_missed"])
                             == int(before["prompt_frame_missed"]) + 1, 20)
    h4 = client.publish_image(picture)
    assert client.spin_until(lambda: int(client.diagnostics[-1]["frames_received"])
                             == int(before["frames_received"]) + 4, 20)
    client.spin_for(1.0)
    for header, prompt_id, boxes in [(h1, 301, first), (h2, 302, second), (h3, 303, first)]:
        answers = _answers(client, header)
        assert [a.prompt_id for a in answers] == [prompt_id], [a.prompt_id for a in answers]
        assert list(answers[0].boxes) == boxes
    assert _answers(client, h4) == []
    assert "prompt 304: frame 5." in ros.log.read_text(errors="replace")


def test_boxes_are_clipped_and_boxes_outside_dropped(ros):
    client = ros.client
    header = client.publish_image(sample_picture())
    client.publish_prompt(8, "person", boxes=[-20, -30, 50, 40, 500, 500, 600, 600, 90, 5, 60, 50],
                          stamp=header)
    result = client.wait_output("result", header, 8)
    assert result is not None, ros.log_tail()
    # box 1 clipped, box 2 (outside) dropped, box 3 inverted -> sorted
    assert list(result.boxes) == [0, 0, 50, 40, 60, 5, 90, 50]
    assert list(result.box_indices) == [0, 2]  # which request box each result box is
    labels = _image(client, client.wait_output("mask_labels", header))
    assert set(np.unique(labels)) <= {0, 1, 2}


def test_rejected_inputs_are_counted_and_the_node_goes_on(ros):
    client = ros.client
    _set_standing(client)
    before = client.latest_diagnostics()
    client.image_pub.publish(Image(height=2, width=2, encoding="32FC1", step=8, data=bytes(16)))
    client.publish_prompt(9, "person", boxes=[1, 2, 3])  # not a multiple of 4
    header = client.publish_image(sample_picture())
    client.publish_prompt(10, "person", boxes=PERSON_BOX, frame_id="other_camera",
                          stamp=header)  # boxes in another camera's frame
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
    header = client.publish_image(sample_picture())
    client.publish_prompt(11, "person", boxes=PERSON_BOX, frame_id="/camera_optical",
                          stamp=header)
    assert client.wait_output("result", header, 11) is not None, ros.log_tail()


def test_visual_outputs_are_only_computed_when_subscribed(ros):
    client = ros.client
    topics = ("overlay", "grasp")
    with unsubscribed(client, topics):
        header = client.publish_image(sample_picture())
        client.publish_prompt(12, "person", boxes=PERSON_BOX, stamp=header)
        result = client.wait_output("result", header, 12)
        assert result is not None, ros.log_tail()
        stages = {t.stage for t in result.timing}
        assert "overlay" not in stages and "grasp" not in stages
        assert "publish_maps" in stages
    header = client.publish_image(sample_picture())
    client.publish_prompt(13, "person", boxes=PERSON_BOX, stamp=header)
    for topic in topics:  # (the old re-subscription appended to a throwaway snapshot)
        assert client.wait_output(topic, header, timeout=30) is not None, topic


def test_without_use_depth_there_is_no_3d_side(ros):
    """use_depth false (the default): no depth subscription, no 3D topic, no 3D stage."""
    client = ros.client
    for topic in ("depth", "camera_info"):
        assert client.node.count_subscribers(f"/{topic}") == 0, topic
    for topic in RGBD_OUTPUTS:
        assert client.node.count_publishers(f"/{topic}") == 0, topic
    header = client.publish_image(sample_picture())
    client.publish_prompt(14, "person", boxes=PERSON_BOX, stamp=header)
    grasp = client.wait_output("grasp", header, 14)
    assert grasp is not None, ros.log_tail()
    assert grasp.depth_status == "" and grasp.depth_reason == "" and not grasp.centerline_3d
    result = client.wait_output("result", header, 14)
    assert not any(t.stage.startswith("grasp3d") for t in result.timing)


def test_similarity_without_prompt_publishes_only_the_maps(ros):
    client = ros.client
    # one at a time (the SetParameters service is not atomic): the rule holds after each
    results = client.set_parameters(idle_text="cable", publish_similarity_without_prompt=True)
    try:
        assert all(r.successful for r in results), results
        _set_standing(client)  # no prompt from here on
        header = client.publish_image(sample_picture())
        similarity = client.wait_output("similarity", header)
        assert similarity is not None, ros.log_tail()
        assert client.wait_output("similarity_color", header, timeout=10) is not None
        assert client.output("result", header) is None and client.output("mask", header) is None
    finally:
        assert all(r.successful for r in client.set_parameters(
            publish_similarity_without_prompt=False, idle_text=""))


def _set_atomically(client: Client, **values) -> tuple[bool, str]:
    srv = client.node.create_client(SetParametersAtomically,
                                    f"{client.fqn}/set_parameters_atomically")
    try:
        assert client.spin_until(srv.service_is_ready, 30)
        future = srv.call_async(SetParametersAtomically.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()]))
        assert client.spin_until(future.done, 30)
        return future.result().result.successful, future.result().result.reason
    finally:
        client.node.destroy_client(srv)


def test_a_rule_between_parameters_is_checked_on_the_whole_change(ros):
    """Defect 3: publish_similarity_without_prompt without an idle_text used to be accepted but
    not applied, and then blocked every later live change and the next configure."""
    client = ros.client
    result = client.set_parameters(publish_similarity_without_prompt=True)[0]
    assert not result.successful and "needs a non-empty idle_text" in result.reason
    try:  # a later live change still applies: no mask for the next frame
        assert client.set_parameters(publish_mask=False)[0].successful
        header = client.publish_image(sample_picture())
        client.publish_prompt(60, "person", boxes=PERSON_BOX, stamp=header)
        assert client.wait_output("result", header, 60) is not None, ros.log_tail()
        client.spin_for(0.5)
        assert client.output("mask", header) is None
    finally:
        assert client.set_parameters(publish_mask=True)[0].successful
    # both together, atomically, are fine; and undone together
    assert _set_atomically(client, publish_similarity_without_prompt=True,
                           idle_text="cable") == (True, "")
    assert _set_atomically(client, publish_similarity_without_prompt=False,
                           idle_text="") == (True, "")
    ok, reason = _set_atomically(client, publish_similarity_without_prompt=True,
                                 mask_threshold=1.0)
    assert not ok and "needs a non-empty idle_text" in reason
    assert client.latest_diagnostics()["state"] == "active"


def test_rejection_logs_are_throttled_per_kind_of_reason():
    from talk2sam_ros.ros.counters import Throttle, reason_kind

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
