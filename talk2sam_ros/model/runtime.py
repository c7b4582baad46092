"""ONNX Runtime sessions for the frozen image encoders (export.py makes and checks the files).

`OnnxEncoders` stands in for the PyTorch encoders behind `Talk2SAM.encode_sam` /
`encode_dino` (model.image_runtime): same inputs (preprocessed float32 images on the model
device), same outputs (float32 tensors on the input's device), so the predictor's per-frame
cache, the training feature cache and evaluation run unchanged on either runtime.
onnxruntime is imported on first use: torch-only installs never need it.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ExportError

log = logging.getLogger(__name__)

# CHECKPOINT_PARTS names of the exported encoders (the CLIP text tower stays in torch: its
# output is cached per string).
ENCODER_PARTS = ("sam_hq", "dinov2")
INPUT_NAME = "image"
OUTPUT_NAMES = {"sam_hq": ("embedding", "interm0"), "dinov2": ("patches", "attention")}
_ORT_PROVIDER = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "tensorrt": "TensorrtExecutionProvider"}
GPU_PACKAGE_HINT = "install onnxruntime-gpu instead of onnxruntime (docs/model.md, Runtimes)"


def onnxruntime_module() -> Any:
    """The onnxruntime module, or an ExportError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise ExportError(f"runtime onnxruntime needs the onnxruntime package ({exc}); pip "
                          "install -r requirements-model.txt, or talk2sam_ros[onnx]") from None
    return onnxruntime


def resolve_provider(provider: str, device: torch.device) -> str:
    """runtime_provider -> cpu | cuda | tensorrt; auto is cuda for a CUDA model device."""
    if provider == "auto":
        return "cuda" if device.type == "cuda" else "cpu"
    return provider


def execution_providers(provider: str, device: torch.device, fp16: bool,
                        engine_cache: Path | None) -> list[Any]:
    """The providers list for an InferenceSession: the chosen one first, then the CUDA and
    CPU fallbacks for the operators it does not take. TensorRT caches its engines (and
    timing cache) in `engine_cache`, so only the first session on a GPU builds them."""
    name = resolve_provider(provider, device)
    device_id = {"device_id": device.index or 0} if device.type == "cuda" else {}
    cpu = _ORT_PROVIDER["cpu"]
    if name == "cpu":
        return [cpu]
    cuda = (_ORT_PROVIDER["cuda"], dict(device_id))
    if name == "cuda":
        return [cuda, cpu]
    trt: dict[str, Any] = {**device_id, "trt_fp16_enable": bool(fp16)}
    if engine_cache is not None:
        trt.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(engine_cache),
                   trt_timing_cache_enable=True, trt_timing_cache_path=str(engine_cache))
    return [(_ORT_PROVIDER["tensorrt"], trt), cuda, cpu]


def require_provider(name: str) -> None:
    """ExportError (one line) unless this onnxruntime build has provider `name` (cpu, cuda,
    tensorrt or its ONNX Runtime name)."""
    ort = onnxruntime_module()
    full = _ORT_PROVIDER.get(name, name)
    if full not in ort.get_available_providers():
        raise ExportError(f"{full} is not in this onnxruntime "
                          f"({', '.join(ort.get_available_providers())}); {GPU_PACKAGE_HINT}")


def open_session(path: Path, providers: Sequence[Any], threads: int = 0) -> Any:
    """An InferenceSession on `path` (full graph optimisation). ExportError (one line) when
    the file does not load or the first requested provider is not the one that runs it."""
    ort = onnxruntime_module()
    first = providers[0] if isinstance(providers[0], str) else providers[0][0]
    require_provider(first)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads)
    options.log_severity_level = 3  # errors only: its warnings are about graph internals
    # No busy-waiting once a run ends: the torch prompt path runs right after set_image on
    # the same cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own, unexported exception types
        raise ExportError(f"onnxruntime cannot load {path}: {' '.join(str(exc).split())}"
                          ) from None
    if session.get_providers()[0] != first:
        raise ExportError(f"onnxruntime could not start {first} for {path} (it fell back to "
                          f"{session.get_providers()[0]}): check the CUDA / TensorRT libraries")
    return session


@dataclass
class OnnxEncoders:
    """The exported encoders behind Talk2SAM.encode_sam / encode_dino (one session each).

    Batches run one image at a time (the exports have a fixed batch of 1, which TensorRT
    and the CPU provider both prefer); inputs and outputs pass through host memory."""

    sessions: Mapping[str, Any]  # part -> onnxruntime.InferenceSession
    records: Mapping[str, Any]  # part -> the export.ExportRecord it was loaded from
    quantize: str = "none"
    name: str = "onnxruntime"

    def encode_sam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb, interm0 = self.run("sam_hq", x)
        return emb, interm0

    def encode_dino(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches, attn = self.run("dinov2", x)
        return patches, attn

    def run(self, part: str, x: torch.Tensor) -> list[torch.Tensor]:
        """OUTPUT_NAMES[part] for a (B, 3, S, S) batch, float32 on x's device."""
        session = self.sessions[part]
        host = x.detach().to("cpu", torch.float32).contiguous().numpy()
        rows = [session.run(list(OUTPUT_NAMES[part]), {INPUT_NAME: host[i: i + 1]})
                for i in range(host.shape[0])]
        return [torch.from_numpy(np.concatenate([r[k] for r in rows])).to(x.device)
                for k in range(len(OUTPUT_NAMES[part]))]

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.name, "quantize": self.quantize,
                "providers": {p: s.get_providers()[0] for p, s in self.sessions.items()},
                "exports": {p: str(r.folder) for p, r in self.records.items()}}
