"""ONNX exports of the frozen image encoders: made, validated against PyTorch, cached, reused.

`prepare_runtime(model, export_dir, device)` attaches ONNX Runtime sessions for SAM-HQ's
image encoder and DINOv2 to a model whose config asks for runtime onnxruntime. Each encoder's
export lives in its own folder of `export_dir`, named by an `ExportKey` (part, variant,
input size, sha256 of the encoder's frozen tensors and architecture):

    <export_dir>/sam_hq-fp32-1024-<key>/model.onnx, model.onnx.data, record.json

A folder is used only when its record.json (written last) has our format, the same key and
the sha256 of every file in it: changed weights give another key (a stale export is never
looked at), a tampered or torn export is redone. A new export is checked on a real image
(scikit-image's CC0 astronaut) before it is kept: encoder outputs and the final mask logits
within FP32_TOLERANCE of PyTorch (int8: mask IoU >= INT8_MIN_MASK_IOU against PyTorch fp32).
Exports and validation run on the CPU in float32 whatever the inference device.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from talk2sam_ros.common.cli import one_line
from talk2sam_ros.common.metrics import mask_iou

from . import transforms as T
from .errors import ExportError
from .predictor import Talk2SAMPredictor
from .runtime import (ENCODER_PARTS, INPUT_NAME, OUTPUT_NAMES, OnnxEncoders,
                      execution_providers, onnxruntime_module, open_session,
                      require_provider, resolve_provider)
from .talk2sam import Talk2SAM

log = logging.getLogger(__name__)

EXPORT_FORMAT = "talk2sam_ros.onnx_export"
EXPORT_VERSION = 1  # part of every key: bump when the exported graphs or quantisation change
# 23: scaled_dot_product_attention becomes ONNX's Attention operator, which ONNX Runtime runs
# fused (SAM-HQ vit_b: 1.6x faster than opset 18's MatMul/Softmax graph on the CPU).
OPSET = 23
MODEL_FILE = "model.onnx"
RECORD_FILE = "record.json"
# Largest |export - torch| accepted on fp32 outputs, relative to the output's scale when that
# exceeds 1 (float32 rounding grows with the magnitude): tol = 1e-4 * max(1, max |torch|).
FP32_TOLERANCE = 1e-4
# int8 exports cannot meet an fp32 tolerance: they are kept when their masks stay this close
# to the fp32 PyTorch masks on the validation prompts (docs/model.md, int8).
INT8_MIN_MASK_IOU = 0.9
VARIANTS = {"none": "fp32", "int8_dynamic": "int8_dynamic"}  # runtime_quantize -> variant
_PREFIX = {"sam_hq": "sam.image_encoder.", "dinov2": "dino."}
_LABEL = {"sam_hq": "the SAM-HQ image encoder", "dinov2": "DINOv2"}
VALIDATION_IMAGE = "scikit-image astronaut (CC0), 512x512"
_EXPORTER_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "onnxruntime")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExportKey:
    """What an export is a function of. fingerprint: Talk2SAM.compute_fingerprint of the
    encoder's tensors; architecture: its SamConfig / DinoConfig as sorted JSON."""

    part: str
    variant: str  # fp32 | int8_dynamic
    input_size: int
    fingerprint: str
    architecture: str
    export_version: int = EXPORT_VERSION
    opset: int = OPSET

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def folder_name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode())
        return f"{self.part}-{self.variant}-{self.input_size}-{digest.hexdigest()[:16]}"


@dataclass
class ExportRecord:
    """A validated export on disk (record.json) and whether this call reused it."""

    folder: Path
    key: ExportKey
    files: dict[str, str]  # file name -> sha256
    validation: dict[str, Any]
    created: str
    versions: dict[str, str]
    reused: bool = False

    @property
    def model_path(self) -> Path:
        return self.folder / MODEL_FILE

    def to_json(self) -> dict[str, Any]:
        return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "key": self.key.to_dict(),
                "files": self.files, "validation": self.validation, "created": self.created,
                "versions": self.versions}


