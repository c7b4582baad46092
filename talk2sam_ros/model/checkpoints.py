"""Loading of local checkpoint files with one clear error type.

Every problem (missing, unreadable, truncated, wrong layout, wrong architecture, shape mismatch)
raises `CheckpointError` naming the file and what was expected. Nothing here touches the network.
"""
from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

log = logging.getLogger(__name__)

CHECKPOINT_PARTS = ("sam_hq", "dinov2", "clip", "projection", "talk2sam")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or does not match the expected model."""


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """Read a plain tensor dict from a .pth/.pt/.bin (torch.load weights_only) or .safetensors
    file onto the CPU. Unwraps a single {"model"|"state_dict": {...}} level."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what}: checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            data: object = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt/truncated files raise many different types
        if path.suffix != ".safetensors" and _is_torchscript(path):
            data = _read_torchscript(path, what)
        else:
            raise CheckpointError(
                f"{what}: cannot read {path} ({type(exc).__name__}: {exc}); expected a "
                "PyTorch state dict (.pth/.pt/.bin) or .safetensors file (corrupt or truncated?)"
            ) from exc
    if isinstance(data, torch.jit.ScriptModule):  # torch.load may dispatch to torch.jit.load
        data = dict(data.state_dict())
    if isinstance(data, Mapping) and len(data) <= 3:
        for key in ("model", "state_dict", "module"):
            if key in data and isinstance(data[key], Mapping):
                data = data[key]
                break
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor)
                                                for v in data.values()):
        raise CheckpointError(
            f"{what}: {path} does not hold a state dict of tensors "
            f"(got {type(data).__name__})"
        )
    return {str(k): v for k, v in data.items()}


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.split("/", 1)[-1].startswith("code/") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _read_torchscript(path: Path, what: str) -> dict[str, torch.Tensor]:
    """OpenAI's CLIP .pt files are TorchScript archives, which weights_only refuses."""
    try:
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except Exception as exc:
        raise CheckpointError(f"{what}: cannot read TorchScript archive {path}: {exc}") from exc


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike,
              what: str, ignore_unexpected: Iterable[str] = (),
              allow_missing: Iterable[str] = ()) -> list[str]:
    """Strictly load `state` into `module`: every module key must be present with the same
    shape. Unexpected keys whose name starts with one of `ignore_unexpected` are dropped
    silently, other unexpected keys raise. Returns the list of loaded keys."""
    expected = module.state_dict()
    ignore = tuple(ignore_unexpected)
    allowed_missing = tuple(allow_missing)
    missing = [k for k in expected if k not in state and not k.startswith(allowed_missing)]
    unexpected = [k for k in state if k not in expected and not k.startswith(ignore)]
    shape_bad = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shape_bad:
        parts = []
        if shape_bad:
            parts.append(f"{len(shape_bad)} shape mismatches (wrong architecture/size?): "
                         + "; ".join(shape_bad[:5]))
        if missing:
            parts.append(f"{len(missing)} missing keys, e.g. {missing[:5]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:5]}")
        raise CheckpointError(f"{what}: {path} does not match the expected model: "
                              + " | ".join(parts))
    loaded = {k: state[k] for k in expected if k in state}
    result = module.load_state_dict(loaded, strict=False)
    if result.unexpected_keys:  # cannot happen after the checks above; keep loud if it does
        raise CheckpointError(f"{what}: {path}: unexpected keys {result.unexpected_keys[:5]}")
    return list(loaded)


def atomic_torch_save(obj: object, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, then rename over `path`.

    The data and the rename are fsynced, so after a crash or power loss `path` holds either
    the old file or the whole new one (a rename alone only covers a killed process)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    finally:
        if tmp.exists():
            tmp.unlink()
