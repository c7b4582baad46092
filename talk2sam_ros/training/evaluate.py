"""talk2sam-eval: mIoU / mBIoU of Talk2SAM vs SAM-HQ (box only) vs Talk2SAM with the
similarity prompt zeroed, per dataset and per category, in one run over the same encodings.

    talk2sam-eval --checkpoint_talk2sam runs/tiny/talk2sam_weights.pt \\
        --sets folder:runs/tiny/synthetic:val
    talk2sam-eval --checkpoint_talk2sam w.pt --sets thinobject5k:data/ThinObject5K:test \\
        --sets dis5k:data/DIS5K:test?exclude=config/train/dis5k_non_thin.txt \\
        --sets big:data/BIG:test

Protocol (documented decisions, see docs/training.md): the prompt is the tight box of GT > 128
(SAM-HQ; one box per object, or one per connected part with --multi_box, masks united);
the image goes through the model core's predictor preprocessing (long side 1024 + padding, not
SAM-HQ's 1024 x 1024 stretch); prediction = logits > 0 at the GT's original resolution;
IoU and SAM-HQ's pure boundary IoU (dilation 0.02) per image, averaged per dataset / category.
Methods share one SAM-HQ/DINOv2 encoding per image:

* ``talk2sam``: box + text (similarity map through the trained mask-prompt encoder);
* ``sam_hq``: box only (SAM's no-mask embedding) with the preset's own SAM-HQ decoder (the
  official ``sam_hq_vit_*`` HQ parts, not our retrained ones): SAM-HQ with the same encoder;
* ``ablation``: box + the trained model with an all-zero mask prompt (no similarity).

Time per image: SAM-HQ = SAM encode + decode; Talk2SAM and the ablation add DINOv2 encode and
the (per-category cached) text encoding, as in the paper's table. Outputs in ``--out_dir``:
``report.json`` (config, per-image records, summaries), ``report.md`` (Markdown tables) and
``grid.png`` (image+box, GT, SAM-HQ, Talk2SAM, similarity).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from talk2sam_ros.common.cli import run_cli
from talk2sam_ros.common.metrics import binarize_gt, boundary_iou, mask_iou
from talk2sam_ros.common.timing import Stopwatch
from talk2sam_ros.model import transforms as T
from talk2sam_ros.model.build import load_trained_weights
from talk2sam_ros.model.config import RUNTIMES
from talk2sam_ros.model.errors import CheckpointError
from talk2sam_ros.model.talk2sam import ImageFeatures, Talk2SAM
from talk2sam_ros.model.timing import device_sync
from talk2sam_ros.training.data import (Sample, box_from_mask, list_samples, part_boxes,
                                        read_gt, read_image)
from talk2sam_ros.weights import InferenceSpec, WeightsError
from talk2sam_ros.weights.inference import load_for_inference

LOG = logging.getLogger(__name__)

METHODS = ("talk2sam", "sam_hq", "ablation")
METHOD_LABELS = {"talk2sam": "Talk2SAM", "sam_hq": "SAM-HQ (box only)",
                 "ablation": "Talk2SAM, similarity zeroed"}


@dataclass(frozen=True)
class EvalConfig:
    """What to evaluate and how (see the module docstring for the protocol)."""

    sets: tuple[str, ...] = ()
    checkpoint_talk2sam: str = ""  # our trained head ("" = untrained head of `preset`)
    preset: str = ""  # "" = the preset stored in the trained head
    # the other parts as the node's checkpoint_* parameters: path or registry name; empty
    # ones take the preset's official files from weights_dir (random: allow_random_weights)
    weights_dir: str = ""
    checkpoint_sam_hq: str = ""
    checkpoint_dinov2: str = ""
    checkpoint_clip: str = ""
    checkpoint_projection: str = ""
    allow_random_weights: bool = False
    out_dir: str = "eval_out"
    methods: tuple[str, ...] = METHODS
    limit: int = 0  # images per dataset (0: all)
    multi_box: bool = False
    default_category: str = ""
    dilation_ratio: float = 0.02
    grid_rows: int = 6
    device: str = "auto"
    runtime: str = "torch"  # image encoders: torch | onnxruntime (ModelConfig.runtime)
    progress: bool = True

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods {list(self.methods)}: choose from {METHODS}")
        if not self.sets:
            raise ValueError("no datasets: give at least one dataset spec in sets")


def encode(model: Talk2SAM, rgb: np.ndarray, clock: Stopwatch, dino: bool) -> ImageFeatures:
    """ImageFeatures of one image, timing the SAM and DINOv2 encoders separately."""
    dev = model.device
    with torch.inference_mode():
        sam_in, input_size = T.sam_preprocess(rgb, dev, model.encoder_dtype)
        emb, interm0 = model.encode_sam(sam_in)
        clock.lap("sam_encode")
        if dino:
            patches, attn = model.encode_dino(T.dino_preprocess(rgb, model.config.dino.img_size,
                                                                dev, model.encoder_dtype))
        else:  # SAM-HQ-only runs never touch DINOv2
            gh, gw = model.dino.grid
            patches = emb.new_zeros(1, gh * gw, model.config.dino_dim)
            attn = emb.new_zeros(1, model.config.dino_heads, gh * gw)
        clock.lap("dino_encode")
    sizes = torch.tensor([input_size], dtype=torch.long, device=dev)
    orig = torch.tensor([rgb.shape[:2]], dtype=torch.long, device=dev)
    return ImageFeatures(emb, interm0, patches, attn, sizes, orig)


@torch.inference_mode()
def run_method(model: Talk2SAM, method: str, feats: ImageFeatures, boxes: np.ndarray,
               text_embedding: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, H, W) float32 logits at source resolution for N boxes, and the (H, W) similarity
    map in [0, 1] (talk2sam only, else None)."""
    n = len(boxes)
    rep = feats.select([0] * n)
    box_t = torch.from_numpy(np.asarray(boxes, np.float32))
    if method == "talk2sam":
        out = model.forward_features(rep, None, box_t, text_embeddings=text_embedding.expand(
            n, -1), upsample=True)
        sim = T.grid_to_source(out.similarity[:1], tuple(feats.original_sizes[0].tolist()))
        return (torch.cat(out.logits).float().cpu().numpy(),
                sim[0, 0].float().cpu().numpy())
    if method == "sam_hq":
        out = model.forward_features(rep, None, box_t, upsample=True)
        return torch.cat(out.logits).float().cpu().numpy(), None
    # ablation: the trained decoder with the mask-prompt encoder fed an all-zero prompt
    sizes = rep.original_sizes
    sparse, _ = model.box_prompt(T.boxes_to_sam_torch(box_t.to(model.device), sizes))
    zero = rep.sam_embedding.new_zeros(n, 1, T.SAM_LOW_RES, T.SAM_LOW_RES)
    dense = model.mask_prompt(zero)
    hq = model.hq_features(rep.sam_embedding, rep.sam_interm)
    low, _ = model.decode(rep.sam_embedding, hq, sparse, dense)
    logits = T.low_res_to_source(low, tuple(feats.input_sizes[0].tolist()),
                                 tuple(feats.original_sizes[0].tolist()))
    return logits[:, 0].float().cpu().numpy(), None


