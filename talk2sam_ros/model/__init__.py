"""Talk2SAM model core (plain PyTorch, no ROS): see docs/model.md.

The names below are imported on first use, so that `talk2sam_ros.model.config` (presets,
dtype and checkpoint vocabularies) can be read by torch-free code such as the node's
parameter table without paying for torch.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Any

# segment_anything_hq imports timm's deprecated paths and re-registers TinyViT names: both
# warnings are about that library, not about anything a user can change.
warnings.filterwarnings("ignore", message=r"Importing from timm\.models", category=FutureWarning)
warnings.filterwarnings("ignore", message=r"Overwriting tiny_vit", category=UserWarning)

_EXPORTS = {
    "build_talk2sam": "build", "load_trained_weights": "build",
    "save_trained_weights": "build", "trained_weights_config": "build",
    "CheckpointError": "errors",
    "CHECKPOINT_PARTS": "config", "PRESETS": "config", "SUB_IMAGENET_TEMPLATES": "config",
    "ModelConfig": "config", "get_preset": "config",
    "Prediction": "predictor", "Talk2SAMPredictor": "predictor",
    "ForwardOutput": "talk2sam", "ImageFeatures": "talk2sam", "Talk2SAM": "talk2sam",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
