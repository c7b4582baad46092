"""The node's RGB-D stage without a graph (talk2sam_ros.ros.rgbd) and its parameters.

Synthetic scenes through real messages (CDR round trip), the real pairing and the real 3D
grasp: which outputs are computed for which subscriptions, the depth decoded once per frame,
the markers of earlier frames' prompts deleted, the pairing as deep as the frame cache.
"""
from __future__ import annotations

import threading

import pytest

pytest.importorskip("rclpy")
import numpy as np  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from talk2sam_ros.grasp import grasp_from_mask  # noqa: E402
from talk2sam_ros.grasp import status as st  # noqa: E402
from talk2sam_ros.grasp.synthetic import render_scene, scene_specs  # noqa: E402
from talk2sam_ros.ros import grasp3d_messages as gm  # noqa: E402
from talk2sam_ros.ros import rgbd  # noqa: E402
from talk2sam_ros.ros.counters import Counters, grasp3d_counter  # noqa: E402
from talk2sam_ros.ros.params import (  # noqa: E402
    RGBD_PUBLICATIONS, RGBD_SUBSCRIPTIONS, TOPIC_BY_NAME, change_problem, node_config_from_params)
from talk2sam_ros.ros.scheduler import Frame, Prompt  # noqa: E402

CFG = node_config_from_params({"use_depth": True})


def _header(sec: int = 1_700_000_000, nanosec: int = 0, frame: str = "cam") -> Header:
    h = Header(frame_id=frame)
    h.stamp.sec, h.stamp.nanosec = sec, nanosec
    return h


def _cdr(msg):
    return deserialize_message(serialize_message(msg), type(msg))


@pytest.fixture(scope="module")
def scene():
    return render_scene(scene_specs()["tilted_sine"])


def _frame(scene, header: Header, seq: int = 1) -> Frame:
    frame = Frame(seq, (header.stamp.sec, header.stamp.nanosec), header, None, 0.0)
    frame.rgb = scene.rgb
    return frame


def _paired(scene, header: Header, cfg=CFG):
    pairing = rgbd.make_pairing(cfg)
    pairing.add_depth(gm.header_stamp_ns(header), _cdr(gm.depth_msg(scene.depth_raw, header)))
    pairing.add_camera_info(gm.header_stamp_ns(header),
                            _cdr(gm.camera_info_msg(scene.camera, header)))
    return pairing


def test_topic_tables_match_the_message_builders():
    assert set(RGBD_PUBLICATIONS) == set(gm.TOPICS)
    assert set(RGBD_SUBSCRIPTIONS) == set(gm.INPUT_TOPICS)
    for name, kind in {**gm.TOPICS, **gm.INPUT_TOPICS}.items():
        spec = TOPIC_BY_NAME[name]
        assert spec.msg_type == f"{kind.__module__.split('.')[0]}/{kind.__name__}", name
        assert spec.rgbd and (spec.direction == "in" or spec.switch == "use_depth"), name
    assert rgbd.RGBD_OUTPUTS == {"grasp", *RGBD_PUBLICATIONS}
    assert rgbd.POSE_OUTPUTS <= rgbd.RGBD_OUTPUTS
    # a counter for every 3D status (the diagnostics of bad inputs)
    assert {grasp3d_counter(s) for s in st.DESCRIPTIONS} <= set(Counters().snapshot())


def test_depth_range_is_checked_as_a_whole():
    with pytest.raises(ValueError, match="depth_min_m must be below depth_max_m"):
        node_config_from_params({"depth_min_m": 2.0, "depth_max_m": 1.5})
    current = {"depth_min_m": 0.1, "depth_max_m": 5.0}
    assert "below depth_max_m" in change_problem(current, {"depth_min_m": 5.0})
    assert change_problem(current, {"depth_min_m": 5.5, "depth_max_m": 8.0}) is None
    with pytest.raises(ValueError, match="depth_max_dt_ms"):
        node_config_from_params({"depth_max_dt_ms": -1.0})
    assert not node_config_from_params({}).use_depth  # nothing changes by default


