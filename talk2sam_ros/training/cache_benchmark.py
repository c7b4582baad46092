"""Micro-benchmark of the frozen-feature cache: seconds per training step with the image
features encoded on the fly vs loaded from a cache file (docs/training.md has the numbers).

    python -m talk2sam_ros.training.cache_benchmark PRESET BATCH REPS   # e.g. tiny 4 2

Random weights of the preset (no files needed); prints one JSON line.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from talk2sam_ros.common.timing import Stopwatch
from talk2sam_ros.model.build import build_talk2sam
from talk2sam_ros.model.talk2sam import ImageFeatures
from talk2sam_ros.model.timing import device_sync
from talk2sam_ros.training.losses import LossConfig, compute_loss

__all__ = ["benchmark_cache"]


def benchmark_cache(preset: str = "tiny", batch: int = 2, reps: int = 2,
                    image_shape: tuple[int, int] = (480, 640),
                    device: str = "cpu") -> dict[str, float]:
    """Seconds per training step with features encoded on the fly vs loaded from a cache file
    (random weights of ``preset``; median of ``reps`` rounds after one warm-up round).

    Returns encode / load / step seconds and ``speedup`` = (encode + step) / (load + step).
    """
    model = build_talk2sam(preset, device=device)
    model.train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    h, w = image_shape
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(batch)]
    gts = [np.zeros((h, w), bool) for _ in range(batch)]
    for gt in gts:
        gt[h // 2:h // 2 + 4, w // 10:w - w // 10] = True
    boxes = torch.tensor([[w // 10, h // 2, w - w // 10 - 1, h // 2 + 3]] * batch,
                         dtype=torch.float32)
    text = model.encode_texts(["cable"] * batch)
    loss_cfg = LossConfig(kind="points")
    times: dict[str, list[float]] = {"encode": [], "load": [], "step": []}
    watch = Stopwatch(device_sync(model.device))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.pt"
        for rnd in range(reps + 1):
            watch.start()
            feats = model.encode_images(images)
            encode_ms = watch.lap()
            torch.save(feats.to_dict(), path)
            watch.lap()  # writing the cache is a one-off, not part of a step
            loaded = ImageFeatures.from_dict(torch.load(path, weights_only=True)).to(device)
            load_ms = watch.lap()
            out = model.forward_features(loaded, None, boxes, text_embeddings=text)
            loss, _ = compute_loss(loss_cfg, model, out, loaded, gts,
                                   torch.Generator(device=model.device).manual_seed(rnd))
            loss.backward()
            opt.step()
            opt.zero_grad()
            step_ms = watch.lap()
            if rnd:  # round 0 warms up
                for name, ms in (("encode", encode_ms), ("load", load_ms), ("step", step_ms)):
                    times[name].append(ms / 1e3)
    med = {k: float(np.median(v)) for k, v in times.items()}
    med["speedup"] = (med["encode"] + med["step"]) / (med["load"] + med["step"])
    return med


if __name__ == "__main__":  # python -m talk2sam_ros.training.cache_benchmark PRESET BATCH REPS
    args = sys.argv[1:]
    result = benchmark_cache(args[0] if args else "tiny", int(args[1]) if len(args) > 1 else 2,
                             int(args[2]) if len(args) > 2 else 2)
    print(json.dumps({k: round(v, 3) for k, v in result.items()}))
