"""Side by side in one run: a model's encoder runtime against its own PyTorch encoders.

The same model object (same weights, same predictor code) is timed with its attached runtime
and with the runtime detached, so the only difference is where the frozen encoders run. Used
by ``talk2sam-bench --runtime``; prints nothing itself.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from talk2sam_ros.common.metrics import mask_iou

from .predictor import Talk2SAMPredictor
from .profile import profile_predictor
from .talk2sam import Talk2SAM

REFERENCE = "torch"
# profile_predictor stage -> what the comparison table calls it
ROWS = {"set_image": "new frame: set_image", "sam_encode": "SAM-HQ encoder",
        "dino_encode": "DINOv2 encoder", "predict_text_boxes": "extra text + box prompt",
        "full_frame": "new frame + 1 prompt"}


def runtime_label(model: Talk2SAM) -> str:
    """torch, onnxruntime or onnxruntime-int8_dynamic: what runs `model`'s encoders now."""
    rt = model.image_runtime
    if rt is None:
        return REFERENCE
    return rt.name if rt.quantize == "none" else f"{rt.name}-{rt.quantize}"


def compare_runtimes(model: Talk2SAM, measured: dict[str, Any] | None = None,
                     **profile_kwargs: Any) -> dict[str, Any]:
    """Median ms per row of ROWS and the reuse ratio for the model's runtime and for torch.

    measured: the profile_predictor result of the attached runtime if the caller already has
    it (it is not measured twice); profile_kwargs go to profile_predictor (runs, warmup,
    image_size, n_boxes). A model without an attached runtime gives the torch column only.
    """
    label = runtime_label(model)
    profiles = {label: measured or profile_predictor(model=model, **profile_kwargs)}
    if label != REFERENCE:
        with model.using_encoders(None):
            profiles[REFERENCE] = profile_predictor(model=model, **profile_kwargs)
    medians = {name: {row: prof["stages"][row]["median_ms"] for row in ROWS
                      if row in prof["stages"]} for name, prof in profiles.items()}
    ref = medians[REFERENCE]["set_image"]
    return {
        "reference": REFERENCE,
        "median_ms": medians,
        "reuse_ratio": {name: float(prof["reuse_ratio"]) for name, prof in profiles.items()},
        "set_image_speedup": {name: ref / max(m["set_image"], 1e-9)
                              for name, m in medians.items()},
        "runs": {name: int(prof["runs"]) for name, prof in profiles.items()},
    }


def mask_agreement(model: Talk2SAM, scenes: Sequence[tuple[str, np.ndarray, str, Any]]
                   ) -> dict[str, Any]:
    """IoU of the masks of `model`'s attached runtime against its PyTorch encoders' masks,
    per scene (name, RGB uint8 image, text, XYXY boxes or None for text-only), and their
    mean and minimum: what int8 quantisation costs in mask quality."""
    def masks(rgb: np.ndarray, text: str, boxes: Any) -> np.ndarray:
        pred = Talk2SAMPredictor(model, text_cache_size=0)
        pred.set_image(rgb)
        return pred.predict(text, boxes).masks

    rows = []
    for name, rgb, text, boxes in scenes:
        ours = masks(rgb, text, boxes)
        with model.using_encoders(None):
            ref = masks(rgb, text, boxes)
        same_count = len(ours) == len(ref)  # text-only: the boxes may differ in number
        iou = float(np.mean([mask_iou(a, b) for a, b in zip(ours, ref)])) if same_count \
            else mask_iou(ours.any(axis=0), ref.any(axis=0))
        rows.append({"scene": name, "iou": iou})
    ious = [r["iou"] for r in rows]
    return {"runtime": runtime_label(model), "reference": REFERENCE, "scenes": rows,
            "mean_iou": float(np.mean(ious)), "min_iou": float(np.min(ious))}


def comparison_markdown(comparison: dict[str, Any]) -> str:
    """The comparison as one Markdown table, a column per runtime (torch first)."""
    names = sorted(comparison["median_ms"], key=lambda n: (n != REFERENCE, n))
    lines = ["| median ms | " + " | ".join(f"`{n}`" for n in names) + " |",
             "|---|" + "---:|" * len(names)]
    for row, label in ROWS.items():
        cells = [comparison["median_ms"][n].get(row) for n in names]
        lines.append(f"| {label} | "
                     + " | ".join("-" if c is None else f"{c:.1f}" for c in cells) + " |")
    lines.append("| set_image speed-up vs torch | "
                 + " | ".join(f"{comparison['set_image_speedup'][n]:.2f}x" for n in names)
                 + " |")
    lines.append("| reuse ratio | "
                 + " | ".join(f"{comparison['reuse_ratio'][n]:.1f}" for n in names) + " |")
    return "\n".join(lines) + "\n"
