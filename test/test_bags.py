"""Bag input and output (talk2sam_ros.tools.bags) on real rosbag2 files, both storages.

The round trip through the node over DDS is in test_demo_bag.py; these tests cover the
container: what is read back equals what was written, errors are one clear line, and an
interrupted writer still leaves a readable bag.
"""
from __future__ import annotations

import numpy as np
import pytest
from geometry_msgs.msg import Point, Point32, Polygon
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String

from talk2sam_ros.msg import GraspCandidate, SegmentationResult, StageTiming
from talk2sam_ros.tools.bags import (BagError, BagTopics, InputBag, OutputBag, PromptChange,
                                     load_prompt_schedule, prompt_at, prompt_schedule, read_bag,
                                     write_bag)

STORAGES = ("mcap", "sqlite3")


def _header(i: int) -> Header:
    header = Header(frame_id="camera_color_optical_frame")
    header.stamp.sec, header.stamp.nanosec = 1_700_000_000 + i, 250_000_000
    return header


def _image(i: int) -> Image:
    rgb = np.full((6, 8, 3), 10 * i, np.uint8)
    return Image(header=_header(i), height=6, width=8, encoding="rgb8", step=24,
                 data=rgb.tobytes())


def _recording(n: int = 3) -> list[tuple[str, int, object]]:
    """Colour, aligned depth (16UC1 mm) and camera_info per frame, 10 Hz, a non-image topic."""
    out = []
    for i in range(n):
        t = (1_700_000_000 + i) * 10**9 + 250_000_000
        out.append(("/camera/color/image_raw", t, _image(i)))
        depth = np.full((6, 8), 500 + i, np.uint16)
        out.append(("/camera/aligned_depth_to_color/image_raw", t + 1000,
                    Image(header=_header(i), height=6, width=8, encoding="16UC1", step=16,
                          data=depth.tobytes())))
        info = CameraInfo(header=_header(i), height=6, width=8, distortion_model="plumb_bob")
        info.k = [4.0, 0.0, 4.0, 0.0, 4.0, 3.0, 0.0, 0.0, 1.0]
        out.append(("/camera/color/camera_info", t + 2000, info))
        out.append(("/chatter", t + 3000, String(data=f"hello {i}")))
    return out


@pytest.mark.parametrize("storage", STORAGES)
def test_recorded_topics_play_back_in_order_as_rclpy_messages(tmp_path, storage):
    path = write_bag(tmp_path / "rec", _recording(), storage)
    topics = BagTopics("/camera/color/image_raw", "/camera/aligned_depth_to_color/image_raw",
                       "/camera/color/camera_info")
    with InputBag(path) as bag:
        assert bag.count(topics.image) == 3 and "/chatter" in bag.topics
        played = list(bag.messages(topics))
    assert [m.role for m in played] == ["image", "depth", "camera_info"] * 3
    assert [m.time_ns for m in played] == sorted(m.time_ns for m in played)
    first = played[0].msg
    assert isinstance(first, Image) and first.header.stamp.sec == 1_700_000_000
    assert bytes(first.data) == bytes(_image(0).data)
    depth = played[1].msg
    assert np.frombuffer(bytes(depth.data), np.uint16).tolist() == [500] * 48
    assert list(played[2].msg.k) == [4.0, 0.0, 4.0, 0.0, 4.0, 3.0, 0.0, 0.0, 1.0]


def test_compressed_images_are_an_image_input(tmp_path):
    import cv2

    ok, jpeg = cv2.imencode(".jpg", np.zeros((6, 8, 3), np.uint8))
    msg = CompressedImage(header=_header(0), format="jpeg", data=jpeg.tobytes())
    path = write_bag(tmp_path / "jpeg", [("/cam/image/compressed", 5, msg)])
    with InputBag(path) as bag:
        (only,) = list(bag.messages(BagTopics("/cam/image/compressed")))
    assert isinstance(only.msg, CompressedImage) and only.msg.format == "jpeg"


def test_bad_bags_and_topics_are_one_line_errors(tmp_path):
    path = write_bag(tmp_path / "rec", _recording(1))
    cases = [
        (tmp_path / "absent", BagTopics("/x"), "does not exist"),
        (tmp_path / "rec" / "metadata.yaml", BagTopics("/x"), "cannot open bag"),
        (path, BagTopics("/camera/rgb"), r"no topic '/camera/rgb' .*its topics: "
                                         r"/camera/aligned_depth_to_color/image_raw"),
        (path, BagTopics("/chatter"), "std_msgs/msg/String, which cannot be the image input"),
        (path, BagTopics("/camera/color/image_raw", camera_info="/camera/color/image_raw"),
         "cannot be the camera info input"),
    ]
    for bag_path, topics, pattern in cases:
        with pytest.raises(BagError, match=pattern) as info:
            with InputBag(bag_path) as bag:
                list(bag.messages(topics))
        assert "\n" not in str(info.value)
    damaged = tmp_path / "damaged"
    write_bag(damaged, _recording(3))
    mcap = next(damaged.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[:300])
    with pytest.raises(BagError, match="damaged|cannot open"):
        with InputBag(damaged) as bag:
            list(bag.messages(BagTopics("/camera/color/image_raw")))


