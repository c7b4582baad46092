"""Frozen-feature cache: the image encoders (SAM-HQ ViT, DINOv2) are frozen during training, so
their outputs for an image never change. They are computed once per image and stored on disk;
training then runs only the text side, the mask-prompt encoder and the HQ decoder.

Layout: ``<cache_dir>/<key>/<sha1 of image path, size, mtime>.pt``, each a ``torch.save`` dict
of one image's :class:`~talk2sam_ros.model.talk2sam.ImageFeatures` tensors (batch dimension 1)
written atomically. ``key`` (:func:`cache_key`) hashes everything that changes the stored
tensors: the frozen-encoder fingerprint (weights), the encoders' compute dtype (bf16/fp16
encoders under mixed precision give other features than fp32), DINOv2's input size, the storage
dtype and the cache format version. Any change gets another folder and an edited image another
file, so a stale entry is never read.

What the cache disables: every augmentation that changes pixels (flip, crop, photometric,
noise) -- the cached features are those of the original image. Prompt-side augmentation (box
jitter, multi-part boxes) and the text still vary per epoch. Disk use per image (float32):
about 29 MB for the ViT-H/DINOv2-L pair (interm 64x64x1280 + embedding 256x64x64 + 1024 DINO
tokens x 1024), 16 MB for ViT-B/DINOv2-B; ``dtype=float16`` halves it.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from talk2sam_ros.model.checkpoints import atomic_torch_save, safe_torch_load
from talk2sam_ros.model.talk2sam import ImageFeatures, Talk2SAM
from talk2sam_ros.training.data import Sample, read_image

LOG = logging.getLogger(__name__)

CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CACHE_FORMAT = 1  # bump when what is stored, or how images are preprocessed for it, changes


def cache_key(model: Talk2SAM, dtype: str = "float32") -> str:
    """16 hex digits naming ``model``'s cache folder for features stored as ``dtype``."""
    if not model.encoder_fingerprint:
        raise ValueError("the model has no encoder fingerprint; cannot key a feature cache")
    ident = {"fingerprint": model.encoder_fingerprint, "encoder_dtype": str(model.encoder_dtype),
             "dino_img_size": model.config.dino.img_size, "storage": dtype,
             "format": CACHE_FORMAT}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


class FeatureCache:
    """Per-image frozen features on disk for one model's frozen encoders."""

    def __init__(self, root: str | Path, model: Talk2SAM, dtype: str = "float32") -> None:
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"cache dtype {dtype!r} not in {sorted(CACHE_DTYPES)}")
        self.dir = Path(root) / cache_key(model, dtype)
        self.dtype = CACHE_DTYPES[dtype]

    def path(self, sample: Sample) -> Path:
        st = sample.image.stat()
        ident = f"{sample.image.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        return self.dir / f"{hashlib.sha1(ident.encode()).hexdigest()}.pt"

    def has(self, sample: Sample) -> bool:
        return self.path(sample).is_file()

    def load(self, sample: Sample) -> dict[str, torch.Tensor]:
        """One image's feature tensors (batch dim 1), float32."""
        data = safe_torch_load(self.path(sample), "feature cache")
        return {k: v.float() if v.is_floating_point() else v for k, v in data.items()}

    def save(self, sample: Sample, features: ImageFeatures) -> None:
        data = {k: v.to(self.dtype) if v.is_floating_point() else v
                for k, v in features.to_dict().items()}
        atomic_torch_save(data, self.path(sample))

    def build(self, model: Talk2SAM, samples: Sequence[Sample], batch_size: int = 1,
              progress: bool = True) -> int:
        """Encode every sample that has no entry yet; returns how many were encoded."""
        todo = [s for s in samples if not self.has(s)]
        if not todo:
            return 0
        self.dir.mkdir(parents=True, exist_ok=True)
        LOG.info("feature cache: encoding %d of %d images into %s", len(todo), len(samples),
                 self.dir)
        bar = tqdm(total=len(todo), desc="feature cache", unit="img", disable=not progress)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            feats = model.encode_images([read_image(s.image) for s in chunk])
            for i, s in enumerate(chunk):
                self.save(s, feats.select([i]))
            bar.update(len(chunk))
        bar.close()
        return len(todo)


def stack_features(items: Sequence[dict[str, torch.Tensor]], device: torch.device | str
                   ) -> ImageFeatures:
    """Cached per-image dicts -> one batched ImageFeatures on ``device``."""
    return ImageFeatures.cat([ImageFeatures.from_dict(d) for d in items]).to(device)