def export_key(model: Talk2SAM, part: str, variant: str) -> ExportKey:
    sub = model.config.sam if part == "sam_hq" else model.config.dino
    size = sub.image_size if part == "sam_hq" else sub.img_size
    return ExportKey(part, variant, int(size), model.compute_fingerprint(_PREFIX[part]),
                     json.dumps(dataclasses.asdict(sub), sort_keys=True))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_record(folder: Path, key: ExportKey) -> tuple[ExportRecord | None, str]:
    """(the export in `folder` if it is ours, complete and for `key`; else None, why)."""
    path = folder / RECORD_FILE
    if not folder.is_dir():
        return None, "not exported yet"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "no record.json (an interrupted export)"
    except (OSError, ValueError) as exc:
        return None, f"unreadable record.json ({one_line(exc)})"
    if not isinstance(data, dict) or (data.get("format"), data.get("version")) != (
            EXPORT_FORMAT, EXPORT_VERSION):
        return None, "record.json of another format or version"
    if data.get("key") != key.to_dict():
        return None, "record.json of other weights or settings"
    files = data.get("files")
    if not isinstance(files, dict) or MODEL_FILE not in files:
        return None, "record.json lists no model file"
    for name, digest in files.items():
        member = folder / str(name)
        if Path(str(name)).name != name or not member.is_file():
            return None, f"{name!r} is missing or not a plain file name"
        if sha256_file(member) != digest:
            return None, f"{name} does not match its recorded sha256 (changed or torn)"
    return ExportRecord(folder, key, dict(files), dict(data.get("validation", {})),
                        str(data.get("created", "")), dict(data.get("versions", {})),
                        reused=True), ""


def list_exports(export_dir: Path) -> list[dict[str, Any]]:
    """The records (record.json contents + folder) of every export folder in `export_dir`."""
    found = []
    for record in sorted(Path(export_dir).glob(f"*/{RECORD_FILE}")):
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("format") == EXPORT_FORMAT:
            found.append({"folder": str(record.parent), **data})
    return found


# ----------------------------------------------------------------------------- export


