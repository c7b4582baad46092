"""Loading of local checkpoint files with one clear error type.

Every problem (missing, unreadable, truncated, wrong layout, wrong architecture, shape mismatch)
raises `CheckpointError` naming the file and what was expected. Nothing here touches the network.
"""
from __future__ import annotations

import ast
import collections
import io
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .config import CHECKPOINT_PARTS  # noqa: F401  (re-exported)
from .errors import CheckpointError

log = logging.getLogger(__name__)



# Largest tensor data a checkpoint may declare beyond its own size: a zip whose entries
# declare more bytes than the file holds is a zip bomb or a corrupt file (torch writes its
# records uncompressed).
_ZIP_SLACK = 1 << 20


def safe_torch_load(path: str | os.PathLike, what: str) -> Any:
    """torch.load(weights_only=True) of a torch zip or legacy file onto the CPU, refusing
    TorchScript archives (their code would run) and zips that declare more data than they
    hold. Every failure is one CheckpointError line naming the file and the reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what}: checkpoint file not found: {path}")
    if _is_torchscript(path):
        raise CheckpointError(f"{what}: refused {path}: a TorchScript archive (it carries "
                              "code) where a plain checkpoint was expected")
    _check_zip_sizes(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{what}: refused {path}: {_refusal(exc)}; weights are read as "
                              "data only, never as code") from None
    except Exception as exc:  # corrupt/truncated files raise many different types
        raise CheckpointError(f"{what}: cannot read {path} ({type(exc).__name__}: "
                              f"{_first_line(exc)}); corrupt or truncated?") from None


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """Read a plain tensor dict from a .pth/.pt/.bin, .safetensors or TorchScript archive
    (OpenAI's CLIP .pt: its tensors are read without running its code) onto the CPU. Unwraps
    a single {"model"|"state_dict"|"module": {...}} level. Never executes code from the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what}: checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        data: object = _read_safetensors(path, what)
    elif _is_torchscript(path):
        _check_zip_sizes(path, what)
        data = read_torchscript_tensors(path, what)
    else:
        data = safe_torch_load(path, what)
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


def _read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError, OSError, ...
        raise CheckpointError(f"{what}: cannot read {path} ({type(exc).__name__}: "
                              f"{_first_line(exc)}); expected a .safetensors file") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _refusal(exc: pickle.UnpicklingError) -> str:
    """What torch's weights_only unpickler refused, without its advice to unpickle anyway."""
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    if found:
        return f"it references {found.group(1)}, which is not a tensor type"
    return "it holds objects other than tensors and plain containers"


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.split("/", 1)[-1].startswith("code/") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return False


def _check_zip_sizes(path: Path, what: str) -> None:
    """Refuse zips whose entries declare far more data than the file holds."""
    try:
        with zipfile.ZipFile(path) as zf:
            declared = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a zip (legacy torch format) or unreadable: torch.load reports it
    size = path.stat().st_size
    if declared > size + _ZIP_SLACK:
        raise CheckpointError(f"{what}: refused {path}: its entries declare {declared} bytes "
                              f"in a {size}-byte file (corrupt, or a zip bomb)")


# ---------------------------------------------------------------- TorchScript without code
# A TorchScript archive is a zip of `code/` (TorchScript source, compiled and run by
# torch.jit.load, e.g. a class's __setstate__) and `data.pkl` + `data/N` (a pickle of the
# module objects whose tensors point at the raw storages). We unpickle data.pkl with an
# unpickler that can only build tensors, plain containers and inert placeholders for the
# scripted classes, and take the parameter/buffer names from the `__parameters__` /
# `__buffers__` lines of the class definitions, read as text. Nothing from the file runs.

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_CLASS_RE = re.compile(r"^class (\w+)\(.*?\):\n((?:[ \t]+.*\n|\n)*)", re.M)
_MEMBER_LIST_RE = re.compile(r"^\s+(__parameters__|__buffers__)\s*=\s*(\[[^\]]*\])", re.M)


class _ScriptObject:
    """Inert stand-in for an instance of a scripted class: keeps its pickled state."""

    qualname = ""

    def __setstate__(self, state: Any) -> None:  # pickle's BUILD: store, never interpret
        self.state = state


@dataclass(frozen=True)
class _StorageType:
    dtype: torch.dtype


