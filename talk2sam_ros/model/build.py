"""build_talk2sam: presets -> parts -> seeded random init -> checkpoints -> device/dtype; and our
trained-weights files (trainable parts + config + frozen-encoder fingerprint)."""
from __future__ import annotations

import logging
import os
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from segment_anything_hq.modeling.common import LayerNorm2d
from torch import nn

from .checkpoints import (CHECKPOINT_PARTS, CheckpointError, atomic_torch_save,
                          safe_torch_load)
from .config import ModelConfig, get_preset
from .dino_backbone import DinoBackbone
from .export import prepare_runtime
from .mask_prompt import MaskPromptEncoder
from .projector import Talk2DINOProjection
from .sam_hq import build_sam_hq, load_sam_hq_checkpoint, use_sdpa_attention
from .talk2sam import Talk2SAM
from .text_encoder import CLIPTextEncoder

log = logging.getLogger(__name__)

WEIGHTS_FORMAT = "talk2sam_ros.trained_weights"
WEIGHTS_VERSION = 1
DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
# Config fields that define the architecture of the frozen parts / the saved tensors.
_ARCH_FIELDS = ("sam", "dino", "clip", "dino_dim", "dino_heads", "train_full_decoder",
                "train_clip_projection")
# Behaviour fields a head is trained with: a different value still loads (experiments) but
# the head then sees inputs it was not trained on, so loading warns.
_TRAINED_WITH_FIELDS = ("templates", "similarity_mode", "hq_token_only", "multimask_output")
# Values of architecture fields added after files were written without them.
_ARCH_DEFAULTS = {"train_clip_projection": False}


def build_talk2sam(preset: str | ModelConfig | None = "tiny",
                   checkpoints: Mapping[str, str | os.PathLike] | None = None,
                   device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32,
                   export_dir: str | os.PathLike | None = None,
                   progress: Callable[[str], None] | None = None) -> Talk2SAM:
    """Build a Talk2SAM model in eval mode.

    preset: a preset name ("tiny", "t", "b", "l", "h"), a ModelConfig, or None to take the
    config stored in checkpoints["talk2sam"]. checkpoints: part -> local file, parts
    "sam_hq", "dinov2", "clip", "projection", "talk2sam"; parts without a file keep fixed-seed
    random weights. Frozen encoders run in `dtype`; the trainable head, prompt encoder, decoder
    and the similarity maths stay float32.
    config.runtime onnxruntime: the image encoders run as validated ONNX exports kept in
    `export_dir` (made there on first use, reported through `progress`; float32 only, see
    export.prepare_runtime).
    """
    checkpoints = dict(checkpoints or {})
    unknown = set(checkpoints) - set(CHECKPOINT_PARTS)
    if unknown:
        raise ValueError(f"unknown checkpoint parts {sorted(unknown)}; expected "
                         f"{list(CHECKPOINT_PARTS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES.values())}, got {dtype}")
    if preset is None:
        if "talk2sam" not in checkpoints:
            raise ValueError("preset=None needs checkpoints['talk2sam'] to read the config from")
        config = trained_weights_config(checkpoints["talk2sam"])
    elif isinstance(preset, ModelConfig):
        config = preset
    else:
        config = get_preset(preset)

    with torch.random.fork_rng(devices=[]):  # library inits must not move the caller's RNG
        text_encoder = CLIPTextEncoder(config.clip)
        projection = Talk2DINOProjection(config.clip.embed_dim, config.dino_dim)
        dino = DinoBackbone(config.dino)
        sam = build_sam_hq(config.sam)
        mask_prompt = MaskPromptEncoder(config.sam.prompt_dim, config.sam.mask_in_chans,
                                        config.prompt_scale_init, config.prompt_bias_init)
    if config.train_clip_projection and text_encoder.tower.text_projection is None:
        raise ValueError(f"train_clip_projection: {config.clip.open_clip_name} has no "
                         "text_projection")
    if dino.embed_dim != config.dino_dim or dino.num_heads != config.dino_heads:
        raise ValueError(f"config dino_dim/dino_heads {config.dino_dim}/{config.dino_heads} "
                         f"do not match {config.dino.timm_name} ({dino.embed_dim}/"
                         f"{dino.num_heads})")
    parts = {"clip": text_encoder, "projection": projection, "dinov2": dino, "sam_hq": sam,
             "mask_prompt": mask_prompt}
    for name, module in parts.items():
        seeded_init_(module, config.init_seed * 1000003 + zlib.crc32(name.encode()))

    if "sam_hq" in checkpoints:
        load_sam_hq_checkpoint(sam, checkpoints["sam_hq"])
        mask_prompt.init_from_sam(sam.prompt_encoder)
    if "dinov2" in checkpoints:
        dino.load_checkpoint(checkpoints["dinov2"])
    if "clip" in checkpoints:
        text_encoder.load_checkpoint(checkpoints["clip"])
    if "projection" in checkpoints:
        projection.load_checkpoint(checkpoints["projection"])

    model = Talk2SAM(config, text_encoder, projection, dino, sam, mask_prompt)
    model.encoder_fingerprint = model.compute_fingerprint()
    if "talk2sam" in checkpoints:
        load_trained_weights(model, checkpoints["talk2sam"])
    if config.sam_sdpa:
        use_sdpa_attention(sam.image_encoder)
    if config.runtime != "torch":
        if dtype != torch.float32:
            raise ValueError(f"runtime {config.runtime} runs the encoders in float32, not "
                             f"{DTYPES[dtype]} (fp16 on a GPU: runtime_provider tensorrt and "
                             "runtime_fp16)")
        model.eval()  # exported and validated here, on the CPU, before the move
        prepare_runtime(model, export_dir, device, progress)
    model.to(device)
    for frozen in (text_encoder, dino, sam.image_encoder):
        frozen.to(dtype)
    with torch.no_grad():  # trainable parts stay float32 (CLIP's text_projection, if trained)
        for param in model.trainable_parameters():
            param.data = param.data.float()
    model.encoder_dtype = dtype
    if config.compile:
        model.compile_encoders()
    model.eval()
    log.info("built Talk2SAM %s on %s (%s): %s", config.preset, device, DTYPES[dtype],
             model.parameter_counts())
    return model


