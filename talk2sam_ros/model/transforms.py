"""The only home of image/box/mask geometry and normalisation for Talk2SAM.

Frames:
- source: the caller's image, H x W pixels, XYXY boxes in pixels.
- SAM: long side resized to 1024 (PIL bilinear, as segment_anything_hq's predictor), padded
  bottom/right to 1024 x 1024; `input_size` = (h, w) of the resized, unpadded image.
  Low-res mask logits / mask prompts are 256 x 256 in this padded frame; the valid region is the
  top-left ceil(input_size / 4).
- DINOv2: the whole source image squashed to 448 x 448 (aspect not kept, as Talk2DINO at
  inference), i.e. a 32 x 32 patch grid that covers the full source image.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything_hq.utils.transforms import ResizeLongestSide

SAM_IMAGE_SIZE = 1024
SAM_LOW_RES = 256
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)  # on 0..255, as segment_anything_hq's Sam
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # on 0..1, DINOv2 / Talk2DINO
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_rgb(image: np.ndarray) -> np.ndarray:
    """Validate an H x W x 3 uint8 RGB image; return it C-contiguous."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be H x W x 3 (RGB), got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"image too small: {image.shape[:2]}")
    return np.ascontiguousarray(image)


def sam_input_size(original_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the image after SAM's long-side resize to 1024 (rounded half up)."""
    h, w = ResizeLongestSide.get_preprocess_shape(original_size[0], original_size[1],
                                                  SAM_IMAGE_SIZE)
    return int(h), int(w)


def sam_preprocess(image: np.ndarray, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, tuple[int, int]]:
    """RGB uint8 H x W x 3 -> (1, 3, 1024, 1024) normalised, padded bottom/right; input_size.

    Same resize (PIL via torchvision) and arithmetic as segment_anything_hq's SamPredictor, so
    the embeddings are bit-identical to it.
    """
    image = check_rgb(image)
    resized = ResizeLongestSide(SAM_IMAGE_SIZE).apply_image(image)
    x = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()[None]
    mean = torch.tensor(SAM_PIXEL_MEAN, device=device).view(-1, 1, 1)
    std = torch.tensor(SAM_PIXEL_STD, device=device).view(-1, 1, 1)
    x = (x - mean) / std
    h, w = x.shape[-2:]
    x = F.pad(x, (0, SAM_IMAGE_SIZE - w, 0, SAM_IMAGE_SIZE - h))
    return x.to(dtype), (int(h), int(w))


def dino_preprocess(image: np.ndarray, size: int = 448, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """RGB uint8 H x W x 3 -> (1, 3, size, size): squashed bilinear (antialiased) resize, /255,
    ImageNet normalisation. RGB order is kept (see docs/model.md on Talk2DINO's BGR flip)."""
    image = check_rgb(image)
    x = torch.as_tensor(image, device=device).permute(2, 0, 1)[None].float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return ((x - mean) / std).to(dtype)


def boxes_to_sam(boxes: np.ndarray, original_size: tuple[int, int],
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, 4) XYXY source px -> (N, 4) float32 tensor in the SAM 1024 frame."""
    mapped = ResizeLongestSide(SAM_IMAGE_SIZE).apply_boxes(np.asarray(boxes), original_size)
    return torch.as_tensor(mapped, dtype=torch.float, device=device)


def boxes_to_sam_torch(boxes: torch.Tensor, original_sizes: torch.Tensor) -> torch.Tensor:
    """Batched (B, 4) source px boxes with per-item (B, 2) original (h, w) -> SAM frame."""
    scale = SAM_IMAGE_SIZE / original_sizes.max(dim=1).values.to(boxes.dtype)
    h_new = torch.floor(original_sizes[:, 0].to(boxes.dtype) * scale + 0.5)
    w_new = torch.floor(original_sizes[:, 1].to(boxes.dtype) * scale + 0.5)
    sx = (w_new / original_sizes[:, 1].to(boxes.dtype))[:, None]
    sy = (h_new / original_sizes[:, 0].to(boxes.dtype))[:, None]
    return boxes * torch.cat([sx, sy, sx, sy], dim=1)


def low_res_to_source(logits: torch.Tensor, input_size: tuple[int, int],
                      original_size: tuple[int, int]) -> torch.Tensor:
    """(N, C, 256, 256) logits in the padded SAM frame -> (N, C, H, W) at source resolution
    (same ops as segment_anything_hq's Sam.postprocess_masks)."""
    x = F.interpolate(logits, (SAM_IMAGE_SIZE, SAM_IMAGE_SIZE), mode="bilinear",
                      align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)


def prompt_valid_size(input_size: tuple[int, int]) -> tuple[int, int]:
    """Valid (h, w) of the 256 x 256 mask prompt for a SAM input_size: ceil(input_size / 4)."""
    scale = SAM_IMAGE_SIZE // SAM_LOW_RES
    return math.ceil(input_size[0] / scale), math.ceil(input_size[1] / scale)


def grid_to_mask_prompt(grid: torch.Tensor, input_sizes: Sequence[tuple[int, int]]
                        ) -> torch.Tensor:
    """(B, 1, g, g) map over the whole source image -> (B, 1, 256, 256) SAM mask-prompt frame.

    The map is resized bilinearly onto the valid top-left ceil(input_size / 4) region and the
    padding is zero, so it lines up with SAM's (bottom/right padded) image embedding.
    """
    out = grid.new_zeros(grid.shape[0], grid.shape[1], SAM_LOW_RES, SAM_LOW_RES)
    for i, size in enumerate(input_sizes):
        vh, vw = prompt_valid_size(tuple(int(s) for s in size))
        out[i, :, :vh, :vw] = F.interpolate(grid[i: i + 1], (vh, vw), mode="bilinear",
                                            align_corners=False)[0]
    return out


def grid_to_source(grid: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
    """(B, C, g, g) map over the whole image -> (B, C, H, W) bilinear at source resolution."""
    return F.interpolate(grid, tuple(original_size), mode="bilinear", align_corners=False)


def grid_cells_to_source_boxes(cells: np.ndarray, grid_size: tuple[int, int],
                               original_size: tuple[int, int]) -> np.ndarray:
    """(N, 4) inclusive cell ranges (c0, r0, c1, r1) of a g x g grid covering the whole image
    -> (N, 4) float32 XYXY source-pixel boxes (cell edges)."""
    cells = np.asarray(cells, dtype=np.float64).reshape(-1, 4)
    gh, gw = grid_size
    h, w = original_size
    sx, sy = w / gw, h / gh
    boxes = np.stack([cells[:, 0] * sx, cells[:, 1] * sy,
                      (cells[:, 2] + 1) * sx, (cells[:, 3] + 1) * sy], axis=1)
    return boxes.astype(np.float32)
