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


def benchmark_cache(preset: str = "tiny", batch: int = 2, reps: int = 2,
                    image_shape: tuple[int, int] = (480, 640),
                    device: str = "cpu") -> dict[str, float]:
    """Seconds per training step with features encoded on the fly vs loaded from a cache file
    (random weights of ``preset``; median of ``reps`` rounds after one warm-up round).

    Returns encode / load / step seconds and ``speedup`` = (encode + step) / (load + step).
    """
    import tempfile
    import time

    import numpy as np

    from talk2sam_ros.model.build import build_talk2sam
    from talk2sam_ros.training.config import TrainConfig
    from talk2sam_ros.training.train import compute_loss

    model = build_talk2sam(preset, device=device)
    model.train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    h, w = image_shape
    images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(batch)]
    gts = [np.zeros((h, w), bool) for _ in range(batch)]
    for gt in gts:
        gt[h // 2:h // 2 + 4, w // 10:w - w // 10] = True
    boxes = torch.tensor([[w // 10, h // 2, w - w // 10 - 1, h // 2 + 3]] * batch,
                         dtype=torch.float32)
    text = model.encode_texts(["cable"] * batch)
    cfg = TrainConfig(loss="points")
    times: dict[str, list[float]] = {"encode": [], "load": [], "step": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.pt"
        for rnd in range(reps + 1):
            t0 = time.perf_counter()
            feats = model.encode_images(images)
            t1 = time.perf_counter()
            torch.save(feats.to_dict(), path)
            t2 = time.perf_counter()
            loaded = ImageFeatures.from_dict(torch.load(path, weights_only=True)).to(device)
            t3 = time.perf_counter()
            out = model.forward_features(loaded, None, boxes, text_embeddings=text)
            loss, _ = compute_loss(cfg, model, out, loaded, gts,
                                   torch.Generator(device=model.device).manual_seed(rnd),
                                   dense=False)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t4 = time.perf_counter()
            if rnd:  # round 0 warms up
                times["encode"].append(t1 - t0)
                times["load"].append(t3 - t2)
                times["step"].append(t4 - t3)
    med = {k: float(np.median(v)) for k, v in times.items()}
    med["speedup"] = (med["encode"] + med["step"]) / (med["load"] + med["step"])
    return med


if __name__ == "__main__":  # python -m talk2sam_ros.training.feature_cache PRESET BATCH REPS
    import json
    import sys

    args = sys.argv[1:]
    result = benchmark_cache(args[0] if args else "tiny", int(args[1]) if len(args) > 1 else 2,
                             int(args[2]) if len(args) > 2 else 2)
    print(json.dumps({k: round(v, 3) for k, v in result.items()}))
