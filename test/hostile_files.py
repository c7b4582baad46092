"""Crafted weight files an attacker could hand to any `checkpoint_*` / weights path.

Each code-carrying file writes a marker file when it is loaded the unsafe way; `prove_live`
demonstrates that in the test itself, so a test that then sees no marker after our loaders
read the file shows that the payload was refused, not that it was broken.
"""
from __future__ import annotations

import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch


class _OpenMarker:
    """Unpickling this object opens (creates) the marker file: code run by a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204 (pickle protocol)
        return (open, (self.marker, "w"))


class _SetstateMarker(torch.nn.Module):
    """A scripted module whose TorchScript __setstate__ creates a file (torch.from_file with
    shared=True creates it): code that torch.jit.load runs."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 4))
        self.marker = marker
        self.scratch = torch.zeros(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, torch.Tensor, bool]:
        return (self.weight, self.marker, self.scratch, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, torch.Tensor, bool]) -> None:
        self.weight = state[0]
        self.marker = state[1]
        self.training = state[3]
        self.scratch = torch.from_file(self.marker, True, 2)


class _ScriptedClip(torch.nn.Module):
    """Looks like OpenAI's CLIP archive from the outside (transformer.resblocks.* keys)."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.transformer = torch.nn.Module()
        self.transformer.resblocks = torch.nn.ModuleList([_SetstateMarker(marker)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.transformer.resblocks:
            x = block(x)
        return x


@dataclass(frozen=True)
class Hostile:
    name: str
    path: Path
    carries_code: bool  # loading it the unsafe way creates `marker`


def reduce_pickle(folder: Path, marker: Path, legacy: bool) -> Path:
    path = folder / ("reduce_legacy.pth" if legacy else "reduce_zip.pth")
    torch.save({"weight": torch.zeros(2), "payload": _OpenMarker(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    return path


def torchscript_setstate(folder: Path, marker: Path) -> Path:
    path = folder / "ViT-B-16.pt"
    torch.jit.script(_ScriptedClip(str(marker))).save(str(path))
    return path


def bad_safetensors_header(folder: Path) -> Path:
    path = folder / "bad_header.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b'{"weight": {"dtype": "F32"')
    return path


def huge_declared_size(folder: Path) -> Path:
    """A real torch zip whose tensor record declares ~4 GB in its central directory."""
    path = folder / "zip_bomb.pth"
    torch.save({"weight": torch.zeros(64)}, path)
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        target = next(i for i in zf.infolist() if "/data/" in i.filename)
    # central directory entries start with PK\1\2; the uncompressed size is at offset 24
    start = data.find(b"PK\x01\x02")
    while start >= 0:
        name_len = struct.unpack_from("<H", data, start + 28)[0]
        name = bytes(data[start + 46:start + 46 + name_len]).decode()
        if name == target.filename:
            struct.pack_into("<I", data, start + 24, 0xFFFFFF00)
            break
        start = data.find(b"PK\x01\x02", start + 4)
    path.write_bytes(bytes(data))
    return path


def truncated(folder: Path, source: Path) -> Path:
    path = folder / f"truncated_{source.name}"
    raw = source.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return path


def make_all(folder: Path, marker: Path, valid_source: Path) -> list[Hostile]:
    """Every hostile file that does not depend on the part it is given as."""
    folder.mkdir(parents=True, exist_ok=True)
    return [
        Hostile("pickle_reduce_zip", reduce_pickle(folder, marker, legacy=False), True),
        Hostile("pickle_reduce_legacy", reduce_pickle(folder, marker, legacy=True), True),
        Hostile("torchscript_setstate", torchscript_setstate(folder, marker), True),
        Hostile("safetensors_bad_header", bad_safetensors_header(folder), False),
        Hostile("zip_huge_declared_size", huge_declared_size(folder), False),
        Hostile("truncated", truncated(folder, valid_source), False),
    ]


def prove_live(file: Hostile, marker: Path) -> None:
    """Load `file` the unsafe way and assert that this creates the marker (then remove it)."""
    assert file.carries_code
    if marker.exists():
        marker.unlink()
    if file.name.startswith("torchscript"):
        torch.jit.load(str(file.path))
    else:
        try:
            torch.load(file.path, weights_only=False)
        except (TypeError, pickle.UnpicklingError):
            pass  # the payload already ran while unpickling
    assert marker.exists(), f"{file.name} is not live: loading it unsafely created no marker"
    marker.unlink()
