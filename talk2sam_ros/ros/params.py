"""The segmentation node's parameters (one table) and their conversion into a NodeConfig.

Torch-free and rclpy-free: the node declares every entry of :data:`PARAMS` with its description and range, and
turns the values into a :class:`NodeConfig` with :func:`node_config_from_params` (the one place
where parameters are interpreted). Tests and the launch-file check import the same table.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from talk2sam_ros.common.params import ParamSpec, values_from_params
from talk2sam_ros.grasp import GraspConfig
from talk2sam_ros.model.config import (CHECKPOINT_PARTS, DEVICE_HELP, DEVICE_PATTERN,
                                       DTYPE_NAMES, PRESET_NAMES, RUNTIME_PROVIDERS,
                                       RUNTIME_QUANTIZE, RUNTIMES)
from talk2sam_ros.weights.resolve import InferenceSpec

NODE_NAME = "talk2sam"
# Relative topic names (all remappable). Compressed input is `<resolved image>/compressed`.
SUBSCRIPTIONS = ("image", "prompt", "category")
PUBLICATIONS = ("mask", "mask_labels", "similarity", "similarity_color", "overlay", "result",
                "grasp")
DIAGNOSTICS_TOPIC = "/diagnostics"

DTYPES = ("auto", *DTYPE_NAMES)
RELIABILITY = ("best_effort", "reliable")
TRANSPORTS = ("raw", "compressed")


def _ckpt(part: str, what: str, empty: str) -> ParamSpec:
    return ParamSpec(f"checkpoint_{part}", "", f"{what}. A file path or a talk2sam-weights "
                     f"registry name (found in weights_dir). Empty: {empty}")


_FROM_REGISTRY = ("the preset's registry file if it is in weights_dir, else an error (unless "
                  "allow_random_weights).")


PARAMS: tuple[ParamSpec, ...] = (
    # --- model (applied at configure)
    ParamSpec("preset", "b", "Model size: tiny (random weights, no files; tests/CI), t (SAM-HQ "
              "vit_tiny + DINOv2-B), b (vit_b + DINOv2-B), l (vit_l + DINOv2-L), h (vit_h + "
              "DINOv2-L, as in the paper).", choices=PRESET_NAMES),
    _ckpt("sam_hq", "SAM-HQ checkpoint (sam_hq_vit_*.pth)", _FROM_REGISTRY),
    _ckpt("dinov2", "DINOv2 with registers checkpoint (dinov2_vit*14_reg4_pretrain.pth)",
          _FROM_REGISTRY),
    _ckpt("clip", "CLIP ViT-B/16 checkpoint (open_clip file or OpenAI ViT-B-16.pt)",
          _FROM_REGISTRY),
    _ckpt("projection", "Talk2DINO projection (vitb/vitl_mlp_infonce.pth); not needed when "
          "checkpoint_talk2sam is set", _FROM_REGISTRY),
    _ckpt("talk2sam", "Our trained Talk2SAM head (talk2sam-train output: projection + "
          "mask-prompt encoder + HQ decoder)", "none: the mask-prompt encoder starts from "
          "SAM-HQ's own (zero-shot; train one for the paper's results)."),
    ParamSpec("weights_dir", "", "Cache directory of talk2sam-weights; empty: "
              "$TALK2SAM_WEIGHTS_DIR or ~/.cache/talk2sam_ros/weights."),
    ParamSpec("allow_random_weights", False, "Build presets t/b/l/h with random weights for "
              "missing files (benchmarking only: the output is meaningless)."),
    ParamSpec("device", "auto", "Torch device: auto (cuda if available, else cpu), cpu, cuda, "
              "cuda:N or mps.", pattern=DEVICE_PATTERN, pattern_help=DEVICE_HELP),
    ParamSpec("dtype", "auto", "Inference dtype: auto (float16 on cuda, float32 otherwise), "
              "float32, float16 or bfloat16.", choices=DTYPES),
    ParamSpec("compile", False, "torch.compile the frozen image encoders (slow first frame)."),
    ParamSpec("runtime", "torch", "Where the frozen image encoders run: torch, or onnxruntime "
              "(validated ONNX exports in export_dir, made at the first configure).",
              choices=RUNTIMES),
    ParamSpec("runtime_provider", "auto", "ONNX Runtime execution provider: auto (cuda on a "
              "CUDA device, else cpu), cpu, cuda or tensorrt (these two need onnxruntime-gpu).",
              choices=RUNTIME_PROVIDERS),
    ParamSpec("runtime_fp16", False, "runtime_provider tensorrt: build fp16 TensorRT engines."),
    ParamSpec("runtime_quantize", "none", "runtime onnxruntime on the cpu provider: "
              "int8_dynamic quantises the encoders' weights (faster; masks change, see "
              "docs/model.md).", choices=RUNTIME_QUANTIZE),
    ParamSpec("export_dir", "", "ONNX exports and TensorRT engine caches; empty: "
              "<weights_dir or its default>/exports."),
    ParamSpec("text_cache_size", 128, "Text embeddings kept across frames (0 = no cache).",
              low=0, high=100000),
    ParamSpec("text_box_threshold", 0.55, "Text-only prompts: absolute similarity floor of "
              "the regions that become boxes.", low=0.0, high=1.0),
    ParamSpec("text_box_relative", 0.5, "Text-only prompts: a region must also reach "
              "min + relative * (max - min) of the similarity map.", low=0.0, high=1.0),
    ParamSpec("max_text_boxes", 3, "Text-only prompts: at most this many boxes (strongest "
              "regions first).", low=1, high=64),
    ParamSpec("text_box_min_cells", 2, "Text-only prompts: smallest region, in DINOv2 patch "
              "cells.", low=1, high=1024),
    # --- per-frame behaviour (live)
    ParamSpec("mask_threshold", 0.0, "Mask = logit > mask_threshold (0 = probability 0.5).",
              low=-50.0, high=50.0, live=True),
    ParamSpec("max_boxes", 64, "Prompts with more boxes are rejected.", low=1, high=1024,
              live=True),
    ParamSpec("max_text_length", 256, "Prompts with a longer text (characters) are rejected.",
              low=1, high=100000, live=True),
    ParamSpec("max_rate_hz", 0.0, "Most frames processed per second (0 = as fast as the model "
              "runs); frames arriving in between are dropped, newest kept.", low=0.0,
              high=1000.0, live=True),
    ParamSpec("publish_mask", True, "Publish `mask` (mono8 0/255 union of the prompt's boxes).",
              live=True),
    ParamSpec("publish_mask_labels", True, "Publish `mask_labels` (box i = label i+1; mono8, "
              "mono16 above 255 boxes).", live=True),
    ParamSpec("publish_similarity", True, "Publish `similarity` (32FC1 in [0, 1]).", live=True),
    ParamSpec("publish_similarity_color", True, "Publish `similarity_color` (bgr8 colour map "
              "blended on the image).", live=True),
    ParamSpec("publish_overlay", True, "Publish `overlay` (bgr8: masks, boxes, text, grasp).",
              live=True),
    ParamSpec("publish_grasp", True, "Publish `grasp` (centreline + grasp point).", live=True),
    ParamSpec("publish_similarity_without_prompt", False, "With no active prompt, publish "
              "`similarity`/`similarity_color` for idle_text on every frame.", live=True),
    ParamSpec("idle_text", "", "Text used by publish_similarity_without_prompt.", live=True),
    ParamSpec("overlay_alpha", 0.5, "Opacity of masks and of the similarity colour map.",
              low=0.0, high=1.0, live=True),
    ParamSpec("grasp_end_margin", 0.2, "Grasp: fraction of the centreline kept clear at each "
              "end.", low=0.0, high=0.49, live=True),
    ParamSpec("grasp_junction_clearance", 2.0, "Grasp: distance from forks/crossings, in local "
              "object widths (+2 px).", low=0.0, high=20.0, live=True),
    ParamSpec("grasp_min_length_px", 10.0, "Grasp: shorter centrelines give valid = false.",
              low=0.0, high=100000.0, live=True),
    ParamSpec("grasp_max_points", 200, "Grasp: the published centreline is subsampled to at "
              "most this many points.", low=2, high=100000, live=True),
    # --- input and graph (applied at configure)
    ParamSpec("image_transport", "raw", "raw: sensor_msgs/Image on `image`; compressed: "
              "sensor_msgs/CompressedImage on `<image>/compressed`.", choices=TRANSPORTS),
    ParamSpec("qos_reliability", "best_effort", "Image subscription reliability (best_effort "
              "= sensor data; it also receives from reliable publishers).",
              choices=RELIABILITY),
    ParamSpec("qos_depth", 5, "Image subscription queue depth (KEEP_LAST).", low=1, high=100),
    ParamSpec("output_qos_reliability", "reliable", "Reliability of the published outputs.",
              choices=RELIABILITY),
    ParamSpec("frame_cache_size", 8, "Recent frames kept for stamped prompts.", low=1,
              high=256),
    ParamSpec("diagnostics_period_s", 1.0, "Period of the /diagnostics status (0 = off).",
              low=0.0, high=3600.0),
    ParamSpec("autostart", True, "Configure and activate at start-up (no lifecycle manager "
              "needed)."),
    ParamSpec("debug_delay_ms", 0, "TESTING ONLY: sleep this long per processed frame to "
              "emulate a slow model.", low=0, high=60000, live=True),
)
PARAM_BY_NAME: dict[str, ParamSpec] = {p.name: p for p in PARAMS}


@dataclass(frozen=True)
class NodeConfig:
    """Every parameter, typed and validated (field names = parameter names)."""

    preset: str
    checkpoint_sam_hq: str
    checkpoint_dinov2: str
    checkpoint_clip: str
    checkpoint_projection: str
    checkpoint_talk2sam: str
    weights_dir: str
    allow_random_weights: bool
    device: str
    dtype: str
    compile: bool
    runtime: str
    runtime_provider: str
    runtime_fp16: bool
    runtime_quantize: str
    export_dir: str
    text_cache_size: int
    text_box_threshold: float
    text_box_relative: float
    max_text_boxes: int
    text_box_min_cells: int
    mask_threshold: float
    max_boxes: int
    max_text_length: int
    max_rate_hz: float
    publish_mask: bool
    publish_mask_labels: bool
    publish_similarity: bool
    publish_similarity_color: bool
    publish_overlay: bool
    publish_grasp: bool
    publish_similarity_without_prompt: bool
    idle_text: str
    overlay_alpha: float
    grasp_end_margin: float
    grasp_junction_clearance: float
    grasp_min_length_px: float
    grasp_max_points: int
    image_transport: str
    qos_reliability: str
    qos_depth: int
    output_qos_reliability: str
    frame_cache_size: int
    diagnostics_period_s: float
    autostart: bool
    debug_delay_ms: int

    @property
    def checkpoints(self) -> dict[str, str]:
        """part -> the non-empty checkpoint parameters (path or registry name)."""
        return {part: value for part in CHECKPOINT_PARTS
                if (value := getattr(self, f"checkpoint_{part}").strip())}

    @property
    def inference_spec(self) -> InferenceSpec:
        """What configure loads (talk2sam_ros.weights.inference.load_for_inference)."""
        return InferenceSpec(
            preset=self.preset, checkpoints=self.checkpoints, weights_dir=self.weights_dir,
            allow_random_weights=self.allow_random_weights, device=self.device,
            dtype=self.dtype, export_dir=self.export_dir,
            overrides={"runtime": self.runtime, "runtime_provider": self.runtime_provider,
                       "runtime_fp16": self.runtime_fp16,
                       "runtime_quantize": self.runtime_quantize,
                       "text_box_threshold": self.text_box_threshold,
                       "text_box_relative": self.text_box_relative,
                       "max_text_boxes": self.max_text_boxes,
                       "text_box_min_cells": self.text_box_min_cells,
                       "compile": self.compile})

    @property
    def grasp(self) -> GraspConfig:
        return GraspConfig(end_margin=self.grasp_end_margin,
                           junction_clearance=self.grasp_junction_clearance,
                           min_length_px=self.grasp_min_length_px,
                           max_points=self.grasp_max_points)


def node_config_from_params(values: Mapping[str, Any]) -> NodeConfig:
    """NodeConfig from parameter values (missing ones take their defaults).

    Raises ValueError naming every bad value and the allowed ones, and on unknown names.
    """
    merged, problems = values_from_params(PARAMS, values)
    if merged["publish_similarity_without_prompt"] and not str(merged["idle_text"]).strip():
        problems.append("publish_similarity_without_prompt needs a non-empty idle_text")
    if problems:
        raise ValueError("; ".join(problems))
    return NodeConfig(**merged)
