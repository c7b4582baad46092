"""Talk2SAMPredictor: set_image() runs the frozen image encoders once and caches every
prompt-independent tensor; predict(text, boxes) then costs only text (LRU-cached), similarity,
prompt encoders and the decoder."""
from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from talk2sam_ros.common.boxes import check_boxes
from talk2sam_ros.common.timing import timed

from . import transforms as T
from .similarity import boxes_from_similarity, cosine_to_unit, head_embeddings, l2_normalize
from .talk2sam import Talk2SAM
from .timing import device_sync

log = logging.getLogger(__name__)
_PREDICTOR_IDS = itertools.count()


@dataclass
class Prediction:
    """One predict() result; arrays at source resolution unless stated.

    masks (N, H, W) bool; scores (N,) float32 predicted IoU; logits (N, H, W) float32;
    low_res_logits (N, 256, 256) float32 in SAM's padded frame; similarity (H, W) float32 in
    [0, 1] (None when text is None); boxes (N, 4) float32 XYXY px actually used;
    boxes_from_text: the boxes came from the similarity map; timings: ms per stage of this call.
    """

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    low_res_logits: np.ndarray
    similarity: np.ndarray | None
    boxes: np.ndarray
    boxes_from_text: bool
    timings: dict[str, float] = field(default_factory=dict)
    text: str | None = None
    frame_key: str = ""


@dataclass(frozen=True)
class _Frame:
    """Immutable per-frame cache; predict() takes one reference, so a concurrent set_image can
    never pair a new prompt with a half-replaced frame."""

    key: str
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    embedding: torch.Tensor  # (1, C, 64, 64)
    interm0: torch.Tensor  # (1, 64, 64, C_vit) first global block (to refresh hq_feats)
    hq_feats: torch.Tensor  # (1, C/8, 256, 256) fused HQ features
    hq_state: tuple[tuple[int, int], ...]  # _hq_weights_state() hq_feats was computed with
    patches_n: torch.Tensor  # (1, N, D) L2-normalised DINOv2 patch tokens
    head_emb: torch.Tensor  # (1, H, D) Talk2DINO per-head embeddings (attention_max)
    attn: torch.Tensor  # (1, H, N)