def test_a_bag_without_images_is_an_error(tmp_path):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    path = write_bag(tmp_path / "talk", [("/chatter", 1, String(data="x"))])
    with InputBag(path) as bag:
        with pytest.raises(BagError, match="no topic '/image'"):
            bag.check(BagTopics("/image"))
    with Writer(tmp_path / "empty", version=8) as writer:  # the topic, but not one frame
        writer.add_connection("/image", "sensor_msgs/msg/Image",
                              typestore=get_typestore(Stores.ROS2_JAZZY))
    with InputBag(tmp_path / "empty") as bag:
        with pytest.raises(BagError, match="no messages on the image topic /image"):
            bag.check(BagTopics("/image"))


@pytest.mark.parametrize("storage", STORAGES)
def test_node_outputs_round_trip_through_an_output_bag(tmp_path, storage):
    result = SegmentationResult(header=_header(2), prompt_id=7, text="black cable",
                                image_width=8, image_height=6, boxes=[1.0, 2.0, 5.0, 6.0],
                                scores=[0.9], areas=[12], mask_area=12,
                                timing=[StageTiming(stage="predict", ms=3.5)])
    grasp = GraspCandidate(header=_header(2), prompt_id=7, valid=True, angle=0.5,
                           width_px=3.0, grasp_point=Point(x=4.0, y=3.0, z=3.0),
                           centerline=Polygon(points=[Point32(x=1.0, y=1.0, z=0.0)]))
    mask = Image(header=_header(2), height=6, width=8, encoding="mono8", step=8,
                 data=bytes(48))
    t = 1_700_000_002 * 10**9
    with OutputBag(tmp_path / "out", storage) as bag:
        bag.write("/talk2sam/result", result, t)
        bag.write("/talk2sam/grasp", grasp, t)
        bag.write("/talk2sam/mask", mask, t)
    assert bag.counts == {"/talk2sam/result": 1, "/talk2sam/grasp": 1, "/talk2sam/mask": 1}
    back = read_bag(tmp_path / "out")
    (rt, r), = back["/talk2sam/result"]
    assert rt == t and r.text == "black cable" and r.prompt_id == 7
    assert r.header.stamp.sec == 1_700_000_002 and list(r.boxes) == [1.0, 2.0, 5.0, 6.0]
    assert r.timing[0].stage == "predict" and r.timing[0].ms == pytest.approx(3.5)
    (_, g), = back["/talk2sam/grasp"]
    assert g.valid and g.grasp_point.x == 4.0 and g.centerline.points[0].y == 1.0
    (_, m), = back["/talk2sam/mask"]
    assert (m.width, m.height, m.encoding) == (8, 6, "mono8") and len(m.data) == 48


