"""The segmentation node's parameters (one table) and their conversion into a NodeConfig.

Torch-free and rclpy-free: the node declares every entry of :data:`PARAMS` with its
description and range, and turns the values into a :class:`NodeConfig` with
:func:`node_config_from_params` (the one place where parameters are interpreted). :data:`TOPICS`
lists the node's topics. Tests, the launch-file check and the tables of docs/node.md
(:func:`update_markdown`; ``python -m talk2sam_ros.ros.params docs/node.md``) use the same tables.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talk2sam_ros.common.params import ParamSpec, values_from_params
from talk2sam_ros.grasp import GraspConfig
from talk2sam_ros.grasp.depth import check_depth_range
from talk2sam_ros.model.config import (CHECKPOINT_PARTS, DEVICE_HELP, DEVICE_PATTERN,
                                       DTYPE_NAMES, PRESET_NAMES, RUNTIME_PROVIDERS,
                                       RUNTIME_QUANTIZE, RUNTIMES)
from talk2sam_ros.weights.resolve import InferenceSpec

NODE_NAME = "talk2sam"
DIAGNOSTICS_TOPIC = "/diagnostics"


@dataclass(frozen=True)
class TopicSpec:
    """One topic of the node. `msg_type` is "package/Type"; `switch` is the publish_*
    parameter of an output that is only computed when enabled and subscribed."""

    name: str
    direction: str  # "in" or "out"
    msg_type: str
    qos: str
    notes: str
    encoding: str = ""
    switch: str = ""
    rgbd: bool = False  # an RGB-D topic: subscribed / advertised only with use_depth


_OUT_QOS = "`output_qos_reliability`, `qos_depth`"
# Relative names (all remappable), except /diagnostics. Compressed input is
# `<resolved image>/compressed`.
TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("image", "in", "sensor_msgs/Image", "`qos_reliability`, `qos_depth` (default "
              "best effort, 5 = sensor data)", "rgb8, bgr8, rgba8, bgra8, mono8 and their "
              "16-bit forms (scaled to 8 bit); with `image_transport: compressed` the node "
              "reads `sensor_msgs/CompressedImage` on `<image>/compressed` instead (resolved "
              "after remapping, as image_transport does)"),
    TopicSpec("prompt", "in", "talk2sam_ros/TextBoxPrompt", "reliable, depth 100",
              "text + optional boxes (N*4 x_min, y_min, x_max, y_max px). Unstamped: the "
              "standing prompt (empty text clears it); stamped: a request for the frame with "
              "that stamp only; see [Which prompt answers which frame]"
              "(#which-prompt-answers-which-frame)"),
    TopicSpec("category", "in", "std_msgs/String", "reliable, depth 100", "text-only "
              "standing prompt (e.g. from `talk2sam_speech`); results carry `prompt_id = -1`; "
              "empty clears"),
    TopicSpec("mask", "out", "sensor_msgs/Image", _OUT_QOS, "0/255, union of the prompt's "
              "boxes' masks", encoding="mono8", switch="publish_mask"),
    TopicSpec("mask_labels", "out", "sensor_msgs/Image", _OUT_QOS, "box i = label i+1, 0 = "
              "background; overlaps go to the higher-scoring box",
              encoding="mono8 (mono16 above 255 boxes)", switch="publish_mask_labels"),
    TopicSpec("similarity", "out", "sensor_msgs/Image", _OUT_QOS, "text-image similarity in "
              "[0, 1]", encoding="32FC1", switch="publish_similarity"),
    TopicSpec("similarity_color", "out", "sensor_msgs/Image", _OUT_QOS, "turbo colour map "
              "blended on the image (`overlay_alpha`)", encoding="bgr8",
              switch="publish_similarity_color"),
    TopicSpec("overlay", "out", "sensor_msgs/Image", _OUT_QOS, "masks tinted, boxes with "
              "scores, prompt text, centreline and grasp point when `grasp` has a subscriber",
              encoding="bgr8", switch="publish_overlay"),
    TopicSpec("result", "out", "talk2sam_ros/SegmentationResult", _OUT_QOS, "always "
              "published: prompt id and text echoed, boxes used and their index in the "
              "request (`box_indices`: boxes wholly outside the image are dropped), per-box "
              "scores and areas, union area, `reused_encoding`, `frame_age_ms`, per-stage "
              "timing, counters"),
    TopicSpec("grasp", "out", "talk2sam_ros/GraspCandidate", _OUT_QOS, "ordered centreline "
              "(`geometry_msgs/Polygon`, px), grasp point (`geometry_msgs/Point` px, z = "
              "width), angle, width, valid; with `use_depth` also the 3D side: "
              "`depth_status` and `depth_reason`, pose, `width_m`, 3D centreline, "
              "`valid_depth_fraction` (see [RGB-D grasp](#rgb-d-grasp))",
              switch="publish_grasp"),
    # --- RGB-D grasp (use_depth; docs/grasp.md)
    TopicSpec("depth", "in", "sensor_msgs/Image", "as `image`", "with `use_depth`: depth "
              "registered to the colour image (`aligned_depth_to_color`), 16UC1 mm or 32FC1 "
              "m; paired with each frame by stamp within `depth_max_dt_ms`", rgbd=True),
    TopicSpec("camera_info", "in", "sensor_msgs/CameraInfo", "as `image`", "with "
              "`use_depth`: the colour camera's intrinsics (K, D: plumb_bob, "
              "rational_polynomial, equidistant), paired by stamp like `depth` (any stamp "
              "with `camera_info_latest`)", rgbd=True),
    TopicSpec("grasp_pose", "out", "geometry_msgs/PoseStamped", _OUT_QOS, "with `use_depth`: "
              "the grasp pose in the camera's optical frame (z approach, x closing; "
              "docs/grasp.md), only when `depth_status` is ok", switch="use_depth", rgbd=True),
    TopicSpec("grasp_markers", "out", "visualization_msgs/MarkerArray", _OUT_QOS, "with "
              "`use_depth`: 3D centreline, gripper jaws with the width, approach arrow, text "
              "label; namespace `grasp/<prompt_id>`, markers not drawn are deleted",
              switch="use_depth", rgbd=True),
    TopicSpec("object_points", "out", "sensor_msgs/PointCloud2", _OUT_QOS, "with "
              "`use_depth`: the mask's pixels with valid depth (x y z float32 + rgb), at most "
              "`max_cloud_points`", switch="use_depth", rgbd=True),
    TopicSpec(DIAGNOSTICS_TOPIC, "out", "diagnostic_msgs/DiagnosticArray", "reliable, depth "
              "10", "every `diagnostics_period_s` and at once when configure fails: state, "
              "device, worker, active prompt and all counters (see [Behaviour](#behaviour))"),
)
TOPIC_BY_NAME: dict[str, TopicSpec] = {t.name: t for t in TOPICS}
SUBSCRIPTIONS = tuple(t.name for t in TOPICS if t.direction == "in")  # all (docs, launch)
# The outputs created at configure (lifecycle publishers); /diagnostics exists from start-up.
PUBLICATIONS = tuple(t.name for t in TOPICS if t.direction == "out" and not t.rgbd
                     and t.name != DIAGNOSTICS_TOPIC)
# With use_depth only: the depth inputs, and the 3D outputs (created at configure too).
RGBD_SUBSCRIPTIONS = tuple(t.name for t in TOPICS if t.direction == "in" and t.rgbd)
RGBD_PUBLICATIONS = tuple(t.name for t in TOPICS if t.direction == "out" and t.rgbd)

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
    # --- RGB-D grasp (docs/grasp.md)
    ParamSpec("use_depth", False, "Subscribe to `depth` and `camera_info` and publish the 3D "
              "grasp: `grasp_pose`, `grasp_markers`, `object_points` and the GraspCandidate "
              "3D fields (docs/grasp.md)."),
    ParamSpec("depth_max_dt_ms", 30.0, "Depth (and camera_info) are paired with a colour "
              "frame when their stamps differ by at most this much (ms).", low=0.0,
              high=10000.0, live=True),
    ParamSpec("depth_wait_ms", 50.0, "When a frame's depth or camera_info has not arrived by "
              "the time the model is done (the newest one is older than the frame), wait up to "
              "this long for it (ms; 0 = never wait).", low=0.0, high=10000.0, live=True),
    ParamSpec("camera_info_latest", False, "Use the camera_info nearest in stamp whatever its "
              "age (drivers or bags that publish it rarely); false: it must be within "
              "depth_max_dt_ms, as depth.", live=True),
    ParamSpec("depth_min_m", 0.1, "Depth readings nearer than this (m) are invalid.", low=0.0,
              high=100.0, live=True),
    ParamSpec("depth_max_m", 5.0, "Depth readings farther than this (m) are invalid.",
              low=0.001, high=1000.0, live=True),
    ParamSpec("max_cloud_points", 5000, "`object_points` is subsampled evenly to at most this "
              "many points.", low=1, high=10_000_000, live=True),
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
    ParamSpec("worker_stop_timeout_s", 30.0, "Deactivate, cleanup and shutdown wait this "
              "long for the frame in progress. A worker still running then keeps the model "
              "and publishers until it ends (configure and activate fail meanwhile).",
              low=0.1, high=3600.0, live=True),
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
    use_depth: bool
    depth_max_dt_ms: float
    depth_wait_ms: float
    camera_info_latest: bool
    depth_min_m: float
    depth_max_m: float
    max_cloud_points: int
    image_transport: str
    qos_reliability: str
    qos_depth: int
    output_qos_reliability: str
    frame_cache_size: int
    diagnostics_period_s: float
    worker_stop_timeout_s: float
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


def _checked(values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(every value, defaults filled in; each bad value and each broken rule between
    parameters). Raises ValueError on unknown names."""
    merged, problems = values_from_params(PARAMS, values)
    if merged["publish_similarity_without_prompt"] and not str(merged["idle_text"]).strip():
        problems.append("publish_similarity_without_prompt needs a non-empty idle_text")
    if isinstance(merged["depth_min_m"], float) and isinstance(merged["depth_max_m"], float):
        reason = check_depth_range(merged["depth_min_m"], merged["depth_max_m"])
        if reason:
            problems.append(f"depth_min_m must be below depth_max_m: {reason}")
    return merged, problems