class Talk2SAMPredictor:
    """SAM-style predictor over a built Talk2SAM model (see docs/model.md)."""

    def __init__(self, model: Talk2SAM, text_cache_size: int = 128) -> None:
        self.model = model.eval()
        self.text_cache_size = int(text_cache_size)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._frame: _Frame | None = None
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._prefix = f"p{next(_PREDICTOR_IDS)}"
        self.encode_count = 0
        self.text_encode_count = 0
        self.last_encode_timings: dict[str, float] = {}

    # ------------------------------------------------------------------ frame
    @property
    def is_image_set(self) -> bool:
        return self._frame is not None

    @property
    def frame_key(self) -> str | None:
        frame = self._frame
        return None if frame is None else frame.key

    @torch.inference_mode()
    def set_image(self, image: np.ndarray) -> str:
        """Encode an RGB uint8 H x W x 3 image once; returns the new frame key."""
        model = self.model
        sync = device_sync(model.device)
        timings: dict[str, float] = {}
        image = T.check_rgb(image)
        with timed(timings, "preprocess", sync):
            sam_in, input_size = T.sam_preprocess(image, model.device, model.encoder_dtype)
            dino_in = T.dino_preprocess(image, model.config.dino.img_size, model.device,
                                        model.encoder_dtype)
        with timed(timings, "sam_encode", sync):
            emb, interm0 = model.encode_sam(sam_in)
        with timed(timings, "dino_encode", sync):
            patches, attn = model.encode_dino(dino_in)
        with timed(timings, "frame_cache", sync):
            hq_state = _hq_weights_state(model)
            hq_feats = model.hq_features(emb, interm0)
            patches_n = l2_normalize(patches)
            head_emb = head_embeddings(patches, attn)
        with self._lock:
            key = f"{self._prefix}-{next(self._ids)}"
            self._frame = _Frame(key, (int(image.shape[0]), int(image.shape[1])), input_size,
                                 emb, interm0, hq_feats, hq_state, patches_n, head_emb, attn)
            self.encode_count += 1
        self.last_encode_timings = timings
        return key

    def reset_image(self) -> None:
        with self._lock:
            self._frame = None

    def clear_text_cache(self) -> None:
        with self._lock:
            self._text_cache.clear()

    # ------------------------------------------------------------------ text
    def text_embedding(self, text: str) -> torch.Tensor:
        """`model.encode_texts` features of `text` (the CLIP template ensemble; before CLIP's
        text_projection when that is trained), LRU-cached: frozen, so the cache stays valid
        when trained weights are (re)loaded."""
        key = text.strip()
        with self._lock:
            cached = self._text_cache.get(key)
            if cached is not None:
                self._text_cache.move_to_end(key)
                return cached
        emb = self.model.encode_texts([key])
        with self._lock:
            self.text_encode_count += 1
            if self.text_cache_size > 0:
                self._text_cache[key] = emb
                while len(self._text_cache) > self.text_cache_size:
                    self._text_cache.popitem(last=False)
        return emb

    # ------------------------------------------------------------------ predict
    @torch.inference_mode()
    def predict(self, text: str | None = None, boxes: object = None, *,
                mask_input: np.ndarray | None = None, frame_key: str | None = None,
                multimask_output: bool | None = None, hq_token_only: bool | None = None
                ) -> Prediction:
        """Segment on the current frame.

        text + boxes: Talk2SAM (similarity map through the trainable mask-prompt encoder).
        text only: boxes from the similarity map (boxes_from_text=True).
        boxes only: plain SAM-HQ (SAM's no-mask embedding), or with `mask_input` (256 x 256 or
        1 x 256 x 256 logits in SAM's padded frame) through SAM-HQ's original mask encoder.
        boxes: (N, 4) or (4,) XYXY source pixels. frame_key: if given, must be the current
        frame's key (guards against pairing a prompt with a newer frame).
        """
        frame = self._frame
        if frame is None:
            raise RuntimeError("no image set: call set_image(rgb) before predict()")
        if frame_key is not None and frame_key != frame.key:
            raise RuntimeError(f"stale frame: prompt for frame {frame_key!r} but the current "
                               f"frame is {frame.key!r}")
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise ValueError(f"text must be a non-empty string or None, got {text!r}")
        if text is None and boxes is None:
            raise ValueError("predict needs a text, boxes, or both")
        if text is not None and mask_input is not None:
            raise ValueError("mask_input is only for box-only mode (text=None)")
        model = self.model
        dev = model.device
        if frame.embedding.device != dev:
            raise RuntimeError(f"the model moved to {dev} after set_image (frame cached on "
                               f"{frame.embedding.device}): call set_image again")
        sync = device_sync(dev)
        timings: dict[str, float] = {}
        boxes_np = None if boxes is None else check_boxes(boxes, frame.original_size)
        frame = self._refresh_hq_features(frame, timings)

        similarity = None
        dense = None
        from_text = False
        if text is not None:
            with timed(timings, "text", sync):
                proj = model.project_text(self.text_embedding(text).to(dev))
            with timed(timings, "similarity", sync):
                cos, _ = model.cosine_grid(proj, frame.patches_n, frame.head_emb, frame.attn)
                unit_grid = cosine_to_unit(cos)
                similarity = T.grid_to_source(unit_grid, frame.original_size)[0, 0]
            if boxes_np is None:
                with timed(timings, "text_boxes", sync):
                    boxes_np = self._boxes_from_grid(unit_grid[0, 0].cpu().numpy(),
                                                     frame.original_size)
                from_text = True
            with timed(timings, "mask_prompt", sync):
                dense = model.mask_prompt(model.mask_prompt.to_prompt(cos, [frame.input_size]))
        assert boxes_np is not None
        with timed(timings, "prompt", sync):
            boxes_sam = T.boxes_to_sam(boxes_np, frame.original_size, dev)
            sparse, no_mask = model.box_prompt(boxes_sam)
            if dense is None:
                dense = no_mask
                if mask_input is not None:
                    dense = model.sam.prompt_encoder._embed_masks(
                        _check_mask_input(mask_input, dev))
        with timed(timings, "decode", sync):
            low_res, iou = model.decode(frame.embedding, frame.hq_feats, sparse, dense,
                                        multimask_output, hq_token_only)
        with timed(timings, "postprocess", sync):
            logits = T.low_res_to_source(low_res, frame.input_size, frame.original_size)[:, 0]
            logits_np = logits.float().cpu().numpy()
            result = Prediction(
                masks=logits_np > 0.0,
                scores=iou[:, 0].float().cpu().numpy(),
                logits=logits_np,
                low_res_logits=low_res[:, 0].float().cpu().numpy(),
                similarity=None if similarity is None else similarity.float().cpu().numpy(),
                boxes=boxes_np.astype(np.float32),
                boxes_from_text=from_text,
                text=text,
                frame_key=frame.key,
            )
        result.timings = timings
        return result

    def _refresh_hq_features(self, frame: _Frame, timings: dict[str, float]) -> _Frame:
        """The cached HQ features depend on trainable decoder weights (embedding_encoder,
        compress_vit_feat): recompute them if those changed since set_image (trained weights
        loaded, heads swapped, an optimiser step), so a prompt never mixes old and new."""
        state = _hq_weights_state(self.model)
        if state == frame.hq_state:
            return frame
        with timed(timings, "frame_refresh", device_sync(self.model.device)):
            hq_feats = self.model.hq_features(frame.embedding, frame.interm0)
        fresh = dataclasses.replace(frame, hq_feats=hq_feats, hq_state=state)
        with self._lock:
            if self._frame is frame:  # unless a newer frame was set meanwhile
                self._frame = fresh
        return fresh

    def _boxes_from_grid(self, grid: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        cfg = self.model.config
        cells, _ = boxes_from_similarity(grid, cfg.text_box_threshold, cfg.text_box_relative,
                                         cfg.max_text_boxes, cfg.text_box_min_cells)
        if len(cells) == 0:  # nothing stands out: fall back to the full image
            h, w = original_size
            return np.array([[0.0, 0.0, float(w), float(h)]], dtype=np.float32)
        return T.grid_cells_to_source_boxes(cells, grid.shape, original_size)


def _hq_weights_state(model: Talk2SAM) -> tuple[tuple[int, int], ...]:
    """(storage, in-place version) of every weight the fused HQ features depend on: changes
    when weights are loaded (state_dict tensors share the version counter) or updated in place
    by an optimiser, or when a parameter is replaced (e.g. moved). Writes through `.data`
    bypass the version counter and are not seen."""
    dec = model.sam.mask_decoder
    return tuple((p.data_ptr(), p._version)
                 for part in (dec.embedding_encoder, dec.compress_vit_feat)
                 for p in part.parameters())


def _check_mask_input(mask_input: np.ndarray, device: torch.device) -> torch.Tensor:
    arr = np.asarray(mask_input, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape != (1, T.SAM_LOW_RES, T.SAM_LOW_RES) or not np.all(np.isfinite(arr)):
        raise ValueError(f"mask_input must be finite 256 x 256 (or 1 x 256 x 256) logits, "
                         f"got shape {np.asarray(mask_input).shape}")
    return torch.as_tensor(arr, device=device)[None]
