"""The one checkpoint-resolution layer: registry name or path -> file, for every caller.

The node (checkpoint_* parameters), training, evaluation, the benchmark and the demo name
weights the same way: a part (sam_hq, dinov2, clip, projection, talk2sam) maps to a file path
or a talk2sam-weights registry name, and the parts not given come from the preset's registry
files in the weights cache. Nothing here downloads.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from talk2sam_ros.weights.registry import (MissingWeightsError, Registry, WeightsError,
                                           cache_dir_path, load_registry)

PathLike = str | os.PathLike


@dataclass(frozen=True)
class InferenceSpec:
    """What to load. preset "" takes the trained head's (checkpoints["talk2sam"]) preset."""

    preset: str = ""
    checkpoints: Mapping[str, str] = field(default_factory=dict)  # part -> path or name
    weights_dir: str = ""
    allow_random_weights: bool = False
    device: str = "auto"
    dtype: str = "auto"
    overrides: Mapping[str, Any] = field(default_factory=dict)  # ModelConfig fields
    export_dir: str = ""  # ONNX exports (runtime onnxruntime); "": <weights cache>/exports


def resolve(name_or_path: PathLike, cache_dir: PathLike | None = None,
            registry: Registry | None = None) -> Path:
    """An existing file path as is, or a registry name/filename -> its file in the cache.

    Raises MissingWeightsError (naming the download command) when the file is not there.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate
    registry = registry or load_registry()
    try:
        entry = registry.get(str(name_or_path))
    except WeightsError:
        raise MissingWeightsError(f"{name_or_path} is neither a file nor a registry name "
                                  f"({', '.join(registry.files)})") from None
    path = cache_dir_path(cache_dir) / entry.filename
    if not path.is_file():
        raise MissingWeightsError(
            f"{entry.name} is not in {path.parent}; run: talk2sam-weights download {entry.name}"
            f" --dir {path.parent}")
    return path


def resolve_given(given: Mapping[str, PathLike], weights_dir: PathLike | None = None,
                  registry: Registry | None = None) -> dict[str, Path]:
    """part -> file for each non-empty given value (a path or a registry name); one error
    naming every value that is neither an existing file nor a cached registry file."""
    found: dict[str, Path] = {}
    problems = []
    for part, value in given.items():
        if not str(value).strip():
            continue
        try:
            found[part] = resolve(str(value).strip(), weights_dir, registry)
        except WeightsError as exc:
            problems.append(f"checkpoint_{part}={str(value)!r}: {exc}")
    if problems:
        raise MissingWeightsError("; ".join(problems))
    return found


def resolve_checkpoints(preset: str, given: Mapping[str, PathLike] | None = None, *,
                        weights_dir: PathLike | None = None, allow_random_weights: bool = False,
                        registry: Registry | None = None) -> dict[str, Path]:
    """part -> weight file to build `preset` with.

    `given`: part -> file path or registry name (empty values are ignored); each must exist.
    The other parts take the preset's registry files from the cache (`weights_dir`, else
    $TALK2SAM_WEIGHTS_DIR or ~/.cache/talk2sam_ros/weights); the Talk2DINO projection is not
    needed when a trained head (`talk2sam`) is given, since the head holds its own. The tiny
    preset has no files. A missing preset file is an error naming the download command, unless
    `allow_random_weights` (benchmarking: that part keeps its fixed-seed random weights).
    """
    cache = cache_dir_path(weights_dir)
    found = resolve_given(given or {}, cache, registry)
    if preset == "tiny":
        return found
    registry = registry or load_registry()
    if preset not in registry.presets:
        raise WeightsError(f"unknown preset {preset!r}; known: {', '.join(registry.presets)}")
    missing = []
    for part, name in registry.presets[preset].items():
        if part in found or (part == "projection" and "talk2sam" in found):
            continue
        path = cache / registry.files[name].filename
        if path.is_file():
            found[part] = path
        else:
            missing.append(f"{name} (checkpoint_{part})")
    if missing and not allow_random_weights:
        raise MissingWeightsError(
            f"preset {preset!r} needs weight files that are not in {cache}; run: "
            f"talk2sam-weights download --preset {preset} --dir {cache} (missing: "
            f"{', '.join(missing)}), set the checkpoint_* options, or use preset tiny")
    return found
