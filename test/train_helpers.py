"""Shared pieces of the training/evaluation tests: one small synthetic dataset and one frozen-
feature cache per pytest run (both on disk under the session's base temp dir, so every test
module reuses them instead of re-encoding images with the tiny model's encoders)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from talk2sam_ros.training.config import TrainConfig, apply_overrides
from talk2sam_ros.training.data import AugmentConfig
from talk2sam_ros.training.losses import LossConfig
from talk2sam_ros.training.synthetic import generate_synthetic_dataset

N_IMAGES = 24  # 18 train / 6 val
IMAGE_SIZE = 96


@pytest.fixture
def shared_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(synthetic dataset root, feature cache dir), created once per pytest run."""
    base = tmp_path_factory.getbasetemp() / "talk2sam_train_shared"
    data = generate_synthetic_dataset(base / "synthetic", n=N_IMAGES, seed=0,
                                      image_size=IMAGE_SIZE, distractor_prob=0.0,
                                      progress=False)
    return data, base / "feature_cache"


def tiny_config(data: Path, cache: Path, out_dir: Path, train_limit: int = 0,
                val_limit: int = 0, **changes: Any) -> TrainConfig:
    """The tiny preset on the shared synthetic data, CPU, cached features, no progress bars.

    ``changes`` are config overrides (apply_overrides): top-level keys, or the sections as
    partial mappings, e.g. ``loss={"kind": "points", "num_points": 512}``."""
    train = f"folder:{data}:train" + (f"?limit={train_limit}" if train_limit else "")
    val = f"folder:{data}:val" + (f"?limit={val_limit}" if val_limit else "")
    # AdamW + clipping learns the tiny head robustly in ~20 steps (SGD at the paper's
    # settings needs far more steps than a unit test can afford)
    base = TrainConfig(preset="tiny", train_sets=(train,), val_sets=(val,), optimizer="adamw",
                       lr=1e-2, lr_schedule="cosine", warmup_steps=2, grad_clip=1.0,
                       loss=LossConfig(kind="dense"), batch_size=4, epochs=1,
                       augment=AugmentConfig(hflip=0.0), feature_cache=True,
                       cache_dir=str(cache), out_dir=str(out_dir), num_workers=0,
                       progress=False, log_every=1, device="cpu")
    return apply_overrides(base, changes)
