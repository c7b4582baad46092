"""talk2sam-demo end to end on a fresh cache: trains a tiny head (minimal budget), runs the real
node over DDS on loopback, and writes decodable PNGs and a consistent summary."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

from talk2sam_ros.tools import demo, harness
from talk2sam_ros.weights import ENV_DIR, trained_weights_path

REPO = Path(__file__).resolve().parents[1]


def test_node_arguments_and_params_file():
    from talk2sam_ros.ros.params import PARAM_BY_NAME

    args = harness.NodeSettings(preset="b", device="cuda", dtype="bf16",
                                checkpoints={"talk2sam": "/w/head.pt"}).ros_args()
    assert args[:3] == ["--ros-args", "-r", "__node:=talk2sam"]
    params = dict(a.split(":=", 1) for a in args[4::2])
    assert set(params) <= set(PARAM_BY_NAME)  # spelled as the node's parameter table
    assert params["preset"] == "b" and params["dtype"] == "bfloat16"
    assert params["checkpoint_talk2sam"] == "/w/head.pt"
    assert "allow_random_weights" not in params  # real presets need their files
    bench_like = dict(a.split(":=", 1)
                      for a in harness.NodeSettings(preset="h").ros_args()[4::2])
    assert bench_like["allow_random_weights"] == "true"
    assert demo.preset_from_params_file(REPO / "config" / "talk2sam.yaml") == "b"


def test_image_messages_decode():
    from std_msgs.msg import Header

    from talk2sam_ros.ros import conversions as conv

    bridge = conv.make_bridge()
    rng = np.random.default_rng(0)
    mask = rng.random((7, 9)) > 0.5
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    assert np.array_equal(demo.image_array(conv.mask_to_msg(mask, Header(), bridge)) > 127,
                          mask)
    assert np.array_equal(demo.image_array(conv.rgb_to_bgr8_msg(rgb, Header(), bridge)), rgb)


@pytest.mark.slow
def test_demo_end_to_end_on_a_fresh_cache(tmp_path, ros_domain, monkeypatch, capsys):
    cache = tmp_path / "cache"
    monkeypatch.setenv(ENV_DIR, str(cache))
    out = tmp_path / "out"
    rc = demo.main(["--out", str(out), "--synthetic", "3", "--rgbd", "1",
                    "--stream-seconds", "1.5", "--rate", "10", "--train-images", "6",
                    "--train-size", "64", "--train-epochs", "1", "--train-steps", "2", "-q"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"output folder: {out}" in printed
    assert trained_weights_path("tiny").is_file()  # trained once, found by later runs

    summary = json.loads((out / "summary.json").read_text())
    assert (out / "summary.md").read_text().startswith("# talk2sam-demo")
    frames = summary["frames"]
    answered = [f for f in frames if f["answered"]]
    assert summary["frames_sent"] == len(frames) == len(demo.PHOTO_PROMPTS) + 3 + 1
    assert summary["frames_processed"] == len(answered) > 0
    assert summary["frames_unanswered"] == len(frames) - len(answered)
    assert {f["mode"] for f in frames} == {"text+box", "text-only"}
    for f in answered:
        source = cv2.imread(str(out / f["files"]["input"]))
        assert source is not None
        for kind in ("overlay", "mask", "similarity", "grasp"):
            img = cv2.imread(str(out / f["files"][kind]), cv2.IMREAD_UNCHANGED)
            assert img is not None and img.shape[:2] == source.shape[:2], (f["name"], kind)
        mask = cv2.imread(str(out / f["files"]["mask"]), cv2.IMREAD_GRAYSCALE)
        assert int((mask > 127).sum()) == f["mask_area"]
        assert f["latency_ms"] > 0
    # the RGB-D scene: its depth and camera_info reached the node with it, and the 3D
    # grasp figure was drawn from the node's answer
    (rgbd,) = [f for f in frames if f["source"] == "synthetic_rgbd"]
    assert rgbd["answered"], rgbd
    assert rgbd["depth_status"] not in ("", "no_depth", "no_camera_info", "depth_stale",
                                        "camera_info_stale"), rgbd
    assert cv2.imread(str(out / rgbd["files"]["grasp3d"])) is not None
    assert not any("grasp3d" in f["files"] for f in answered if f is not rgbd)
    ious = [f["iou"] for f in answered if f["source"] == "synthetic"]
    assert ious and all(0.0 <= v <= 1.0 for v in ious)
    by_mode = summary["miou_synthetic"]
    for mode in ("text+box", "text-only"):
        vals = [f["iou"] for f in answered if f["source"] == "synthetic" and f["mode"] == mode]
        assert by_mode[mode] == (pytest.approx(float(np.mean(vals))) if vals else None)
    assert summary["end_to_end_ms"]["n"] == len(answered)
    assert summary["stages_ms"]["encode_image"]["median"] > 0
    st = summary["stream"]
    assert st["sent"] > 0 and 0 <= st["processed"] <= st["sent"]
    assert summary["node_counters"]["frames_processed"] >= len(answered)


def test_real_preset_without_weights_is_a_clear_error(tmp_path, ros_domain, monkeypatch,
                                                      capsys):
    """No official files in the cache: the node refuses to configure and the demo says what
    to download, in one line, without waiting for its timeout."""
    monkeypatch.setenv(ENV_DIR, str(tmp_path / "empty"))
    rc = demo.main(["--preset", "b", "--out", str(tmp_path / "out"), "--synthetic", "0",
                    "--stream-seconds", "0", "--timeout", "120", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1, err
    assert err[0].startswith("talk2sam-demo: error: the node could not load the model")
    assert "talk2sam-weights download --preset b" in err[0]


def test_configure_failure_reason_comes_from_the_node_not_its_log(tmp_path, ros_domain):
    """The harness reads the lifecycle state and the node's /diagnostics, not the log text:
    with the node's output thrown away it still names the missing files."""
    settings = harness.NodeSettings(preset="b", checkpoints_from_cache=True,
                                    extra={"weights_dir": str(tmp_path / "empty")})
    with pytest.raises(harness.NodeError) as failed:
        with harness.NodeHarness(settings, os.devnull, timeout_s=120):
            pass
    message = str(failed.value)
    assert message.startswith("the node could not load the model: ")
    assert f"talk2sam-weights download --preset b --dir {tmp_path / 'empty'}" in message


