"""Trainable mask-prompt encoder: similarity map -> dense prompt embedding for SAM-HQ."""
from __future__ import annotations

from typing import Sequence

import torch
from segment_anything_hq.modeling.common import LayerNorm2d
from segment_anything_hq.modeling.prompt_encoder import PromptEncoder
from torch import nn

from .transforms import grid_to_mask_prompt


class MaskPromptEncoder(nn.Module):
    """(B, 1, g, g) cosine map -> (B, C, 64, 64) dense embedding, added to SAM's image embedding
    exactly as SAM's own mask prompt is.

    `mask_downscaling` has SAM's layout and key names (Conv k2 s2, LN2d, GELU, Conv k2 s2, LN2d,
    GELU, Conv k1), so it can start from a SAM checkpoint's prompt_encoder weights. SAM's encoder
    was trained on logits; the cosine map is turned into logit-like values by a learnable
    affine `scale * (cos - bias)` before being placed in the valid top-left region of the
    256 x 256 prompt (zero in the padding)."""

    def __init__(self, embed_dim: int = 256, mask_in_chans: int = 16, scale_init: float = 10.0,
                 bias_init: float = 0.2) -> None:
        super().__init__()
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))
        self.bias = nn.Parameter(torch.tensor(float(bias_init)))

    def init_from_sam(self, prompt_encoder: PromptEncoder) -> None:
        """Copy SAM's (pretrained) mask_downscaling weights."""
        self.mask_downscaling.load_state_dict(prompt_encoder.mask_downscaling.state_dict())

    def grid_logits(self, cos_grid: torch.Tensor) -> torch.Tensor:
        """Cosine map -> the logit-like values `scale * (cos - bias)` on the same grid."""
        return self.scale * (cos_grid.float() - self.bias)

    def to_prompt(self, cos_grid: torch.Tensor, input_sizes: Sequence[tuple[int, int]]
                  ) -> torch.Tensor:
        """(B, 1, g, g) cosine -> (B, 1, 256, 256) logit-like prompt in SAM's padded frame."""
        return grid_to_mask_prompt(self.grid_logits(cos_grid), input_sizes)

    def forward(self, prompt: torch.Tensor) -> torch.Tensor:
        """(B, 1, 256, 256) prompt -> (B, C, 64, 64) dense embedding."""
        return self.mask_downscaling(prompt)
