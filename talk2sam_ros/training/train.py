"""talk2sam-train: train Talk2SAM's trainable parts (Talk2DINO projection, mask-prompt encoder,
SAM-HQ HQ decoder parts) with frozen CLIP / DINOv2 / SAM-HQ encoders.

    talk2sam-train --config tiny_synthetic --out_dir=runs/tiny
    talk2sam-train --config paper_vit_h --train_sets=thinobject5k:data/ThinObject5K:train
    talk2sam-train --config ... --resume                    # continue exactly where it stopped
    torchrun --nproc_per_node=4 -m talk2sam_ros.training.train --config ...   # DDP

Library use: ``train(cfg) -> Path`` of the exported weights file (what the node loads).
Outputs in ``out_dir``: ``checkpoint.pt`` (full training state, atomically replaced every
``ckpt_every`` steps and at every epoch end), ``talk2sam_weights.pt`` (final export: trainable
parts + model config + encoder fingerprint, via ``save_trained_weights``),
``talk2sam_weights_best.pt`` (best validation mIoU), ``log.jsonl`` (train losses and validation
metrics), ``curves.png``, ``train_config.yaml`` and ``summary.json``.

Exact resume (also after ``kill -9``): the checkpoint holds the trainable weights, optimizer,
LR scheduler, grad scaler, the torch/CUDA/numpy/python RNG states and the data position
(epoch, micro-batch). Data order is a function of (seed, epoch) (DistributedSampler), each
sample's augmentation a function of (seed, epoch, index) and the loss's point sampling a
function of (seed, epoch, micro-batch, rank), so the resumed run replays exactly the batches,
augmentations and points of the uninterrupted one. Never imports rclpy.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm

from talk2sam_ros.common.metrics import boundary_iou, mask_iou
from talk2sam_ros.model.build import build_talk2sam, save_trained_weights
from talk2sam_ros.model.checkpoints import (CheckpointError, atomic_torch_save,
                                            safe_torch_load)
from talk2sam_ros.model.config import dtype_name, get_preset
from talk2sam_ros.model.talk2sam import ForwardOutput, ImageFeatures, Talk2SAM
from talk2sam_ros.model.transforms import SAM_IMAGE_SIZE
from talk2sam_ros.training.config import (TrainConfig, help_text, load_config, parse_cli)
from talk2sam_ros.training.data import (AugmentConfig, Sample, SegmentationDataset,
                                        box_from_mask, collate_samples, list_many)
from talk2sam_ros.training.feature_cache import FeatureCache, stack_features
from talk2sam_ros.training.losses import (bce_dice_loss, point_sampled_bce_dice,
                                          similarity_loss)
from talk2sam_ros.weights import WeightsError, resolve_checkpoints

LOG = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
WEIGHTS_NAME = "talk2sam_weights.pt"
BEST_WEIGHTS_NAME = "talk2sam_weights_best.pt"
LOG_NAME = "log.jsonl"
PLOT_NAME = "curves.png"
CHECKPOINT_VERSION = 1
# --resume refuses a change of these: the data order and position (seed, batch, accumulation,
# training set) would no longer line up with the checkpoint, and the optimizer's
# hyper-parameters come back from its saved state, so a new value would be silently ignored
RESUME_FIXED = ("seed", "batch_size", "grad_accum", "train_sets", "synthetic_n",
                "synthetic_size", "synthetic_dir", "synthetic_distractors", "optimizer", "lr",
                "momentum", "weight_decay", "betas")
# ... and may change these without a word (how the run is executed and reported)
RESUME_FREE = ("resume", "max_steps", "progress", "num_workers", "threads", "out_dir",
               "ckpt_every", "log_every", "val_every", "val_at_start", "device",
               "keep_epoch_weights")

__all__ = ["TrainConfig", "load_config", "train", "main", "build_model_for",
           "validate", "WEIGHTS_NAME"]


# --------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    return DistInfo(rank, world, local, True)


def _barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def _comm_device() -> torch.device:
    """Where collective tensors must live: NCCL only moves CUDA tensors, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    if info.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return t.tolist()


