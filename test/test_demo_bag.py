"""talk2sam-demo --bag over real DDS: a synthetic RGB-D bag (written with rosbags, the same
library as the tool) played into the real node, its outputs read back from the output bag.

Both storages in and out, raw and compressed colour, maximum and recorded rate, the prompt
schedule, the bad-input errors (before any node starts) and an interrupted run.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Header, String
from test_demo import terminated_demo

from talk2sam_ros.grasp.synthetic import render_scene, scene_specs
from talk2sam_ros.ros import conversions as conv
from talk2sam_ros.ros.grasp3d_messages import camera_info_msg, depth_msg
from talk2sam_ros.ros.params import DIAGNOSTICS_TOPIC, TOPIC_BY_NAME, TOPICS
from talk2sam_ros.tools import demo
from talk2sam_ros.tools.bags import read_bag, write_bag

WIDTH, HEIGHT = 160, 120
T0 = 1_700_000_000 * 10**9
COLOUR, JPEG = "/camera/color/image_raw", "/camera/color/image_raw/compressed"
DEPTH, INFO = "/camera/aligned_depth_to_color/image_raw", "/camera/color/camera_info"
OUTPUTS_2D = {"result", "grasp", "mask", "mask_labels", "similarity", "similarity_color",
              "overlay"}
# Every output in the node's topic table, and those beyond the 2D ones (the RGB-D grasp's)
NODE_OUTPUTS = {t.name for t in TOPICS if t.direction == "out" and t.name != DIAGNOSTICS_TOPIC}
OUTPUTS_3D = NODE_OUTPUTS - OUTPUTS_2D


def recording(n: int, period_s: float = 0.1, compressed: bool = False, depth: bool = True
              ) -> tuple[list[tuple[str, int, object]], dict[tuple[int, int], int]]:
    """A camera at `period_s`: colour (rgb8 or JPEG), aligned depth recorded just after it,
    camera_info just before it, and a topic the demo does not play. Synthetic RGB-D scenes
    of the grasp work, at 160x120. Returns the records and colour stamp -> recorded time."""
    bridge = conv.make_bridge()
    specs = list(scene_specs().values())
    records, times = [], {}
    for i in range(n):
        spec = replace(specs[i % len(specs)], width=WIDTH, height=HEIGHT, fx=150.0, fy=150.0)
        scene = render_scene(spec)
        t = T0 + int(i * period_s * 1e9)
        stamp_ns = t - 30_000_000  # exposure 30 ms before the driver published it
        header = Header(frame_id="camera_color_optical_frame")
        header.stamp.sec, header.stamp.nanosec = divmod(stamp_ns, 10**9)
        if compressed:
            ok, jpeg = cv2.imencode(".jpg", scene.rgb[..., ::-1])
            records.append((JPEG, t, CompressedImage(header=header, format="jpeg",
                                                     data=jpeg.tobytes())))
        else:
            records.append((COLOUR, t, conv.rgb_to_msg(scene.rgb, "rgb8", header, bridge)))
        times[divmod(stamp_ns, 10**9)] = t
        if depth:
            records.append((INFO, t - 1_000_000, camera_info_msg(scene.camera, header)))
            records.append((DEPTH, t + 3_000_000, depth_msg(scene.depth_raw, header)))
        records.append(("/rosout_like", t + 5_000_000, String(data=f"frame {i}")))
    records.sort(key=lambda r: r[1])
    return records, times


def tiny_params(tmp_path: Path) -> Path:
    """The tiny preset with its untrained head: no training step in these tests."""
    path = tmp_path / "tiny.yaml"
    path.write_text("talk2sam:\n  ros__parameters:\n    preset: tiny\n")
    return path


def image_encoding(topic: str) -> str:
    """The encoding the node's topic table gives an image output (mask_labels: mono8 here)."""
    return TOPIC_BY_NAME[topic].encoding.split()[0]


