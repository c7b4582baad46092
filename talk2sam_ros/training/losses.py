"""Training losses: SAM-HQ's BCE + dice on mask logits, dense or point-sampled, and an optional
term on the text-image similarity map; :func:`compute_loss` combines them as a
:class:`LossConfig` says (training and validation use the same one).

All functions take logits (not probabilities) and float targets in [0, 1]; each mask counts once
(mean over masks), as in SAM-HQ's ``loss_masks`` (sum over masks / number of masks).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from talk2sam_ros.model.talk2sam import ForwardOutput, ImageFeatures, Talk2SAM
from talk2sam_ros.model.transforms import SAM_IMAGE_SIZE

__all__ = ["LOSS_KINDS", "LossConfig", "bce_dice_loss", "compute_loss", "dice_loss",
           "point_sampled_bce_dice", "sample_points", "similarity_loss"]

LOSS_KINDS = ("points", "dense")


@dataclass(frozen=True)
class LossConfig:
    """The training loss (the ``loss:`` section of a TrainConfig).

    kind: ``points`` = SAM-HQ's point-sampled BCE + dice on the 256 x 256 logits against the
    full-resolution GT (num_points per mask), ``dense`` = BCE + dice on the logits upsampled to
    source resolution. similarity_weight > 0 adds a BCE of the similarity map against the GT's
    coverage of each patch.
    """

    kind: str = "points"
    num_points: int = 12544  # 112 x 112 as SAM-HQ
    bce_weight: float = 1.0
    dice_weight: float = 1.0
    similarity_weight: float = 0.0  # BCE of the similarity map vs GT coverage (0: off)

    def __post_init__(self) -> None:
        if self.kind not in LOSS_KINDS:
            raise ValueError(f"kind={self.kind!r}: expected one of {LOSS_KINDS}")
        if self.num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {self.num_points}")
        for name in ("bce_weight", "dice_weight", "similarity_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def dense(self) -> bool:
        """True when the loss needs the logits upsampled to source resolution."""
        return self.kind == "dense"


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N, ...) logits and targets -> mean over N of 1 - (2 p.t + 1) / (sum p + sum t + 1)."""
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()


def bce_dice_loss(logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0,
                  dice_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Dense BCE-with-logits (pixel mean per mask) + dice. Returns (loss, parts for logging)."""
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    logits, target = logits.float(), target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1)
    bce = bce.mean(1).mean()
    dice = dice_loss(logits, target)
    loss = bce_weight * bce + dice_weight * dice
    return loss, {"bce": float(bce.detach()), "dice": float(dice.detach())}


def sample_points(logits: torch.Tensor, num_points: int, oversample: float = 3.0,
                  importance: float = 0.75, scale: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """SAM-HQ / PointRend point selection on (N, 1, h, w) logits -> (N, P, 2) coords in [0, 1].

    ``oversample * P`` uniform candidates; the ``importance * P`` most uncertain (smallest |logit|)
    are kept, the rest are fresh uniform points. Coordinates are (x, y) normalised to the target's
    extent (pixel edges, align_corners=False convention); the logits are read at ``coords * scale``
    ((N, 1, 2) or None for 1).
    """
    n = logits.shape[0]
    cand = torch.rand(n, max(num_points, int(num_points * oversample)), 2,
                      device=logits.device, generator=generator)
    with torch.no_grad():
        at = cand if scale is None else cand * scale
        unc = -point_values(logits.detach().float(), at).abs()
    n_imp = int(importance * num_points)
    idx = unc.topk(n_imp, dim=1).indices
    chosen = torch.gather(cand, 1, idx[..., None].expand(-1, -1, 2))
    rand = torch.rand(n, num_points - n_imp, 2, device=logits.device, generator=generator)
    return torch.cat([chosen, rand], 1)


def point_values(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of (N, 1, h, w) maps at (N, P, 2) [0, 1] coords -> (N, P)."""
    grid = coords[:, :, None, :] * 2 - 1
    return F.grid_sample(maps, grid.to(maps.dtype), mode="bilinear",
                         align_corners=False)[:, 0, :, 0]


def point_sampled_bce_dice(logits: torch.Tensor, target: torch.Tensor, num_points: int = 12544,
                           logit_extent: tuple[float, float] | torch.Tensor = (1.0, 1.0),
                           oversample: float = 3.0, importance: float = 0.75,
                           generator: torch.Generator | None = None, bce_weight: float = 1.0,
                           dice_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """SAM-HQ's point-sampled loss with the target at its own (higher) resolution.

    logits: (N, 1, h, w); target: (N, 1, H, W) in [0, 1] covering the source image.
    ``logit_extent`` = fraction (fy, fx) of the logit map that covers the source image (for SAM's
    padded 256 frame: input_size / 1024), per mask as an (N, 2) tensor or one pair for all. A
    point at source-normalised (x, y) is read from the logits at (x * fx, y * fy): the continuous
    coordinate mapping of a resize, so thin structures are supervised at full GT resolution
    instead of being lost when the GT is shrunk to 256 x 256.
    """
    ext = torch.as_tensor(logit_extent, dtype=torch.float32, device=logits.device)
    ext = ext.expand(logits.shape[0], 2) if ext.ndim == 1 else ext
    scale = ext.flip(1)[:, None, :]  # (N, 1, 2) as (fx, fy)
    coords = sample_points(logits, num_points, oversample, importance, scale, generator)
    pl = point_values(logits.float(), coords * scale)
    pt = point_values(target.float(), coords)
    return bce_dice_loss(pl, pt, bce_weight, dice_weight)


def similarity_loss(similarity_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE between a coarse (N, 1, g, g) similarity logit map and the GT's per-cell coverage.

    ``target`` (N, 1, H, W) in [0, 1] is area-averaged onto the g x g grid, so a 1 px wire inside a
    cell gives a small but non-zero target instead of vanishing.
    """
    cover = F.adaptive_avg_pool2d(target.float(), similarity_logits.shape[-2:])
    return F.binary_cross_entropy_with_logits(similarity_logits.float(), cover)


def compute_loss(cfg: LossConfig, model: Talk2SAM, out: ForwardOutput, feats: ImageFeatures,
                 targets: Sequence[np.ndarray], generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean over rows of BCE + dice (``cfg.kind``), + the optional similarity term.

    ``out`` is ``model``'s forward for ``feats`` (one row per target; with ``dense`` it must hold
    the upsampled ``logits``); ``targets`` are (H, W) masks at source resolution. ``generator``
    draws the points of the ``points`` loss. Returns the loss and its parts for logging.
    """
    dev = out.low_res_logits.device
    tgts = [torch.from_numpy(np.asarray(t, np.float32))[None, None].to(dev) for t in targets]
    total, parts = out.low_res_logits.new_zeros(()), {"bce": 0.0, "dice": 0.0}
    for i, tgt in enumerate(tgts):
        if cfg.dense:
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