def _all_gather(obj: Any, info: DistInfo) -> list[Any]:
    """``obj`` of every rank, in rank order (a one-item list without DDP)."""
    if info.world == 1:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------- setup helpers
def pick_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", info.local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for the trainable forward (None: plain fp32)."""
    if device.type != "cuda":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    name = dtype_name(precision)
    return None if name == "float32" else getattr(torch, name)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def checkpoint_paths(cfg: TrainConfig) -> dict[str, Path]:
    """The checkpoint files a TrainConfig names (talk2sam_ros.weights.resolve_checkpoints)."""
    return resolve_checkpoints(cfg.preset, {
        "sam_hq": cfg.checkpoint_sam_hq, "dinov2": cfg.checkpoint_dinov2,
        "clip": cfg.checkpoint_clip, "projection": cfg.checkpoint_projection,
        "talk2sam": cfg.init_weights}, weights_dir=cfg.weights_dir or None,
        allow_random_weights=cfg.allow_random_weights)


def build_model_for(cfg: TrainConfig, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> Talk2SAM:
    """The Talk2SAM model a config trains: preset + official checkpoints (+ init weights)."""
    model_cfg = get_preset(cfg.preset)
    if cfg.similarity_mode:
        model_cfg = model_cfg.replace(similarity_mode=cfg.similarity_mode)
    if cfg.tune_clip_projection:
        model_cfg = model_cfg.replace(train_clip_projection=True)
    return build_talk2sam(model_cfg, checkpoints=checkpoint_paths(cfg), device=device,
                          dtype=dtype)


def augment_config(cfg: TrainConfig) -> AugmentConfig:
    # TrainConfig repeats AugmentConfig's fields flat (for --key=value overrides)
    aug = AugmentConfig(**{f.name: getattr(cfg, f.name) for f in fields(AugmentConfig)})
    if cfg.feature_cache and aug.image_level:
        LOG.warning("feature_cache: image-level augmentations (hflip, crop, brightness, "
                    "contrast, saturation, noise) are disabled; box jitter / multi-box stay")
        aug = replace(aug, hflip=0.0, crop_prob=0.0, brightness=0.0, contrast=0.0,
                      saturation=0.0, noise_std=0.0)
    return aug


def resolve_datasets(cfg: TrainConfig, info: DistInfo) -> tuple[list[Sample], list[Sample]]:
    """Train/val samples; generates the synthetic set first when no train_sets are given."""
    train_sets, val_sets = cfg.train_sets, cfg.val_sets
    if not train_sets:
        if cfg.synthetic_n <= 0:
            raise ValueError("no training data: set train_sets (dataset specs) or synthetic_n")
        from talk2sam_ros.training.synthetic import generate_synthetic_dataset

        root = Path(cfg.synthetic_dir or Path(cfg.out_dir) / "synthetic")
        if info.main:
            generate_synthetic_dataset(root, n=cfg.synthetic_n, seed=cfg.seed,
                                       image_size=cfg.synthetic_size,
                                       distractor_prob=cfg.synthetic_distractors,
                                       progress=cfg.progress)
        _barrier(info)
        train_sets = (f"folder:{root}:train",)
        val_sets = val_sets or (f"folder:{root}:val",)
    train_samples = list_many(train_sets)
    val_samples = list_many(val_sets) if val_sets else []
    if cfg.val_limit:
        val_samples = val_samples[: cfg.val_limit]
    return train_samples, val_samples


# --------------------------------------------------------------------------- data
class _Items(Dataset):
    """SegmentationDataset items, plus cached frozen features when a cache is used."""

    def __init__(self, base: SegmentationDataset, cache: FeatureCache | None) -> None:
        self.base, self.cache = base, cache

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.base[index]
        if self.cache is not None:
            item["features"] = self.cache.load(self.base.samples[index])
        return item


class _ListSampler(Sampler[int]):
    def __init__(self, indices: Sequence[int]) -> None:
        self.indices = list(indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _rows(batch: dict[str, list[Any]]) -> tuple[list[int], list[str], np.ndarray,
                                                 list[np.ndarray]]:
    """Expand items to one row per box: (item index per row, texts, (R,4) boxes, GT per row).

    With several boxes per item (multi-part prompts) each row's target is the GT inside its
    box, so each box is asked for its own part."""
    rows, texts, boxes, targets = [], [], [], []
    for i, (bxs, gt, text) in enumerate(zip(batch["boxes"], batch["gt"], batch["text"])):
        for box in bxs:
            rows.append(i)
            texts.append(text)
            boxes.append(box)
            if len(bxs) > 1:
                x0, y0, x1, y1 = (int(round(float(v))) for v in box)
                part = np.zeros_like(gt)
                part[y0:y1 + 1, x0:x1 + 1] = gt[y0:y1 + 1, x0:x1 + 1]
                targets.append(part)
            else:
                targets.append(gt)
    return rows, texts, np.asarray(boxes, np.float32).reshape(-1, 4), targets


class _Forward(nn.Module):
    """The trainable forward as a module, so DDP can wrap it and sync the head's gradients."""

    def __init__(self, model: Talk2SAM) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: ImageFeatures, text_embeddings: torch.Tensor,
                boxes: torch.Tensor, upsample: bool) -> ForwardOutput:
        return self.model.forward_features(features, None, boxes,
                                           text_embeddings=text_embeddings, upsample=upsample)


class TextCache:
    """`encode_texts` features per category: frozen (with tune_clip_projection they stop
    before CLIP's text_projection, which `forward_features` applies at every step)."""

    def __init__(self, model: Talk2SAM) -> None:
        self.model = model
        self.table: dict[str, torch.Tensor] = {}

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        for t in texts:
            if t not in self.table:  # one at a time: bits independent of batch composition
                self.table[t] = self.model.encode_texts([t])[0].float()
        return torch.stack([self.table[t] for t in texts])


def compute_loss(cfg: TrainConfig, model: Talk2SAM, out: ForwardOutput, feats: ImageFeatures,
                 targets: list[np.ndarray], generator: torch.Generator | None,
                 dense: bool) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over rows of BCE + dice (dense at source resolution, or SAM-HQ point-sampled on
    the 256 x 256 logits against the full-resolution GT), + the optional similarity term."""
    dev = out.low_res_logits.device
    tgts = [torch.from_numpy(t.astype(np.float32))[None, None].to(dev) for t in targets]
    total, parts = out.low_res_logits.new_zeros(()), {"bce": 0.0, "dice": 0.0}
    for i, tgt in enumerate(tgts):
        if dense:
            loss_i, p = bce_dice_loss(out.logits[i][None], tgt, cfg.bce_weight, cfg.dice_weight)
        else:
            extent = (feats.input_sizes[i].float() / SAM_IMAGE_SIZE)[None].to(dev)
            loss_i, p = point_sampled_bce_dice(out.low_res_logits[i:i + 1], tgt,
                                               cfg.num_points, extent, generator=generator,
                                               bce_weight=cfg.bce_weight,
                                               dice_weight=cfg.dice_weight)
        total = total + loss_i
        parts["bce"] += p["bce"] / len(tgts)
        parts["dice"] += p["dice"] / len(tgts)
    total = total / len(tgts)
    if cfg.similarity_weight > 0 and out.cosine is not None:
        sim_logits = model.mask_prompt.grid_logits(out.cosine)
        sims = [similarity_loss(sim_logits[i:i + 1], tgts[i]) for i in range(len(tgts))]
        sim = torch.stack(sims).mean()
        total = total + cfg.similarity_weight * sim
        parts["similarity"] = float(sim.detach())
    return total, parts


# --------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(model: Talk2SAM, samples: Sequence[Sample], texts: TextCache,
             cache: FeatureCache | None, info: DistInfo = DistInfo(),
             progress: bool = False) -> dict[str, float]:
    """Dense val loss, mIoU and mBIoU of the model over ``samples`` (tight GT box, no
    augmentation; logits > 0 vs GT > 128 at source resolution), averaged over all ranks."""
    was_training = model.training
    model.eval()
    base = SegmentationDataset(samples, AugmentConfig(hflip=0.0), load_image=cache is None)
    mine = list(range(info.rank, len(samples), info.world))
    sums = [0.0, 0.0, 0.0, 0.0]  # loss, iou, biou, count
    cfg = TrainConfig(loss="dense")
    for idx in tqdm(mine, desc="validate", unit="img", leave=False, disable=not progress):
        item = base[idx]
        feats = (stack_features([cache.load(samples[idx])], model.device) if cache
                 else model.encode_images([item["image"]]))
        box = torch.from_numpy(box_from_mask(item["gt"])[None])
        out = model.forward_features(feats, None, box, text_embeddings=texts([item["text"]]),
                                     upsample=True)
        loss, _ = compute_loss(cfg, model, out, feats, [item["gt"]], None, dense=True)
        pred = (out.logits[0][0] > 0).cpu().numpy()
        sums[0] += float(loss)
        sums[1] += mask_iou(item["gt"], pred)
        sums[2] += boundary_iou(item["gt"], pred)
        sums[3] += 1
    model.train(was_training)
    loss, iou, biou, n = _all_reduce_sum(sums, info)
    n = max(n, 1.0)
    return {"val_loss": loss / n, "miou": iou / n, "mbiou": biou / n, "val_images": int(n)}


# --------------------------------------------------------------------------- schedule / state
def lr_lambda(cfg: TrainConfig, steps_per_epoch: int):  # noqa: ANN201 (a closure)
    """Multiplier of the base LR after `step` optimizer steps: linear warmup, then constant,
    StepLR-like decay every lr_step_epochs epochs, or cosine to 0 at the end."""
    total = max(1, cfg.epochs * steps_per_epoch)

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        if cfg.lr_schedule == "step":
            decay = cfg.lr_gamma ** ((step // steps_per_epoch) // cfg.lr_step_epochs)
        elif cfg.lr_schedule == "cosine":
            decay = 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
        else:
            decay = 1.0
        return warm * decay

    return factor


def make_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    klass = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return klass(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def rng_state() -> dict[str, Any]:
    """torch / CUDA / numpy / python RNG states as weights_only-loadable objects."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": n["bit_generator"],
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Position:
    """Where training is: epoch, micro-batches done in it, optimizer steps overall."""

    epoch: int = 0
    micro: int = 0
    step: int = 0
    best_miou: float = -1.0


# --------------------------------------------------------------------------- logging / plots
class RunLog:
    """JSONL log (rank 0). On resume, records after the resumed step are dropped."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int) -> None:
        if not self.enabled or not self.path.is_file():
            return
        keep = [json.dumps(r) for r in self.records() if r.get("step", 0) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        tmp.replace(self.path)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict[str, Any]]:
        """The parsed records; a line torn by a crash (power loss mid-append) is skipped."""
        if not self.path.is_file():
            return []
        out = []
        for ln in self.path.read_text().splitlines():
            try:
                rec = json.loads(ln) if ln.strip() else None
            except json.JSONDecodeError:
                LOG.warning("%s: skipping an unreadable line %r", self.path, ln[:80])
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out


def plot_curves(log_path: Path, out_png: Path) -> None:
    """Train loss and validation loss / mIoU / mBIoU against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = RunLog(log_path, True).records()
    tr = [r for r in recs if r.get("kind") == "train"]
    va = [r for r in recs if r.get("kind") == "val"]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8))
    if tr:
        ax0.plot([r["step"] for r in tr], [r["loss"] for r in tr], label="train loss", lw=1)
    if va:
        ax0.plot([r["step"] for r in va], [r["val_loss"] for r in va], "o-", label="val loss")
        ax1.plot([r["step"] for r in va], [r["miou"] for r in va], "o-", label="val mIoU")
        ax1.plot([r["step"] for r in va], [r["mbiou"] for r in va], "s-", label="val mBIoU")
    ax0.set_xlabel("optimizer step")
    ax0.set_ylabel("BCE + dice")
    ax1.set_xlabel("optimizer step")
    ax1.set_ylim(0, 1)
    for ax in (ax0, ax1):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # an empty axis (no validation yet) has none
            ax.legend(loc="best")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(f".{out_png.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out_png)


# --------------------------------------------------------------------------- trainer
class Trainer:
    """One training run (one process of a possibly distributed run)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out_dir)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        kind = "cuda" if (cfg.device == "auto" and torch.cuda.is_available()) or \
            cfg.device.startswith("cuda") else "cpu"
        self.info = init_distributed(kind)
        self.device = pick_device(cfg.device, self.info)
        seed_everything(cfg.seed + self.info.rank, cfg.deterministic)
        self.amp = autocast_dtype(cfg.precision, self.device)
        enc_dtype = self.amp or torch.float32
        self.model = build_model_for(cfg, self.device, enc_dtype)
        counts = self.model.parameter_counts()
        if self.info.main:
            self.out.mkdir(parents=True, exist_ok=True)
            LOG.info("parameters: %s trainable of %s total (%.2f%%)",
                     f"{counts['trainable']:,}", f"{counts['total']:,}",
                     100.0 * counts["trainable"] / max(1, counts["total"]))
        self.counts = counts
        self.train_samples, self.val_samples = resolve_datasets(cfg, self.info)
        self.cache = None
        if cfg.feature_cache:
            root = Path(cfg.cache_dir or self.out / "feature_cache")
            self.cache = FeatureCache(root, self.model, cfg.cache_dtype)
        self.texts = TextCache(self.model)
        self.dataset = SegmentationDataset(self.train_samples, augment_config(cfg),
                                           seed=cfg.seed, load_image=self.cache is None)
        self.items = _Items(self.dataset, self.cache)
        self.sampler = DistributedSampler(self.dataset, num_replicas=self.info.world,
                                          rank=self.info.rank, shuffle=True, seed=cfg.seed)
        per_rank = len(self.sampler)
        self.micro_per_epoch = math.ceil(per_rank / cfg.batch_size)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.grad_accum)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.model.train()
        self.forward = _Forward(self.model)
        if self.info.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = nn.parallel.DistributedDataParallel(
                self.forward, device_ids=ids, forward_sync_buffers=False)  # frozen buffers
        params = list(self.model.trainable_parameters())
        self.optimizer = make_optimizer(cfg, params)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg, self.steps_per_epoch))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.pos = Position()
        self.log = RunLog(self.out / LOG_NAME, self.info.main)
        self.train_seconds = 0.0  # data loading + forward/backward/step, this process
        self.steps_timed = 0
        self.cache_seconds = 0.0

    # ---------------------------------------------------------------- checkpoints
    @property
    def ckpt_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    def _train_set_id(self) -> str:
        """sha1 of the ordered training samples and their texts (the data order is a
        permutation of this list)."""
        keys = "\n".join(f"{s.key}\t{s.category}" for s in self.train_samples)
        return hashlib.sha1(keys.encode()).hexdigest()

    def save_checkpoint(self) -> None:
        """Called on every rank at the same points (collects each rank's RNG state); rank 0
        writes the file atomically."""
        rngs = _all_gather(rng_state(), self.info)
        if not self.info.main:
            return
        atomic_torch_save({
            "version": CHECKPOINT_VERSION,
            "trainable": {k: v.detach().cpu() for k, v in
                          self.model.trainable_state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "position": {"epoch": self.pos.epoch, "micro": self.pos.micro,
                         "step": self.pos.step, "best_miou": self.pos.best_miou},
            "rng": rngs,  # one per rank
            "world": self.info.world,
            "train_set": {"images": len(self.train_samples), "sha1": self._train_set_id()},
            "fingerprint": self.model.encoder_fingerprint,
            "config": self.cfg.to_dict(),
        }, self.ckpt_path)

    def load_checkpoint(self) -> bool:
        if not self.ckpt_path.is_file():
            LOG.warning("resume: no checkpoint in %s, starting from scratch", self.out)
            return False
        ck = safe_torch_load(self.ckpt_path, "resume")
        if ck.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"{self.ckpt_path}: checkpoint version {ck.get('version')}, "
                             f"expected {CHECKPOINT_VERSION}")
        if ck["fingerprint"] != self.model.encoder_fingerprint:
            raise ValueError(f"{self.ckpt_path} was trained on other frozen encoders")
        if ck["world"] != self.info.world:
            raise ValueError(f"{self.ckpt_path} was written by {ck['world']} processes; resume "
                             f"with the same number (now {self.info.world})")
        now = self.cfg.to_dict()
        changed = sorted(k for k, v in ck["config"].items()
                         if k not in RESUME_FREE and now.get(k) != v)
        fixed = [k for k in changed if k in RESUME_FIXED]
        if fixed:
            raise ValueError(
                f"{self.ckpt_path}: cannot resume exactly with changed "
                + ", ".join(f"{k} ({ck['config'][k]!r} -> {now[k]!r})" for k in fixed)
                + "; resume with the checkpoint's values, or start a new run in another "
                "out_dir with init_weights pointing at this run's weights file")
        if changed:
            LOG.warning("resume: config differs from the checkpoint's in %s", changed)
        train_set = ck.get("train_set")
        if train_set and train_set["sha1"] != self._train_set_id():
            raise ValueError(
                f"{self.ckpt_path}: the training set changed since the checkpoint "
                f"({train_set['images']} images then, {len(self.train_samples)} now, or other "
                "files): the data order cannot be continued exactly")
        with torch.no_grad():
            state = self.model.state_dict()
            for k, v in ck["trainable"].items():
                state[k].copy_(v)
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        p = ck["position"]
        self.pos = Position(p["epoch"], p["micro"], p["step"], p["best_miou"])
        rngs = ck["rng"] if isinstance(ck["rng"], list) else [ck["rng"]] * self.info.world
        set_rng_state(rngs[self.info.rank])
        self.log.truncate_after(self.pos.step)
        LOG.info("resumed from %s at epoch %d, micro-batch %d, step %d", self.ckpt_path,
                 self.pos.epoch, self.pos.micro, self.pos.step)
        return True

    def export(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        if self.info.main:
            meta = {"step": self.pos.step, "epoch": self.pos.epoch, "preset": self.cfg.preset,
                    "train_sets": list(self.cfg.train_sets) or ["synthetic"], **(extra or {})}
            save_trained_weights(self.model, path, extra=meta)

    # ---------------------------------------------------------------- steps
    def _loader(self, epoch: int, skip_micro: int) -> DataLoader:
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        indices = list(self.sampler)[skip_micro * self.cfg.batch_size:]
        gen = torch.Generator().manual_seed(self.cfg.seed * 1009 + epoch)
        return DataLoader(self.items, batch_size=self.cfg.batch_size,
                          sampler=_ListSampler(indices), num_workers=self.cfg.num_workers,
                          collate_fn=collate_samples, generator=gen,
                          persistent_workers=False)

    def _features(self, batch: dict[str, list[Any]]) -> ImageFeatures:
        if self.cache is not None:
            return stack_features(batch["features"], self.device)
        return self.model.encode_images(batch["image"])

    def _micro_step(self, batch: dict[str, list[Any]], scale: float, sync: bool
                    ) -> dict[str, float]:
        cfg = self.cfg
        rows, texts, boxes, targets = _rows(batch)
        feats = self._features(batch).select(rows)
        text_emb = self.texts(texts)
        # point sampling: a function of (seed, epoch, micro-batch, rank) only
        key = ((cfg.seed * 10_007 + self.pos.epoch) * 1_000_003 + self.pos.micro) * 257
        gen = torch.Generator(device=self.device).manual_seed((key + self.info.rank) % 2 ** 63)
        ddp = isinstance(self.forward, nn.parallel.DistributedDataParallel)
        ctx = self.forward.no_sync() if ddp and not sync else nullcontext()
        amp = (torch.autocast(self.device.type, dtype=self.amp) if self.amp else nullcontext())
        with ctx:
            with amp:
                out = self.forward(feats, text_emb, torch.from_numpy(boxes),
                                   cfg.loss == "dense")
            loss, parts = compute_loss(cfg, self.model, out, feats, targets, gen,
                                       dense=cfg.loss == "dense")
            self.scaler.scale(loss * scale).backward()
        return {"loss": float(loss.detach()), **parts}

    def _optimizer_step(self) -> float:
        self.scaler.unscale_(self.optimizer)
        norm = 0.0
        if self.cfg.grad_clip > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(self.model.trainable_parameters(),
                                                        self.cfg.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return norm

    def _validate_and_log(self) -> dict[str, float] | None:
        if not self.val_samples:
            return None
        metrics = validate(self.model, self.val_samples, self.texts, self.cache, self.info,
                           progress=self.cfg.progress and self.info.main)
        rec = {"kind": "val", "step": self.pos.step, "epoch": self.pos.epoch, **metrics,
               "time": time.time()}
        self.log.write(rec)
        if self.info.main:
            LOG.info("validation @ step %d: loss %.4f mIoU %.4f mBIoU %.4f", self.pos.step,
                     metrics["val_loss"], metrics["miou"], metrics["mbiou"])
            if metrics["miou"] > self.pos.best_miou:
                self.pos.best_miou = metrics["miou"]
                self.export(self.out / BEST_WEIGHTS_NAME, {"val": metrics})
            plot_curves(self.log.path, self.out / PLOT_NAME)
        return metrics

    # ---------------------------------------------------------------- run
    def run(self) -> Path:
        cfg = self.cfg
        resumed = cfg.resume and self.load_checkpoint()
        if self.info.main:
            (self.out / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(),
                                                                       sort_keys=False))
        t_cache = time.perf_counter()
        if self.cache is not None:
            mine = (self.train_samples + self.val_samples)[self.info.rank::self.info.world]
            self.cache.build(self.model, mine, progress=cfg.progress and self.info.main)
            _barrier(self.info)
        self.cache_seconds = time.perf_counter() - t_cache
        t_start = time.time()
        if not resumed:
            self.log.truncate_after(-1)
            if cfg.val_at_start:
                self._validate_and_log()
        # a resumed run already at max_steps stops at once (not one step later)
        stopped = bool(cfg.max_steps and self.pos.step >= cfg.max_steps)
        while self.pos.epoch < cfg.epochs and not stopped:
            stopped = self._run_epoch()
        elapsed = time.time() - t_start
        self.in_sync = self._ranks_in_sync()
        final = self.out / WEIGHTS_NAME
        self.export(final, {"stopped_early": stopped})
        if self.info.main:
            self._write_summary(elapsed, stopped)
            if self.log.records():
                plot_curves(self.log.path, self.out / PLOT_NAME)
        _barrier(self.info)
        return final

    def _run_epoch(self) -> bool:
        """Train the rest of the current epoch; True when max_steps stopped the run."""
        cfg, pos = self.cfg, self.pos
        micro_left = self.micro_per_epoch - pos.micro
        loader = self._loader(pos.epoch, pos.micro)
        bar = tqdm(total=self.steps_per_epoch, initial=pos.micro // cfg.grad_accum,
                   desc=f"epoch {pos.epoch + 1}/{cfg.epochs}", unit="step",
                   disable=not (cfg.progress and self.info.main), dynamic_ncols=True)
        acc: list[dict[str, float]] = []
        it = iter(loader)
        for _ in range(micro_left):
            t0 = time.perf_counter()
            batch = next(it)
            group_start = (pos.micro // cfg.grad_accum) * cfg.grad_accum
            group_size = min(cfg.grad_accum, self.micro_per_epoch - group_start)
            last_in_group = pos.micro + 1 == group_start + group_size
            acc.append(self._micro_step(batch, 1.0 / group_size, sync=last_in_group))
            if not math.isfinite(acc[-1]["loss"]) and not self.scaler.is_enabled():
                # stop before the optimizer step: NaN weights would overwrite the checkpoint
                # and the export (fp16's GradScaler skips such steps by itself)
                raise FloatingPointError(
                    f"non-finite training loss ({acc[-1]['loss']}) at epoch {pos.epoch + 1}, "
                    f"step {pos.step + 1}; stopped before the optimizer step, the last "
                    f"checkpoint {self.ckpt_path} is untouched (lower lr, set grad_clip, or "
                    "check the data)")
            pos.micro += 1
            if not last_in_group:
                self.train_seconds += time.perf_counter() - t0
                continue
            norm = self._optimizer_step()
            self.train_seconds += time.perf_counter() - t0
            self.steps_timed += 1
            pos.step += 1
            stats = {k: float(np.mean([a.get(k, 0.0) for a in acc])) for k in acc[0]}
            acc = []
            bar.update(1)
            lr = self.scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{stats['loss']:.4f}", lr=f"{lr:.2e}")
            if pos.step % cfg.log_every == 0 or pos.step == 1:
                # the logged losses are the mean over all ranks (as the averaged gradients)
                keys = sorted(stats)
                sums = _all_reduce_sum([stats[k] for k in keys], self.info)
                stats = {k: v / self.info.world for k, v in zip(keys, sums)}
                self.log.write({"kind": "train", "step": pos.step, "epoch": pos.epoch,
                                "lr": self.scheduler.get_last_lr()[0], "grad_norm": norm,
                                **stats, "time": time.time()})
            if pos.micro == self.micro_per_epoch:
                break  # epoch end handled below (validation, checkpoint)
            if cfg.val_every and pos.step % cfg.val_every == 0:
                self._validate_and_log()
            if cfg.ckpt_every and pos.step % cfg.ckpt_every == 0:
                self.save_checkpoint()
            if cfg.max_steps and pos.step >= cfg.max_steps:
                self.save_checkpoint()
                bar.close()
                return True
        bar.close()
        del it, loader
        pos.epoch += 1
        pos.micro = 0
        metrics = self._validate_and_log()
        if self.info.main and cfg.keep_epoch_weights:
            self.export(self.out / f"weights_epoch{pos.epoch}.pt", {"val": metrics or {}})
        self.save_checkpoint()
        return bool(cfg.max_steps and pos.step >= cfg.max_steps)

    def _ranks_in_sync(self) -> bool:
        """True when every rank holds the same trainable weights (DDP kept them in step)."""
        if self.info.world == 1:
            return True
        dev = _comm_device()
        flat = torch.cat([p.detach().float().flatten().to(dev)
                          for p in self.model.trainable_parameters()])
        ref = flat.clone()
        dist.broadcast(ref, src=0)
        diff = (flat - ref).abs().max().reshape(1)
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        return float(diff) == 0.0

    def _write_summary(self, elapsed: float, stopped: bool) -> None:
        vals = [r for r in self.log.records() if r.get("kind") == "val"]
        summary = {
            "parameters": self.counts, "steps": self.pos.step, "epochs_done": self.pos.epoch,
            "stopped_early": stopped, "seconds_this_run": elapsed,
            "cache_build_seconds": self.cache_seconds,
            "seconds_per_step": self.train_seconds / max(1, self.steps_timed),
            "train_images": len(self.train_samples), "val_images": len(self.val_samples),
            "world_size": self.info.world, "device": str(self.device),
            "feature_cache": self.cfg.feature_cache,
            "first_val": vals[0] if vals else None, "last_val": vals[-1] if vals else None,
            "best_miou": self.pos.best_miou, "ranks_in_sync": self.in_sync,
        }
        tmp = self.out / ".summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(self.out / "summary.json")

    def close(self) -> None:
        if self.info.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def train(cfg: TrainConfig) -> Path:
    """Run (or resume, with cfg.resume) training; returns the exported weights file path."""
    # cfg.threads and cfg.deterministic must not leak into the caller (e.g. the demo)
    threads = torch.get_num_threads()
    det = (torch.are_deterministic_algorithms_enabled(),
           torch.is_deterministic_algorithms_warn_only_enabled())
    benchmark = torch.backends.cudnn.benchmark
    trainer = None
    try:
        trainer = Trainer(cfg)
        return trainer.run()
    finally:
        if trainer is not None:
            trainer.close()
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(det[0], warn_only=det[1])
        torch.backends.cudnn.benchmark = benchmark


def main(argv: Sequence[str] | None = None) -> int:
    """talk2sam-train entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return 0
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    try:
        path, overrides = parse_cli(argv)
        cfg = load_config(path, overrides)
    except (ValueError, FileNotFoundError) as exc:
        print(f"talk2sam-train: error: {exc}", file=sys.stderr)
        return 2
    try:
        weights = train(cfg)
    except (ValueError, OSError, CheckpointError, WeightsError, FloatingPointError) as exc:
        # bad data paths/specs, unreadable images, checkpoints that do not fit, refused resume,
        # diverged training
        LOG.debug("training failed", exc_info=True)
        print(f"talk2sam-train: error: {exc}", file=sys.stderr)
        return 2
    if rank == 0:
        print(f"weights: {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