def check_output_bag(path: Path, times: dict[tuple[int, int], int], namespace: str = ""
                     ) -> dict[str, list]:
    """Every output of the output bag (read back with rosbags) is recorded at its source
    frame's recorded time, with that frame's stamp; images have the source size and the
    table's encoding, and as many bytes as they say. Returns topic -> messages."""
    back = read_bag(path)
    prefix = namespace.rstrip("/") + "/"
    outputs = {t[len(prefix):]: msgs for t, msgs in back.items()
               if t[len(prefix):] in NODE_OUTPUTS}
    assert OUTPUTS_2D <= set(outputs), sorted(back)
    for topic, msgs in outputs.items():
        for time_ns, msg in msgs:
            header = msg.markers[0].header if topic == "grasp_markers" else msg.header
            stamp = (header.stamp.sec, header.stamp.nanosec)
            assert times[stamp] == time_ns, (topic, stamp)
            if TOPIC_BY_NAME[topic].msg_type == "sensor_msgs/Image":
                assert (msg.width, msg.height) == (WIDTH, HEIGHT), topic
                assert msg.encoding == image_encoding(topic), topic
                assert len(msg.data) == msg.step * msg.height, topic
    return {t: [m for _, m in msgs] for t, msgs in outputs.items()}


def read_mask(msg) -> np.ndarray:
    return np.asarray(msg.data, np.uint8).reshape(msg.height, msg.step)[:, :msg.width]


