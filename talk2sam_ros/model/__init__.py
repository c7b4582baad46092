"""Talk2SAM model core (plain PyTorch, no ROS): see docs/model.md."""
import warnings

with warnings.catch_warnings():
    # segment_anything_hq imports timm's deprecated paths and re-registers TinyViT names.
    warnings.simplefilter("ignore", (FutureWarning, UserWarning))
    import segment_anything_hq  # noqa: F401

from .build import (build_talk2sam, load_trained_weights, save_trained_weights,
                    trained_weights_config)
from .checkpoints import CHECKPOINT_PARTS, CheckpointError
from .config import PRESETS, SUB_IMAGENET_TEMPLATES, ModelConfig, get_preset
from .predictor import Prediction, Talk2SAMPredictor
from .talk2sam import ForwardOutput, ImageFeatures, Talk2SAM

__all__ = [
    "CHECKPOINT_PARTS",
    "CheckpointError",
    "ForwardOutput",
    "ImageFeatures",
    "ModelConfig",
    "PRESETS",
    "Prediction",
    "SUB_IMAGENET_TEMPLATES",
    "Talk2SAM",
    "Talk2SAMPredictor",
    "build_talk2sam",
    "get_preset",
    "load_trained_weights",
    "save_trained_weights",
    "trained_weights_config",
]
