"""RGB-D grasp messages (talk2sam_ros.ros.grasp3d_messages), no running graph: depth Image and
CameraInfo in (every bad input rejected with one line and its status), PoseStamped,
GraspCandidate 3D fields, MarkerArray and PointCloud2 out, through CDR serialization."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402

from talk2sam_ros.grasp import status as st  # noqa: E402
from talk2sam_ros.grasp.cloud import object_points  # noqa: E402
from talk2sam_ros.grasp.depth import DepthInputError  # noqa: E402
from talk2sam_ros.grasp.pixel import grasp_from_mask  # noqa: E402
from talk2sam_ros.grasp.pose import grasp_pose_from_depth, not_available  # noqa: E402
from talk2sam_ros.grasp.synthetic import render_scene, scene_specs  # noqa: E402
from talk2sam_ros.msg import GraspCandidate  # noqa: E402
from talk2sam_ros.ros import grasp3d_messages as gm  # noqa: E402


def _header(frame: str = "camera_color_optical_frame") -> Header:
    h = Header(frame_id=frame)
    h.stamp.sec, h.stamp.nanosec = 1_700_000_123, 456_789
    return h


def _roundtrip(msg):
    return deserialize_message(serialize_message(msg), type(msg))


@pytest.fixture(scope="module")
def scene():
    return render_scene(scene_specs()["tilted_sine"])


def _messages(scene, header: Header | None = None) -> tuple[Image, CameraInfo]:
    header = header or _header()
    return (_roundtrip(gm.depth_msg(scene.depth_raw, header)),
            _roundtrip(gm.camera_info_msg(scene.camera, header)))


@pytest.mark.parametrize("name", ["tilted_sine", "tilted_arc_16uc1", "distorted"])
def test_messages_in_give_the_scene_and_the_pose_out_matches_ground_truth(name):
    scene = render_scene(scene_specs()[name])
    depth_in, info_in = _messages(scene)
    assert depth_in.encoding == scene.encoding
    depth, camera = gm.depth_for_frame(depth_in, info_in, 640, 480, 0.1, 5.0)
    np.testing.assert_array_equal(depth, scene.depth_m)
    np.testing.assert_array_equal(camera.k, scene.camera.k)
    np.testing.assert_array_equal(camera.d, scene.camera.d)
    grasp = grasp_from_mask(scene.mask)
    g3 = grasp_pose_from_depth(scene.mask, grasp, depth, camera)
    pose = _roundtrip(gm.pose_msg(g3, _header()))
    assert isinstance(pose, PoseStamped)
    assert (pose.header.stamp.sec, pose.header.stamp.nanosec) == (1_700_000_123, 456_789)
    assert pose.header.frame_id == "camera_color_optical_frame"
    p = pose.pose.position
    assert scene.nearest_on_centerline(np.array([p.x, p.y, p.z]))[0][0] < 0.003
    q = pose.pose.orientation
    np.testing.assert_allclose([q.x, q.y, q.z, q.w], g3.quaternion)
    # the quaternion's z axis is the plane normal (rotate e_z by q by hand)
    zx = 2 * (q.x * q.z + q.w * q.y)
    zy = 2 * (q.y * q.z - q.w * q.x)
    zz = 1 - 2 * (q.x * q.x + q.y * q.y)
    assert math.degrees(math.acos(np.clip(np.dot([zx, zy, zz], scene.plane_normal), -1, 1))) < 5


def test_half_resolution_depth_is_resized_to_the_image(scene):
    half = np.ascontiguousarray(scene.depth_raw[::2, ::2])
    depth_in = gm.depth_msg(half, _header())
    info_in = gm.camera_info_msg(scene.camera, _header())
    depth, _ = gm.depth_for_frame(depth_in, info_in, 640, 480, 0.1, 5.0)
    assert depth.shape == (480, 640)
    np.testing.assert_array_equal(depth[::2, ::2], scene.depth_m[::2, ::2])
    np.testing.assert_array_equal(depth[1::2, 1::2], scene.depth_m[::2, ::2])


def _bad_depth(scene, **fields) -> Image:
    msg = gm.depth_msg(scene.depth_raw, _header())
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


def _bad_info(scene, **fields) -> CameraInfo:
    msg = gm.camera_info_msg(scene.camera, _header())
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


BAD_INPUTS = {
    "wrong encoding": (dict(depth=dict(encoding="rgb8")), st.BAD_DEPTH, "not supported"),
    "zero size": (dict(depth=dict(width=0, step=0, data=b"")), st.BAD_DEPTH, "empty"),
    "odd size": (dict(depth=dict(width=100)), st.BAD_DEPTH, "another aspect ratio"),
    "step mismatch": (dict(depth=dict(step=2600)), st.BAD_DEPTH, "expected step*height"),
    "all invalid": (dict(depth=dict(data=bytes(640 * 480 * 4))), st.BAD_DEPTH,
                    "no valid reading"),
    "camera_info of another size": (dict(info=dict(width=1280, height=960)),
                                    st.BAD_CAMERA_INFO, "but the image is 640x480"),
    "NaN in K": (dict(info=dict(k=[float("nan")] + [0.0] * 8)), st.BAD_CAMERA_INFO,
                 "K contains NaN"),
    "zero K": (dict(info=dict(k=[0.0] * 9)), st.BAD_CAMERA_INFO, "not calibrated"),
    "NaN in D": (dict(info=dict(d=[float("nan")] * 5)), st.BAD_CAMERA_INFO,
                 "D contains NaN"),
    "binning": (dict(info=dict(binning_x=2)), st.BAD_CAMERA_INFO, "binning"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_inputs_are_rejected_with_one_line_and_a_status(scene, case):
    changes, status, phrase = BAD_INPUTS[case]
    depth_in = _bad_depth(scene, **changes.get("depth", {}))
    info_in = _bad_info(scene, **changes.get("info", {}))
    with pytest.raises(DepthInputError) as info:
        gm.depth_for_frame(depth_in, info_in, 640, 480, 0.1, 5.0)
    assert info.value.status == status
    assert phrase in str(info.value) and "\n" not in str(info.value)
    if "depth" in changes and case != "all invalid" and case != "odd size":
        assert phrase in gm.check_depth_msg(depth_in)
    if "info" in changes and case != "camera_info of another size":
        assert phrase in gm.check_camera_info_msg(info_in)
    # the next good frame is unaffected (pure functions: no state to corrupt)
    good = gm.depth_for_frame(*_messages(scene), 640, 480, 0.1, 5.0)[0]
    np.testing.assert_array_equal(good, scene.depth_m)


def test_frame_id_mismatch_is_a_warning():
    assert gm.frame_warning("cam", "cam", "/cam") == ""
    assert gm.frame_warning("cam", "", "") == ""  # unknown frames: nothing to say
    line = gm.frame_warning("camera_color_optical_frame", "camera_depth_optical_frame",
                            "camera_color_optical_frame")
    assert "depth 'camera_depth_optical_frame'" in line and "camera_info" not in line
    assert "aligned_depth_to_color" in line
    both = gm.frame_warning("a", "b", "c")
    assert "depth 'b' and camera_info 'c'" in both


def test_grasp_candidate_3d_fields(scene):
    grasp = grasp_from_mask(scene.mask)
    g3 = grasp_pose_from_depth(scene.mask, grasp, scene.depth_m, scene.camera)
    msg = GraspCandidate(header=_header(), prompt_id=3, valid=True, width_px=grasp.width_px)
    got = _roundtrip(gm.fill_grasp_3d(msg, g3))
    assert got.depth_status == "ok" and got.depth_reason == "" and got.approach_from == "plane"
    assert got.width_px == pytest.approx(grasp.width_px)  # pixel fields untouched
    assert got.width_m == pytest.approx(g3.width_m)
    assert len(got.centerline_3d) == len(g3.centerline) == len(got.centerline_3d_index)
    np.testing.assert_allclose([[p.x, p.y, p.z] for p in got.centerline_3d], g3.centerline,
                               rtol=1e-6)
    assert list(got.centerline_3d_index) == list(g3.centerline_index)
    assert got.valid_depth_fraction == pytest.approx(1.0)
    assert (got.depth_point.x, got.depth_point.y) == grasp.point
    assert got.pose.position.z == pytest.approx(g3.position[2])
    # without depth: the status and its reason, no pose
    missing = gm.fill_grasp_3d(GraspCandidate(), not_available(st.DEPTH_STALE, "far"))
    assert (missing.depth_status, missing.depth_reason) == ("depth_stale", "far")
    assert missing.pose.orientation.w == 1.0 and missing.width_m == 0.0
    assert GraspCandidate().depth_status == st.DISABLED  # use_depth off: nothing changes


def test_markers_replace_each_other_cleanly(scene):
    grasp = grasp_from_mask(scene.mask)
    g3 = grasp_pose_from_depth(scene.mask, grasp, scene.depth_m, scene.camera)
    drawn = _roundtrip(gm.markers_msg(g3, _header(), "black cable", 4))
    assert isinstance(drawn, MarkerArray)
    by_id = {m.id: m for m in drawn.markers}
    assert sorted(by_id) == [0, 1, 2, 3] and {m.ns for m in drawn.markers} == {"grasp/4"}
    assert all(m.action == Marker.ADD for m in drawn.markers)
    assert all(m.header.frame_id == "camera_color_optical_frame" for m in drawn.markers)
    assert by_id[0].type == Marker.LINE_STRIP and len(by_id[0].points) == len(g3.centerline)
    assert by_id[1].type == Marker.LINE_LIST and len(by_id[1].points) % 2 == 0
    assert by_id[1].pose.position.z == pytest.approx(g3.position[2])
    fingers = np.array([[p.x, p.y, p.z] for p in by_id[1].points[:4]])
    assert np.ptp(fingers[:, 0]) > g3.width_m  # the jaws open wider than the object
    assert by_id[2].type == Marker.ARROW and by_id[3].text.startswith("black cable (")
    assert all(m.color.a > 0 and m.scale.x >= 0 for m in drawn.markers)
    # a frame without a pose deletes the gripper, arrow and label of the last one
    gone = gm.markers_msg(not_available(st.NO_DEPTH), _header(), "black cable", 4)
    assert sorted(m.id for m in gone.markers) == [0, 1, 2, 3]
    assert all(m.action == Marker.DELETE for m in gone.markers)
    # no pose but a centreline (no valid depth near the point): the line stays
    partial = replace(g3, status=st.NO_VALID_DEPTH_NEAR_POINT)
    actions = {m.id: m.action for m in gm.markers_msg(partial, _header(), "", 4).markers}
    assert actions == {0: Marker.ADD, 1: Marker.DELETE, 2: Marker.DELETE, 3: Marker.DELETE}


def test_point_cloud_round_trips_with_colours(scene):
    points, colours = object_points(scene.mask, scene.depth_m, scene.camera, 500, scene.rgb)
    msg = _roundtrip(gm.cloud_msg(points, _header(), colours))
    assert isinstance(msg, PointCloud2)
    assert (msg.height, msg.width, msg.point_step) == (1, len(points), 16)
    assert [f.name for f in msg.fields] == ["x", "y", "z", "rgb"] and msg.is_dense
    np.testing.assert_array_equal(gm.cloud_points(msg), points)
    raw = np.frombuffer(bytes(msg.data), np.uint32).reshape(-1, 4)[:, 3]
    np.testing.assert_array_equal(np.stack([(raw >> 16) & 255, (raw >> 8) & 255, raw & 255], 1),
                                  colours)
    plain = gm.cloud_msg(points, _header())
    assert plain.point_step == 12 and len(plain.data) == 12 * len(points)
    np.testing.assert_array_equal(gm.cloud_points(plain), points)
    empty = _roundtrip(gm.cloud_msg(np.zeros((0, 3)), _header()))
    assert empty.width == 0 and len(empty.data) == 0


def test_rviz_config_shows_the_3d_outputs():
    yaml = pytest.importorskip("yaml")
    from rosutil import REPO

    config = yaml.safe_load((REPO / "config" / "talk2sam.rviz").read_text())
    displays = {d["Topic"]["Value"]: d["Class"] for d in config["Visualization Manager"]
                ["Displays"]}
    expected = {"grasp_pose": "rviz_default_plugins/Pose",
                "grasp_markers": "rviz_default_plugins/MarkerArray",
                "object_points": "rviz_default_plugins/PointCloud2"}
    assert {t: displays.get(t) for t in gm.TOPICS} == expected
    assert gm.TOPICS["grasp_pose"] is PoseStamped


def test_depth_msg_rejects_what_it_cannot_encode():
    with pytest.raises(ValueError, match="uint16 mm or float32 m"):
        gm.depth_msg(np.zeros((4, 4), np.float64), _header())
    assert gm.header_stamp_ns(_header()) == 1_700_000_123_000_456_789