class Heads:
    """The model with two swappable sets of trainable parts: ``baseline`` = what the preset's
    checkpoints give (the official SAM-HQ HQ decoder, SAM's mask encoder), ``trained`` = our
    weights file. The frozen encoders are shared, so each image is encoded once."""

    def __init__(self, model: Talk2SAM, weights: str) -> None:
        self.model = model
        self.baseline = self._snapshot()
        if weights:
            load_trained_weights(model, weights)
        self.trained = self._snapshot()
        self.current = "trained"

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.trainable_state_dict().items()}

    def use(self, which: str) -> Talk2SAM:
        if which != self.current:
            src = self.baseline if which == "baseline" else self.trained
            with torch.no_grad():
                for k, v in self.model.trainable_state_dict().items():
                    v.copy_(src[k])
            self.current = which
        return self.model


def build_eval_model(cfg: EvalConfig) -> Heads:
    """The model for ``cfg`` (load_for_inference) with its baseline and trained heads."""
    spec = InferenceSpec(preset=cfg.preset, checkpoints={
        "sam_hq": cfg.checkpoint_sam_hq, "dinov2": cfg.checkpoint_dinov2,
        "clip": cfg.checkpoint_clip, "projection": cfg.checkpoint_projection,
        "talk2sam": cfg.checkpoint_talk2sam}, weights_dir=cfg.weights_dir,
        allow_random_weights=cfg.allow_random_weights, device=cfg.device, dtype="float32",
        overrides={"runtime": cfg.runtime})
    loaded = load_for_inference(spec, load_head=False)
    return Heads(loaded.model, str(loaded.checkpoints.get("talk2sam", "")))


