"""A training run's state outside the model: RNG, the resumable checkpoint, the run log and
its plot.

The checkpoint (``checkpoint.pt``) holds the trainable weights, optimizer, LR scheduler, grad
scaler, every rank's torch/CUDA/numpy/python RNG state and the data position, plus what a
resume must match to continue exactly (:class:`RunIdentity`: frozen encoders, number of
processes, the fixed config keys and the training set). It is written atomically and read with
``weights_only`` (never runs code from the file).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from talk2sam_ros.model.checkpoints import atomic_torch_save, safe_torch_load
from talk2sam_ros.model.talk2sam import Talk2SAM
from talk2sam_ros.training.config import flat_config
from talk2sam_ros.training.data import Sample

LOG = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_VERSION = 1
# --resume refuses a change of these: the data order and position (seed, batch, accumulation,
# training set) would no longer line up with the checkpoint, and the optimizer's
# hyper-parameters come back from its saved state, so a new value would be silently ignored
RESUME_FIXED = ("seed", "batch_size", "grad_accum", "train_sets", "synthetic_n",
                "synthetic_size", "synthetic_dir", "synthetic_distractors", "optimizer", "lr",
                "momentum", "weight_decay", "betas")
# ... and may change these without a word (how the run is executed and reported). Any other
# change (epochs, schedule, the loss and augment sections, ...) is applied with a warning.
RESUME_FREE = ("resume", "max_steps", "progress", "num_workers", "threads", "out_dir",
               "ckpt_every", "log_every", "val_every", "val_at_start", "device",
               "keep_epoch_weights")

__all__ = ["CHECKPOINT_NAME", "RESUME_FIXED", "RESUME_FREE", "Position", "RunIdentity",
           "RunLog", "TrainingState", "plot_curves", "read_checkpoint", "restore_checkpoint",
           "rng_state", "save_checkpoint", "seed_everything", "set_rng_state", "train_set_id"]


# --------------------------------------------------------------------------- RNG
def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


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


# --------------------------------------------------------------------------- checkpoint
@dataclass
class Position:
    """Where training is: epoch, micro-batches done in it, optimizer steps overall."""

    epoch: int = 0
    micro: int = 0
    step: int = 0
    best_miou: float = -1.0


@dataclass
class TrainingState:
    """The live objects a checkpoint saves and restores."""

    model: Talk2SAM
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    pos: Position


@dataclass(frozen=True)
class RunIdentity:
    """What a checkpoint must match to be resumed exactly."""

    fingerprint: str  # the frozen encoders'
    world: int  # number of processes
    config: dict[str, Any]  # TrainConfig.to_dict()
    train_set: dict[str, Any]  # train_set_id()


def train_set_id(samples: Sequence[Sample]) -> dict[str, Any]:
    """Count and sha1 of the ordered training samples and their texts (the data order is a
    permutation of this list)."""
    keys = "\n".join(f"{s.key}\t{s.category}" for s in samples)
    return {"images": len(samples), "sha1": hashlib.sha1(keys.encode()).hexdigest()}


def save_checkpoint(path: Path, state: TrainingState, ident: RunIdentity,
                    rngs: list[dict[str, Any]]) -> None:
    """Write the checkpoint atomically (``rngs``: every rank's rng_state(), in rank order)."""
    pos = state.pos
    atomic_torch_save({
        "version": CHECKPOINT_VERSION,
        "trainable": {k: v.detach().cpu() for k, v in
                      state.model.trainable_state_dict().items()},
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict(),
        "position": {"epoch": pos.epoch, "micro": pos.micro, "step": pos.step,
                     "best_miou": pos.best_miou},
        "rng": rngs,  # one per rank
        "world": ident.world,
        "train_set": ident.train_set,
        "fingerprint": ident.fingerprint,
        "config": ident.config,
    }, path)


def read_checkpoint(path: Path, ident: RunIdentity) -> dict[str, Any]:
    """The checkpoint at ``path`` if the run ``ident`` can continue it exactly; ValueError
    naming what differs otherwise (a changed fixed key with both values)."""
    ck = safe_torch_load(path, "resume")
    if ck.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: checkpoint version {ck.get('version')}, "
                         f"expected {CHECKPOINT_VERSION}")
    if ck["fingerprint"] != ident.fingerprint:
        raise ValueError(f"{path} was trained on other frozen encoders")
    if ck["world"] != ident.world:
        raise ValueError(f"{path} was written by {ck['world']} processes; resume "
                         f"with the same number (now {ident.world})")
    then, now = flat_config(ck["config"]), flat_config(ident.config)
    changed = sorted(k for k, v in then.items() if k not in RESUME_FREE and now.get(k) != v)
    fixed = [k for k in changed if k in RESUME_FIXED]
    if fixed:
        raise ValueError(
            f"{path}: cannot resume exactly with changed "
            + ", ".join(f"{k} ({then[k]!r} -> {now[k]!r})" for k in fixed)
            + "; resume with the checkpoint's values, or start a new run in another "
            "out_dir with init_weights pointing at this run's weights file")
    if changed:
        LOG.warning("resume: config differs from the checkpoint's in %s", changed)
    train_set = ck.get("train_set")
    if train_set and train_set["sha1"] != ident.train_set["sha1"]:
        raise ValueError(
            f"{path}: the training set changed since the checkpoint "
            f"({train_set['images']} images then, {ident.train_set['images']} now, or other "
            "files): the data order cannot be continued exactly")
    return ck


def restore_checkpoint(ck: dict[str, Any], state: TrainingState, rank: int) -> None:
    """Load a read_checkpoint() result into ``state`` and this rank's RNGs."""
    with torch.no_grad():
        weights = state.model.state_dict()
        for k, v in ck["trainable"].items():
            weights[k].copy_(v)
    state.optimizer.load_state_dict(ck["optimizer"])
    state.scheduler.load_state_dict(ck["scheduler"])
    state.scaler.load_state_dict(ck["scaler"])
    p = ck["position"]
    state.pos.epoch, state.pos.micro = p["epoch"], p["micro"]
    state.pos.step, state.pos.best_miou = p["step"], p["best_miou"]
    rngs = ck["rng"] if isinstance(ck["rng"], list) else [ck["rng"]] * ck["world"]
    set_rng_state(rngs[rank])


# --------------------------------------------------------------------------- log and plot
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
    ax0.set_ylabel("loss (the run's loss settings)")
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
