"""load_for_inference: the one way the node, evaluation and the benchmark build a model.

Resolves the device and dtype ("auto" included), the checkpoint files (resolve_checkpoints),
the model config (the preset, or the trained head's own config, whose architecture flags
decide what it loads onto) and builds the model with build_talk2sam; runtime onnxruntime keeps
its encoder exports in the weights cache (export_dir).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from talk2sam_ros.model import ModelConfig, Talk2SAM, build_talk2sam, get_preset
from talk2sam_ros.model.build import trained_weights_config
from talk2sam_ros.model.checkpoints import CheckpointError
from talk2sam_ros.model.config import dtype_name
from talk2sam_ros.weights.registry import cache_dir_path
from talk2sam_ros.weights.resolve import InferenceSpec, resolve_checkpoints, resolve_given

EXPORTS_FOLDER = "exports"  # in the weights cache: ONNX exports of the frozen encoders

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto", dtype: str = "auto", runtime: str = "torch"
                   ) -> tuple[str, torch.dtype]:
    """(torch device string, torch dtype) for device/dtype options; "auto" is cuda if
    available (float16 there with the torch runtime; other runtimes take float32 encoders),
    else cpu (float32). ValueError for a CUDA device torch cannot see or an unknown dtype."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} but torch sees no CUDA device (use cpu or auto)")
    if dtype == "auto":
        dtype = "float16" if device.startswith("cuda") and runtime == "torch" else "float32"
    return device, getattr(torch, dtype_name(dtype))


def export_dir_for(spec: InferenceSpec) -> Path:
    """Where `spec`'s ONNX exports live: spec.export_dir, else <weights cache>/exports."""
    if spec.export_dir:
        return Path(spec.export_dir).expanduser()
    return cache_dir_path(spec.weights_dir or None) / EXPORTS_FOLDER


@dataclass
class LoadedModel:
    model: Talk2SAM
    config: ModelConfig
    device: str
    dtype: torch.dtype
    checkpoints: dict[str, Path]  # part -> file actually loaded (missing parts: random)


def model_config_for(preset: str, head: Path | None) -> ModelConfig:
    """The preset's config, or the trained head's when one is given (the preset must agree)."""
    if head is None:
        if not preset:
            raise ValueError("give a preset or a trained Talk2SAM head (checkpoint_talk2sam)")
        return get_preset(preset)
    config = trained_weights_config(head)
    if preset and config.preset != preset:
        raise CheckpointError(f"checkpoint_talk2sam {head} was trained for preset "
                              f"{config.preset!r}, not {preset!r}")
    return config


def load_for_inference(spec: InferenceSpec, *, load_head: bool = True,
                       progress: Callable[[str], None] | None = None) -> LoadedModel:
    """Build the model `spec` describes, in eval mode on its device.

    load_head=False resolves and checks the trained head (its config decides the model) but
    leaves SAM-HQ's own decoder in place, for callers that compare both (talk2sam-eval).
    progress: called with one line per step of a first ONNX export (runtime onnxruntime).
    Raises WeightsError (missing files), CheckpointError (unreadable or refused files;
    ExportError for ONNX exports) or ValueError (bad options), each with a one-line message.
    """
    weights_dir = spec.weights_dir or None
    given = resolve_given(spec.checkpoints, weights_dir)
    config = model_config_for(spec.preset, given.get("talk2sam"))
    config = config.replace(**dict(spec.overrides))
    device, dtype = resolve_device(spec.device, spec.dtype, config.runtime)
    files = resolve_checkpoints(config.preset, given, weights_dir=weights_dir,
                                allow_random_weights=spec.allow_random_weights)
    build_files = {k: str(v) for k, v in files.items() if load_head or k != "talk2sam"}
    model = build_talk2sam(config, checkpoints=build_files, device=device, dtype=dtype,
                           export_dir=export_dir_for(spec), progress=progress)
    return LoadedModel(model, config, device, dtype, files)