def node_config_from_params(values: Mapping[str, Any]) -> NodeConfig:
    """NodeConfig from parameter values (missing ones take their defaults).

    Raises ValueError naming every bad value and the allowed ones, and on unknown names.
    """
    merged, problems = _checked(values)
    if problems:
        raise ValueError("; ".join(problems))
    return NodeConfig(**merged)


def change_problem(current: Mapping[str, Any], changes: Mapping[str, Any]) -> str | None:
    """Why `changes` (name -> new value) must be refused on top of `current`: the problems of
    the whole resulting configuration that `current` does not already have (so a start-up
    problem blocks only the changes that keep it, not unrelated ones). None: accept."""
    before = set(_checked(current)[1])
    new = [p for p in _checked({**current, **changes})[1] if p not in before]
    return "; ".join(new) or None


# ---------------------------------------------------------------------- docs/node.md tables
def _number(value: float) -> str:
    return f"{value:g}"


def _default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else repr(value)


def parameter_table() -> str:
    """The Markdown table of every parameter (docs/node.md)."""
    rows = ["| Parameter | Type | Default | Allowed | Applied | Description |",
            "|---|---|---|---|---|---|"]
    for spec in PARAMS:
        allowed = ", ".join(spec.choices) if spec.choices else (
            f"[{_number(spec.low)}, {_number(spec.high)}]" if spec.low is not None else "")
        rows.append(f"| `{spec.name}` | {type(spec.default).__name__} | "
                    f"`{_default(spec.default)}` | {allowed} | "
                    f"{'live' if spec.live else 'configure'} | {spec.description} |")
    return "\n".join(rows)


