"""Pure functions: text/patch similarity maps and boxes from a similarity map.

All maths here runs in float32 whatever the model dtype (cosines and softmaxes are fragile),
also inside a caller's autocast region (mixed-precision training), which would otherwise run the
einsums in fp16/bf16.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

_F = TypeVar("_F", bound=Callable)


def fp32_maths(fn: _F) -> _F:
    """Run `fn` with autocast switched off (inputs are cast to float32 inside)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        with contextlib.ExitStack() as stack:
            for device_type in ("cuda", "cpu"):
                if torch.is_autocast_enabled(device_type):
                    stack.enter_context(torch.autocast(device_type, enabled=False))
            return fn(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


@fp32_maths
def l2_normalize(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return F.normalize(x.float(), dim=dim, eps=1e-6)


@fp32_maths
def patch_cosine(text: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Cosine between projected text (B, D) and L2-normalised patch tokens (B, N, D) -> (B, N).

    This is Talk2DINO's inference map (before its sigmoid)."""
    return torch.einsum("bd,bnd->bn", l2_normalize(text), patches.float())


@fp32_maths
def head_embeddings(patches: torch.Tensor, attn_logits: torch.Tensor) -> torch.Tensor:
    """Talk2DINO training embeddings: per head h, softmax over patches of the CLS attention
    logits weights a mean of the patch tokens. patches (B, N, D) (raw, after the final norm),
    attn_logits (B, H, N) -> (B, H, D) L2-normalised."""
    weights = attn_logits.float().softmax(dim=-1)
    return l2_normalize(torch.einsum("bhn,bnd->bhd", weights, patches.float()))


@fp32_maths
def attention_max_cosine(text: torch.Tensor, head_emb: torch.Tensor,
                         attn_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """'attention_max' map (docs/model.md): s_h = cos(text, e_h) per head (Talk2DINO eq. 2);
    each head's attention map a_h (softmax over patches, divided by its max to lie in [0, 1]) is
    weighted by s_h and the map is the max over heads (eq. 3 applied per patch):
    map_p = max_h a_hp * s_h, in [-1, 1].

    text (B, D), head_emb (B, H, D) normalised, attn_logits (B, H, N) -> map (B, N), and the
    Talk2DINO global score max_h s_h (B,), usable as an alignment loss."""
    scores = torch.einsum("bd,bhd->bh", l2_normalize(text), head_emb.float())
    attn = attn_logits.float().softmax(dim=-1)
    attn = attn / attn.amax(dim=-1, keepdim=True).clamp_min(1e-12)
    cos_map = (attn * scores[:, :, None]).amax(dim=1)
    return cos_map, scores.amax(dim=1)


@fp32_maths
def cosine_to_unit(cos: torch.Tensor) -> torch.Tensor:
    """Public similarity in [0, 1]: Talk2DINO's soft mask, a plain sigmoid of the cosine."""
    return torch.sigmoid(cos.float())


def boxes_from_similarity(grid: np.ndarray, threshold: float = 0.55, relative: float = 0.5,
                          max_boxes: int = 3, min_cells: int = 2
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes from a (gh, gw) similarity grid in [0, 1] (the DINOv2 patch grid, which covers
    the whole image).

    Cells >= max(threshold, lo + relative * (hi - lo)) are kept (absolute floor: Talk2DINO's
    background score 0.55; the relative part keeps only the strongest region(s) of a map that
    is high everywhere). Connected components (8-connectivity) with >= min_cells cells become
    boxes, ranked by their peak value, at most max_boxes.

    Returns (K, 4) inclusive cell ranges (c0, r0, c1, r1) and (K,) peak scores; K may be 0
    (the caller then falls back to the full image).
    """
    grid = np.asarray(grid, dtype=np.float32)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"similarity grid must be 2-D, got shape {grid.shape}")
    lo, hi = float(grid.min()), float(grid.max())
    thr = max(threshold, lo + relative * (hi - lo))
    labels, _ = ndimage.label(grid >= thr, structure=np.ones((3, 3), dtype=bool))
    cells, peaks = [], []
    for index, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        member = labels[sl] == index
        if int(member.sum()) < min_cells:
            continue
        cells.append((sl[1].start, sl[0].start, sl[1].stop - 1, sl[0].stop - 1))
        peaks.append(float(grid[sl][member].max()))
    if not cells:
        return np.zeros((0, 4), np.int64), np.zeros((0,), np.float32)
    order = np.argsort(-np.asarray(peaks), kind="stable")[:max_boxes]
    return np.asarray(cells, np.int64)[order], np.asarray(peaks, np.float32)[order]