class _EncoderGraph(nn.Module):
    """What torch.onnx.export traces: one frozen encoder (its parameters become the graph's
    initializers) called through Talk2SAM's own PyTorch encode function."""

    def __init__(self, encoder: nn.Module,
                 encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.encoder = encoder
        self._encode = encode

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._encode(x)


def export_encoder(model: Talk2SAM, part: str, example: torch.Tensor, path: Path) -> None:
    """Export `part` of `model` (on the CPU, float32) to `path` (+ external weights file)."""
    graph = (_EncoderGraph(model.sam.image_encoder, model.torch_encode_sam) if part == "sam_hq"
             else _EncoderGraph(model.dino, model.torch_encode_dino))
    try:
        with torch.no_grad(), warnings.catch_warnings(), _quiet_loggers(_EXPORTER_LOGGERS):
            warnings.simplefilter("ignore")  # exporter deprecation chatter, not ours to fix
            torch.onnx.export(graph.eval(), (example,), str(path), dynamo=True,
                              opset_version=OPSET, input_names=[INPUT_NAME],
                              output_names=list(OUTPUT_NAMES[part]), external_data=True,
                              verbose=False)
    except Exception as exc:  # exporter failures come in many types; report them as one
        raise ExportError(f"{part}: torch.onnx.export failed: {type(exc).__name__}: "
                          f"{one_line(exc)}") from None


@contextlib.contextmanager
def _quiet_loggers(names: tuple[str, ...]) -> Iterator[None]:
    """The exporter's graph passes log every rewrite at INFO: WARNING and up while it runs."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def quantize_int8(source: Path, target: Path) -> None:
    """int8 dynamic quantisation (weights int8 per output channel, activations quantised per
    run) of the MatMul/Gemm weights of an fp32 export: ONNX Runtime's own quantiser. Per
    channel: mask IoU 0.94 against fp32 on the demo scenes (t), per tensor 0.91."""
    onnxruntime_module()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    root.addFilter(_no_preprocessing_advice)
    try:
        with _quiet_loggers(_EXPORTER_LOGGERS):
            quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                             per_channel=True, op_types_to_quantize=["MatMul", "Gemm"])
    except Exception as exc:  # the quantiser raises assorted types
        raise ExportError(f"int8 quantisation of {source} failed: {type(exc).__name__}: "
                          f"{one_line(exc)}") from None
    finally:
        root.removeFilter(_no_preprocessing_advice)


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    """The quantiser logs on the root logger that a shape-inference pre-pass may help; that
    pass cannot read exports with external weights, and we measure the masks instead."""
    return not str(record.msg).startswith("Please consider to run pre-processing")


# ----------------------------------------------------------------------------- validation


def validation_image() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut())


def probe_logits(model: Talk2SAM, image: np.ndarray) -> np.ndarray:
    """Final mask logits (2, H, W) for a text + box and a box-only prompt on `image`."""
    pred = Talk2SAMPredictor(model, text_cache_size=0)
    pred.set_image(image)
    h, w = image.shape[:2]
    box = [[0.25 * w, 0.15 * h, 0.75 * w, 0.85 * h]]
    return np.concatenate([pred.predict("object", box).logits, pred.predict(None, box).logits])


def tolerance(reference: torch.Tensor | np.ndarray) -> float:
    scale = float(np.abs(np.asarray(reference, dtype=np.float64)).max(initial=0.0))
    return FP32_TOLERANCE * max(1.0, scale)


def max_abs_diff(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@dataclass
class _Staged:
    folder: Path
    session: Any
    validation: dict[str, Any]


def _versions() -> dict[str, str]:
    out = {"torch": torch.__version__}
    for dist in ("onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


def _stage(model: Talk2SAM, key: ExportKey, example: torch.Tensor,
           reference: tuple[torch.Tensor, torch.Tensor], export_dir: Path,
           say: Progress) -> _Staged:
    """Export `key.part` into a private folder of export_dir and check its outputs."""
    folder = export_dir / f".staging-{key.folder_name}-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    try:
        return _export_into(model, key, example, reference, folder, say)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _export_into(model: Talk2SAM, key: ExportKey, example: torch.Tensor,
                 reference: tuple[torch.Tensor, torch.Tensor], folder: Path, say: Progress
                 ) -> _Staged:
    part = key.part
    start = time.perf_counter()
    say(f"{part}: exporting {_LABEL[part]} to ONNX ({key.variant}, {key.input_size} px; "
        "a one-time step of seconds to minutes)")
    export_encoder(model, part, example, folder / MODEL_FILE)
    if key.variant == "int8_dynamic":
        fp32 = folder / "fp32"
        fp32.mkdir()
        for item in list(folder.iterdir()):
            if item.is_file():
                item.rename(fp32 / item.name)
        quantize_int8(fp32 / MODEL_FILE, folder / MODEL_FILE)
        shutil.rmtree(fp32)
    session = open_session(folder / MODEL_FILE, ["CPUExecutionProvider"])
    outputs = OnnxEncoders({part: session}, {}).run(part, example)
    diffs = {name: max_abs_diff(r, o)
             for name, r, o in zip(OUTPUT_NAMES[part], reference, outputs)}
    tols = {name: tolerance(r) for name, r in zip(OUTPUT_NAMES[part], reference)}
    shown = ", ".join(f"{n} {d:.1e} (tolerance {tols[n]:.1e})" for n, d in diffs.items())
    if key.variant == "fp32" and any(diffs[n] > tols[n] for n in diffs):
        raise ExportError(f"{part}: the ONNX export does not match PyTorch on the validation "
                          f"image (max abs diff {shown}); not kept")
    say(f"{part}: ONNX Runtime vs PyTorch max abs diff {shown}")
    return _Staged(folder, session, {"image": VALIDATION_IMAGE, "max_abs_diff": diffs,
                                     "tolerance": tols,
                                     "export_seconds": round(time.perf_counter() - start, 2)})


def _check_logits(variant: str, reference: np.ndarray, logits: np.ndarray
                  ) -> dict[str, float]:
    ious = [mask_iou(r > 0, o > 0) for r, o in zip(reference, logits)]
    result = {"mask_logits_max_abs_diff": max_abs_diff(reference, logits),
              "mask_logits_tolerance": tolerance(reference), "mask_iou_min": min(ious)}
    if variant == "fp32" and result["mask_logits_max_abs_diff"] > result["mask_logits_tolerance"]:
        raise ExportError(f"the ONNX exports change the final mask logits by "
                          f"{result['mask_logits_max_abs_diff']:.1e} (tolerance "
                          f"{result['mask_logits_tolerance']:.1e}); not kept")
    if variant != "fp32" and result["mask_iou_min"] < INT8_MIN_MASK_IOU:
        raise ExportError(f"{variant} exports change the masks too much (IoU "
                          f"{result['mask_iou_min']:.3f} < {INT8_MIN_MASK_IOU} against "
                          "PyTorch fp32); not kept: use runtime_quantize none")
    return result


def _commit(staged: _Staged, key: ExportKey, final: Path, logits: Mapping[str, float]
            ) -> ExportRecord:
    """Write record.json (last) and move the staged folder into place."""
    files = {p.name: sha256_file(p) for p in sorted(staged.folder.iterdir()) if p.is_file()}
    record = ExportRecord(final, key, files, {**staged.validation, **logits},
                          time.strftime("%Y-%m-%d %H:%M:%S %Z"), _versions())
    (staged.folder / RECORD_FILE).write_text(json.dumps(record.to_json(), indent=2) + "\n",
                                             encoding="utf-8")
    if final.exists():  # an invalid leftover, or a concurrent exporter that finished first
        existing, _ = read_record(final, key)
        if existing is not None:
            shutil.rmtree(staged.folder, ignore_errors=True)
            return existing
        shutil.rmtree(final)
    os.replace(staged.folder, final)
    return record


def ensure_exports(model: Talk2SAM, export_dir: Path, quantize: str = "none",
                   progress: Progress | None = None) -> dict[str, ExportRecord]:
    """part -> a valid export of each encoder of `model` in `export_dir`: reused when one
    exists, else made, validated and stored. `model` must be on the CPU in float32.
    Raises ExportError (one line) when an export cannot be made, checked or stored."""
    say = progress or log.info
    variant = VARIANTS[quantize]
    export_dir = Path(export_dir).expanduser()
    keys = {part: export_key(model, part, variant) for part in ENCODER_PARTS}
    found: dict[str, ExportRecord] = {}
    for part, key in keys.items():
        record, why = read_record(export_dir / key.folder_name, key)
        if record is not None:
            found[part] = record
            say(f"{part}: using the validated export {record.folder}")
        else:
            say(f"{part}: no usable export in {export_dir / key.folder_name} ({why})")
    missing = [part for part in ENCODER_PARTS if part not in found]
    if not missing:
        return found
    try:
        export_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the export folder {export_dir}: {one_line(exc)}"
                          ) from None
    image = validation_image()
    examples = {"sam_hq": T.sam_preprocess(image)[0],
                "dinov2": T.dino_preprocess(image, model.config.dino.img_size)}
    with model.using_encoders(None):
        references = {"sam_hq": model.encode_sam(examples["sam_hq"]),
                      "dinov2": model.encode_dino(examples["dinov2"])}
        reference_logits = probe_logits(model, image)
    staged: dict[str, _Staged] = {}
    try:
        for part in missing:
            staged[part] = _stage(model, keys[part], examples[part], references[part],
                                  export_dir, say)
        sessions = {part: staged[part].session if part in staged
                    else open_session(found[part].model_path, ["CPUExecutionProvider"])
                    for part in ENCODER_PARTS}
        with model.using_encoders(OnnxEncoders(sessions, {})):
            logits = _check_logits(variant, reference_logits, probe_logits(model, image))
        say(f"final mask logits: max abs diff {logits['mask_logits_max_abs_diff']:.1e} "
            f"(tolerance {logits['mask_logits_tolerance']:.1e}), mask IoU "
            f"{logits['mask_iou_min']:.4f}")
        for part in missing:
            found[part] = _commit(staged.pop(part), keys[part],
                                  export_dir / keys[part].folder_name, logits)
            say(f"{part}: export kept in {found[part].folder}")
    except OSError as exc:
        raise ExportError(f"cannot write the export into {export_dir}: {one_line(exc)}"
                          ) from None
    finally:
        for leftover in staged.values():
            shutil.rmtree(leftover.folder, ignore_errors=True)
    return found


def prepare_runtime(model: Talk2SAM, export_dir: str | os.PathLike | None,
                    device: torch.device | str = "cpu", progress: Progress | None = None
                    ) -> None:
    """Attach the runtime model.config asks for (nothing for torch): ensure_exports, then
    one session per encoder on `device`'s execution provider (config.runtime_provider).
    `model` must still be on the CPU in float32 (build_talk2sam calls this before moving
    it). Raises ValueError for options that do not fit, ExportError for export problems."""
    cfg = model.config
    if cfg.runtime == "torch":
        model.image_runtime = None
        return
    if export_dir is None or not str(export_dir):
        raise ValueError(f"runtime {cfg.runtime} needs an export folder (load_for_inference "
                         "uses <weights cache>/exports)")
    if model.encoder_dtype != torch.float32 or model.device.type != "cpu":
        raise ValueError(f"runtime {cfg.runtime} exports float32 CPU encoders (fp16 on a GPU: "
                         "runtime_provider tensorrt with runtime_fp16)")
    device = torch.device(device)
    provider = resolve_provider(cfg.runtime_provider, device)
    if cfg.runtime_quantize != "none" and provider != "cpu":
        raise ValueError(f"runtime_quantize {cfg.runtime_quantize} runs on the cpu provider, "
                         f"not {provider} (device {device})")
    require_provider(provider)  # before a minutes-long export, not after
    records = ensure_exports(model, Path(export_dir), cfg.runtime_quantize, progress)
    sessions = {}
    for part, record in records.items():
        cache = record.folder / "tensorrt" if provider == "tensorrt" else None
        sessions[part] = open_session(record.model_path, execution_providers(
            provider, device, cfg.runtime_fp16, cache))
    model.image_runtime = OnnxEncoders(sessions, records, cfg.runtime_quantize)
