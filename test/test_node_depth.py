"""talk2sam_node with use_depth: colour + depth + camera_info in over DDS, the 3D grasp out.

One real node process (tiny preset) and a client on loopback. The frames are synthetic RGB-D
scenes (talk2sam_ros.grasp.synthetic): a cable drawn on a tilted plane at a known pose, seen
by a known pinhole camera, so the depth under any mask is the plane's. Each frame is asked for
with a stamped prompt (answered once, for that frame only), so each test passes alone and in
any order; a test that changes parameters or the lifecycle state restores them.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from node_harness import (Client, key, module_domain, running_node, start_node, stamped_header,
                          unsubscribed)
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import Image
from visualization_msgs.msg import Marker

from talk2sam_ros.grasp import grasp_from_mask, grasp_pose_from_depth
from talk2sam_ros.grasp import status as st
from talk2sam_ros.grasp.depth import deproject, depth_near, rays
from talk2sam_ros.grasp.synthetic import SceneSpec, render_scene
from talk2sam_ros.ros import grasp3d_messages as gm
from talk2sam_ros.ros.counters import grasp3d_counter
from talk2sam_ros.ros.params import node_config_from_params

SPEC = SceneSpec(width=320, height=240, fx=300.0, fy=300.0, tilt_deg=25.0, tilt_axis_deg=10.0,
                 shape="sine", heading_deg=-15.0, distance_m=0.6)
FRAME = "camera_color_optical_frame"
MAX_CLOUD_POINTS = 5000  # the parameter's default


@pytest.fixture(scope="module")
def scene():
    return render_scene(SPEC)


@pytest.fixture(scope="module")
def box(scene) -> list[float]:
    ys, xs = np.nonzero(scene.mask)
    return [float(xs.min() - 4), float(ys.min() - 4), float(xs.max() + 4), float(ys.max() + 4)]


def _ready(client: Client) -> bool:
    return client.wait_active() and client.wait_rgbd_active()


@pytest.fixture(scope="module")
def ros(tmp_path_factory):
    domain = module_domain(12)
    log = tmp_path_factory.mktemp("depth") / "talk2sam_node.log"
    with running_node(domain, log, lambda: start_node(
            log, domain, "-p", "use_depth:=true", "-p", "diagnostics_period_s:=0.25"),
            lambda context: Client(context, rgbd=True), _ready) as running:
        yield running


# ----------------------------------------------------------------------------- helpers
def _shifted(header, dt_ns: int, frame_id: str = FRAME):
    """A header `dt_ns` after `header` (before, for a negative dt_ns)."""
    ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec + dt_ns
    return stamped_header(frame_id, sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _ask(client: Client, rgb: np.ndarray, prompt_id: int, box, header=None):
    """Publish the colour frame and a stamped prompt for it; the frame's header."""
    header = client.publish_image(rgb, "rgb8", header or stamped_header(FRAME))
    client.publish_prompt(prompt_id, "cable", boxes=box, stamp=header)
    return header


def _rgbd(client: Client, scene, prompt_id: int, box, depth=None, camera=None):
    """An RGB-D frame as a driver sends it (depth, camera_info, colour; one header)."""
    header = stamped_header(FRAME)
    client.publish_depth(scene.depth_raw if depth is None else depth, header)
    client.publish_camera_info(scene.camera if camera is None else camera, header)
    return _ask(client, scene.rgb, prompt_id, box, header)


def _answer(ros, header, prompt_id: int, pose: bool = True) -> dict:
    """The node's outputs for one (frame, prompt): result, grasp, markers, cloud, mask and,
    when `pose`, grasp_pose."""
    client = ros.client
    topics = ["result", "grasp", "grasp_markers", "object_points", "mask"]
    got = {"result": client.wait_output("result", header, prompt_id)}
    assert got["result"] is not None, ros.log_tail()
    for topic in topics[1:] + (["grasp_pose"] if pose else []):
        got[topic] = client.wait_output(topic, header, timeout=20)
        assert got[topic] is not None, (topic, ros.log_tail())
    return got