def test_pairing_is_as_deep_as_the_frame_cache_and_follows_live_changes():
    cfg = node_config_from_params({"use_depth": True, "frame_cache_size": 20,
                                   "depth_max_dt_ms": 15.0})
    pairing = rgbd.make_pairing(cfg)
    for i in range(30):  # 30 depth frames at 30 Hz; the oldest cached colour frame is 19 back
        pairing.add_depth(i * 33_000_000, i)
        pairing.add_camera_info(i * 33_000_000, i)
    assert pairing.match(10 * 33_000_000).depth == 10  # within frame_cache_size + 4
    assert pairing.match(5 * 33_000_000).status == st.DEPTH_STALE  # forgotten
    assert pairing.match(20 * 33_000_000 + 14_000_000).ok
    rgbd.configure_pairing(pairing, node_config_from_params({"depth_max_dt_ms": 10.0}))
    assert pairing.match(20 * 33_000_000 + 14_000_000).status == st.DEPTH_STALE
    assert pairing.info_max_dt_ns == 10_000_000
    rgbd.configure_pairing(pairing, node_config_from_params({"camera_info_latest": True}))
    assert pairing.info_max_dt_ns > 10 ** 18


def test_the_depth_is_decoded_once_per_frame_and_kept_only_once_settled(scene):
    header = _header()
    frame = _frame(scene, header)
    empty = rgbd.make_pairing(CFG)
    depth, fresh = rgbd.frame_depth(frame, empty, CFG)
    assert (depth.status, fresh) == (st.NO_DEPTH, True) and "depth" not in frame.paired
    pairing = _paired(scene, header)
    depth, fresh = rgbd.frame_depth(frame, pairing, CFG)  # the depth arrived meanwhile
    assert depth.ok and fresh and depth.frame_warning == ""
    np.testing.assert_array_equal(depth.depth_m, scene.depth_m)
    again, fresh = rgbd.frame_depth(frame, empty, CFG)  # another prompt on the frame
    assert again is depth and not fresh
    narrower = node_config_from_params({"use_depth": True, "depth_max_m": 0.55})
    cut, fresh = rgbd.frame_depth(frame, pairing, narrower)  # a live range change applies
    assert fresh and cut.ok and np.nanmax(cut.depth_m) <= 0.55
    assert np.isnan(cut.depth_m).sum() > np.isnan(depth.depth_m).sum()


def test_another_frame_id_is_a_warning_and_the_data_are_used(scene):
    header = _header()
    pairing = rgbd.make_pairing(CFG)
    pairing.add_depth(gm.header_stamp_ns(header),
                      gm.depth_msg(scene.depth_raw, _header(frame="depth_frame")))
    pairing.add_camera_info(gm.header_stamp_ns(header), gm.camera_info_msg(scene.camera, header))
    depth = rgbd.pair_depth(pairing, header, 640, 480, 0.1, 5.0)
    assert depth.ok and "frame_id of depth 'depth_frame' differs" in depth.frame_warning


def _outputs(scene, wanted, prompt=Prompt(7, "cable"), depth=None, seq=1, markers=None):
    header = _header()
    if depth is None:
        depth, _ = rgbd.frame_depth(_frame(scene, header), _paired(scene, header), CFG)
    grasp = grasp_from_mask(scene.mask) if set(wanted) & rgbd.POSE_OUTPUTS else None
    return rgbd.grasp3d_outputs(depth, scene.mask, grasp, scene.rgb, header, prompt, wanted,
                                CFG, markers or rgbd.MarkerNamespaces(), seq)


