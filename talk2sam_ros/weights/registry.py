"""The registry of official checkpoint files per preset, and the offline weights cache.

Cache directory: ``$TALK2SAM_WEIGHTS_DIR`` or ``~/.cache/talk2sam_ros/weights``. Extra or
replacement registry entries (e.g. a mirror, or a local test server) come from a JSON file
given by ``$TALK2SAM_WEIGHTS_REGISTRY`` or ``talk2sam-weights --registry``. Nothing here
touches the network: downloading is talk2sam_ros.weights.fetch, name/path resolution for every
caller is talk2sam_ros.weights.resolve.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from talk2sam_ros.model.config import CHECKPOINT_PARTS

LOG = logging.getLogger(__name__)

ENV_DIR = "TALK2SAM_WEIGHTS_DIR"
ENV_REGISTRY = "TALK2SAM_WEIGHTS_REGISTRY"
HASHES_FILE = "hashes.json"  # first-download hashes of files without a published one
# parts with official files (our trained head, "talk2sam", is not in the registry)
PARTS = tuple(part for part in CHECKPOINT_PARTS if part != "talk2sam")


class WeightsError(RuntimeError):
    """A download or lookup problem, with a one-line message meant for the user."""


class MissingWeightsError(WeightsError, FileNotFoundError):
    """A registry file is not in the cache (the message says which command fetches it)."""


@dataclass(frozen=True)
class WeightFile:
    """One official file. `size`/`sha256`/`md5`/`git_blob_sha1` are None where unpublished."""

    name: str
    filename: str  # name in the cache directory
    url: str
    part: str  # one of PARTS
    size: int | None = None
    sha256: str | None = None
    md5: str | None = None
    git_blob_sha1: str | None = None  # git object id of the blob (GitHub-hosted files)
    source: str = ""  # where the size/hash facts were read

    def pooch_hash(self) -> str | None:
        """The strongest published hash in pooch's ``alg:hex`` form (None: unknown)."""
        if self.sha256:
            return f"sha256:{self.sha256}"
        if self.md5:
            return f"md5:{self.md5}"
        return None


@dataclass(frozen=True)
class Registry:
    files: Mapping[str, WeightFile]
    presets: Mapping[str, Mapping[str, str]]  # preset -> part -> file name

    def get(self, name: str) -> WeightFile:
        """Entry by registry name or by cache filename."""
        if name in self.files:
            return self.files[name]
        for entry in self.files.values():
            if entry.filename == name:
                return entry
        raise WeightsError(f"unknown weights name {name!r}; known: {', '.join(self.files)}")


_HQ = "https://huggingface.co/lkeab/hq-sam/resolve/main/"
_HQ_SRC = "LFS pointers in huggingface.co/lkeab/hq-sam commits 8a94b5e/519b37f/67ab824/a3a77cd"
_T2D = ("https://raw.githubusercontent.com/lorebianchi98/Talk2DINO/"
        "4918c2df1d00c644ecc7f34de070694af1a8bc69/weights/")

DEFAULT_FILES: tuple[WeightFile, ...] = (
    WeightFile("sam_hq_vit_tiny", "sam_hq_vit_tiny.pth", _HQ + "sam_hq_vit_tiny.pth", "sam_hq",
               42526881, "0f32c075ccdd870ae54db2f7630e7a0878ede5a2b06d05d6fe02c65a82fb7196",
               source=_HQ_SRC),
    WeightFile("sam_hq_vit_b", "sam_hq_vit_b.pth", _HQ + "sam_hq_vit_b.pth", "sam_hq",
               379335069, "14a9d662cd6f5a9c2dba6d40ab0058d88d287e4a18fd6fdc6ad5fb1a3fdeaa57",
               md5="c6b8953247bcfdc8bb8ef91e36a6cacc", source=_HQ_SRC),
    WeightFile("sam_hq_vit_l", "sam_hq_vit_l.pth", _HQ + "sam_hq_vit_l.pth", "sam_hq",
               1254865805, "e1a6c385d62bf005ded91a54d5ec55c985cfc4103ef89c08d90f39f04934c343",
               md5="08947267966e4264fb39523eccc33f86", source=_HQ_SRC),
    WeightFile("sam_hq_vit_h", "sam_hq_vit_h.pth", _HQ + "sam_hq_vit_h.pth", "sam_hq",
               2570940653, "a7ac14a085326d9fa6199c8c698c4f0e7280afdbb974d2c4660ec60877b45e35",
               md5="3560f6b6a5a6edacd814a1325c39640a", source=_HQ_SRC),
    WeightFile("dinov2_vitb14_reg4", "dinov2_vitb14_reg4_pretrain.pth",
               "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/"
               "dinov2_vitb14_reg4_pretrain.pth", "dinov2",
               346393545, "73182a088cf94833c94b1666d1c99e02fe87e2007bff57b564fb6206e25dba71",
               source="LFS pointer of a mirror: huggingface.co/msdkhairi/vit_sam commit 0bcb635"),
    WeightFile("dinov2_vitl14_reg4", "dinov2_vitl14_reg4_pretrain.pth",
               "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/"
               "dinov2_vitl14_reg4_pretrain.pth", "dinov2",
               source="not published (about 1.2 GB): hash recorded on first download"),
    # open_clip's hf_hub file for ('ViT-B-16-quickgelu', 'openai'): a plain state dict that
    # loads with weights_only; OpenAI's ViT-B-16.pt is TorchScript, refused by torch>=2.6.
    WeightFile("clip_vit_b16_openai", "clip_vit_b16_openai.safetensors",
               "https://huggingface.co/timm/vit_base_patch16_clip_224.openai/resolve/main/"
               "open_clip_model.safetensors", "clip",
               source="not published (about 599 MB): hash recorded on first download"),
    WeightFile("talk2dino_vitb", "vitb_mlp_infonce.pth", _T2D + "vitb_mlp_infonce.pth",
               "projection", 3940664,
               "5f6efcc520f22916ecf3dfdfb01d6f57e701c1c2e1feda71a80d89e3cd752f0f",
               git_blob_sha1="2e8fd64706f39b247c71a0b10a46c3d98cff440e",
               source="blob in github.com/lorebianchi98/Talk2DINO @4918c2d"),
    WeightFile("talk2dino_vitl", "vitl_mlp_infonce.pth", _T2D + "vitl_mlp_infonce.pth",
               "projection", git_blob_sha1="21a0038cc793403648264fe9c90a29c9533770a3",
               source="git tree of github.com/lorebianchi98/Talk2DINO @4918c2d (blob id only)"),
)