def topic_table() -> str:
    """The Markdown table of every topic (docs/node.md)."""
    rows = ["| Topic | Direction | Type | QoS | Notes |", "|---|---|---|---|---|"]
    for t in TOPICS:
        kind = f"`{t.msg_type}`" + (f" {t.encoding}" if t.encoding else "")
        rows.append(f"| `{t.name}` | {t.direction} | {kind} | {t.qos} | {t.notes} |")
    return "\n".join(rows)


GENERATED = {"topics": topic_table, "parameters": parameter_table}
_REGION = re.compile(r"(<!-- BEGIN GENERATED (\w+)[^>]*-->\n).*?(<!-- END GENERATED \2 -->)",
                     re.S)


def update_markdown(text: str) -> str:
    """`text` with every region between `<!-- BEGIN GENERATED <name> ... -->` and
    `<!-- END GENERATED <name> -->` replaced by the current table. Raises ValueError when a
    table has no region."""
    found: set[str] = set()

    def fill(match: re.Match) -> str:
        found.add(match.group(2))
        return f"{match.group(1)}{GENERATED[match.group(2)]()}\n{match.group(3)}"

    updated = _REGION.sub(fill, text)
    missing = sorted(set(GENERATED) - found)
    if missing:
        raise ValueError(f"no generated region for: {', '.join(missing)}")
    return updated


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m talk2sam_ros.ros.params [--check] docs/node.md`: rewrite (or check) the
    generated tables of a Markdown file."""
    parser = argparse.ArgumentParser(prog="python -m talk2sam_ros.ros.params",
                                     description=main.__doc__)
    parser.add_argument("markdown", type=Path)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when the file's tables are out of date; write nothing")
    args = parser.parse_args(argv)
    text = args.markdown.read_text(encoding="utf-8")
    updated = update_markdown(text)
    if args.check:
        if updated != text:
            print(f"{args.markdown}: generated tables are out of date", file=sys.stderr)
        return int(updated != text)
    if updated != text:
        args.markdown.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