@torch.no_grad()
def seeded_init_(module: nn.Module, seed: int) -> None:
    """Overwrite every floating parameter (and SAM's random Fourier PE matrix) from a local
    torch.Generator, independent of the global RNG and of library init schemes: norms get
    weight 1 / bias 0, other biases 0, LayerScale gammas 1, matrices N(0, 1/fan_in), other
    vectors N(0, 0.02^2). 0-d parameters keep their constructor value."""
    gen = torch.Generator().manual_seed(int(seed) % (2 ** 63))
    norm_types = (nn.LayerNorm, LayerNorm2d, nn.GroupNorm, nn.BatchNorm2d)
    norm_params = set()
    for mod in module.modules():
        if isinstance(mod, norm_types) or type(mod).__name__.startswith("LayerNorm"):
            for pname, param in mod.named_parameters(recurse=False):
                param.fill_(1.0 if pname == "weight" else 0.0)
                norm_params.add(id(param))
    for name, param in module.named_parameters():
        if id(param) in norm_params or param.dim() == 0 or not param.is_floating_point():
            continue
        if name.endswith("bias"):
            values = torch.zeros(param.shape)
        elif name.endswith("gamma"):
            values = torch.ones(param.shape)
        elif param.dim() >= 2:
            fan_in = max(1, param[0].numel())
            values = torch.randn(param.shape, generator=gen) * fan_in ** -0.5
        else:
            values = torch.randn(param.shape, generator=gen) * 0.02
        param.copy_(values)
    for name, buf in module.named_buffers():
        if name.endswith("positional_encoding_gaussian_matrix"):
            buf.copy_(torch.randn(buf.shape, generator=gen))


