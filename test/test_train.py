"""A short real training run (tiny preset, synthetic data, cached features) must beat the
untrained model on held-out images, and its exported weights must load into the predictor."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from talk2sam_ros.model import CheckpointError, Talk2SAMPredictor, build_talk2sam
from talk2sam_ros.model.config import get_preset
from talk2sam_ros.training.data import (Sample, box_from_mask, list_samples, read_gt,
                                        read_image)
from talk2sam_ros.training.feature_cache import FeatureCache, stack_features
from talk2sam_ros.training.losses import bce_dice_loss, similarity_loss
from talk2sam_ros.training.train import TextCache, train, validate
from train_helpers import shared_dirs, tiny_config  # noqa: F401 (fixture)


@pytest.mark.slow
def test_training_beats_untrained_model_and_exports(shared_dirs: tuple[Path, Path],
                                                    tmp_path: Path) -> None:
    data, cache_dir = shared_dirs
    out = tmp_path / "run"
    cfg = tiny_config(data, cache_dir, out, epochs=4)
    weights = train(cfg)
    assert weights == out / "talk2sam_weights.pt" and weights.is_file()

    # The untrained model and the trained one, scored by the same code on the same images.
    untrained = build_talk2sam("tiny")
    trained = build_talk2sam("tiny", checkpoints={"talk2sam": weights})
    cache = FeatureCache(cache_dir, untrained)
    val = list_samples(f"folder:{data}:val")
    before = validate(untrained, val, TextCache(untrained), cache, cfg.loss)
    after = validate(trained, val, TextCache(trained), cache, cfg.loss)
    assert after["val_loss"] < before["val_loss"], (before, after)
    assert after["miou"] > before["miou"], (before, after)

    # The run's own log agrees: its step-0 validation is the untrained model, the last one is
    # the exported weights.
    records = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    vals = [r for r in records if r["kind"] == "val"]
    assert vals[0]["step"] == 0 and vals[-1]["step"] == 20  # 18 images / batch 4 x 4 epochs
    assert vals[0]["miou"] == pytest.approx(before["miou"], abs=1e-6)
    assert vals[-1]["val_loss"] == pytest.approx(after["val_loss"], rel=1e-5)
    trains = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in trains] == list(range(1, 21))
    assert all(np.isfinite(r["loss"]) for r in trains)
    for name in ("checkpoint.pt", "curves.png", "summary.json", "train_config.yaml",
                 "talk2sam_weights_best.pt"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["parameters"] == trained.parameter_counts()
    assert 0 < summary["parameters"]["trainable"] < summary["parameters"]["total"]

    # The weights file holds the trainable parts only (+ config + fingerprint).
    saved = torch.load(weights, map_location="cpu", weights_only=True)
    assert set(saved["state_dict"]) == set(trained.trainable_state_dict())
    assert sum(v.numel() for v in saved["state_dict"].values()) == \
        trained.parameter_counts()["trainable"]
    assert saved["config"]["preset"] == "tiny"

    # ... and is what the node's predictor loads.
    pred = Talk2SAMPredictor(build_talk2sam(None, checkpoints={"talk2sam": weights}))
    sample = val[0]
    rgb, gt = read_image(sample.image), read_gt(sample.mask) > 128
    pred.set_image(rgb)
    res = pred.predict(sample.category, box_from_mask(gt))
    assert res.masks.shape == (1, *gt.shape) and res.similarity.shape == gt.shape

    # Different frozen encoders -> clear error instead of silently wrong results.
    other = build_talk2sam(get_preset("tiny").replace(init_seed=1))
    with pytest.raises(CheckpointError, match="different frozen encoders"):
        from talk2sam_ros.model import load_trained_weights
        load_trained_weights(other, weights)


def test_validation_loss_is_the_runs_loss(shared_dirs: tuple[Path, Path],
                                         tmp_path: Path) -> None:
    """The logged val_loss (plotted beside the training loss) uses the run's loss settings:
    its weights and the similarity term, not the defaults."""
    data, cache_dir = shared_dirs
    weights = {"bce_weight": 0.25, "dice_weight": 2.0, "similarity_weight": 0.5}
    out = tmp_path / "run"
    train(tiny_config(data, cache_dir, out, train_limit=2, val_limit=2, batch_size=2,
                      max_steps=1, loss={"kind": "dense", **weights}))
    records = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    step0 = next(r for r in records if r["kind"] == "val" and r["step"] == 0)
    assert step0["val_images"] == 2

    # the same loss written out from its parts, for the untrained model (what step 0 scores)
    model = build_talk2sam("tiny")
    cache, texts = FeatureCache(cache_dir, model), TextCache(model)
    per_image = []
    for s in list_samples(f"folder:{data}:val?limit=2"):
        gt = read_gt(s.mask) > 128
        with torch.no_grad():
            out_s = model.forward_features(stack_features([cache.load(s)], "cpu"), None,
                                           torch.from_numpy(box_from_mask(gt)[None]),
                                           text_embeddings=texts([s.category]), upsample=True)
            target = torch.from_numpy(gt.astype(np.float32))[None, None]
            masks, _ = bce_dice_loss(out_s.logits[0][None], target, 0.25, 2.0)
            sim = similarity_loss(model.mask_prompt.grid_logits(out_s.cosine), target)
            default, _ = bce_dice_loss(out_s.logits[0][None], target)
        per_image.append((float(masks + 0.5 * sim), float(default)))
    expected, with_defaults = np.mean(per_image, axis=0)
    assert step0["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert abs(expected - with_defaults) > 0.05  # the settings really make a difference


def test_feature_cache_round_trip_and_invalidation(tmp_path: Path) -> None:
    fp32, fp32_again = build_talk2sam("tiny"), build_talk2sam("tiny")
    bf16 = build_talk2sam("tiny", dtype=torch.bfloat16)
    root = tmp_path / "cache"
    cache = FeatureCache(root, fp32)
    assert cache.dir == FeatureCache(root, fp32_again).dir
    # anything that changes the stored tensors gets its own folder: the encoders' compute dtype
    # (mixed-precision training encodes in bf16) and the storage dtype
    assert len({cache.dir, FeatureCache(root, bf16).dir,
                FeatureCache(root, fp32, "float16").dir}) == 3

    img_path = tmp_path / "img.png"
    rgb = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    cv2.imwrite(str(img_path), rgb[..., ::-1])
    sample = Sample(img_path, img_path, "wire", "t", "img")
    assert FeatureCache(root, bf16).build(bf16, [sample], progress=False) == 1
    assert not cache.has(sample)  # bf16 features are never served to the fp32 model
    assert cache.build(fp32, [sample], progress=False) == 1
    assert cache.build(fp32, [sample], progress=False) == 0  # reused
    want = fp32.encode_images([rgb]).to_dict()
    got = cache.load(sample)
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    # an edited image is a new entry, not the stale one
    old = img_path.stat().st_mtime_ns
    cv2.imwrite(str(img_path), rgb[::-1, :, ::-1])
    os.utime(img_path, ns=(old + 10**9, old + 10**9))  # coarse file-system clocks
    assert not cache.has(sample)