def test_an_interrupted_writer_leaves_a_readable_bag(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with OutputBag(tmp_path / "cut") as bag:
            bag.write("/image", _image(0), 1)
            raise KeyboardInterrupt
    assert len(read_bag(tmp_path / "cut")["/image"]) == 1
    with pytest.raises(BagError, match="already exists"):
        OutputBag(tmp_path / "cut")


def test_prompt_schedules(tmp_path):
    schedule = tmp_path / "prompts.yaml"
    schedule.write_text("- {t: 2.5, text: red rope, boxes: [[1, 2, 30, 40]]}\n"
                        "- {t: 0, text: black cable}\n")
    changes = load_prompt_schedule(schedule)
    assert [c.text for c in changes] == ["black cable", "red rope"]
    assert changes[1].boxes.tolist() == [[1.0, 2.0, 30.0, 40.0]]
    assert prompt_at(changes, 1.0).text == "black cable" and prompt_at(changes, 9).text == \
        "red rope"
    assert prompt_at((PromptChange(1.0, "x"),), 0.5) is None
    for bad, pattern in (("[]", "non-empty list"), ("- {t: -1, text: a}", "t must be >= 0"),
                         ("- {t: 0, text: ''}", "text must be"),
                         ("- {t: 0, text: a, boxes: [1, 2]}", "boxes must be"),
                         ("- {t: 0, text: a, colour: red}", "unknown keys"),
                         ("- [unclosed", "not valid YAML")):
        schedule.write_text(bad)
        with pytest.raises(BagError, match=pattern):
            load_prompt_schedule(schedule)
    with pytest.raises(BagError, match="cannot read"):
        load_prompt_schedule(tmp_path / "absent.yaml")
    assert prompt_schedule([{"text": "cable"}], "cli")[0].at_s == 0.0


# ---------------------------------------------------------------------------- playback plan
def _played(recording: list[tuple[str, int, object]]) -> list:
    from talk2sam_ros.tools.bags import BagMessage

    roles = {"/camera/color/image_raw": "image", "/camera/color/camera_info": "camera_info",
             "/camera/aligned_depth_to_color/image_raw": "depth"}
    return [BagMessage(roles[t], t, ns, msg) for t, ns, msg in recording if t in roles]


def test_each_frame_is_played_after_the_depth_recorded_around_it():
    """Depth recorded after its colour frame goes out before that frame (the node pairs it
    then); what came before the first frame goes with the first."""
    from talk2sam_ros.tools.bags import play_frames

    msgs = _played(_recording(3))
    early = _played(_recording(1))[2]  # a camera_info recorded before the first image
    frames = list(play_frames([early, *msgs], start_ns=msgs[0].time_ns))
    assert [f.index for f in frames] == [0, 1, 2]
    assert [f.image.msg.header.stamp.sec for f in frames] == [1_700_000_000 + i for i in range(3)]
    assert [[m.role for m in f.companions] for f in frames] == \
        [["camera_info", "depth", "camera_info"], ["depth", "camera_info"],
         ["depth", "camera_info"]]
    assert all(m.msg.header.stamp.sec == f.image.msg.header.stamp.sec
               for f in frames for m in f.companions[-2:])
    assert [f.at_s for f in frames] == [0.0, 1.0, 2.0]
    assert list(play_frames(iter(()), 0)) == []


def test_unstamped_frames_are_played_at_their_recorded_time():
    from talk2sam_ros.tools.bags import BagMessage, played_stamp

    msg = BagMessage("image", "/image", 1_700_000_003_250_000_000, _image(0))
    msg.msg.header.stamp.sec = msg.msg.header.stamp.nanosec = 0
    assert played_stamp(msg) == (1_700_000_003, 250_000_000)
    assert (msg.msg.header.stamp.sec, msg.msg.header.stamp.nanosec) == (1_700_000_003,
                                                                        250_000_000)
    stamped = BagMessage("image", "/image", 5, _image(1))
    assert played_stamp(stamped) == (1_700_000_001, 250_000_000)  # the recorded header wins


def test_frame_plan_skips_unprompted_repeated_and_rejected_frames():
    from talk2sam_ros.ros.conversions import make_bridge
    from talk2sam_ros.tools.bags import play_frames
    from talk2sam_ros.tools.bag_player import image_check, plan_frames

    msgs = [m for m in _played(_recording(6)) if m.role == "image"]
    msgs[3].msg.header.stamp.sec = msgs[2].msg.header.stamp.sec  # a repeated stamp
    msgs[4].msg.encoding = "yuv422"  # unsupported by the node
    schedule = prompt_schedule([{"t": 0.5, "text": "cable"}, {"t": 4.5, "text": "rope"}], "x")
    items = list(plan_frames(play_frames(msgs, msgs[0].time_ns), schedule, png_every=2,
                             check=image_check(make_bridge())))
    assert [i.status for i in items] == ["no_prompt", "played", "played",
                                         "stamp_not_increasing", "rejected", "played"]
    assert [i.prompt_id for i in items] == [0, 1, 1, 1, 1, 2]
    assert "yuv422" in items[4].reason
    assert [i.png for i in items] == [False, True, False, False, False, True]
    first_two = list(plan_frames(play_frames(msgs, msgs[0].time_ns), schedule, max_frames=2))
    assert [i.status for i in first_two] == ["no_prompt", "played", "played"]
    item = items[2]
    item.release()
    assert item.frame.image.msg is None and item.frame.image.time_ns == msgs[2].time_ns
    items[1].release()
    assert items[1].frame.image.msg is not None  # kept for its PNGs


def test_outputs_are_recorded_at_their_source_frames_time(tmp_path):
    """The recorder writes an output (MarkerArray included: its stamp is on its markers) at
    the recorded time of the frame it answers, under the output namespace; an output for a
    frame it was not told about is counted, not written."""
    from visualization_msgs.msg import Marker, MarkerArray

    from talk2sam_ros.tools.bags import OutputRecorder, namespaced
    from talk2sam_ros.tools.harness import Received

    assert namespaced("", "mask") == "/mask" and namespaced("/arm/", "image/compressed") == \
        "/arm/image/compressed"
    mask = Image(header=_header(0), height=6, width=8, encoding="mono8", step=8, data=bytes(48))
    markers = MarkerArray(markers=[Marker(header=_header(0), ns="p1")])
    with OutputBag(tmp_path / "out") as bag:
        rec = OutputRecorder(bag, "arm")
        rec.expect((1_700_000_000, 250_000_000), 42)
        for topic, msg in (("mask", mask), ("grasp_markers", markers),
                           ("mask", Image(header=_header(5)))):
            rec(Received(topic, msg, 0.0))
        rec.write_input("image", _image(0), 42)
    assert rec.unplaced == 1
    back = read_bag(tmp_path / "out")
    assert sorted(back) == ["/arm/grasp_markers", "/arm/image", "/arm/mask"]
    assert [t for t, _ in back["/arm/mask"]] == [42]
    (t, m), = back["/arm/grasp_markers"]
    assert t == 42 and m.markers[0].header.stamp.sec == 1_700_000_000
