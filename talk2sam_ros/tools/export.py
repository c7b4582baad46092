"""``talk2sam-export``: ONNX exports of a preset's frozen image encoders (docs/model.md).

Builds the model the node would build (same options, same checkpoint resolution), exports
SAM-HQ's image encoder and DINOv2 to ONNX in the weights cache (``<cache>/exports``), checks
each new export against PyTorch on a real image and keeps it; valid exports are reused.
``--list`` shows what the export folder holds. The node does the same on configure with
``runtime:=onnxruntime`` when an export is missing; this tool does it ahead of time.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from talk2sam_ros.common.cli import run_cli
from talk2sam_ros.model.config import CHECKPOINT_PARTS, PRESET_NAMES, RUNTIME_QUANTIZE
from talk2sam_ros.model.errors import CheckpointError
from talk2sam_ros.weights.registry import WeightsError
from talk2sam_ros.weights.resolve import InferenceSpec

PROG = "talk2sam-export"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="", choices=("", *PRESET_NAMES),
                   help="model preset (default: the trained head's, checkpoint_talk2sam)")
    for part in CHECKPOINT_PARTS:
        p.add_argument(f"--checkpoint_{part}", default="", metavar="FILE_OR_NAME",
                       help=f"{part} weights: a file or a talk2sam-weights registry name")
    p.add_argument("--weights_dir", default="", help="talk2sam-weights cache (default "
                   "$TALK2SAM_WEIGHTS_DIR or ~/.cache/talk2sam_ros/weights)")
    p.add_argument("--export_dir", default="", help="export folder (default "
                   "<weights cache>/exports)")
    p.add_argument("--allow_random_weights", action="store_true",
                   help="random weights for missing files (benchmarking only)")
    p.add_argument("--runtime_quantize", default="none", choices=RUNTIME_QUANTIZE,
                   help="int8_dynamic: also quantise (docs/model.md for its mask IoU)")
    p.add_argument("--list", action="store_true", help="list the exports and exit")
    return p


def spec_from_args(args: argparse.Namespace) -> InferenceSpec:
    return InferenceSpec(
        preset=args.preset, weights_dir=args.weights_dir, export_dir=args.export_dir,
        checkpoints={part: getattr(args, f"checkpoint_{part}") for part in CHECKPOINT_PARTS},
        allow_random_weights=args.allow_random_weights, device="cpu", dtype="float32",
        overrides={"runtime": "onnxruntime", "runtime_provider": "cpu",
                   "runtime_quantize": args.runtime_quantize})


def _diffs(validation: dict[str, Any]) -> str:
    outputs = ", ".join(f"{k} {v:.1e}" for k, v in validation.get("max_abs_diff", {}).items())
    logits = validation.get("mask_logits_max_abs_diff")
    iou = validation.get("mask_iou_min")
    return (f"max abs diff {outputs}; mask logits "
            f"{'-' if logits is None else f'{logits:.1e}'}; mask IoU "
            f"{'-' if iou is None else f'{iou:.4f}'}")


def _list(spec: InferenceSpec) -> int:
    from talk2sam_ros.model.export import list_exports
    from talk2sam_ros.weights.inference import export_dir_for

    folder = export_dir_for(spec)
    records = list_exports(folder)
    print(f"exports in {folder}: {len(records)}")
    for rec in records:
        key = rec.get("key", {})
        print(f"  {rec['folder']}: {key.get('part')} {key.get('variant')} "
              f"{key.get('input_size')} px, weights {str(key.get('fingerprint'))[:12]}, "
              f"{rec.get('created', '')}; {_diffs(rec.get('validation', {}))}")
    return 0


def _export(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    spec = spec_from_args(args)
    if args.list:
        return _list(spec)
    from talk2sam_ros.model.runtime import ENCODER_PARTS
    from talk2sam_ros.weights.inference import load_for_inference

    model = load_for_inference(spec).model
    runtime = model.image_runtime
    assert runtime is not None  # runtime onnxruntime attaches one or raises
    for part in ENCODER_PARTS:
        rec = runtime.records[part]
        state = "reused" if rec.reused else "exported"
        print(f"{part}: {state} {rec.folder} ({_diffs(rec.validation)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    # Expected failures, one line each: missing or refused weights (WeightsError,
    # CheckpointError, ExportError is one), bad option combinations (ValueError), an
    # unwritable cache (OSError).
    return run_cli(PROG, lambda: _export(argv), (WeightsError, CheckpointError, ValueError,
                                                 OSError))


if __name__ == "__main__":
    sys.exit(main())
