"""talk2sam-eval: the three methods agree with the node's predictor, the report's summaries are
the means of its records, and the CLI writes the table, JSON and grid."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from talk2sam_ros.common.metrics import boundary_iou, mask_iou
from talk2sam_ros.common.timing import Stopwatch
from talk2sam_ros.model import Talk2SAMPredictor, build_talk2sam, save_trained_weights
from talk2sam_ros.training.data import box_from_mask, list_samples, read_gt, read_image
from talk2sam_ros.training.evaluate import (METHODS, EvalConfig, encode, evaluate, main,
                                            run_method)
from train_helpers import shared_dirs  # noqa: F401 (fixture)


@pytest.fixture
def head_weights(tmp_path: Path) -> Path:
    """A tiny-preset head with seeded non-trivial weights (so Talk2SAM != SAM-HQ)."""
    model = build_talk2sam("tiny")
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    path = tmp_path / "head.pt"
    save_trained_weights(model, path)
    return path


def test_eval_matches_predictor_and_summaries(shared_dirs: tuple[Path, Path],
                                              head_weights: Path, tmp_path: Path) -> None:
    data, _ = shared_dirs
    spec = f"folder:{data}:val?limit=3"
    out = tmp_path / "eval"
    report = evaluate(EvalConfig(sets=(spec,), checkpoint_talk2sam=str(head_weights), out_dir=str(out),
                                 grid_rows=2, progress=False))
    recs = report["records"]
    assert len(recs) == 3
    for m in METHODS:
        assert report["summary"]["overall"][m]["miou"] == pytest.approx(
            np.mean([r[m]["iou"] for r in recs]))
        assert report["summary"]["overall"][m]["mbiou"] == pytest.approx(
            np.mean([r[m]["biou"] for r in recs]))
        assert all(r[m]["ms"] > 0 for r in recs)
    cats = report["summary"]["categories"]["folder/val"]
    assert sum(c["images"] for c in cats.values()) == 3
    assert (out / "grid.png").is_file() and (out / "report.md").is_file()
    assert json.loads((out / "report.json").read_text())["summary"] == report["summary"]
    assert "| Talk2SAM |" in report["markdown"] and "| SAM-HQ (box only) |" in report["markdown"]

    # Same numbers as the node's predictor: Talk2SAM = our weights, predict(text, box);
    # SAM-HQ = the preset's own decoder (no weights file), predict(None, box).
    model = build_talk2sam(None, checkpoints={"talk2sam": head_weights})
    pred = Talk2SAMPredictor(model)
    base_pred = Talk2SAMPredictor(build_talk2sam("tiny"))
    for s, rec in zip(list_samples(spec), recs):
        rgb, gt = read_image(s.image), read_gt(s.mask) > 128
        box = box_from_mask(gt)
        assert rec["boxes"] == [box.tolist()]
        pred.set_image(rgb)
        base_pred.set_image(rgb)
        t2s = pred.predict(s.category, box).masks[0]
        base = base_pred.predict(None, box).masks[0]
        assert rec["talk2sam"]["iou"] == pytest.approx(mask_iou(gt, t2s), abs=1e-6)
        assert rec["talk2sam"]["biou"] == pytest.approx(boundary_iou(gt, t2s), abs=1e-6)
        assert rec["sam_hq"]["iou"] == pytest.approx(mask_iou(gt, base), abs=1e-6)

    # The ablation really removes the similarity prompt: its logits differ from Talk2SAM's,
    # and Talk2SAM's depend on the text.
    s = list_samples(spec)[0]
    rgb, gt = read_image(s.image), read_gt(s.mask) > 128
    feats = encode(model, rgb, Stopwatch().start(), dino=True)
    box = box_from_mask(gt)[None]
    with torch.no_grad():
        emb_a, emb_b = model.encode_texts(["cable"]), model.encode_texts(["fence"])
    la, sim = run_method(model, "talk2sam", feats, box, emb_a)
    lb, _ = run_method(model, "talk2sam", feats, box, emb_b)
    lz, none = run_method(model, "ablation", feats, box, None)
    assert sim.shape == gt.shape and none is None
    assert not np.allclose(la, lz) and not np.allclose(la, lb)


def test_cli(shared_dirs: tuple[Path, Path], head_weights: Path, tmp_path: Path,
             capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = shared_dirs
    out = tmp_path / "cli"
    rc = main(["--checkpoint_talk2sam", str(head_weights), "--sets", f"folder:{data}:val?limit=1",
               "--out_dir", str(out), "--methods", "sam_hq,talk2sam", "--grid_rows", "0",
               "--no_progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| Method | mIoU | mBIoU | Time (ms) |" in text and "similarity zeroed" not in text
    report = json.loads((out / "report.json").read_text())
    assert set(report["summary"]["overall"]) == {"images", "sam_hq", "talk2sam"}
    assert not (out / "grid.png").exists()
    assert main(["--checkpoint_talk2sam", str(head_weights), "--sets", f"folder:{data}:val",
                 "--methods", "magic", "--out_dir", str(out)]) == 1