def _counters(client: Client) -> dict[str, int]:
    return {k: int(v) for k, v in client.latest_diagnostics().items() if v.isdigit()}


def _wait_counter(client: Client, name: str, value: int) -> bool:
    return client.spin_until(lambda: int(client.diagnostics[-1][name]) >= value, 20)


def _rotation(pose) -> np.ndarray:
    q = pose.orientation
    assert math.isclose(q.x ** 2 + q.y ** 2 + q.z ** 2 + q.w ** 2, 1.0, abs_tol=1e-6)
    return Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()


def _position(pose) -> np.ndarray:
    return np.array([pose.position.x, pose.position.y, pose.position.z])


def _check_ok(scene, got: dict, header) -> None:
    """The 3D outputs of an ok frame: the pose is the library's 3D grasp of the published
    pixel grasp on the published mask with this scene's depth and K, it lies on the grasp
    pixel's viewing ray and on the plane, approaching along the plane's normal."""
    for topic in ("grasp", "grasp_pose", "grasp_markers", "object_points"):
        msg = got[topic]
        stamped = msg.markers[0].header if topic == "grasp_markers" else msg.header
        assert (key(stamped), stamped.frame_id) == (key(header), FRAME), topic
    candidate, pose = got["grasp"], got["grasp_pose"].pose
    assert candidate.valid and candidate.depth_status == st.OK, candidate.depth_reason
    mask = ros_mask(got["mask"])
    g2 = grasp_from_mask(mask, node_config_from_params({}).grasp)
    assert (candidate.grasp_point.x, candidate.grasp_point.y) == pytest.approx(g2.point)
    g3 = grasp_pose_from_depth(mask, g2, scene.depth_m, scene.camera)
    assert g3.ok
    np.testing.assert_allclose(_position(pose), g3.position, atol=1e-6)
    np.testing.assert_allclose(_rotation(pose), g3.rotation, atol=1e-5)
    assert candidate.width_m == pytest.approx(g3.width_m, rel=1e-5)
    assert candidate.pose == pose  # the same pose on `grasp`
    # the published pixel grasp point deprojected with K at the robust depth there (the
    # median of the mask's depth within max(2, width / 2) px): a plane has depth everywhere
    pixel = np.array([[candidate.grasp_point.x, candidate.grasp_point.y]])
    assert candidate.depth_point_shift_px == 0.0
    assert (candidate.depth_point.x, candidate.depth_point.y) == tuple(pixel[0])
    z, _ = depth_near(scene.depth_m, mask, pixel, max(2.0, candidate.width_px / 2.0))
    position = _position(pose)
    np.testing.assert_allclose(position, deproject(scene.camera, pixel, z)[0], atol=1e-6)
    # geometry: on the grasp pixel's viewing ray, on the plane, along the plane's normal
    ray = rays(scene.camera, pixel)[0]
    assert np.linalg.norm(np.cross(position / np.linalg.norm(position),
                                   ray / np.linalg.norm(ray))) < 1e-6
    assert abs((position - scene.plane_point) @ scene.plane_normal) < 0.002
    approach = _rotation(pose)[:, 2]
    assert math.degrees(math.acos(min(1.0, approach @ scene.plane_normal))) < 5.0
    # GraspCandidate: 3D centreline on the plane, all of the mask has depth (a plane)
    line = np.array([[p.x, p.y, p.z] for p in candidate.centerline_3d])
    assert len(line) >= 2 and len(candidate.centerline_3d_index) == len(line)
    assert np.abs((line - scene.plane_point) @ scene.plane_normal).max() < 0.002
    assert candidate.valid_depth_fraction == pytest.approx(1.0)
    # markers: centreline, gripper, approach, label of this prompt, drawn
    ours = [m for m in got["grasp_markers"].markers if m.ns == f"grasp/{candidate.prompt_id}"]
    assert sorted(m.id for m in ours) == [0, 1, 2, 3]
    assert all(m.action == Marker.ADD for m in ours)
    # cloud: the mask's pixels with depth, subsampled, on the plane (noise-free: < 1 mm)
    cloud = gm.cloud_points(got["object_points"])
    assert len(cloud) == min(MAX_CLOUD_POINTS, int(mask.sum()))
    assert np.abs((cloud - scene.plane_point) @ scene.plane_normal).max() < 0.001


