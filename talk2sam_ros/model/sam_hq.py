"""SAM-HQ from segment_anything_hq: building, official checkpoint loading, and a decoder forward
that takes the HQ decoder's fused high-resolution features precomputed (cached per frame)."""
from __future__ import annotations

import logging
import os
import types
from functools import partial

import torch
import torch.nn.functional as F
from segment_anything_hq import sam_model_registry
from segment_anything_hq.modeling import (ImageEncoderViT, MaskDecoderHQ, PromptEncoder, Sam,
                                          TwoWayTransformer)
from segment_anything_hq.modeling.image_encoder import Attention, get_rel_pos

from .checkpoints import CheckpointError, load_into, read_state_dict
from .config import SamConfig
from .transforms import SAM_IMAGE_SIZE, SAM_PIXEL_MEAN, SAM_PIXEL_STD

log = logging.getLogger(__name__)

# Names of SAM-HQ's own trainable decoder parts (segment_anything_hq build_sam freezing rule).
HQ_PARTS = ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder",
            "embedding_maskfeature")


def build_sam_hq(config: SamConfig) -> Sam:
    """A SAM-HQ `Sam` with random weights for `config` (registry builder for official variants,
    the same modeling classes with reduced sizes for `custom`)."""
    if config.variant != "custom":
        return sam_model_registry[config.variant]()
    prompt_dim = config.prompt_dim
    grid = SAM_IMAGE_SIZE // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=config.depth,
            embed_dim=config.embed_dim,
            img_size=SAM_IMAGE_SIZE,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=config.num_heads,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=config.use_rel_pos,
            global_attn_indexes=config.global_attn_indexes,
            window_size=config.window_size,
            out_chans=prompt_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(SAM_IMAGE_SIZE, SAM_IMAGE_SIZE),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoderHQ(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim,
                                          mlp_dim=config.decoder_mlp_dim,
                                          num_heads=config.decoder_heads),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
            vit_dim=config.embed_dim,
        ),
        pixel_mean=list(SAM_PIXEL_MEAN),
        pixel_std=list(SAM_PIXEL_STD),
    )


def use_sdpa_attention(image_encoder: torch.nn.Module) -> int:
    """Route every ViT attention of SAM's image encoder through F.scaled_dot_product_attention
    (decomposed relative positions passed as an additive mask). Same maths as
    segment_anything_hq's Attention.forward up to float rounding (~1e-6), ~3x faster on CPU for
    vit_b's global blocks and memory-efficient kernels on GPU. Returns the number of layers."""
    count = 0
    for module in image_encoder.modules():
        if isinstance(module, Attention):
            module.forward = types.MethodType(_sdpa_attention_forward, module)
            count += 1
    return count


def _sdpa_attention_forward(self: Attention, x: torch.Tensor) -> torch.Tensor:
    b, h, w, _ = x.shape
    heads = self.num_heads
    qkv = self.qkv(x).reshape(b, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, heads, HW, C)
    bias = None
    if self.use_rel_pos:
        r_q = q.reshape(b * heads, h, w, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, self.rel_pos_h))
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, self.rel_pos_w))
        bias = (rel_h[..., None] + rel_w[..., None, :]).reshape(b, heads, h * w, h * w)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    return self.proj(out.permute(0, 2, 1, 3).reshape(b, h, w, -1))


def load_sam_hq_checkpoint(sam: Sam, path: str | os.PathLike) -> None:
    """Load an official `sam_hq_vit_{tiny,b,l,h}.pth` strictly: every parameter and persistent
    buffer (the prompt encoder's random Fourier matrix, TinyViT's BatchNorm statistics) must be
    in the file with the right shape; only BatchNorm's `num_batches_tracked` counters may be
    absent (unused in eval mode)."""
    state = read_state_dict(path, "sam_hq")
    if not any(k.startswith("mask_decoder.hf_token") for k in state):
        hint = (" (this looks like an original SAM checkpoint without the HQ decoder parts)"
                if any(k.startswith("mask_decoder.") for k in state) else "")
        raise CheckpointError(f"sam_hq: {path} has no 'mask_decoder.hf_token.weight'; expected "
                              f"an official sam_hq_vit_*.pth file{hint}")
    counters = tuple(k for k in sam.state_dict() if k.endswith(".num_batches_tracked"))
    load_into(sam, state, path, "sam_hq", allow_missing=counters)
    log.info("loaded SAM-HQ weights from %s", path)


