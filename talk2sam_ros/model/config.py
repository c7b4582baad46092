"""Frozen dataclass configs for the Talk2SAM model and its presets (tiny, t, b, l, h).

A config fully describes the architecture (not the weights): the trained-weights file stores it so
that a head trained with one config can only be loaded onto the same architecture.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

# Talk2DINO's `sub_imagenet_template` (datasets/templates.py), used by its eval configs and demo.
SUB_IMAGENET_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of a {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

SAM_VARIANTS = ("vit_b", "vit_l", "vit_h", "vit_tiny", "custom")
SIMILARITY_MODES = ("patch", "attention_max")
# Where the frozen image encoders run (docs/model.md, "Runtimes"): eager/compiled PyTorch, or
# their ONNX exports in ONNX Runtime with an execution provider and optional int8 weights.
RUNTIMES = ("torch", "onnxruntime")
RUNTIME_PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")
RUNTIME_QUANTIZE = ("none", "int8_dynamic")


@dataclass(frozen=True)
class SamConfig:
    """SAM-HQ architecture. `variant` names segment_anything_hq's registry entry, or `custom` for
    a reduced ImageEncoderViT (tiny preset) built from the same modeling classes."""

    variant: str = "vit_b"
    embed_dim: int = 768  # image-encoder ViT width (vit_dim of the HQ decoder)
    depth: int = 12
    num_heads: int = 12
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    prompt_dim: int = 256  # prompt/decoder width (SAM: 256)
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 256
    image_size: int = 1024  # SAM geometry: 1024 input, 64x64 embedding, 256x256 mask input
    mask_in_chans: int = 16
    use_rel_pos: bool = True  # official variants: True; the tiny preset skips it for speed

    def __post_init__(self) -> None:
        if self.variant not in SAM_VARIANTS:
            raise ValueError(
                f"unknown SAM variant {self.variant!r}; expected one of {SAM_VARIANTS}")
        object.__setattr__(self, "global_attn_indexes", tuple(self.global_attn_indexes))
        if self.image_size != 1024:
            raise ValueError("SAM image_size must be 1024 (64x64 embedding, 256x256 mask input)")


@dataclass(frozen=True)
class DinoConfig:
    """DINOv2 with registers via timm. None overrides keep the timm model's own value."""

    timm_name: str = "vit_base_patch14_reg4_dinov2"
    img_size: int = 448  # Talk2DINO resize_dim: 32x32 patches of 14 px
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    num_registers: int = 4

    def timm_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"img_size": self.img_size}
        for name in ("embed_dim", "depth", "num_heads"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        return kw


@dataclass(frozen=True)
class ClipConfig:
    """CLIP text tower via open_clip. None overrides keep the open_clip config's value."""

    open_clip_name: str = "ViT-B-16-quickgelu"  # OpenAI ViT-B/16 weights need QuickGELU
    width: int | None = None
    layers: int | None = None
    heads: int | None = None
    embed_dim: int = 512  # projection input of Talk2DINO (512 for ViT-B/16)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a Talk2SAM model (architecture + inference behaviour)."""

    preset: str = "b"
    sam: SamConfig = field(default_factory=SamConfig)
    dino: DinoConfig = field(default_factory=DinoConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    dino_dim: int = 768  # D: DINOv2 width = projection output size
    dino_heads: int = 12
    templates: tuple[str, ...] = SUB_IMAGENET_TEMPLATES
    similarity_mode: str = "patch"  # "patch" (inference) | "attention_max" (Talk2DINO training)
    # Mask prompt = prompt_scale * (cosine - prompt_bias); both learnable, see docs/model.md.
    prompt_scale_init: float = 10.0
    prompt_bias_init: float = 0.2  # logit(0.55): Talk2DINO's background score, in cosine units
    multimask_output: bool = False
    hq_token_only: bool = True  # SAM-HQ's own evaluation uses the HQ logits alone
    train_full_decoder: bool = False  # False: only SAM-HQ's HQ parts of the decoder learn
    # The paper's "CLIP partial": CLIP's final text_projection learns too (texts are then
    # cached before it; see docs/model.md).
    train_clip_projection: bool = False
    # Text-only mode: boxes from the similarity map (see similarity.boxes_from_similarity).
    text_box_threshold: float = 0.55
    text_box_relative: float = 0.5
    max_text_boxes: int = 3
    text_box_min_cells: int = 2
    init_seed: int = 0  # fixed seed of the random weights (local generator, never global RNG)
    compile: bool = False  # torch.compile the frozen image encoders
    sam_sdpa: bool = True  # SAM image-encoder attention through scaled_dot_product_attention
    # Inference only (never changes what a head learns): the encoders' runtime (RUNTIMES); the
    # ONNX Runtime execution provider (auto: cuda when the model is on a CUDA device); fp16
    # TensorRT engines; int8 dynamic quantisation of the exported encoders (CPU).
    runtime: str = "torch"
    runtime_provider: str = "auto"
    runtime_fp16: bool = False
    runtime_quantize: str = "none"

    def __post_init__(self) -> None:
        if self.similarity_mode not in SIMILARITY_MODES:
            raise ValueError(
                f"unknown similarity_mode {self.similarity_mode!r}; expected {SIMILARITY_MODES}"
            )
        object.__setattr__(self, "templates", tuple(self.templates))
        if not self.templates or any("{}" not in t for t in self.templates):
            raise ValueError("templates must be a non-empty list of strings containing '{}'")
        if not 0.0 <= self.text_box_threshold <= 1.0:
            raise ValueError("text_box_threshold must be in [0, 1]")
        if not 0.0 <= self.text_box_relative <= 1.0:
            raise ValueError("text_box_relative must be in [0, 1]")
        if self.max_text_boxes < 1 or self.text_box_min_cells < 1:
            raise ValueError("max_text_boxes and text_box_min_cells must be >= 1")
        check_runtime_options(self.runtime, self.runtime_provider, self.runtime_fp16,
                              self.runtime_quantize, self.compile)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of str/int/float/bool/list/None (safe for weights_only loading)."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelConfig":
        data = dict(data)
        sub = {"sam": SamConfig, "dino": DinoConfig, "clip": ClipConfig}
        for key, klass in sub.items():
            if key in data and isinstance(data[key], Mapping):
                data[key] = klass(**data[key])
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {sorted(unknown)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def check_runtime_options(runtime: str, provider: str, fp16: bool, quantize: str,
                          compile: bool = False) -> None:
    """ValueError (one line) for an unknown or contradictory runtime option combination."""
    for name, value, allowed in (("runtime", runtime, RUNTIMES),
                                 ("runtime_provider", provider, RUNTIME_PROVIDERS),
                                 ("runtime_quantize", quantize, RUNTIME_QUANTIZE)):
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")
    if runtime == "torch":
        if provider != "auto" or fp16 or quantize != "none":
            raise ValueError("runtime_provider, runtime_fp16 and runtime_quantize apply to "
                             "runtime onnxruntime, not torch")
        return
    if compile:
        raise ValueError(f"compile (torch.compile) applies to runtime torch, not {runtime}")
    if fp16 and provider != "tensorrt":
        raise ValueError("runtime_fp16 builds TensorRT engines: set runtime_provider tensorrt")
    if quantize != "none" and provider in ("cuda", "tensorrt"):
        raise ValueError(f"runtime_quantize {quantize} runs on the CPU execution provider, "
                         f"not {provider}")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


_SAM_B = SamConfig("vit_b", 768, 12, 12, (2, 5, 8, 11))
_SAM_L = SamConfig("vit_l", 1024, 24, 16, (5, 11, 17, 23))
_SAM_H = SamConfig("vit_h", 1280, 32, 16, (7, 15, 23, 31))
# TinyViT (MobileSAM) encoder; vit_dim 160 for the HQ decoder. depth/heads are unused.
_SAM_T = SamConfig("vit_tiny", 160, 0, 0, ())
_DINO_B = DinoConfig("vit_base_patch14_reg4_dinov2")
_DINO_L = DinoConfig("vit_large_patch14_reg4_dinov2")

PRESETS: dict[str, ModelConfig] = {
    # Smallest real architectures of each part, random weights: CPU seconds, no files.
    "tiny": ModelConfig(
        preset="tiny",
        sam=SamConfig(
            "custom", embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,),
            prompt_dim=64, decoder_mlp_dim=256, decoder_heads=4, iou_head_hidden_dim=64,
            use_rel_pos=False,
        ),
        dino=DinoConfig("vit_small_patch14_reg4_dinov2", embed_dim=64, depth=2, num_heads=2),
        clip=ClipConfig("ViT-B-16-quickgelu", width=64, layers=2, heads=2),
        dino_dim=64,
        dino_heads=2,
    ),
    # SAM-HQ vit_tiny (TinyViT) + DINOv2-B/14 reg4: the light option with real weights.
    "t": ModelConfig(preset="t", sam=_SAM_T, dino=_DINO_B, dino_dim=768, dino_heads=12),
    "b": ModelConfig(preset="b", sam=_SAM_B, dino=_DINO_B, dino_dim=768, dino_heads=12),
    "l": ModelConfig(preset="l", sam=_SAM_L, dino=_DINO_L, dino_dim=1024, dino_heads=16),
    # As in the paper: SAM-HQ vit_h + DINOv2-L/14 reg4.
    "h": ModelConfig(preset="h", sam=_SAM_H, dino=_DINO_L, dino_dim=1024, dino_heads=16),
}


PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)
# Files a model is built from (build_talk2sam's `checkpoints` keys; node parameters
# checkpoint_<part>, training/evaluation options of the same names).
CHECKPOINT_PARTS = ("sam_hq", "dinov2", "clip", "projection", "talk2sam")
# Inference dtypes of the frozen encoders; the short spellings are accepted everywhere.
DTYPE_NAMES = ("float32", "float16", "bfloat16")
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?|mps"
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"


def dtype_name(name: str) -> str:
    """The canonical dtype name (float32/float16/bfloat16) of a name or its short spelling."""
    canonical = DTYPE_ALIASES.get(name, name)
    if canonical not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; expected one of "
                         f"{', '.join((*DTYPE_NAMES, *DTYPE_ALIASES))}")
    return canonical


def get_preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}") from None