def test_harness_configures_and_activates_a_node_without_autostart(tmp_path, ros_domain):
    """autostart false (e.g. in a parameter file): the harness drives the lifecycle itself."""
    settings = harness.NodeSettings(extra={"autostart": False})
    with harness.NodeHarness(settings, tmp_path / "node.log", timeout_s=150) as h:
        assert h.client.state() == "active"
        h.set_prompt("person", np.array([[10, 10, 80, 100]], np.float32))
        answer = h.send_and_wait(np.zeros((120, 160, 3), np.uint8))
    assert answer is not None and answer.result.prompt_id == 1
    assert answer.outputs["mask"].width == 160 and answer.latency_ms > 0
    assert "autostart is false" in (tmp_path / "node.log").read_text()


def test_the_harness_stops_a_node_busy_with_a_frame_without_killing_it(tmp_path, ros_domain):
    """A node whose worker is in the middle of a long frame waits for it on SIGINT
    (worker_stop_timeout_s): the harness sends a second SIGINT before its kill deadline, so
    the node stops waiting and exits cleanly (code 0) instead of being killed (-9)."""
    settings = harness.NodeSettings(extra={"debug_delay_ms": 60000,
                                           "worker_stop_timeout_s": 3600.0,
                                           "diagnostics_period_s": 0.2})
    h = harness.NodeHarness(settings, tmp_path / "node.log", timeout_s=150)
    with h:
        h.set_prompt("person", np.array([[10, 10, 80, 100]], np.float32))
        h.send_image(np.zeros((120, 160, 3), np.uint8))
        client = h.client
        assert client.spin_until(lambda: client.diagnostics
                                 and client.diagnostics[-1]["worker"] == "busy", 60)
    assert h.proc.returncode == 0, (tmp_path / "node.log").read_text()[-3000:]


@pytest.mark.slow
def test_the_trained_head_is_stored_with_the_trainers_atomic_save(tmp_path, monkeypatch):
    """Defect 9: the cached head must survive a crash or power loss whole, so its data and
    the rename into the cache folder are fsynced (as atomic_torch_save does)."""
    from talk2sam_ros.model.build import trained_weights_config

    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    budget = demo.TrainBudget(images=6, image_size=64, epochs=1, max_steps=2)
    target = demo.ensure_trained_tiny(tmp_path / "cache", budget, progress=False)
    assert target == trained_weights_path("tiny", cache_dir=tmp_path / "cache")
    assert trained_weights_config(target).preset == "tiny"  # a whole, loadable head
    folder = str(target.parent)
    assert any(Path(p).parent == target.parent and target.name in Path(p).name
               for p in synced), synced  # the data, before the rename
    assert folder in synced, synced  # the rename itself
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name,
                                                               "tiny_synthetic_run"]


def test_user_images_and_video_become_frames(tmp_path):
    rng = np.random.default_rng(1)
    pics = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    for i, p in enumerate(pics):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), p[..., ::-1])
    (tmp_path / "notes.txt").write_text("not an image")
    box = np.array([[1, 2, 30, 40]], np.float32)
    frames = demo.folder_frames(tmp_path, "rope", box, limit=2)
    assert [f.name for f in frames] == ["img0", "img1"]
    assert np.array_equal(frames[0].rgb, pics[0]) and frames[0].text == "rope"
    assert frames[0].boxes is box and frames[0].gt is None

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for _ in range(5):
        writer.write(pics[0][..., ::-1])
    writer.release()
    vframes = demo.video_frames(video, "cable", None, limit=3)
    assert len(vframes) == 3 and vframes[0].rgb.shape == (48, 64, 3)
    assert vframes[0].boxes is None  # text-only prompt
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(demo.DemoError, match="no images"):
        demo.folder_frames(empty, "x", None, 1)
    with pytest.raises(demo.DemoError, match="cannot open video"):
        demo.video_frames(tmp_path / "missing.avi", "x", None, 1)