def freeze_sam(sam: Sam, train_full_decoder: bool = False) -> None:
    """Freeze everything but the HQ decoder parts (or the whole mask decoder)."""
    for name, param in sam.named_parameters():
        if train_full_decoder:
            param.requires_grad_(name.startswith("mask_decoder."))
        else:
            param.requires_grad_(name.startswith("mask_decoder.")
                                 and any(part in name for part in HQ_PARTS))


def hq_features(decoder: MaskDecoderHQ, image_embeddings: torch.Tensor,
                interm0: torch.Tensor) -> torch.Tensor:
    """The HQ decoder's fused high-res features (B, C/8, 256, 256) from the image embedding
    (B, C, 64, 64) and the first global block's output (B, 64, 64, C_vit) (channels-last)."""
    return (decoder.embedding_encoder(image_embeddings)
            + decoder.compress_vit_feat(interm0.permute(0, 3, 1, 2)))


def decode_hq(decoder: MaskDecoderHQ, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
              sparse: torch.Tensor, dense: torch.Tensor, hq_feats: torch.Tensor,
              multimask_output: bool, hq_token_only: bool
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskDecoderHQ.forward with `hq_feats` precomputed and one image embedding per row.

    image_embeddings (1 or P, C, 64, 64), image_pe (1, C, 64, 64), sparse (P, n, C),
    dense (1 or P, C, 64, 64), hq_feats (1 or P, C/8, 256, 256) -> masks (P, 1, 256, 256)
    logits and iou (P, 1), selected exactly as MaskDecoderHQ.forward does.
    """
    p = sparse.shape[0]
    dec = decoder
    out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight, dec.hf_token.weight])
    tokens = torch.cat([out_tokens.unsqueeze(0).expand(p, -1, -1), sparse], dim=1)
    src = image_embeddings.expand(p, -1, -1, -1) + dense
    pos_src = image_pe.expand(p, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = dec.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    n_tokens = dec.num_mask_tokens  # SAM mask tokens + HQ token
    mask_tokens_out = hs[:, 1: 1 + n_tokens, :]
    src = src.transpose(1, 2).reshape(b, c, h, w)
    up_sam = dec.output_upscaling(src)
    up_hq = dec.embedding_maskfeature(up_sam) + hq_feats
    iou_all = dec.iou_prediction_head(iou_token_out)
    _, uc, uh, uw = up_sam.shape

    hq_hyper = dec.hf_mlp(mask_tokens_out[:, n_tokens - 1, :])
    mask_hq = (hq_hyper[:, None] @ up_hq.reshape(b, uc, uh * uw)).reshape(b, 1, uh, uw)
    if multimask_output:
        sel = range(1, n_tokens - 1)
        iou_sel, best = iou_all[:, 1: n_tokens - 1].max(dim=1)
        iou = iou_sel[:, None]
    else:
        sel = range(0, 1)
        iou = iou_all[:, 0:1]
    if hq_token_only:
        return mask_hq, iou
    hyper = torch.stack([dec.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :])
                         for i in sel], dim=1)
    masks_sam = (hyper @ up_sam.reshape(b, uc, uh * uw)).reshape(b, -1, uh, uw)
    if multimask_output:
        masks_sam = masks_sam[torch.arange(b, device=masks_sam.device), best][:, None]
    return masks_sam + mask_hq, iou