def ros_mask(msg: Image) -> np.ndarray:
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)[
        :, :msg.width] > 0


def _check_missing(got: dict, status: str, reason: str) -> None:
    """A frame whose 3D side is missing: every 2D output, the status and reason on `grasp`,
    no pose, markers all deleted, an empty cloud."""
    candidate = got["grasp"]
    assert candidate.valid, "the pixel grasp is still published"
    assert candidate.depth_status == status and reason in candidate.depth_reason, \
        (candidate.depth_status, candidate.depth_reason)
    assert candidate.width_m == 0.0 and len(candidate.centerline_3d) == 0
    assert all(m.action == Marker.DELETE for m in got["grasp_markers"].markers)
    assert got["object_points"].width == 0 and got["mask"] is not None


# ----------------------------------------------------------------------------- tests
def test_rgbd_frame_gives_the_grasp_pose_in_the_camera_frame(ros, scene, box):
    client = ros.client
    before = _counters(client)
    header = _rgbd(client, scene, 501, box)
    got = _answer(ros, header, 501)
    _check_ok(scene, got, header)
    stages = {t.stage for t in got["result"].timing}
    assert {"grasp", "grasp3d", "grasp3d.depth", "grasp3d.pose", "grasp3d.cloud",
            "grasp3d.publish"} <= stages
    assert _wait_counter(client, grasp3d_counter(st.OK), before[grasp3d_counter(st.OK)] + 1)
    after = client.diagnostics[-1]
    assert int(after["depth_received"]) > before["depth_received"]
    assert int(after["camera_info_received"]) > before["camera_info_received"]


def test_millimetre_depth_of_half_the_resolution_is_resized(ros, scene, box):
    """16UC1 (a RealSense) at 160x120 for a 320x240 colour image: the same aspect ratio, so
    it is resized (nearest) and used; millimetres quantise the plane by <= 0.5 mm."""
    client = ros.client
    mm = render_scene(replace(SPEC, encoding="16UC1"))
    header = _rgbd(client, scene, 502, box, depth=np.ascontiguousarray(mm.depth_raw[::2, ::2]))
    got = _answer(ros, header, 502)
    candidate, position = got["grasp"], _position(got["grasp_pose"].pose)
    assert candidate.depth_status == st.OK, candidate.depth_reason
    assert abs((position - scene.plane_point) @ scene.plane_normal) < 0.003
    cloud = gm.cloud_points(got["object_points"])
    assert np.abs((cloud - scene.plane_point) @ scene.plane_normal).max() < 0.004


def test_depth_is_paired_by_stamp_never_from_another_frame(ros, scene, box):
    client = ros.client
    near = render_scene(replace(SPEC, distance_m=0.45))
    # A depth 100 ms older and one 100 ms newer than the frame: neither is used.
    header = stamped_header(FRAME)
    for dt_ns in (-100_000_000, 100_000_000):
        other = _shifted(header, dt_ns)
        client.publish_depth(near.depth_raw, other)
        client.publish_camera_info(scene.camera, other)
    client.publish_camera_info(scene.camera, header)
    _ask(client, scene.rgb, 503, box, header)
    got = _answer(ros, header, 503, pose=False)
    _check_missing(got, st.DEPTH_STALE, "100.0 ms")
    assert "(depth_max_dt_ms 30.0 ms)" in got["grasp"].depth_reason
    client.spin_for(0.5)
    assert client.output("grasp_pose", header) is None
    # the frame's own depth (the far plane) arriving with the next frame's stamp is used there,
    # while the near plane's depths around it are not
    header = stamped_header(FRAME)
    client.publish_depth(near.depth_raw, _shifted(header, -1_000_000_000))
    client.publish_depth(scene.depth_raw, header)
    client.publish_camera_info(scene.camera, header)
    _ask(client, scene.rgb, 504, box, header)
    _check_ok(scene, _answer(ros, header, 504), header)


