"""talk2sam-bench: a short real run (tiny preset, real node over DDS on loopback).

No timing assertions: only that the report has every figure, positive and consistent.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from talk2sam_ros.tools import bench


def test_frames_and_boxes_fit_the_requested_size():
    frames = bench.bench_frames((160, 120), 3)
    assert [f.shape for f in frames] == [(120, 160, 3)] * 3
    assert not np.array_equal(frames[0], frames[1])  # distinct frames: no cache shortcuts
    boxes = bench.prompt_boxes((160, 120), 8)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 160).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 120).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


def _positive(summary: dict) -> bool:
    return summary["n"] > 0 and all(math.isfinite(summary[k]) and summary[k] > 0
                                    for k in ("median", "p90"))


@pytest.mark.slow
def test_quick_tiny_run_writes_json_and_markdown(tmp_path, ros_domain, capsys):
    rc = bench.main(["--preset", "tiny", "--runs", "2", "--warmup", "1", "--image-size",
                     "320x240", "--node-frames", "2", "--stream-seconds", "1.5",
                     "--out", str(tmp_path)])
    assert rc == 0
    js = tmp_path / "bench_tiny_cpu_float32.json"
    md = tmp_path / "bench_tiny_cpu_float32.md"
    result = json.loads(js.read_text())
    m, n = result["model"], result["node"]
    for stage in ("sam_encode", "dino_encode", "text_cold", "text_cached", "similarity",
                  "prompt", "decode", "postprocess"):
        assert _positive(m["stages"][stage]), stage
    for key in ("full_frame_ms", "set_image_ms", "extra_prompt_ms", "extra_prompt_text_only_ms"):
        assert _positive(m[key]) and m[key]["n"] == 2, key
    assert m["reuse_ratio"] > 0
    assert set(m["prompts_per_frame"]) == {"1", "2", "4", "8"}
    assert all(v["frame_total_ms"] > 0 for v in m["prompts_per_frame"].values())
    assert _positive(m["extra_prompt_box_only_ms"])
    # k scaling: one encode per frame, all k prompts reuse it
    assert m["k_scaling_encoder_runs"] == m["k_scaling_frames"] >= 2
    assert m["memory"]["rss_peak_mib"] > 0
    assert n["frames_answered"] == 2
    assert _positive(n["end_to_end_ms"]) and _positive(n["pipeline_ms"])
    assert 0 < n["node_overhead_share_pct"]["median"] < 100
    st = n["stream"]
    assert st["sent"] > 0 and 0 < st["processed"] <= st["sent"]
    assert 0.0 <= st["drop_rate"] < 1.0
    assert _positive(st["frame_age_ms"])
    rgbd = n["rgbd"]  # the 3D stage on RGB-D frames (the node with use_depth)
    assert 1 <= rgbd["frames"] <= 2 and _positive(rgbd["grasp3d_ms"])
    assert 0 < rgbd["grasp3d_share_pct"]["median"] < 100
    assert {"grasp3d.depth", "grasp3d.publish"} <= set(rgbd["parts_ms"])
    assert sum(rgbd["depth_status"].values()) == rgbd["frames"]
    text = md.read_text()
    assert "reuse ratio" in text and "node overhead share" in text and "Hz stream" in text
    assert "3D stage share of pipeline" in text
    assert "reuse ratio" in capsys.readouterr().out
