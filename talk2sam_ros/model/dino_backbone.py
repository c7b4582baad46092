"""Frozen DINOv2 (with registers) via timm: patch tokens + last-block CLS->patch attention."""
from __future__ import annotations

import logging
import os

import timm
import torch
from timm.models.vision_transformer import checkpoint_filter_fn
from torch import nn

from .checkpoints import CheckpointError, load_into, read_state_dict
from .config import DinoConfig

log = logging.getLogger(__name__)


class DinoBackbone(nn.Module):
    """image (B, 3, S, S) -> patch tokens (B, N, D) after the final norm, and the last block's
    per-head pre-softmax CLS->patch attention logits (B, heads, N), q scaled by head_dim^-0.5
    (Talk2DINO's `process_self_attention`). N = (S / 14)^2 (1024 at 448)."""

    def __init__(self, config: DinoConfig) -> None:
        super().__init__()
        self.config = config
        self.vit = timm.create_model(config.timm_name, pretrained=False, num_classes=0,
                                     **config.timm_kwargs())
        if self.vit.num_reg_tokens != config.num_registers:
            raise ValueError(f"{config.timm_name} has {self.vit.num_reg_tokens} registers, "
                             f"expected {config.num_registers}")
        self.num_prefix = self.vit.num_prefix_tokens  # CLS + registers
        self.grid = tuple(self.vit.patch_embed.grid_size)
        attn = self.vit.blocks[-1].attn
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim

    @property
    def embed_dim(self) -> int:
        return self.vit.embed_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        handle = self.vit.blocks[-1].attn.qkv.register_forward_hook(
            lambda _m, _i, out: captured.append(out))
        try:
            tokens = self.vit.forward_features(x)
        finally:
            handle.remove()
        qkv = captured[0]
        b, n, _ = qkv.shape
        qkv = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).float()
        q_cls = qkv[:, 0, 0] * self.head_dim ** -0.5  # (B, heads, hd)
        keys = qkv[:, self.num_prefix:, 1]  # (B, N, heads, hd)
        attn = torch.einsum("bhd,bnhd->bhn", q_cls, keys)
        return tokens[:, self.num_prefix:], attn

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Load Meta's DINOv2 layout (dinov2_vit*14_reg4_pretrain.pth) or timm's layout; both go
        through timm's `checkpoint_filter_fn` (which converts Meta keys and resamples the
        position embeddings to the 448 grid)."""
        state = read_state_dict(path, "dinov2")
        if "register_tokens" not in state and "reg_token" not in state:
            raise CheckpointError(
                f"dinov2: {path} has no register tokens ('register_tokens' / 'reg_token'); "
                f"expected a DINOv2 with {self.config.num_registers} registers (…_reg4_…)"
            )
        try:
            # checkpoint_filter_fn pops keys from the dict it gets: pass a copy.
            filtered = checkpoint_filter_fn(dict(state), self.vit)
        except Exception as exc:
            raise CheckpointError(f"dinov2: cannot convert {path} to the timm layout of "
                                  f"{self.config.timm_name}: {exc}") from exc
        load_into(self.vit, filtered, path, "dinov2", ignore_unexpected=("head.",))
        log.info("loaded DINOv2 weights from %s", path)
