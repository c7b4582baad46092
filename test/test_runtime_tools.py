"""The runtime option in talk2sam-bench and talk2sam-eval (tiny preset, model level).

Both keep their exports in the weights cache ($TALK2SAM_WEIGHTS_DIR, a folder of this module),
so whichever runs second reuses the first one's. No timing assertions.
"""
from __future__ import annotations

import json

import pytest

from talk2sam_ros.tools import bench
from talk2sam_ros.training.evaluate import EvalConfig, build_eval_model

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TALK2SAM_WEIGHTS_DIR", str(folder))
        yield folder


def test_bench_times_onnxruntime_next_to_torch(weights_dir, tmp_path, capsys):
    rc = bench.main(["--preset", "tiny", "--no-node", "--runtime", "onnxruntime", "--runs",
                     "1", "--warmup", "0", "--image-size", "160x120", "--out", str(tmp_path)])
    assert rc == 0
    result = json.loads((tmp_path / "bench_tiny_cpu_float32.json").read_text())
    runtimes = result["model"]["runtimes"]
    assert set(runtimes["median_ms"]) == {"torch", "onnxruntime"}
    assert runtimes["set_image_speedup"]["torch"] == 1.0
    assert runtimes["runs"] == {"torch": 1, "onnxruntime": 1}
    md = (tmp_path / "bench_tiny_cpu_float32.md").read_text()
    assert "runtime onnxruntime" in md and "| median ms | `torch` | `onnxruntime` |" in md
    assert sorted(p.name.split("-")[0] for p in (weights_dir / "exports").iterdir()) == [
        "dinov2", "sam_hq"]


def test_eval_builds_its_model_on_onnxruntime(weights_dir):
    heads = build_eval_model(EvalConfig(sets=("unused",), preset="tiny", device="cpu",
                                        runtime="onnxruntime"))
    records = heads.model.image_runtime.records
    assert set(records) == {"sam_hq", "dinov2"}
    assert all(r.folder.parent == weights_dir / "exports" for r in records.values())
