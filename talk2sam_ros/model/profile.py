"""Per-stage timing of the predictor (used by the benchmark CLI; prints nothing itself).

Reuse ratio = (set_image + one prompt) / one extra prompt on the cached frame (cached text),
the figure the per-frame cache is for (target >= 50 on CPU with the `b` preset).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from skimage import data
from skimage.transform import resize

from talk2sam_ros.common.timing import Stopwatch, summarize

from .build import DTYPES, build_talk2sam
from .predictor import Talk2SAMPredictor
from .talk2sam import Talk2SAM
from .timing import device_sync


def sample_image(image_size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """A natural RGB uint8 image (skimage's CC0 astronaut) resized to (h, w)."""
    img = resize(data.astronaut(), image_size, order=1, anti_aliasing=True, preserve_range=True)
    return np.ascontiguousarray(img.astype(np.uint8))


def profile_predictor(preset: str = "tiny", device: str = "cpu",
                      dtype: torch.dtype = torch.float32, runs: int = 5,
                      image_size: tuple[int, int] = (480, 640), n_boxes: int = 1,
                      model: Talk2SAM | None = None, warmup: int = 1) -> dict[str, Any]:
    """Time set_image and predict per stage; returns a JSON-ready dict.

    stages: {name: {median_ms, p90_ms, n}} for set_image stages (sam_encode, dino_encode, ...),
    set_image (total), text_cold / text_cached, predict_text_boxes (extra prompt on the cached
    frame, cached text) with its own stages prefixed "prompt.", predict_box_only,
    predict_text_only; plus reuse_ratio and parameter counts.
    """
    if model is None:
        model = build_talk2sam(preset, device=device, dtype=dtype)
    pred = Talk2SAMPredictor(model)
    image = sample_image(image_size)
    h, w = image_size
    rng = np.random.default_rng(0)
    x0 = rng.uniform(0, w / 2, n_boxes)
    y0 = rng.uniform(0, h / 2, n_boxes)
    boxes = np.stack([x0, y0, x0 + w / 3, y0 + h / 3], axis=1).astype(np.float32)
    samples: dict[str, list[float]] = {}

    def add(name: str, ms: float) -> None:
        samples.setdefault(name, []).append(ms)

    watch = Stopwatch(device_sync(model.device))
    for i in range(warmup + runs):
        record = i >= warmup
        watch.start()
        pred.set_image(image)
        set_ms = watch.lap()
        cold = pred.predict(f"object number {i}", boxes)  # new text: cold text encoder
        cached = pred.predict("object number 0", boxes)  # cached text, cached frame
        box_only = pred.predict(None, boxes)
        text_only = pred.predict("object number 0")
        if not record:
            continue
        add("set_image", set_ms)
        for name, ms in pred.last_encode_timings.items():
            add(name, ms)
        add("text_cold", cold.timings.get("text", 0.0))
        add("text_cached", cached.timings.get("text", 0.0))
        add("predict_text_boxes", sum(cached.timings.values()))
        for name, ms in cached.timings.items():
            add(f"prompt.{name}", ms)
        add("predict_box_only", sum(box_only.timings.values()))
        add("predict_text_only", sum(text_only.timings.values()))
        add("full_frame", set_ms + sum(cached.timings.values()))
    stages = {name: summarize(vals, ("median", "p90"), "_ms") for name, vals in samples.items()}
    extra = stages["predict_text_boxes"]["median_ms"]
    return {
        "preset": model.config.preset,
        "device": str(model.device),
        "dtype": DTYPES[model.encoder_dtype],
        "image_size": [int(h), int(w)],
        "n_boxes": int(n_boxes),
        "runs": int(runs),
        "torch_threads": torch.get_num_threads(),
        "parameters": model.parameter_counts(),
        "stages": stages,
        "reuse_ratio": stages["full_frame"]["median_ms"] / max(extra, 1e-9),
    }