def test_summary_names_the_weights_it_knows():
    weights, note = demo.describe_weights("tiny", {}, "my.yaml", trained_by_demo=False)
    assert "random frozen encoders" in weights and "my.yaml" in weights
    assert note == demo.QUALITY_TINY  # a parameter file does not make tiny official
    weights, _ = demo.describe_weights("tiny", {"talk2sam": "/c/t.pt"}, None, True)
    assert "trained on synthetic data by the demo (/c/t.pt)" in weights
    assert demo.describe_weights("tiny", {}, None, False)[0].endswith("untrained (random)")
    assert demo.describe_weights("b", {}, None, False) == ("preset b: official checkpoints",
                                                            demo.QUALITY_REAL)


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields: state, ppid, ...
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@contextmanager
def terminated_demo(args: list[str], log: Path, marker: str, start_s: float = 240
                    ) -> Iterator[None]:
    """talk2sam-demo `args` in a subprocess, sent SIGTERM once `marker` is in its output: it
    must end with code 130 and "interrupted" (then the body runs), and its node subprocess
    must not outlive it."""
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "talk2sam_ros.tools.demo", *args],
                                stdout=fh, stderr=subprocess.STDOUT, env=dict(os.environ),
                                cwd=REPO)
    node: list[int] = []
    try:
        deadline = time.monotonic() + start_s
        while marker not in log.read_text() and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, log.read_text()
        node = _children(proc.pid)
        assert node, "the node subprocess was not found"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 130, log.read_text()
        assert f"{demo.PROG}: interrupted" in log.read_text()
        yield
        deadline = time.monotonic() + 10
        while any(map(_alive, node)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_alive, node)), "the node outlived the demo"
    finally:
        for pid in [proc.pid, *node]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(10)


def test_sigterm_stops_the_node_subprocess(tmp_path, ros_domain):
    """`kill <demo>` (or a closing terminal) must not leave the node running."""
    params = tmp_path / "tiny.yaml"
    params.write_text("talk2sam:\n  ros__parameters:\n    preset: tiny\n")  # no training
    args = ["--params-file", str(params), "--no-photos", "--synthetic", "2",
            "--stream-seconds", "300", "--rate", "2", "--out", str(tmp_path / "demo"), "-q"]
    with terminated_demo(args, tmp_path / "out.txt", "[demo] streaming", start_s=180):
        pass


def test_the_3d_grasp_figure_comes_from_the_nodes_messages(tmp_path):
    """The GraspCandidate the node builds (pixel + 3D fields) gives back the grasp it was
    built from, and the figure of it (with the object_points cloud) is a PNG."""
    from std_msgs.msg import Header

    from talk2sam_ros.grasp import grasp_from_mask, grasp_pose_from_depth, object_points
    from talk2sam_ros.grasp.synthetic import render_scene, scene_specs
    from talk2sam_ros.ros import conversions as conv
    from talk2sam_ros.ros import grasp3d_messages as gm
    from talk2sam_ros.ros.messages import grasp_message

    scene = render_scene(scene_specs()["tilted_sine"])
    grasp = grasp_from_mask(scene.mask)
    g3 = grasp_pose_from_depth(scene.mask, grasp, scene.depth_m, scene.camera)
    assert g3.ok
    header = Header(frame_id="camera")
    msg = gm.fill_grasp_3d(grasp_message(grasp, header, 1), g3)
    pixel, back = demo.grasp_from_msg(msg)
    assert pixel.valid and pixel.point == pytest.approx(grasp.point, abs=1e-4)
    assert np.allclose(pixel.centerline, grasp.centerline, atol=1e-4)
    assert back.ok and back.approach_from == g3.approach_from
    assert np.allclose(back.position, g3.position, atol=1e-6)
    assert np.allclose(back.rotation, g3.rotation, atol=1e-6)
    assert back.width_m == pytest.approx(g3.width_m, rel=1e-6)
    assert np.allclose(back.centerline, g3.centerline, atol=1e-6)
    points, _ = object_points(scene.mask, scene.depth_m, scene.camera, 500)
    bridge = conv.make_bridge()
    res = harness.FrameResult((0, 0), None, {
        "grasp": msg, "object_points": gm.cloud_msg(points, header),
        "mask": conv.mask_to_msg(scene.mask, header, bridge)}, 1.0, {})
    path = tmp_path / "g3.png"
    info = gm.camera_info_msg(scene.camera, header)
    assert demo.save_grasp3d_png(path, scene.rgb, res, info)
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 100
    no_depth = harness.FrameResult((0, 0), None, {"grasp": grasp_message(grasp, header, 1),
                                                  "mask": res.outputs["mask"]}, 1.0, {})
    assert not demo.save_grasp3d_png(tmp_path / "none.png", scene.rgb, no_depth, info)
    assert not (tmp_path / "none.png").exists()