def test_each_output_is_computed_only_when_wanted(scene):
    everything = _outputs(scene, rgbd.RGBD_OUTPUTS)
    assert everything.status == st.OK and everything.grasp.ok
    assert set(everything.messages) == set(RGBD_PUBLICATIONS)
    assert {name for name, _ in everything.timing} == {"grasp3d.pose", "grasp3d.markers",
                                                       "grasp3d.cloud"}
    pose_only = _outputs(scene, {"grasp_pose"})
    assert set(pose_only.messages) == {"grasp_pose"}
    np.testing.assert_array_equal(pose_only.grasp.position, everything.grasp.position)
    cloud_only = _outputs(scene, {"object_points"})
    assert cloud_only.grasp is None and set(cloud_only.messages) == {"object_points"}
    assert [n for n, _ in cloud_only.timing] == ["grasp3d.cloud"]
    points = gm.cloud_points(cloud_only.messages["object_points"])
    assert len(points) == min(CFG.max_cloud_points, int(scene.mask.sum()))
    assert np.abs((points - scene.plane_point) @ scene.plane_normal).max() < 1e-3
    candidate_only = _outputs(scene, {"grasp"})
    assert candidate_only.messages == {} and candidate_only.grasp.ok


def test_without_depth_the_3d_outputs_say_why(scene):
    missing = rgbd.FrameDepth(st.DEPTH_STALE, "nearest depth frame is 812.0 ms older")
    out = _outputs(scene, rgbd.RGBD_OUTPUTS, depth=missing)
    assert (out.status, out.reason) == (st.DEPTH_STALE, missing.reason)
    assert "grasp_pose" not in out.messages  # only for an ok grasp
    assert {m.action for m in out.messages["grasp_markers"].markers} == {Marker.DELETE}
    assert out.messages["object_points"].width == 0


def test_a_frame_s_markers_delete_the_earlier_frames_prompts(scene):
    markers = rgbd.MarkerNamespaces()
    assert markers.replace(1, frame_seq=10) == []
    assert markers.replace(2, frame_seq=10) == []  # two prompts on one frame: both stay
    assert markers.replace(2, frame_seq=11) == [1]  # prompt 1 does not answer frame 11
    assert markers.replace(3, frame_seq=12) == [2]
    out = _outputs(scene, {"grasp_markers"}, prompt=Prompt(5, "cable"), seq=13,
                   markers=markers)
    by_ns: dict[str, set] = {}
    for m in out.messages["grasp_markers"].markers:
        by_ns.setdefault(m.ns, set()).add((m.id, m.action))
    assert by_ns["grasp/5"] == {(i, Marker.ADD) for i in range(4)}
    assert by_ns["grasp/3"] == {(i, Marker.DELETE) for i in range(4)}
    assert set(by_ns) == {"grasp/5", "grasp/3"}


def test_a_depth_on_its_way_is_waited_for_within_depth_wait_ms(scene):
    """After a fast model the frame's aligned depth may still be on its way: the newest depth
    is then older than the frame, and pairing waits for it (bounded); a stream that is not
    behind, or not there at all, is not waited for."""
    header, older = _header(nanosec=500_000_000), _header(nanosec=400_000_000)
    stamp = gm.header_stamp_ns(header)
    pairing = _paired(scene, older)  # the previous frame's depth and camera_info
    assert rgbd.may_still_come(pairing.match(stamp))
    assert not rgbd.await_match(pairing, stamp, 0.0).ok  # depth_wait_ms 0: never waits
    late = threading.Timer(0.05, lambda: (
        pairing.add_depth(stamp, gm.depth_msg(scene.depth_raw, header)),
        pairing.add_camera_info(stamp, gm.camera_info_msg(scene.camera, header))))
    late.start()
    try:
        match = rgbd.await_match(pairing, stamp, 30.0)
    finally:
        late.join(5.0)
    assert match.ok and match.depth_dt_ns == 0
    stop = threading.Event()
    stop.set()  # deactivation: stop waiting
    assert rgbd.await_match(pairing, stamp + 10**9, 30.0, stop).status == st.DEPTH_STALE
    newer = _paired(scene, _header(nanosec=900_000_000))
    assert not rgbd.may_still_come(newer.match(stamp))  # a newer one came: this one will not
    assert not rgbd.may_still_come(rgbd.make_pairing(CFG).match(stamp))  # no depth stream
    only_info = rgbd.make_pairing(CFG)
    only_info.add_camera_info(stamp, "info")
    assert not rgbd.may_still_come(only_info.match(stamp))