# ---------------------------------------------------------------------- trained weights
def save_trained_weights(model: Talk2SAM, path: str | os.PathLike,
                         extra: Mapping[str, Any] | None = None) -> None:
    """Write the trainable parts (float32, CPU) + config + frozen-encoder fingerprint,
    atomically. `extra`: small plain metadata (e.g. epoch, dataset) kept under 'meta'."""
    state = {k: v.detach().float().cpu().clone() for k, v in model.trainable_state_dict().items()}
    atomic_torch_save({
        "format": WEIGHTS_FORMAT,
        "version": WEIGHTS_VERSION,
        "config": model.config.to_dict(),
        "encoder_fingerprint": model.encoder_fingerprint,
        "parameter_counts": model.parameter_counts(),
        "meta": dict(extra or {}),
        "state_dict": state,
    }, path)


def _read_weights_file(path: str | os.PathLike) -> dict[str, Any]:
    data = safe_torch_load(path, "talk2sam")
    if not isinstance(data, dict) or data.get("format") != WEIGHTS_FORMAT:
        raise CheckpointError(f"talk2sam: {path} is not a Talk2SAM trained-weights file "
                              f"(no format={WEIGHTS_FORMAT!r} entry)")
    if data.get("version") != WEIGHTS_VERSION:
        raise CheckpointError(f"talk2sam: {path} has version {data.get('version')}, "
                              f"expected {WEIGHTS_VERSION}")
    return data


def trained_weights_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig a trained-weights file was trained with (its architecture flags, e.g.
    train_full_decoder / train_clip_projection, must be used to build the model it loads on)."""
    data = _read_weights_file(path)
    try:
        return ModelConfig.from_dict(data["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"talk2sam: {path} has no valid model config ({exc})") from exc


def load_trained_weights(model: Talk2SAM, path: str | os.PathLike,
                         check_fingerprint: bool = True) -> dict[str, Any]:
    """Load our trained parts onto `model` (exact round trip). Raises CheckpointError if the
    architecture or the frozen encoders (fingerprint) differ. Returns the file's 'meta'."""
    data = _read_weights_file(path)
    file_cfg = data["config"]
    model_cfg = model.config.to_dict()
    diff = [f for f in _ARCH_FIELDS
            if file_cfg.get(f, _ARCH_DEFAULTS.get(f)) != model_cfg.get(f)]
    if diff:
        raise CheckpointError(
            f"talk2sam: {path} was trained for preset {file_cfg.get('preset')!r} with a "
            f"different architecture ({', '.join(diff)} differ) than this model "
            f"(preset {model.config.preset!r})")
    other = [f for f in _TRAINED_WITH_FIELDS
             if f in file_cfg and file_cfg[f] != model_cfg.get(f)]
    if other:
        log.warning("talk2sam: %s was trained with other %s (%s) than this model uses (%s); "
                    "build with preset=None to use the file's config", path, ", ".join(other),
                    ", ".join(f"{f}={file_cfg[f]!r}" for f in other),
                    ", ".join(f"{f}={model_cfg.get(f)!r}" for f in other))
    if check_fingerprint and data["encoder_fingerprint"] != model.encoder_fingerprint:
        raise CheckpointError(
            f"talk2sam: {path} was trained on different frozen encoders (fingerprint "
            f"{data['encoder_fingerprint'][:12]}, this model {model.encoder_fingerprint[:12]}); "
            "load the same CLIP/DINOv2/SAM-HQ checkpoints it was trained with")
    state = data["state_dict"]
    expected = model.trainable_state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f"talk2sam: {path} does not match the model's trainable parts: "
                              f"missing {missing[:5]}, unexpected {unexpected[:5]}, "
                              f"shape mismatch {shapes[:5]}")
    with torch.no_grad():
        current = model.state_dict()
        for key, value in state.items():
            current[key].copy_(value.to(current[key].dtype))
    log.info("loaded trained Talk2SAM weights from %s", path)
    return dict(data.get("meta", {}))
