"""talk2sam-train: train Talk2SAM's trainable parts (Talk2DINO projection, mask-prompt encoder,
SAM-HQ HQ decoder parts) with frozen CLIP / DINOv2 / SAM-HQ encoders.

    talk2sam-train --config tiny_synthetic --out_dir=runs/tiny
    talk2sam-train --config paper_vit_h --train_sets=thinobject5k:data/ThinObject5K:train
    talk2sam-train --config ... --loss.kind=dense --augment.hflip=0   # section keys, dotted
    talk2sam-train --config ... --resume                    # continue exactly where it stopped
    torchrun --nproc_per_node=4 -m talk2sam_ros.training.train --config ...   # DDP

Library use: ``train(cfg) -> Path`` of the exported weights file (what the node loads as
``checkpoint_talk2sam``). Outputs in ``out_dir``: ``checkpoint.pt`` (full training state,
atomically replaced every ``ckpt_every`` steps and at every epoch end; run_state.py),
``talk2sam_weights.pt`` (final export: trainable parts + model config + encoder fingerprint, via
``save_trained_weights``), ``talk2sam_weights_best.pt`` (best validation mIoU), ``log.jsonl``
(train losses and validation metrics), ``curves.png``, ``train_config.yaml`` and
``summary.json``.

Exact resume (also after ``kill -9``): the checkpoint holds the trainable weights, optimizer,
LR scheduler, grad scaler, the torch/CUDA/numpy/python RNG states and the data position
(epoch, micro-batch). Data order is a function of (seed, epoch) (DistributedSampler), each
sample's augmentation a function of (seed, epoch, index) and the loss's point sampling a
function of (seed, epoch, micro-batch, rank), so the resumed run replays exactly the batches,
augmentations and points of the uninterrupted one. The process group and collectives are in
distributed.py. Never imports rclpy.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm.auto import tqdm

from talk2sam_ros.common.cli import run_cli
from talk2sam_ros.common.metrics import boundary_iou, mask_iou
from talk2sam_ros.model.build import build_talk2sam, save_trained_weights
from talk2sam_ros.model.config import dtype_name, get_preset
from talk2sam_ros.model.errors import CheckpointError
from talk2sam_ros.model.talk2sam import ForwardOutput, ImageFeatures, Talk2SAM
from talk2sam_ros.training.config import TrainConfig, help_text, load_config, parse_cli
from talk2sam_ros.training.data import (AugmentConfig, Sample, SegmentationDataset,
                                        box_from_mask, collate_samples, list_many)
from talk2sam_ros.training.distributed import (DistInfo, all_gather, all_gather_floats,
                                               all_reduce_sum, barrier, destroy,
                                               init_distributed, pick_device,
                                               same_on_all_ranks)
from talk2sam_ros.training.feature_cache import FeatureCache, stack_features
from talk2sam_ros.training.losses import LossConfig, compute_loss
from talk2sam_ros.training.run_state import (CHECKPOINT_NAME, Position, RunIdentity, RunLog,
                                             TrainingState, plot_curves, read_checkpoint,
                                             restore_checkpoint, rng_state, save_checkpoint,
                                             seed_everything, train_set_id)
from talk2sam_ros.weights import WeightsError, resolve_checkpoints

LOG = logging.getLogger(__name__)

WEIGHTS_NAME = "talk2sam_weights.pt"
BEST_WEIGHTS_NAME = "talk2sam_weights_best.pt"
LOG_NAME = "log.jsonl"
PLOT_NAME = "curves.png"
# what talk2sam-train reports as one error line: bad config or data, missing or refused
# weights and checkpoints, a refused resume, a diverged run
TRAIN_ERRORS = (ValueError, OSError, CheckpointError, WeightsError, FloatingPointError)

__all__ = ["TrainConfig", "load_config", "train", "main", "build_model_for",
           "validate", "WEIGHTS_NAME"]


# --------------------------------------------------------------------------- setup helpers
def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for the trainable forward (None: plain fp32)."""
    if device.type != "cuda":
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    name = dtype_name(precision)
    return None if name == "float32" else getattr(torch, name)


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
    """The run's augmentation: cfg.augment, without the image-level part with feature_cache."""
    if cfg.feature_cache and cfg.augment.image_level:
        LOG.warning("feature_cache: image-level augmentations (hflip, crop, brightness, "
                    "contrast, saturation, noise) are disabled; box jitter / multi-box stay")
        return cfg.augment.without_image_level()
    return cfg.augment


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
        barrier(info)
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


# --------------------------------------------------------------------------- validation
@torch.no_grad()
def validate(model: Talk2SAM, samples: Sequence[Sample], texts: TextCache,
             cache: FeatureCache | None, loss: LossConfig, info: DistInfo = DistInfo(),
             progress: bool = False, seed: int = 0) -> dict[str, float]:
    """Validation loss (the run's ``loss`` settings, so that it compares with the training
    loss), mIoU and mBIoU of the model over ``samples`` (tight GT box, no augmentation;
    logits > 0 vs GT > 128 at source resolution), averaged over all ranks. Point-sampled losses
    draw each image's points from (seed, image index): the same points at every validation."""
    was_training = model.training
    model.eval()
    base = SegmentationDataset(samples, AugmentConfig(hflip=0.0), load_image=cache is None)
    mine = list(range(info.rank, len(samples), info.world))
    sums = [0.0, 0.0, 0.0, 0.0]  # loss, iou, biou, count
    for idx in tqdm(mine, desc="validate", unit="img", leave=False, disable=not progress):
        item = base[idx]
        feats = (stack_features([cache.load(samples[idx])], model.device) if cache
                 else model.encode_images([item["image"]]))
        box = torch.from_numpy(box_from_mask(item["gt"])[None])
        out = model.forward_features(feats, None, box, text_embeddings=texts([item["text"]]),
                                     upsample=True)
        gen = torch.Generator(device=model.device).manual_seed(seed * 1_000_003 + idx)
        value, _ = compute_loss(loss, model, out, feats, [item["gt"]], gen)
        pred = (out.logits[0][0] > 0).cpu().numpy()
        sums[0] += float(value)
        sums[1] += mask_iou(item["gt"], pred)
        sums[2] += boundary_iou(item["gt"], pred)
        sums[3] += 1
    model.train(was_training)
    total, iou, biou, n = all_reduce_sum(sums, info)
    n = max(n, 1.0)
    return {"val_loss": total / n, "miou": iou / n, "mbiou": biou / n, "val_images": int(n)}


