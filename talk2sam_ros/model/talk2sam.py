"""The Talk2SAM nn.Module: frozen CLIP text tower, DINOv2 and SAM-HQ encoders; trainable
Talk2DINO projection, mask-prompt encoder and SAM-HQ's HQ decoder parts (optionally also CLIP's
final text_projection, config.train_clip_projection).

Two paths share the same pieces:
- batched, differentiable training path: `encode_images` (frozen, cacheable features) then
  `forward_features(features, texts, boxes)`;
- the per-frame predictor (predictor.py), which caches every prompt-independent tensor.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
from segment_anything_hq.modeling import Sam
from torch import nn

from . import transforms as T
from .config import ModelConfig
from .dino_backbone import DinoBackbone
from .mask_prompt import MaskPromptEncoder
from .projector import Talk2DINOProjection
from .sam_hq import HQ_PARTS, decode_hq, hq_features
from .similarity import (attention_max_cosine, cosine_to_unit, head_embeddings, l2_normalize,
                         patch_cosine)
from .text_encoder import CLIPTextEncoder

if TYPE_CHECKING:
    from .runtime import OnnxEncoders

CLIP_PROJECTION_KEY = "text_encoder.tower.text_projection"


@dataclass
class ImageFeatures:
    """Frozen per-image features (no grad), all float32; cacheable with to_dict/from_dict.

    sam_embedding (B, C, 64, 64); sam_interm (B, 64, 64, C_vit) first global block output;
    dino_patches (B, N, D) patch tokens after the final norm; dino_attn (B, heads, N) CLS->patch
    pre-softmax logits; input_sizes / original_sizes (B, 2) int64 (h, w).
    """

    sam_embedding: torch.Tensor
    sam_interm: torch.Tensor
    dino_patches: torch.Tensor
    dino_attn: torch.Tensor
    input_sizes: torch.Tensor
    original_sizes: torch.Tensor

    def __len__(self) -> int:
        return int(self.sam_embedding.shape[0])

    def to(self, device: torch.device | str) -> "ImageFeatures":
        return ImageFeatures(**{f.name: getattr(self, f.name).to(device)
                                for f in dataclasses.fields(self)})

    def select(self, index: Sequence[int] | torch.Tensor) -> "ImageFeatures":
        idx = torch.as_tensor(index, dtype=torch.long)
        return ImageFeatures(**{f.name: getattr(self, f.name)[idx.to(getattr(self, f.name).device)]
                                for f in dataclasses.fields(self)})

    @staticmethod
    def cat(items: Sequence["ImageFeatures"]) -> "ImageFeatures":
        return ImageFeatures(**{f.name: torch.cat([getattr(i, f.name) for i in items])
                                for f in dataclasses.fields(ImageFeatures)})

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name).detach().cpu() for f in dataclasses.fields(self)}

    @staticmethod
    def from_dict(data: dict[str, torch.Tensor]) -> "ImageFeatures":
        return ImageFeatures(**{f.name: data[f.name] for f in dataclasses.fields(ImageFeatures)})


@dataclass
class ForwardOutput:
    """forward_features result. low_res_logits (B, 1, 256, 256) in SAM's padded frame;
    iou (B, 1); cosine / similarity (B, 1, g, g) raw cosine map and sigmoid(cosine) in [0, 1]
    (None for box-only rows batch); mask_prompt (B, 1, 256, 256) fed to the mask-prompt encoder;
    global_score (B,) Talk2DINO max-over-heads score (attention_max mode only); logits: list of
    (1, H, W) at source resolution when upsample=True."""

    low_res_logits: torch.Tensor
    iou: torch.Tensor
    cosine: torch.Tensor | None = None
    similarity: torch.Tensor | None = None
    mask_prompt: torch.Tensor | None = None
    global_score: torch.Tensor | None = None
    logits: list[torch.Tensor] | None = None


class Talk2SAM(nn.Module):
    """Wires the parts; receives them built (build.py builds and loads them)."""

    def __init__(self, config: ModelConfig, text_encoder: CLIPTextEncoder,
                 projection: Talk2DINOProjection, dino: DinoBackbone, sam: Sam,
                 mask_prompt: MaskPromptEncoder) -> None:
        super().__init__()
        self.config = config
        self.text_encoder = text_encoder
        self.projection = projection
        self.dino = dino
        self.sam = sam
        self.mask_prompt = mask_prompt
        self.encoder_dtype = torch.float32
        self.encoder_fingerprint = ""
        # The exported encoders when config.runtime is not torch (export.prepare_runtime);
        # None: the PyTorch modules run.
        self.image_runtime: OnnxEncoders | None = None
        self.set_trainable()

    # ------------------------------------------------------------------ parameters
    def _is_trainable_key(self, name: str) -> bool:
        if name.startswith(("projection.", "mask_prompt.")):
            return True
        if name.startswith(CLIP_PROJECTION_KEY):
            return self.config.train_clip_projection
        if name.startswith("sam.mask_decoder."):
            return self.config.train_full_decoder or any(p in name for p in HQ_PARTS)
        return False

    def set_trainable(self) -> None:
        """requires_grad on the trainable parts only (projection, mask-prompt encoder, HQ
        decoder parts or the whole decoder with config.train_full_decoder, CLIP's
        text_projection with config.train_clip_projection)."""
        for name, param in self.named_parameters():
            param.requires_grad_(self._is_trainable_key(name))

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        return (p for n, p in self.named_parameters() if self._is_trainable_key(n))

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if self._is_trainable_key(n))

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State of the trainable parts (what our weights file holds)."""
        return {k: v for k, v in self.state_dict().items() if self._is_trainable_key(k)}

    def parameter_counts(self) -> dict[str, int]:
        """{'trainable': n, 'total': n} parameter counts."""
        total = sum(p.numel() for p in self.parameters())
        return {"trainable": sum(p.numel() for p in self.trainable_parameters()),
                "total": total}

    def compute_fingerprint(self, prefix: str = "") -> str:
        """sha256 over names, shapes and float32 values of every frozen tensor (everything not
        in the weights file) whose name starts with `prefix` ("sam.image_encoder.": one
        encoder's, for its ONNX export). Computed at build time in float32, before any dtype
        cast."""
        digest = hashlib.sha256()
        for name, tensor in self.state_dict().items():
            if (self._is_trainable_key(name) or not tensor.is_floating_point()
                    or not name.startswith(prefix)):
                continue
            digest.update(f"{name}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def train(self, mode: bool = True) -> "Talk2SAM":
        super().train(mode)
        for frozen in (self.text_encoder, self.dino, self.sam.image_encoder):
            frozen.eval()  # frozen encoders never switch to training behaviour
        return self

    def compile_encoders(self, **compile_kwargs: Any) -> None:
        """torch.compile the frozen image encoders in place (state-dict keys unchanged).

        DinoBackbone as a whole, not its timm ViT: forward calls `vit.forward_features`, which
        bypasses a compiled `vit.__call__`. Registering the per-call attention hook is one graph
        break; the ViT with the hook is one graph, reused across calls of the same shape."""
        self.dino.compile(**compile_kwargs)
        self.sam.image_encoder.compile(**compile_kwargs)

    @property
    def device(self) -> torch.device:
        return self.mask_prompt.scale.device

    # ------------------------------------------------------------------ frozen encoders
    @torch.no_grad()
    def encode_images(self, images: Sequence[np.ndarray]) -> ImageFeatures:
        """List of RGB uint8 H x W x 3 images -> frozen ImageFeatures (float32, model device)."""
        sam_in, dino_in, in_sizes, orig = [], [], [], []
        for image in images:
            x, in_size = T.sam_preprocess(image, self.device, self.encoder_dtype)
            sam_in.append(x)
            dino_in.append(T.dino_preprocess(image, self.config.dino.img_size, self.device,
                                             self.encoder_dtype))
            in_sizes.append(in_size)
            orig.append(image.shape[:2])
        emb, interm0 = self.encode_sam(torch.cat(sam_in))
        patches, attn = self.encode_dino(torch.cat(dino_in))
        return ImageFeatures(emb, interm0, patches, attn,
                             torch.tensor(in_sizes, dtype=torch.long, device=self.device),
                             torch.tensor(orig, dtype=torch.long, device=self.device))

    @torch.no_grad()
    def encode_sam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed (B, 3, 1024, 1024) -> embedding (B, C, 64, 64), interm0 (B, 64, 64, Cv),
        from the attached runtime if any, else from PyTorch."""
        if self.image_runtime is not None:
            return self.image_runtime.encode_sam(x)
        return self.torch_encode_sam(x)

    @torch.no_grad()
    def encode_dino(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed (B, 3, 448, 448) -> patch tokens (B, N, D), CLS attention (B, H, N),
        from the attached runtime if any, else from PyTorch."""
        if self.image_runtime is not None:
            return self.image_runtime.encode_dino(x)
        return self.torch_encode_dino(x)

    @contextlib.contextmanager
    def using_encoders(self, encoders: OnnxEncoders | None) -> Iterator[Talk2SAM]:
        """This model with `encoders` attached inside the block (None: its PyTorch encoders),
        for validation and side-by-side timing on the same weights; the previous runtime is
        attached again afterwards."""
        attached = self.image_runtime
        self.image_runtime = encoders
        try:
            yield self
        finally:
            self.image_runtime = attached

    def torch_encode_sam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """encode_sam in PyTorch: also the graph the ONNX export traces (export.py)."""
        emb, interm = self.sam.image_encoder(x)
        return emb.float(), interm[0].float()

    def torch_encode_dino(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """encode_dino in PyTorch: also the graph the ONNX export traces (export.py)."""
        patches, attn = self.dino(x)
        return patches.float(), attn.float()

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> the frozen, cacheable text features that `project_text` takes: (T, 512)
        CLIP template-ensemble embeddings; with config.train_clip_projection the (T, width)
        ensemble before CLIP's trainable text_projection, so caches stay valid while it
        learns or when trained weights are (re)loaded."""
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"text prompts must be non-empty strings, got {text!r}")
        return self.text_encoder.encode_with_templates(
            [t.strip() for t in texts], self.config.templates,
            project=not self.config.train_clip_projection)

    # ------------------------------------------------------------------ prompt-side pieces
    def project_text(self, text_features: torch.Tensor) -> torch.Tensor:
        """`encode_texts` output -> (T, D) L2-normalised projected text (Talk2DINO: average,
        project, norm); applies CLIP's text_projection first with train_clip_projection."""
        if self.config.train_clip_projection:
            text_features = self.text_encoder.project(text_features)
        return l2_normalize(self.projection(text_features.float()))

    def cosine_grid(self, text: torch.Tensor, patches_n: torch.Tensor, head_emb: torch.Tensor,
                    attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cosine map (B, 1, gh, gw) for normalised text (B, D), normalised patches (B, N, D),
        head embeddings (B, H, D) and attention logits (B, H, N), per config.similarity_mode;
        plus the global score (attention_max) or None."""
        gh, gw = self.dino.grid
        if self.config.similarity_mode == "patch":
            cos, score = patch_cosine(text, patches_n), None
        else:
            cos, score = attention_max_cosine(text, head_emb, attn)
        return cos.view(-1, 1, gh, gw), score

    def image_pe(self) -> torch.Tensor:
        return self.sam.prompt_encoder.get_dense_pe()

    def box_prompt(self, boxes_sam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, 4) SAM-frame boxes -> sparse (P, 2, C) and SAM's no-mask dense (P, C, 64, 64)."""
        return self.sam.prompt_encoder(points=None, boxes=boxes_sam, masks=None)

    def decode(self, embedding: torch.Tensor, hq_feats: torch.Tensor, sparse: torch.Tensor,
               dense: torch.Tensor, multimask_output: bool | None = None,
               hq_token_only: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """HQ decoder with precomputed hq_feats -> logits (P, 1, 256, 256), iou (P, 1)."""
        mm = self.config.multimask_output if multimask_output is None else multimask_output
        hq = self.config.hq_token_only if hq_token_only is None else hq_token_only
        return decode_hq(self.sam.mask_decoder, embedding, self.image_pe(), sparse, dense,
                         hq_feats, mm, hq)

    def hq_features(self, embedding: torch.Tensor, interm0: torch.Tensor) -> torch.Tensor:
        return hq_features(self.sam.mask_decoder, embedding, interm0)

    # ------------------------------------------------------------------ training path
    def forward_features(self, features: ImageFeatures, texts: Sequence[str] | None,
                         boxes: torch.Tensor, text_embeddings: torch.Tensor | None = None,
                         upsample: bool = False) -> ForwardOutput:
        """Batched differentiable forward: one text and one box per item.

        features: B items (ImageFeatures, on the model device); texts: B strings, or None for
        SAM-HQ's box-only mode; boxes: (B, 4) XYXY source pixels; text_embeddings: optional
        precomputed `encode_texts` output (frozen, so callers may cache it).
        Gradients reach only the trainable parts.
        """
        b = len(features)
        boxes = torch.as_tensor(boxes, dtype=torch.float32, device=self.device).reshape(-1, 4)
        if boxes.shape[0] != b:
            raise ValueError(f"need one box per item: {boxes.shape[0]} boxes for {b} items")
        boxes_sam = T.boxes_to_sam_torch(boxes, features.original_sizes.to(self.device))
        sparse, dense = self.box_prompt(boxes_sam)
        out = ForwardOutput(low_res_logits=torch.empty(0), iou=torch.empty(0))
        if texts is not None or text_embeddings is not None:
            if text_embeddings is None:
                if len(texts) != b:
                    raise ValueError(f"need one text per item: {len(texts)} for {b} items")
                text_embeddings = self.encode_texts(texts)
            text = self.project_text(text_embeddings.to(self.device))
            patches_n = l2_normalize(features.dino_patches)
            head_emb = head_embeddings(features.dino_patches, features.dino_attn)
            cos, out.global_score = self.cosine_grid(text, patches_n, head_emb,
                                                     features.dino_attn)
            sizes = [tuple(s) for s in features.input_sizes.tolist()]
            out.cosine, out.similarity = cos, cosine_to_unit(cos)
            out.mask_prompt = self.mask_prompt.to_prompt(cos, sizes)
            dense = self.mask_prompt(out.mask_prompt)
        hq_feats = self.hq_features(features.sam_embedding, features.sam_interm)
        # One box per item: each row is decoded against its own image embedding.
        out.low_res_logits, out.iou = self.decode(features.sam_embedding, hq_feats, sparse, dense)
        if upsample:
            out.logits = [
                T.low_res_to_source(out.low_res_logits[i: i + 1],
                                    tuple(features.input_sizes[i].tolist()),
                                    tuple(features.original_sizes[i].tolist()))[0]
                for i in range(b)
            ]
        return out

    def describe(self) -> dict[str, Any]:
        """Small summary for logs/benchmarks."""
        return {"preset": self.config.preset, "similarity_mode": self.config.similarity_mode,
                "encoder_dtype": str(self.encoder_dtype), "device": str(self.device),
                "runtime": ("torch" if self.image_runtime is None
                            else self.image_runtime.describe()),
                **self.parameter_counts()}