def _rebuild_tensor(storage: torch.Tensor, offset: int, size: tuple[int, ...],
                    stride: tuple[int, ...], *_: Any) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise pickle.UnpicklingError("tensor without storage")
    return torch.as_strided(storage, tuple(size), tuple(stride), int(offset))


def _identity(value: Any, *_: Any) -> Any:
    return value


class _TensorsOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, storages: Callable[[str, torch.dtype, int], torch.Tensor]
                 ) -> None:
        super().__init__(file)
        self._storages = storages
        self._classes: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualname = f"{module}.{name}"
            if qualname not in self._classes:
                self._classes[qualname] = type(name, (_ScriptObject,), {"qualname": qualname})
            return self._classes[qualname]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        allowed = {("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
                   ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
                   ("torch._utils", "_rebuild_parameter"): _identity,
                   ("collections", "OrderedDict"): collections.OrderedDict,
                   ("torch.jit._pickle", "restore_type_tag"): _identity,
                   ("torch.jit._pickle", "build_intlist"): _identity,
                   ("torch.jit._pickle", "build_doublelist"): _identity,
                   ("torch.jit._pickle", "build_boollist"): _identity,
                   ("torch.jit._pickle", "build_tensorlist"): _identity}
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not allowed")

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if (not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage"
                or not isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:80]}")
        return self._storages(str(pid[2]), pid[1].dtype, int(pid[4]))


def read_torchscript_tensors(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive as a state dict (the same keys and
    values as torch.jit.load(path).state_dict()), read as data: the archive's code never runs.
    Objects with a custom __setstate__ are refused, since their state means what their code
    makes of it."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            pkl = next((n for n in names if n.split("/", 1)[-1] == "data.pkl"), None)
            if pkl is None:
                raise CheckpointError(f"{what}: {path}: TorchScript archive without data.pkl")
            root = pkl[: -len("data.pkl")]
            members = _script_members(zf, root)
            cache: dict[str, torch.Tensor] = {}

            def storage(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
                if key not in cache:
                    raw = bytearray(zf.read(f"{root}data/{key}"))
                    flat = (torch.frombuffer(raw, dtype=dtype) if raw
                            else torch.empty(0, dtype=dtype))
                    if flat.numel() < numel:
                        raise CheckpointError(f"{what}: {path}: storage {key} is truncated")
                    cache[key] = flat
                return cache[key]

            obj = _TensorsOnlyUnpickler(io.BytesIO(zf.read(pkl)), storage).load()
    except CheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{what}: refused TorchScript archive {path}: "
                              f"{_first_line(exc)}; its code is never run") from None
    except Exception as exc:
        raise CheckpointError(f"{what}: cannot read TorchScript archive {path} "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None
    state: dict[str, torch.Tensor] = {}
    _collect(obj, "", members, state, path, what, depth=0)
    return state


def _script_members(zf: zipfile.ZipFile, root: str) -> dict[str, set[str]]:
    """qualified class name -> its parameter and buffer names, from the code/ sources."""
    members: dict[str, set[str]] = {}
    prefix = f"{root}code/"
    for name in zf.namelist():
        if not (name.startswith(prefix) and name.endswith(".py")):
            continue
        module = name[len(prefix):-len(".py")].replace("/", ".")
        text = zf.read(name).decode("utf-8", errors="replace")
        for found in _CLASS_RE.finditer(text):
            names: set[str] = set()
            for kind in _MEMBER_LIST_RE.finditer(found.group(2)):
                names.update(str(n) for n in ast.literal_eval(kind.group(2)))
            members[f"{module}.{found.group(1)}"] = names
    return members


def _collect(obj: Any, prefix: str, members: Mapping[str, set[str]],
             out: dict[str, torch.Tensor], path: Path, what: str, depth: int) -> None:
    if depth > 64:
        raise CheckpointError(f"{what}: {path}: TorchScript modules nested too deeply")
    if not isinstance(obj, _ScriptObject):
        raise CheckpointError(f"{what}: {path}: TorchScript archive whose root is "
                              f"{type(obj).__name__}, not a module")
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{what}: refused TorchScript archive {path}: {obj.qualname} has a custom "
            "__setstate__, whose code would have to run to read it")
    names = members.get(obj.qualname, set())
    for key, value in state.items():
        if isinstance(value, _ScriptObject):
            _collect(value, f"{prefix}{key}.", members, out, path, what, depth + 1)
        elif isinstance(value, torch.Tensor) and key in names:
            out[f"{prefix}{key}"] = value


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