def test_a_live_depth_max_dt_ms_pairs_an_older_depth(ros, scene, box):
    client = ros.client
    assert client.set_parameters(depth_max_dt_ms=600.0)[0].successful
    try:
        header = stamped_header(FRAME)
        early = _shifted(header, -400_000_000)  # (not later: a later stamp could pair with
        client.publish_depth(scene.depth_raw, early)  # the next test's frames)
        client.publish_camera_info(scene.camera, early)
        _ask(client, scene.rgb, 505, box, header)
        got = _answer(ros, header, 505)
        assert got["grasp"].depth_status == st.OK, got["grasp"].depth_reason
    finally:
        assert client.set_parameters(depth_max_dt_ms=30.0)[0].successful
    assert not client.set_parameters(depth_min_m=6.0)[0].successful  # above depth_max_m


def test_a_depth_arriving_after_the_model_is_waited_for(ros, scene, box):
    """The frame's depth and camera_info are sent only once the model is done with the frame
    (frames_processed counts it before the 3D stage): within depth_wait_ms they are used."""
    client = ros.client
    earlier = _rgbd(client, scene, 510, box)  # an older depth: this frame's is behind
    _answer(ros, earlier, 510)
    assert client.set_parameters(depth_wait_ms=10000.0)[0].successful
    try:
        processed = _counters(client)["frames_processed"]
        header = _ask(client, scene.rgb, 511, box)
        assert _wait_counter(client, "frames_processed", processed + 1), ros.log_tail()
        client.publish_depth(scene.depth_raw, header)
        client.publish_camera_info(scene.camera, header)
        _check_ok(scene, _answer(ros, header, 511), header)
    finally:
        assert client.set_parameters(depth_wait_ms=50.0)[0].successful


def test_camera_info_latest_uses_a_rare_camera_info(ros, scene, box):
    """A driver or bag that sent camera_info seconds ago: strict pairing says so, and with
    camera_info_latest its intrinsics are used (counted camera_info_reused)."""
    client = ros.client
    _reactivate(client)  # no camera_info of earlier frames
    client.publish_camera_info(scene.camera, _shifted(stamped_header(), -3_000_000_000))
    header = stamped_header(FRAME)
    client.publish_depth(scene.depth_raw, header)
    _ask(client, scene.rgb, 506, box, header)
    got = _answer(ros, header, 506, pose=False)
    assert got["grasp"].depth_status == st.CAMERA_INFO_STALE, got["grasp"].depth_reason
    before = _counters(client)
    assert client.set_parameters(camera_info_latest=True)[0].successful
    try:
        header = stamped_header(FRAME)
        client.publish_depth(scene.depth_raw, header)
        _ask(client, scene.rgb, 507, box, header)
        _check_ok(scene, _answer(ros, header, 507), header)
        assert _wait_counter(client, "camera_info_reused", before["camera_info_reused"] + 1)
    finally:
        assert client.set_parameters(camera_info_latest=False)[0].successful


def _bad_depth(**fields) -> Image:
    msg = Image(height=240, width=320, encoding="16UC1", step=640, data=bytes(640 * 240))
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


def _camera(scene, **fields):
    return replace(scene.camera, **fields)