# --------------------------------------------------------------------------- optimisation
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
        try:
            self._setup(cfg)
        except BaseException:
            destroy(self.info)  # a failed set-up leaves no process group behind
            raise

    def _setup(self, cfg: TrainConfig) -> None:
        self.device = pick_device(cfg.device, self.info)
        seed_everything(cfg.seed + self.info.rank, cfg.deterministic)
        self.amp = autocast_dtype(cfg.precision, self.device)
        # the weights first: a missing or refused file is the error even when the data is
        # missing too (the hostile-file checks rely on it)
        self.model = build_model_for(cfg, self.device, self.amp or torch.float32)
        self.train_samples, self.val_samples = resolve_datasets(cfg, self.info)
        self.counts = self.model.parameter_counts()
        if self.info.main:
            self.out.mkdir(parents=True, exist_ok=True)
            LOG.info("parameters: %s trainable of %s total (%.2f%%)",
                     f"{self.counts['trainable']:,}", f"{self.counts['total']:,}",
                     100.0 * self.counts["trainable"] / max(1, self.counts["total"]))
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
        self.state = TrainingState(self.model, self.optimizer, self.scheduler, self.scaler,
                                   self.pos)
        self.log = RunLog(self.out / LOG_NAME, self.info.main)
        self.train_seconds = 0.0  # data loading + forward/backward/step, this process
        self.steps_timed = 0
        self.cache_seconds = 0.0

    # ---------------------------------------------------------------- checkpoints
    @property
    def ckpt_path(self) -> Path:
        return self.out / CHECKPOINT_NAME

    def _identity(self) -> RunIdentity:
        return RunIdentity(self.model.encoder_fingerprint, self.info.world, self.cfg.to_dict(),
                           train_set_id(self.train_samples))

    def save_checkpoint(self) -> None:
        """Called on every rank at the same points (collects each rank's RNG state); rank 0
        writes the file."""
        rngs = all_gather(rng_state(), self.info)
        if self.info.main:
            save_checkpoint(self.ckpt_path, self.state, self._identity(), rngs)

    def load_checkpoint(self) -> bool:
        if not self.ckpt_path.is_file():
            LOG.warning("resume: no checkpoint in %s, starting from scratch", self.out)
            return False
        ck = read_checkpoint(self.ckpt_path, self._identity())
        restore_checkpoint(ck, self.state, self.info.rank)
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
                out = self.forward(feats, text_emb, torch.from_numpy(boxes), cfg.loss.dense)
            loss, parts = compute_loss(cfg.loss, self.model, out, feats, targets, gen)
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
        metrics = validate(self.model, self.val_samples, self.texts, self.cache, self.cfg.loss,
                           self.info, progress=self.cfg.progress and self.info.main,
                           seed=self.cfg.seed)
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
            barrier(self.info)
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
        barrier(self.info)
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
            pos.micro += 1
            if not last_in_group:
                self.train_seconds += time.perf_counter() - t0
                continue
            self._stop_if_not_finite([a["loss"] for a in acc])
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
                sums = all_reduce_sum([stats[k] for k in keys], self.info)
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

    def _stop_if_not_finite(self, losses: list[float]) -> None:
        """Stop every rank, before the optimizer step, when any rank's loss in this step is not
        finite: DDP averages its NaN gradients into every rank's, and NaN weights would then
        overwrite the checkpoint and the export. One collective, so all ranks raise together
        with the same message (fp16's GradScaler skips such steps by itself on every rank)."""
        if self.scaler.is_enabled():
            return
        mine = next((v for v in losses if not math.isfinite(v)), 0.0)
        bad = [(r, v) for r, v in enumerate(all_gather_floats(mine, self.info))
               if not math.isfinite(v)]
        if not bad:
            return
        what = ", ".join(f"{v} on rank {r}" if self.info.world > 1 else f"{v}" for r, v in bad)
        raise FloatingPointError(
            f"non-finite training loss ({what}) at epoch {self.pos.epoch + 1}, step "
            f"{self.pos.step + 1}; stopped before the optimizer step, the last checkpoint "
            f"{self.ckpt_path} is untouched (lower lr, set grad_clip, or check the data)")

    def _ranks_in_sync(self) -> bool:
        """True when every rank holds the same trainable weights (DDP kept them in step)."""
        return same_on_all_ranks(torch.cat([p.detach().float().flatten() for p in
                                            self.model.trainable_parameters()]), self.info)

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
        destroy(self.info)


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
    """talk2sam-train entry point: 0, or 1 with one ``talk2sam-train: error: ...`` line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(help_text())
        return 0
    rank = int(os.environ.get("RANK", "0"))

    def body() -> int:
        path, overrides = parse_cli(argv)
        weights = train(load_config(path, overrides))
        if rank == 0:
            print(f"weights: {weights}")
        return 0

    return run_cli("talk2sam-train", body, TRAIN_ERRORS,
                   level=logging.INFO if rank == 0 else logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
