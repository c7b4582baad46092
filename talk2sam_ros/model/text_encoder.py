"""CLIP text tower (open_clip, frozen except optionally its final text_projection) with
Talk2DINO's template ensemble."""
from __future__ import annotations

import logging
import os
from typing import Sequence

import open_clip
import torch
from open_clip.model import CLIPTextCfg, _build_text_tower
from open_clip.transformer import text_global_pool
from torch import nn

from .checkpoints import CheckpointError, load_into, read_state_dict
from .config import ClipConfig

log = logging.getLogger(__name__)

# Keys of a full open_clip CLIP state dict that are not part of the text tower.
_NON_TEXT_PREFIXES = ("visual.", "logit_scale", "logit_bias", "attn_mask", "input_resolution",
                      "context_length", "vocab_size")


class CLIPTextEncoder(nn.Module):
    """list[str] -> (N, embed_dim) unnormalised CLIP text features (open_clip `encode_text`)."""

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        model_cfg = open_clip.get_model_config(config.open_clip_name)
        if model_cfg is None:
            raise ValueError(f"unknown open_clip model {config.open_clip_name!r}")
        text_cfg = dict(model_cfg["text_cfg"])
        for name in ("width", "layers", "heads"):
            if getattr(config, name) is not None:
                text_cfg[name] = getattr(config, name)
        self.tower = _build_text_tower(config.embed_dim, CLIPTextCfg(**text_cfg),
                                       quick_gelu=bool(model_cfg.get("quick_gelu", False)))
        self.tokenizer = open_clip.get_tokenizer(config.open_clip_name)
        self.embed_dim = config.embed_dim

    @property
    def device(self) -> torch.device:
        return self.tower.positional_embedding.device

    @torch.no_grad()
    def encode(self, texts: Sequence[str], project: bool = True) -> torch.Tensor:
        """(N, embed_dim) `encode_text` features, or with project=False the pooled features
        before the final text_projection (N, width)."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        if project:
            return self.tower(tokens).float()
        return self._pooled(tokens).float()

    def _pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip TextTransformer.forward up to, not including, text_projection."""
        tower = self.tower
        if tower.cls_emb is not None or tower.text_projection is None:
            raise ValueError("pre-projection text features need a CLIP text tower without a "
                             "class token and with a text_projection")
        x, attn_mask = tower._embeds(tokens)
        x = tower.ln_final(tower.transformer(x, attn_mask=attn_mask))
        return text_global_pool(x, tokens, pool_type=tower.pool_type,
                                eos_token_id=getattr(tower, "eos_id", None))

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """CLIP's final text_projection (differentiable): (N, width) -> (N, embed_dim)."""
        proj = self.tower.text_projection
        if isinstance(proj, nn.Linear):
            return proj(pooled.to(proj.weight.dtype))
        return pooled.to(proj.dtype) @ proj

    @torch.no_grad()
    def encode_with_templates(self, names: Sequence[str], templates: Sequence[str],
                              project: bool = True) -> torch.Tensor:
        """Talk2DINO's ensemble: for each name, every template through `encode_text`
        (unnormalised), averaged over templates. Returns (N, embed_dim) float32; projection and
        L2 normalisation come afterwards. project=False averages the features before CLIP's
        text_projection instead ((N, width); the projection is linear, so `project()` of that
        mean equals the mean of the projected features)."""
        prompts = [t.format(n) for n in names for t in templates]
        feats = self.encode(prompts, project).view(len(names), len(templates), -1)
        return feats.mean(dim=1)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Load an open_clip CLIP state dict (full model or text tower; .safetensors, .bin,
        .pth) or OpenAI's TorchScript ViT-B-16.pt, keeping only the text tower."""
        state = read_state_dict(path, "clip")
        text = {k: v for k, v in state.items() if not k.startswith(_NON_TEXT_PREFIXES)}
        text = {k[len("text."):] if k.startswith("text.") else k: v for k, v in text.items()}
        if not any(k.startswith("transformer.resblocks.") for k in text):
            raise CheckpointError(
                f"clip: {path} has no CLIP text transformer keys (transformer.resblocks.*); "
                "expected an open_clip / OpenAI CLIP checkpoint"
            )
        load_into(self.tower, text, path, "clip")
        log.info("loaded CLIP text tower from %s", path)