# name -> (depth (None: the scene's), camera (None: the scene's), status, log/reason text)
BAD_INPUTS = {
    "wrong_encoding": (lambda s: _bad_depth(encoding="mono8", step=320, data=bytes(320 * 240)),
                       None, st.BAD_DEPTH, "depth encoding 'mono8' is not supported"),
    "zero_size": (lambda s: _bad_depth(height=0, width=0, step=0, data=b""), None,
                  st.BAD_DEPTH, "empty depth image (0x0)"),
    "odd_size": (lambda s: np.ascontiguousarray(s.depth_raw[:100]), None, st.BAD_DEPTH,
                 "depth is 320x100 but the image is 320x240 (another aspect ratio"),
    "step_mismatch": (lambda s: _bad_depth(step=641, data=bytes(641 * 240)), None,
                      st.BAD_DEPTH, "depth step 641 is not a multiple of 2 bytes"),
    "data_length": (lambda s: _bad_depth(data=bytes(640 * 239)), None, st.BAD_DEPTH,
                    "depth data has 152960 bytes, expected step*height = 153600"),
    "all_invalid": (lambda s: _bad_depth(), None, st.BAD_DEPTH,
                    "depth image has no valid reading"),
    "camera_info_other_size": (None, lambda s: _camera(s, width=640, height=480),
                               st.BAD_CAMERA_INFO,
                               "camera_info is 640x480 but the image is 320x240"),
    "nan_in_k": (None, lambda s: _camera(s, k=np.where(np.eye(3, dtype=bool), np.nan, s.camera.k)),
                 st.BAD_CAMERA_INFO, "camera_info K contains NaN or inf"),
    "zero_k": (None, lambda s: _camera(s, k=np.zeros((3, 3))), st.BAD_CAMERA_INFO,
               "all-zero K means the camera is not calibrated"),
    "nan_in_d": (None, lambda s: _camera(s, d=np.array([0.1, np.nan, 0.0, 0.0, 0.0])),
                 st.BAD_CAMERA_INFO, "camera_info D contains NaN or inf"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_leaves_the_node_alive_and_the_next_frame_correct(ros, scene, box, name):
    client = ros.client
    make_depth, make_camera, status, reason = BAD_INPUTS[name]
    before = _counters(client)
    prompt_id = 600 + list(BAD_INPUTS).index(name)
    header = _rgbd(client, scene, prompt_id, box,
                   depth=make_depth(scene) if make_depth else None,
                   camera=make_camera(scene) if make_camera else None)
    got = _answer(ros, header, prompt_id, pose=False)
    _check_missing(got, status, reason)
    counter = grasp3d_counter(status)
    assert _wait_counter(client, counter, before[counter] + 1), ros.log_tail()
    assert f"{status}: " in ros.log.read_text() and reason in ros.log.read_text(), \
        ros.log_tail()
    good = _rgbd(client, scene, prompt_id + 100, box)
    _check_ok(scene, _answer(ros, good, prompt_id + 100), good)
    assert client.diagnostics[-1]["state"] == "active"


def test_depth_far_older_or_newer_than_the_frame(ros, scene, box):
    client = ros.client
    for prompt_id, dt_s, word in ((701, -5, "older"), (702, 5, "newer")):
        _reactivate(client)  # no depth of earlier frames: this one is the nearest
        header = stamped_header(FRAME)
        client.publish_depth(scene.depth_raw, _shifted(header, dt_s * 1_000_000_000))
        client.publish_camera_info(scene.camera, header)
        _ask(client, scene.rgb, prompt_id, box, header)
        _check_missing(_answer(ros, header, prompt_id, pose=False), st.DEPTH_STALE,
                       f"5000.0 ms {word} than the image")
    good = _rgbd(client, scene, 703, box)
    _check_ok(scene, _answer(ros, good, 703), good)
    _reactivate(client)  # forget the depth from the future: later frames must not see it


def test_another_frame_id_warns_and_the_depth_is_used(ros, scene, box):
    client = ros.client
    before = _counters(client)
    header = stamped_header(FRAME)
    client.publish_depth(scene.depth_raw, _shifted(header, 0, "camera_depth_optical_frame"))
    client.publish_camera_info(scene.camera, header)
    _ask(client, scene.rgb, 704, box, header)
    _check_ok(scene, _answer(ros, header, 704), header)
    assert _wait_counter(client, "depth_frame_mismatch", before["depth_frame_mismatch"] + 1)
    assert "frame_id of depth 'camera_depth_optical_frame' differs from the image's " \
           f"'{FRAME}'" in ros.log.read_text(), ros.log_tail()


def _reactivate(client: Client) -> None:
    """Deactivate and activate: the node forgets every depth and camera_info it had."""
    assert client.change_state("deactivate")
    assert client.spin_until(lambda: client.depth_pub.get_subscription_count() == 0, 20)
    assert client.change_state("activate")
    assert client.spin_until(lambda: client.depth_pub.get_subscription_count() > 0
                             and client.image_pub.get_subscription_count() > 0, 20)
    client.spin_for(0.5)


# prompt id, what the node has received since its activation, status, reason
UNPAIRED = [(801, "depth", st.NO_CAMERA_INFO,
             "depth frames arrive (1 so far) but no camera_info has been received"),
            (802, "camera_info", st.NO_DEPTH,
             "camera_info arrives (1 so far) but no depth frame has been received"),
            (803, "", st.NO_DEPTH, "no depth frame and no camera_info received yet")]


def test_depth_without_camera_info_and_the_reverse(ros, scene, box):
    client = ros.client
    try:
        for prompt_id, sent, status, reason in UNPAIRED:
            _reactivate(client)
            header = stamped_header(FRAME)
            if sent == "depth":
                client.publish_depth(scene.depth_raw, header)
            elif sent == "camera_info":
                client.publish_camera_info(scene.camera, header)
            _ask(client, scene.rgb, prompt_id, box, header)
            _check_missing(_answer(ros, header, prompt_id, pose=False), status, reason)
        assert f"{st.NO_CAMERA_INFO}: depth frames arrive" in ros.log.read_text(), \
            ros.log_tail()
    finally:
        assert client.state() == "active"
    good = _rgbd(client, scene, 804, box)
    _check_ok(scene, _answer(ros, good, 804), good)


def test_3d_outputs_are_only_computed_when_subscribed(ros, scene, box):
    client = ros.client
    with unsubscribed(client, ("grasp", "grasp_pose", "grasp_markers", "object_points")):
        header = _rgbd(client, scene, 805, box)
        result = client.wait_output("result", header, 805)
        assert result is not None, ros.log_tail()
        stages = {t.stage for t in result.timing}
        assert not any(s.startswith("grasp") for s in stages), stages
    with unsubscribed(client, ("grasp", "grasp_pose", "grasp_markers")):  # the cloud alone
        header = _rgbd(client, scene, 806, box)
        cloud = client.wait_output("object_points", header, timeout=60)
        assert cloud is not None and cloud.width > 0, ros.log_tail()
        stages = {t.stage for t in client.wait_output("result", header, 806).timing}
        assert {"grasp3d", "grasp3d.cloud"} <= stages and "grasp3d.pose" not in stages
        assert "grasp" not in stages


def test_markers_of_an_earlier_prompt_are_deleted(ros, scene, box):
    """A new prompt id on the next frame (a new standing prompt, a detector's next request):
    its markers message also deletes the previous prompt's namespace."""
    client = ros.client
    first = _rgbd(client, scene, 901, box)
    _answer(ros, first, 901)
    second = _rgbd(client, scene, 902, box)
    markers = _answer(ros, second, 902)["grasp_markers"].markers
    by_ns = {}
    for m in markers:
        by_ns.setdefault(m.ns, []).append(m)
    assert {m.action for m in by_ns["grasp/902"]} == {Marker.ADD}
    assert sorted(m.id for m in by_ns["grasp/901"]) == [0, 1, 2, 3]
    assert {m.action for m in by_ns["grasp/901"]} == {Marker.DELETE}