# Preset -> part -> registry name ("tiny" uses random frozen encoders and needs no files).
DEFAULT_PRESETS: dict[str, dict[str, str]] = {
    "tiny": {},
    "t": {"sam_hq": "sam_hq_vit_tiny", "dinov2": "dinov2_vitb14_reg4",
          "clip": "clip_vit_b16_openai", "projection": "talk2dino_vitb"},
    "b": {"sam_hq": "sam_hq_vit_b", "dinov2": "dinov2_vitb14_reg4",
          "clip": "clip_vit_b16_openai", "projection": "talk2dino_vitb"},
    "l": {"sam_hq": "sam_hq_vit_l", "dinov2": "dinov2_vitl14_reg4",
          "clip": "clip_vit_b16_openai", "projection": "talk2dino_vitl"},
    "h": {"sam_hq": "sam_hq_vit_h", "dinov2": "dinov2_vitl14_reg4",
          "clip": "clip_vit_b16_openai", "projection": "talk2dino_vitl"},
}

_FIELDS = {f.name for f in dataclasses.fields(WeightFile)}


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """Built-in registry, updated from a JSON file (`path`, else ``$TALK2SAM_WEIGHTS_REGISTRY``).

    JSON: ``{"files": {name: {filename, url, part, size?, sha256?, md5?, git_blob_sha1?}},
    "presets": {preset: {part: name}}, "replace": false}``; ``replace: true`` drops the built-in
    entries. Entries with an existing name replace it (e.g. to point at a mirror).
    """
    files = {f.name: f for f in DEFAULT_FILES}
    presets = {k: dict(v) for k, v in DEFAULT_PRESETS.items()}
    path = path or os.environ.get(ENV_REGISTRY) or None
    if path:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WeightsError(f"cannot read registry {path}: {exc}") from None
        if data.get("replace"):
            files, presets = {}, {}
        for name, raw in data.get("files", {}).items():
            unknown = set(raw) - _FIELDS
            if unknown:
                raise WeightsError(f"registry {path}: {name}: unknown keys {sorted(unknown)}")
            try:
                files[name] = WeightFile(**{"name": name, **raw})
            except TypeError as exc:
                raise WeightsError(f"registry {path}: {name}: {exc}") from None
        for preset, parts in data.get("presets", {}).items():
            presets[preset] = dict(parts)
    for entry in files.values():
        if entry.part not in PARTS:
            raise WeightsError(f"registry entry {entry.name}: part {entry.part!r} not in {PARTS}")
    for preset, parts in presets.items():
        for part, name in parts.items():
            if name not in files:
                raise WeightsError(f"preset {preset!r} part {part!r} names unknown file {name!r}")
    return Registry(files, presets)


def default_cache_dir() -> Path:
    """``$TALK2SAM_WEIGHTS_DIR`` or ``~/.cache/talk2sam_ros/weights``."""
    env = os.environ.get(ENV_DIR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "talk2sam_ros" / "weights"


def cache_dir_path(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def trained_weights_path(preset: str, tag: str = "synthetic",
                         cache_dir: str | os.PathLike | None = None) -> Path:
    """Where our own trained head for `preset` lives: ``<cache>/trained/<preset>_<tag>.pt``."""
    return cache_dir_path(cache_dir) / "trained" / f"{preset}_{tag}.pt"