def _summaries(records: list[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    def agg(rows: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"images": len(rows)}
        for m in methods:
            out[m] = {"miou": float(np.mean([r[m]["iou"] for r in rows])),
                      "mbiou": float(np.mean([r[m]["biou"] for r in rows])),
                      "ms": float(np.mean([r[m]["ms"] for r in rows])),
                      "ms_median": float(np.median([r[m]["ms"] for r in rows]))}
        return out

    by_ds: dict[str, list] = defaultdict(list)
    by_cat: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_ds[r["dataset"]].append(r)
        by_cat[r["dataset"]][r["category"]].append(r)
    return {"overall": agg(records),
            "datasets": {d: agg(rows) for d, rows in sorted(by_ds.items())},
            "categories": {d: {c: agg(rows) for c, rows in sorted(cats.items())}
                           for d, cats in sorted(by_cat.items())}}


def markdown_tables(summary: dict[str, Any], methods: Sequence[str]) -> str:
    """Paper-style tables: per dataset Method | mIoU | mBIoU | Time (ms), then per category."""
    lines: list[str] = []
    for ds, s in summary["datasets"].items():
        lines += [f"**{ds}** ({s['images']} images)", "",
                  "| Method | mIoU | mBIoU | Time (ms) |", "|---|---|---|---|"]
        for m in methods:
            lines.append(f"| {METHOD_LABELS[m]} | {s[m]['miou']:.3f} | {s[m]['mbiou']:.3f} | "
                         f"{s[m]['ms']:.0f} |")
        lines.append("")
    head = " | ".join(f"{METHOD_LABELS[m]} mIoU / mBIoU" for m in methods)
    for ds, cats in summary["categories"].items():
        lines += [f"**{ds}: per category**", "", f"| Category | n | {head} |",
                  "|---|---|" + "---|" * len(methods)]
        for cat, s in cats.items():
            cells = " | ".join(f"{s[m]['miou']:.3f} / {s[m]['mbiou']:.3f}" for m in methods)
            lines.append(f"| {cat} | {s['images']} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def save_grid(rows: list[dict[str, Any]], path: Path) -> None:
    """Qualitative grid: image + box + text, GT, SAM-HQ, Talk2SAM, similarity map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from talk2sam_ros.common.visualize import blend_similarity, draw_overlay

    cols = ("image", "GT", "SAM-HQ", "Talk2SAM", "similarity")
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.6 * len(cols), 2.4 * len(rows)),
                             squeeze=False)
    for r, row in enumerate(rows):
        rgb, boxes = row["rgb"], row["boxes"]
        panels = [
            (draw_overlay(rgb, boxes=boxes, text=row["text"]), f"'{row['text']}'"),
            (draw_overlay(rgb, masks=row["gt"][None]), "ground truth"),
            (draw_overlay(rgb, masks=row["sam_hq"][None], boxes=boxes) if row["sam_hq"]
             is not None else rgb, f"IoU {row['iou_sam_hq']:.2f}" if row["sam_hq"] is not None
             else "n/a"),
            (draw_overlay(rgb, masks=row["talk2sam"][None], boxes=boxes) if row["talk2sam"]
             is not None else rgb, f"IoU {row['iou_talk2sam']:.2f}"
             if row["talk2sam"] is not None else "n/a"),
            (blend_similarity(rgb, row["similarity"], 0.6), "{:.2f}..{:.2f}".format(
                float(row["similarity"].min()), float(row["similarity"].max())))
            if row["similarity"] is not None else (rgb, "n/a"),
        ]
        for c, (img, title) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{cols[c]}: {title}" if r == 0 else title, fontsize=8)
        axes[r][0].set_ylabel(row["key"].split("/")[-1][:24], fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Run the comparison; writes report.json, report.md and grid.png; returns the report."""
    heads = build_eval_model(cfg)
    model = heads.model
    device = model.device
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    samples: list[Sample] = []
    for spec in cfg.sets:
        got = list_samples(spec, default_category=cfg.default_category or None)
        samples += got[: cfg.limit] if cfg.limit else got
    needs_text = any(m == "talk2sam" for m in cfg.methods)
    text_cache: dict[str, torch.Tensor] = {}
    records: list[dict[str, Any]] = []
    grid_pick = set(np.linspace(0, len(samples) - 1, min(cfg.grid_rows, len(samples)))
                    .round().astype(int).tolist()) if cfg.grid_rows else set()
    grid_rows: list[dict[str, Any]] = []
    for idx, s in enumerate(tqdm(samples, desc="evaluate", unit="img",
                                 disable=not cfg.progress)):
        rgb, gt = read_image(s.image), binarize_gt(read_gt(s.mask))
        boxes = part_boxes(gt) if cfg.multi_box else box_from_mask(gt)[None]
        clock = Stopwatch(device_sync(device))
        with clock:
            feats = encode(model, rgb, clock, dino=needs_text or "ablation" in cfg.methods)
            emb = None
            if needs_text:
                if s.category not in text_cache:
                    text_cache[s.category] = model.encode_texts([s.category])
                emb = text_cache[s.category]
                clock.lap("text")
            rec: dict[str, Any] = {"key": s.key, "dataset": s.dataset, "category": s.category,
                                   "size": list(gt.shape), "boxes": boxes.tolist()}
            row: dict[str, Any] = {"rgb": rgb, "gt": gt, "boxes": boxes, "text": s.category,
                                   "key": s.key, "sam_hq": None, "talk2sam": None,
                                   "similarity": None}
            for m in cfg.methods:
                head = heads.use("baseline" if m == "sam_hq" else "trained")
                logits, sim = run_method(head, m, feats, boxes, emb)
                clock.lap(f"decode_{m}")
                pred = (logits > 0).any(axis=0)
                rec[m] = {"iou": mask_iou(gt, pred),
                          "biou": boundary_iou(gt, pred, cfg.dilation_ratio)}
                if idx in grid_pick and m in ("sam_hq", "talk2sam"):
                    row[m], row[f"iou_{m}"] = pred, rec[m]["iou"]
                    if sim is not None:
                        row["similarity"] = sim
        t = clock.laps
        for m in cfg.methods:
            uses_dino = m != "sam_hq"
            rec[m]["ms"] = (t["sam_encode"] + (t["dino_encode"] if uses_dino else 0.0)
                            + (t.get("text", 0.0) if m == "talk2sam" else 0.0)
                            + t[f"decode_{m}"])
        rec["stages_ms"] = t
        records.append(rec)
        if idx in grid_pick:
            grid_rows.append(row)
    summary = _summaries(records, cfg.methods)
    table = markdown_tables(summary, cfg.methods)
    report = {"config": {k: list(v) if isinstance(v, tuple) else v
                         for k, v in asdict(cfg).items()},
              "model": model.describe(), "encoder_fingerprint": model.encoder_fingerprint,
              "weights": cfg.checkpoint_talk2sam or None,
              "protocol": {"box": "tight GT box (GT > 128)" + (", one per part" if cfg.multi_box
                                                               else ""),
                           "prediction": "logits > 0 at GT resolution",
                           "boundary_iou": f"SAM-HQ pure boundary IoU, ratio "
                                           f"{cfg.dilation_ratio}",
                           "both_empty": 1.0},
              "summary": summary, "records": records, "markdown": table}
    tmp = out / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(out / "report.json")
    (out / "report.md").write_text(table + "\n")
    if grid_rows:
        save_grid(grid_rows, out / "grid.png")
    return report


class UsageError(ValueError):
    """A bad command line (reported as one error line, like every other expected failure)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would print the usage and exit 2
        raise UsageError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="talk2sam-eval", description=__doc__.split("\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", action="append", required=True, metavar="SPEC",
                   help="dataset spec kind:root[:split][?categories=&exclude=&limit=] "
                        "(repeatable)")
    p.add_argument("--checkpoint_talk2sam", default="",
                   help="our trained Talk2SAM head (talk2sam-train output); path or name")
    p.add_argument("--preset", default="", help="model preset (default: the trained head's)")
    p.add_argument("--weights_dir", default="", help="talk2sam-weights cache")
    for part in ("sam_hq", "dinov2", "clip", "projection"):
        p.add_argument(f"--checkpoint_{part}", default="",
                       help="path or registry name (default: the preset's file in the cache)")
    p.add_argument("--allow_random_weights", action="store_true",
                   help="random weights for preset files missing from the cache (tests only)")
    p.add_argument("--out_dir", default="eval_out")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--limit", type=int, default=0, help="images per dataset (0: all)")
    p.add_argument("--multi_box", action="store_true", help="one box per connected part")
    p.add_argument("--default_category", default="",
                   help="text for files whose name yields no category")
    p.add_argument("--dilation_ratio", type=float, default=0.02)
    p.add_argument("--grid_rows", type=int, default=6)
    p.add_argument("--device", default="auto")
    p.add_argument("--runtime", default="torch", choices=RUNTIMES,
                   help="where the image encoders run (onnxruntime: validated ONNX exports)")
    p.add_argument("--no_progress", action="store_true")
    return p


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    """The EvalConfig a parsed command line asks for."""
    return EvalConfig(sets=tuple(args.sets), checkpoint_talk2sam=args.checkpoint_talk2sam,
                      preset=args.preset, weights_dir=args.weights_dir,
                      checkpoint_sam_hq=args.checkpoint_sam_hq,
                      checkpoint_dinov2=args.checkpoint_dinov2,
                      checkpoint_clip=args.checkpoint_clip,
                      checkpoint_projection=args.checkpoint_projection,
                      allow_random_weights=args.allow_random_weights, out_dir=args.out_dir,
                      methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()),
                      limit=args.limit, multi_box=args.multi_box,
                      default_category=args.default_category,
                      dilation_ratio=args.dilation_ratio, grid_rows=args.grid_rows,
                      device=args.device, runtime=args.runtime,
                      progress=not args.no_progress)


# what talk2sam-eval reports as one error line: bad options, specs or paths, unreadable
# images, missing weights, files that are no weights or do not fit the encoders
EVAL_ERRORS = (ValueError, OSError, CheckpointError, WeightsError)


def main(argv: Sequence[str] | None = None) -> int:
    """talk2sam-eval entry point: 0, or 1 with one ``talk2sam-eval: error: ...`` line."""

    def body() -> int:
        cfg = config_from_args(build_parser().parse_args(argv))
        report = evaluate(cfg)
        print(report["markdown"])
        print(f"report: {Path(cfg.out_dir) / 'report.json'}")
        return 0

    return run_cli("talk2sam-eval", body, EVAL_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