@pytest.mark.slow
def test_a_bag_at_maximum_rate_round_trips_through_the_node(tmp_path, ros_domain, capsys):
    """sqlite3 in, MCAP out, raw rgb8 colour; a prompt schedule that starts after the first
    frame and changes text and box mid-bag: every other frame is answered once under the
    prompt of its recorded time, and every output topic has one message per frame."""
    records, times = recording(5)
    bag = write_bag(tmp_path / "in", records, "sqlite3")
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("- {t: 0.05, text: black cable}\n"
                       "- {t: 0.25, text: wire, boxes: [[20, 10, 150, 110]]}\n")
    out = tmp_path / "out"
    rc = demo.main(["--bag", str(bag), "--image-topic", COLOUR, "--prompts", str(prompts),
                    "--params-file", str(tiny_params(tmp_path)), "--out", str(out),
                    "--png-every", "2", "--timeout", "200", "-q"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["frames_in_bag"], summary["frames_played"],
            summary["frames_processed"]) == (5, 4, 4)
    assert summary["frames_skipped"]["no_prompt"] == 1
    assert summary["output_bag"] == str(out / "outputs") and summary["output_storage"] == "mcap"
    assert list((out / "outputs").glob("*.mcap"))

    outputs = check_output_bag(out / "outputs", times)
    played = sorted(times)[1:]
    for topic, msgs in outputs.items():
        assert sorted((m.header.stamp.sec, m.header.stamp.nanosec) for m in
                      (msgs if topic != "grasp_markers" else [x.markers[0] for x in msgs])) \
            == played, topic  # one message per processed frame, on every output
    assert summary["output_counts"] == {f"/{t}": 4 for t in outputs}
    results = sorted(outputs["result"], key=lambda r: (r.header.stamp.sec,
                                                       r.header.stamp.nanosec))
    assert [(r.prompt_id, r.text) for r in results] == [(1, "black cable")] * 2 + \
        [(2, "wire")] * 2
    assert all(list(r.boxes) == [20.0, 10.0, 150.0, 110.0] for r in results[2:])
    masks = {(m.header.stamp.sec, m.header.stamp.nanosec): read_mask(m)
             for m in outputs["mask"]}
    for r in results:
        mask = masks[(r.header.stamp.sec, r.header.stamp.nanosec)]
        assert set(np.unique(mask)) <= {0, 255}
        assert int((mask == 255).sum()) == r.mask_area
    sim = outputs["similarity"][0]
    values = np.frombuffer(bytes(sim.data), np.float32)
    assert values.size == WIDTH * HEIGHT and 0.0 <= values.min() <= values.max() <= 1.0

    frames = [f for f in summary["frames"] if f["status"] == "played"]
    with_pngs = [f for f in frames if "files" in f]
    assert [f["index"] for f in with_pngs] == [1, 3]  # every 2nd frame played
    for f in with_pngs:
        for name in f["files"].values():
            img = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
            assert img is not None and img.shape[:2] == (HEIGHT, WIDTH), name
    assert "the node answered a first frame" in printed


@pytest.mark.slow
def test_a_compressed_bag_at_recorded_rate_into_sqlite3(tmp_path, ros_domain):
    """MCAP in, sqlite3 out, JPEG colour at its recorded timing under a text + box prompt,
    with the played frames copied under the node's input name: each result is one message on
    every output topic, for a frame that was played, at that frame's recorded time."""
    records, times = recording(6, period_s=0.2, compressed=True, depth=False)
    bag = write_bag(tmp_path / "in", records, "mcap")
    out = tmp_path / "out"
    rc = demo.main(["--bag", str(bag), "--image-topic", JPEG, "--text", "cable",
                    "--box", "10", "10", "150", "110", "--bag-rate", "recorded",
                    "--output-storage", "sqlite3", "--output-bag", str(tmp_path / "res"),
                    "--output-namespace", "/arm", "--with-inputs",
                    "--params-file", str(tiny_params(tmp_path)), "--out", str(out),
                    "--timeout", "200", "-q"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list((tmp_path / "res").glob("*.db3")) and summary["rate"] == "recorded"
    outputs = check_output_bag(tmp_path / "res", times, "/arm")
    n_results = len(outputs["result"])
    assert n_results >= 1
    assert all(len(msgs) == n_results for msgs in outputs.values())  # one per answer each
    answered = {(r.header.stamp.sec, r.header.stamp.nanosec) for r in outputs["result"]}
    assert answered <= set(times)
    assert summary["frames_played"] == 6
    assert summary["frames_processed"] == len(answered) == sum(
        f["answered"] for f in summary["frames"])
    copied = read_bag(tmp_path / "res")["/arm/image/compressed"]
    assert [t for t, _ in copied] == sorted(times.values())
    assert bytes(copied[0][1].data) == bytes(records[0][2].data)


@pytest.mark.slow
def test_depth_and_camera_info_reach_the_node_with_their_frame(tmp_path, ros_domain):
    """With --depth-topic/--camera-info-topic the node pairs the played depth with each
    frame (no no_depth / stale status), its 3D outputs are recorded with the frame's stamp
    at its recorded time, and the PNGs include the 3D grasp figure."""
    records, times = recording(3)
    bag = write_bag(tmp_path / "in", records, "mcap")
    out = tmp_path / "out"
    rc = demo.main(["--bag", str(bag), "--image-topic", COLOUR, "--depth-topic", DEPTH,
                    "--camera-info-topic", INFO, "--text", "cable", "--png-every", "1",
                    "--params-file", str(tiny_params(tmp_path)), "--out", str(out),
                    "--timeout", "200", "-q"])
    assert rc == 0
    outputs = check_output_bag(out / "outputs", times)
    statuses = [g.depth_status for g in outputs["grasp"]]
    assert len(statuses) == 3
    assert not set(statuses) & {"", "no_depth", "no_camera_info", "depth_stale",
                                "camera_info_stale"}, statuses
    assert OUTPUTS_3D and OUTPUTS_3D <= set(outputs)
    for topic in OUTPUTS_3D:  # the pose for an ok 3D grasp only, the others for every frame
        assert len(outputs[topic]) == (statuses.count("ok") if topic == "grasp_pose" else 3)
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["depth_status"].values()) == 3
    figures = [f["files"].get("grasp3d") for f in summary["frames"]]
    assert all(figures), figures
    assert all(cv2.imread(str(out / name)) is not None for name in figures)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_bags_are_one_line_errors_before_any_node_starts(tmp_path, ros_domain, capsys):
    records, _ = recording(2, depth=True)
    good = write_bag(tmp_path / "good", records, "mcap")
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(b"\x89MCAP0\r\n" + bytes(range(200)))  # a magic, then junk
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    with Writer(tmp_path / "empty", version=8) as writer:  # the topic, but no frame
        writer.add_connection(COLOUR, "sensor_msgs/msg/Image",
                              typestore=get_typestore(Stores.ROS2_JAZZY))
    (tmp_path / "taken").mkdir()
    params = str(tiny_params(tmp_path))
    cases = [
        ([str(tmp_path / "absent"), COLOUR], "does not exist"),
        ([str(garbage), COLOUR], "cannot open bag"),
        ([str(good), "/camera/rgb"], f"no topic '/camera/rgb' (for --image-topic); its "
                                     f"topics: {DEPTH} (sensor_msgs/msg/Image)"),
        ([str(good), "/rosout_like"], "/rosout_like is std_msgs/msg/String, which cannot be "
                                      "the image input"),
        ([str(tmp_path / "empty"), COLOUR], "no messages on the image topic"),
        ([str(good), COLOUR, "--output-bag", str(tmp_path / "taken")], "already exists"),
        ([str(good), COLOUR, "--depth-topic", INFO, "--camera-info-topic", INFO],
         "cannot be the depth input"),
    ]
    for i, (args, message) in enumerate(cases):
        out = tmp_path / f"out{i}"
        rc = demo.main(["--bag", args[0], "--image-topic", *args[1:], "--params-file", params,
                        "--out", str(out), "-q"])
        line = _error_line(capsys)
        assert rc == 1 and line.startswith("talk2sam-demo: error: ") and message in line, line
        assert not (out / "node.log").exists()  # refused before starting the node
    prompts = tmp_path / "bad.yaml"
    prompts.write_text("- {t: -1, text: cable}\n")
    usage = [
        (["--image-topic", COLOUR], 2, "--image-topic needs --bag"),
        (["--bag", str(good)], 2, "--bag needs --image-topic"),
        (["--bag", str(good), "--image-topic", COLOUR, "--depth-topic", DEPTH], 2,
         "--depth-topic and --camera-info-topic go together"),
        (["--bag", str(good), "--image-topic", COLOUR, "--prompts", str(prompts), "--text",
          "x"], 2, "--prompts replaces --text/--box"),
        (["--bag", str(good), "--image-topic", COLOUR, "--images", str(tmp_path)], 2,
         "cannot be combined"),
        (["--bag", str(good), "--image-topic", COLOUR, "--prompts", str(prompts)], 1,
         "t must be >= 0"),
    ]
    for args, code, message in usage:
        rc = demo.main([*args, "--out", str(tmp_path / "usage"), "-q"])
        line = _error_line(capsys)
        assert rc == code and message in line, line


@pytest.mark.slow
def test_an_interrupted_run_leaves_a_readable_output_bag(tmp_path, ros_domain):
    """SIGTERM (as Ctrl-C) once the node has answered: exit 130, the node is stopped and the
    output bag is closed: readable, its outputs at their frames' recorded times."""
    records, times = recording(60, depth=False)
    bag = write_bag(tmp_path / "in", records, "mcap")
    args = ["--bag", str(bag), "--image-topic", COLOUR, "--params-file",
            str(tiny_params(tmp_path)), "--out", str(tmp_path / "out"), "--timeout", "200", "-q"]
    with terminated_demo(args, tmp_path / "demo.txt", "answered a first frame"):
        outputs = check_output_bag(tmp_path / "out" / "outputs", times)
        assert 1 <= len(outputs["result"]) < 60
