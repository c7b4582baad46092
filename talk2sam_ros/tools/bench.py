"""Performance benchmark: ``talk2sam-bench`` (model level, and node level over DDS on loopback).

Model level (Talk2SAMPredictor built by load_for_inference, as the node builds it; the preset's
official files that are in the talk2sam-weights cache, random weights for the rest): per-stage
latency from the predictor's own timings (SAM-HQ / DINOv2 encode, text cold / cached,
similarity, prompt, decode, post-processing), full-frame latency, extra-prompt latency on a
cached frame and the reuse ratio, k prompts per frame (1, 2, 4, 8), peak memory.
Node level: the real node in a subprocess; image-publish -> mask-receipt latency, the node's
own overhead (conversion + publishing) as a share of the pipeline time, a 30 Hz stream's
processed-frame age and drop rate, and (``--rgbd``, the node with use_depth) the RGB-D grasp
stage's cost on a synthetic RGB-D scene as a share of the pipeline (target: <= 5 % on the
tiny preset). Writes ``bench_<preset>_<device>_<dtype>.{json,md}``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from talk2sam_ros.common.cli import CliParser, UsageError, run_cli
from talk2sam_ros.common.timing import Stopwatch, summarize
from talk2sam_ros.model.config import (DTYPE_ALIASES, DTYPE_NAMES, PRESET_NAMES, RUNTIMES,
                                       dtype_name)

LOG = logging.getLogger(__name__)

PROG = "talk2sam-bench"
DTYPES = (*DTYPE_NAMES, *DTYPE_ALIASES)
ENCODE_STAGES = ("sam_encode", "dino_encode")
KS = (1, 2, 4, 8)


@dataclass(frozen=True)
class BenchConfig:
    preset: str = "tiny"
    device: str = "cpu"
    dtype: str = "float32"  # float32 | float16 | bfloat16 (or fp32 / fp16 / bf16)
    sdpa: bool = True  # scaled_dot_product_attention in the encoders (where the model allows)
    compile: bool = False  # torch.compile the frozen image encoders
    runtime: str = "torch"  # image encoders: torch | onnxruntime (side by side with torch)
    runs: int = 10
    warmup: int = 2
    image_size: tuple[int, int] = (640, 480)  # width, height of the benchmark frames
    ks: tuple[int, ...] = KS
    text: str = "cable"
    checkpoints_from_cache: bool = False  # real weights from talk2sam-weights' cache
    node: bool = True
    node_frames: int = 10  # one-at-a-time frames for end-to-end latency
    stream_hz: float = 30.0
    stream_seconds: float = 5.0
    rgbd: bool = True  # the node with use_depth: the 3D stage on RGB-D frames
    node_timeout_s: float = 600.0  # node start / first answer (real-size presets on CPU)
    out: Path = Path("bench_out")


# ----------------------------------------------------------------------------- helpers


def bench_frames(size: tuple[int, int], count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` distinct RGB uint8 frames of `size` (W, H) from a CC0 photo, shifted per frame."""
    import cv2
    from skimage import data

    base = cv2.resize(data.astronaut(), size, interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        shifted = np.roll(base, shift=(3 * i, 5 * i), axis=(0, 1))
        noise = rng.integers(-3, 4, shifted.shape, dtype=np.int16)
        frames.append(np.clip(shifted.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return frames


def prompt_boxes(size: tuple[int, int], count: int, seed: int = 1) -> np.ndarray:
    """`count` random XYXY boxes (float32, source px) covering 10-60 % of each side."""
    w, h = size
    rng = np.random.default_rng(seed)
    bw, bh = rng.uniform(0.1, 0.6, count) * w, rng.uniform(0.1, 0.6, count) * h
    x0, y0 = rng.uniform(0, 1, count) * (w - bw), rng.uniform(0, 1, count) * (h - bh)
    return np.stack([x0, y0, x0 + bw, y0 + bh], axis=1).astype(np.float32)


def memory_now() -> dict[str, float]:
    """Process RSS and its peak (MiB) from /proc, falling back to getrusage."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, val = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out["rss_mib" if key == "VmRSS" else "rss_peak_mib"] = int(val.split()[0]) / 1024
    except OSError:
        pass
    out.setdefault("rss_peak_mib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def machine_info(device: str) -> dict[str, Any]:
    import torch

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info


# ----------------------------------------------------------------------------- model level


def build_predictor(cfg: BenchConfig) -> tuple[Any, Any, dict[str, str]]:
    """The model and predictor as the node builds them (load_for_inference), and the weight
    files used (part -> path; parts not listed have random weights)."""
    from talk2sam_ros.model import Talk2SAMPredictor
    from talk2sam_ros.weights import InferenceSpec
    from talk2sam_ros.weights.inference import load_for_inference

    spec = InferenceSpec(preset=cfg.preset, device=cfg.device, dtype=cfg.dtype,
                         allow_random_weights=not cfg.checkpoints_from_cache,
                         overrides={"compile": cfg.compile, "sam_sdpa": cfg.sdpa,
                                    "runtime": cfg.runtime})
    with _sdpa(cfg.sdpa):
        loaded = load_for_inference(spec)
    files = {part: str(path) for part, path in loaded.checkpoints.items()}
    return loaded.model, Talk2SAMPredictor(loaded.model), files


@contextlib.contextmanager
def _sdpa(enabled: bool) -> Iterator[None]:
    """timm's fused (SDPA) attention switch while the encoders are built."""
    from timm.layers import set_fused_attn, use_fused_attn

    old = use_fused_attn()
    set_fused_attn(enabled)
    try:
        yield
    finally:
        set_fused_attn(old)


# profile_predictor stage -> our report name; its "prompt.text" (the extra prompt's cached
# text) is the text_cached row, its totals are in _PROFILE_TOTALS.
_PROFILE_STAGES = {"preprocess": "preprocess", "sam_encode": "sam_encode",
                   "dino_encode": "dino_encode", "frame_cache": "frame_cache",
                   "text_cold": "text_cold", "text_cached": "text_cached",
                   "prompt.similarity": "similarity", "prompt.mask_prompt": "mask_prompt",
                   "prompt.prompt": "prompt", "prompt.decode": "decode",
                   "prompt.postprocess": "postprocess"}
_PROFILE_TOTALS = {"full_frame": "full_frame_ms", "set_image": "set_image_ms",
                   "predict_text_boxes": "extra_prompt_ms",
                   "predict_text_only": "extra_prompt_text_only_ms",
                   "predict_box_only": "extra_prompt_box_only_ms"}


def _from_profile(stat: dict[str, float]) -> dict[str, float]:
    return {"median": stat["median_ms"], "p90": stat["p90_ms"], "n": stat["n"]}


def bench_model(cfg: BenchConfig) -> dict[str, Any]:
    """Model-level numbers (ms unless named otherwise).

    Per-stage latency, new-frame / extra-prompt totals and the reuse ratio come from the model
    core's `profile_predictor` (CUDA-synchronised stage timers); this adds k prompts per frame,
    peak memory and the build options (dtype, SDPA, compile, official weights).
    """
    import torch

    from talk2sam_ros.model.profile import profile_predictor
    from talk2sam_ros.model.runtime_compare import compare_runtimes
    from talk2sam_ros.model.timing import device_sync

    model, pred, files = build_predictor(cfg)
    dev = model.device  # resolved ("auto" -> cuda or cpu)
    w, h = cfg.image_size
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    prof = profile_predictor(model=model, runs=cfg.runs, warmup=cfg.warmup, image_size=(h, w))
    runtimes = (compare_runtimes(model, prof, runs=cfg.runs, warmup=cfg.warmup,
                                 image_size=(h, w)) if cfg.runtime != "torch" else None)
    stages = {ours: _from_profile(prof["stages"][theirs])
              for theirs, ours in _PROFILE_STAGES.items() if theirs in prof["stages"]}
    totals = {ours: _from_profile(prof["stages"][theirs])
              for theirs, ours in _PROFILE_TOTALS.items() if theirs in prof["stages"]}

    # k prompts per frame: each frame is encoded once, then k prompts (cached text, distinct
    # boxes) run on it for every k; frame total = median set_image + median k-prompt time, so
    # encoder noise does not leak into the per-prompt figures.
    watch = Stopwatch(device_sync(dev))
    boxes = prompt_boxes(cfg.image_size, max(cfg.ks))
    k_times: dict[int, list[float]] = {k: [] for k in cfg.ks}
    k_set: list[float] = []
    frames = bench_frames(cfg.image_size, max(2, cfg.runs // 2), seed=7)
    encodes_before = pred.encode_count
    for frame in frames:
        watch.start()
        pred.set_image(frame)
        k_set.append(watch.lap())
        pred.predict(text=cfg.text, boxes=boxes[:1])  # text now cached for every k
        for k in cfg.ks:
            watch.start()
            for b in range(k):
                pred.predict(text=cfg.text, boxes=boxes[b: b + 1])
            k_times[k].append(watch.lap())
    set_med = summarize(k_set)["median"]
    per_k: dict[str, dict[str, float]] = {}
    for k, times in k_times.items():
        st = summarize(times)
        per_k[str(k)] = {"frame_total_ms": set_med + st["median"], "prompts_ms": st["median"],
                         "per_prompt_ms": st["median"] / k, "p90_prompts_ms": st["p90"],
                         "n": st["n"]}

    peak: dict[str, float] = memory_now()
    if dev.type == "cuda":
        peak["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(dev) / 2**20
        peak["cuda_max_reserved_mib"] = torch.cuda.max_memory_reserved(dev) / 2**20
    return {
        "stages": stages,
        **totals,
        "reuse_ratio": float(prof["reuse_ratio"]),
        "prompts_per_frame": per_k,
        "k_scaling_frames": len(frames),
        "k_scaling_encoder_runs": pred.encode_count - encodes_before,
        "memory": peak,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "weights": files,
        "profile": prof,
        "runtimes": runtimes,
    }


# ----------------------------------------------------------------------------- node level


def bench_node(cfg: BenchConfig) -> dict[str, Any]:
    """End-to-end numbers through the real node over DDS on loopback (own ROS_DOMAIN_ID)."""
    # Imported here: the model-level bench runs without ROS (a GPU box without rclpy).
    from talk2sam_ros.tools.harness import NodeHarness, NodeSettings, keep_dds_on_loopback

    keep_dds_on_loopback()
    # Reliable image QoS: a frame lost in transport would stall the one-at-a-time loop. With
    # use_depth, the 3D stage runs only once its outputs have subscribers (the RGB-D phase).
    settings = NodeSettings(preset=cfg.preset, device=cfg.device, dtype=cfg.dtype,
                            checkpoints_from_cache=cfg.checkpoints_from_cache,
                            extra={"qos_reliability": "reliable", "use_depth": cfg.rgbd,
                                   "runtime": cfg.runtime})
    frames = bench_frames(cfg.image_size, max(cfg.node_frames, 8), seed=3)
    box = prompt_boxes(cfg.image_size, 1)[0]
    log = cfg.out / f"node_{cfg.preset}_{cfg.device.replace(':', '')}.log"
    with NodeHarness(settings, log, timeout_s=cfg.node_timeout_s) as h:
        h.set_prompt(cfg.text, box[None])
        # Two warm-up frames (lazy initialisation, the first frame's allocations), then one
        # frame at a time: latency without queueing.
        h.warm_up(frames[0])
        h.warm_up(frames[1])
        singles = [h.send_and_wait(frames[i % len(frames)]) for i in range(cfg.node_frames)]
        singles = [r for r in singles if r is not None]
        stream = h.stream(frames, cfg.stream_hz, cfg.stream_seconds)
        rgbd = bench_rgbd(h, cfg) if cfg.rgbd else None
    e2e = [r.latency_ms for r in singles]
    stage_ms: dict[str, list[float]] = {}
    for r in singles:
        for name, ms in r.stages.items():
            stage_ms.setdefault(name, []).append(ms)
    shares = [100.0 * r.node_overhead_ms / r.pipeline_ms for r in singles if r.pipeline_ms > 0]
    return {
        "end_to_end_ms": summarize(e2e),
        "node_stages": {k: summarize(v) for k, v in stage_ms.items()},
        "node_overhead_ms": summarize([r.node_overhead_ms for r in singles]),
        "pipeline_ms": summarize([r.pipeline_ms for r in singles]),
        "node_overhead_share_pct": summarize(shares),
        "stream": stream,
        "frames_answered": len(singles),
        "frames_sent": cfg.node_frames,
        "rgbd": rgbd,
    }


RGBD_OUTPUTS = ("grasp", "grasp_pose", "grasp_markers", "object_points")


def rgbd_scene(size: tuple[int, int]) -> Any:
    """The benchmark's RGB-D frame: the shared tilted-plane scene at `size` (W, H), focal
    length scaled with the width."""
    from talk2sam_ros.grasp.synthetic import render_scene, scene_specs

    w, h = size
    f = 600.0 * w / 640.0
    return render_scene(dataclasses.replace(scene_specs()["tilted_sine"], width=w, height=h,
                                            fx=f, fy=f))


def bench_rgbd(h: Any, cfg: BenchConfig) -> dict[str, Any]:
    """The RGB-D grasp stage (node stage `grasp3d`: pairing, depth decoding, 3D grasp,
    markers, a max_cloud_points cloud, publishing) on one-at-a-time RGB-D frames of a
    synthetic scene, every 3D output subscribed; its share of each frame's pipeline."""
    scene = rgbd_scene(cfg.image_size)
    ys, xs = np.nonzero(scene.mask)
    box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    h.listen(RGBD_OUTPUTS)
    h.set_prompt(cfg.text, box)
    for _ in range(3):  # until the node sees the new subscriptions: frames with the 3D stage
        warm = h.wait_frame(h.send_rgbd(scene.rgb, scene.depth_raw, scene.camera), h.timeout_s)
        if warm is not None and "grasp3d" in warm.stages:
            break
    runs = [h.wait_frame(h.send_rgbd(scene.rgb, scene.depth_raw, scene.camera))
            for _ in range(cfg.node_frames)]
    runs = [r for r in runs if r is not None and "grasp3d" in r.stages]
    statuses: dict[str, int] = {}
    for r in runs:
        status = r.outputs["grasp"].depth_status if "grasp" in r.outputs else "?"
        statuses[status] = statuses.get(status, 0) + 1
    parts = sorted({name for r in runs for name in r.stages if name.startswith("grasp3d.")})
    return {
        "scene": f"synthetic tilted_sine {scene.spec.width}x{scene.spec.height}",
        "frames": len(runs),
        "grasp3d_ms": summarize([r.stages["grasp3d"] for r in runs]),
        "grasp3d_share_pct": summarize([100.0 * r.stages["grasp3d"] / r.pipeline_ms
                                        for r in runs if r.pipeline_ms > 0]),
        "pipeline_ms": summarize([r.pipeline_ms for r in runs]),
        "parts_ms": {name: summarize([r.stages[name] for r in runs if name in r.stages])
                     for name in parts},
        "depth_status": statuses,
    }


# ----------------------------------------------------------------------------- report


def _fmt(x: Any, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else (
        f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def _weights_text(model_result: dict[str, Any] | None) -> str:
    files = (model_result or {}).get("weights")
    if files is None:
        return "not loaded (node only)"
    return "random" if not files else "files for " + ", ".join(sorted(files))


def to_markdown(result: dict[str, Any]) -> str:
    """The report as Markdown tables (what docs/README show)."""
    from talk2sam_ros.model.runtime_compare import comparison_markdown

    cfg, m = result["config"], result.get("model")
    mach = result["machine"]
    where = mach.get("gpu") or f"{mach['cpu']} ({mach['torch_threads']} torch threads)"
    lines = [f"### talk2sam-bench: preset `{cfg['preset']}`, {cfg['device']}, {cfg['dtype']}"
             f", runtime {cfg.get('runtime', 'torch')}{', compiled' if cfg['compile'] else ''}"
             f"{'' if cfg['sdpa'] else ', no SDPA'}", "",
             f"Machine: {where}; torch {mach['torch']}; frames {cfg['image_size'][0]}x"
             f"{cfg['image_size'][1]}; {cfg['runs']} runs after {cfg['warmup']} warm-up; "
             f"weights: {_weights_text(m)}; "
             f"{result['timestamp']}", ""]
    if m:
        lines += ["| stage | median ms | p90 ms |", "|---|---:|---:|"]
        for name, s in m["stages"].items():
            lines.append(f"| {name} | {_fmt(s.get('median'), 2)} | {_fmt(s.get('p90'), 2)} |")
        lines += ["", "| measure | median | p90 |", "|---|---:|---:|"]
        for key, label in (("full_frame_ms", "new frame: set_image + 1 prompt (ms)"),
                           ("set_image_ms", "set_image alone (ms)"),
                           ("extra_prompt_ms", "extra text + box prompt, cached frame (ms)"),
                           ("extra_prompt_text_only_ms", "extra text-only prompt (ms)"),
                           ("extra_prompt_box_only_ms", "extra box-only prompt, SAM-HQ (ms)")):
            s = m.get(key, {})
            lines.append(f"| {label} | {_fmt(s.get('median'))} | {_fmt(s.get('p90'))} |")
        lines.append(f"| reuse ratio (new frame / extra prompt) | {_fmt(m['reuse_ratio'])} | |")
        lines += ["", "| prompts per frame k | frame total ms (encode + k prompts) | "
                  "k prompts ms | ms per prompt |", "|---:|---:|---:|---:|"]
        for k, s in m["prompts_per_frame"].items():
            lines.append(f"| {k} | {_fmt(s['frame_total_ms'])} | {_fmt(s['prompts_ms'])} | "
                         f"{_fmt(s['per_prompt_ms'])} |")
        mem = m["memory"]
        mem_txt = (f"CUDA max allocated {_fmt(mem['cuda_max_allocated_mib'], 0)} MiB"
                   if "cuda_max_allocated_mib" in mem else
                   f"process RSS peak {_fmt(mem.get('rss_peak_mib'), 0)} MiB")
        lines += ["", f"Peak memory: {mem_txt}; parameters {_fmt(m['parameters_m'], 1)} M."]
        if m.get("runtimes"):
            lines += ["", "Runtimes side by side (same model and weights):", "",
                      comparison_markdown(m["runtimes"]).rstrip()]
    n = result.get("node")
    if n:
        st = n["stream"]
        lines += ["", "| node level (real node, DDS loopback) | median | p90 |",
                  "|---|---:|---:|",
                  "| image publish -> mask received (ms) | "
                  f"{_fmt(n['end_to_end_ms'].get('median'))}"
                  f" | {_fmt(n['end_to_end_ms'].get('p90'))} |",
                  f"| node overhead: convert + publish (ms) | "
                  f"{_fmt(n['node_overhead_ms'].get('median'), 2)} | "
                  f"{_fmt(n['node_overhead_ms'].get('p90'), 2)} |",
                  f"| node overhead share of pipeline (%) | "
                  f"{_fmt(n['node_overhead_share_pct'].get('median'), 2)} | "
                  f"{_fmt(n['node_overhead_share_pct'].get('p90'), 2)} |",
                  f"| {st['rate_hz']:.0f} Hz stream: processed-frame age (ms) | "
                  f"{_fmt(st['frame_age_ms'].get('median'))} | "
                  f"{_fmt(st['frame_age_ms'].get('p90'))} |", "",
                  f"{st['rate_hz']:.0f} Hz stream for {st['seconds']:.1f} s: {st['sent']} sent, "
                  f"{st['processed']} processed, drop rate {_fmt(100 * st['drop_rate'])} %, "
                  f"{_fmt(st['processed_hz'])} results/s."]
        rgbd = n.get("rgbd")
        if rgbd and rgbd["frames"]:
            lines += ["", f"| RGB-D grasp stage (use_depth; {rgbd['scene']}, "
                      f"{rgbd['frames']} frames) | median | p90 |", "|---|---:|---:|"]
            rows = [("3D stage `grasp3d` (ms)", rgbd["grasp3d_ms"], 2),
                    ("3D stage share of pipeline (%)", rgbd["grasp3d_share_pct"], 2),
                    ("pipeline of those frames (ms)", rgbd["pipeline_ms"], 1),
                    *((f"`{k}` (ms)", v, 2) for k, v in rgbd["parts_ms"].items())]
            lines += [f"| {label} | {_fmt(s.get('median'), d)} | {_fmt(s.get('p90'), d)} |"
                      for label, s, d in rows]
            lines += ["", "depth_status of those frames: " + ", ".join(
                f"{k or '(none)'} {v}" for k, v in sorted(rgbd["depth_status"].items())) + "."]
    return "\n".join(lines) + "\n"


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Model (and optionally node) benchmark; writes JSON + Markdown into cfg.out."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "config": {k: (str(v) if isinstance(v, Path) else v)
                   for k, v in dataclasses.asdict(cfg).items()},
        "machine": machine_info(cfg.device),
        "timestamp": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    result["model"] = bench_model(cfg)
    if cfg.node:
        result["node"] = bench_node(cfg)
    stem = f"bench_{cfg.preset}_{cfg.device.replace(':', '')}_{cfg.dtype}"
    (cfg.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (cfg.out / f"{stem}.md").write_text(to_markdown(result))
    result["files"] = [str(cfg.out / f"{stem}.json"), str(cfg.out / f"{stem}.md")]
    return result


def build_parser() -> argparse.ArgumentParser:
    d = BenchConfig()
    p = CliParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default=d.preset, choices=PRESET_NAMES,
                   help="tiny, t, b, l, h (default tiny)")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default=d.dtype, choices=DTYPES)
    p.add_argument("--sdpa", action=argparse.BooleanOptionalAction, default=d.sdpa,
                   help="fused scaled-dot-product attention in the encoders")
    p.add_argument("--compile", action="store_true", help="torch.compile the image encoders")
    p.add_argument("--runtime", default=d.runtime, choices=RUNTIMES,
                   help="image encoders' runtime; onnxruntime is also timed against torch")
    p.add_argument("--runs", type=int, default=d.runs)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--image-size", default="640x480", help="WxH of the frames (640x480)")
    p.add_argument("--text", default=d.text)
    p.add_argument("--checkpoints-from-cache", action="store_true",
                   help="require the preset's official files in the talk2sam-weights cache "
                        "(default: use those present, random weights for the others)")
    p.add_argument("--node", action=argparse.BooleanOptionalAction, default=d.node,
                   help="also benchmark through the real node over DDS (default on)")
    p.add_argument("--node-frames", type=int, default=d.node_frames)
    p.add_argument("--stream-hz", type=float, default=d.stream_hz)
    p.add_argument("--stream-seconds", type=float, default=d.stream_seconds)
    p.add_argument("--rgbd", action=argparse.BooleanOptionalAction, default=d.rgbd,
                   help="the node with use_depth: also measure the RGB-D grasp stage on a "
                        "synthetic RGB-D scene (default on)")
    p.add_argument("--out", default=str(d.out), help="output folder for JSON + Markdown")
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    try:
        w, h = (int(v) for v in args.image_size.lower().split("x"))
    except ValueError:
        raise UsageError(f"--image-size {args.image_size!r} is not WxH") from None
    if w < 1 or h < 1:
        raise UsageError(f"--image-size {args.image_size!r}: both sides must be >= 1")
    if args.runs < 1 or args.warmup < 0 or args.node_frames < 1:
        raise UsageError("--runs and --node-frames must be >= 1 and --warmup >= 0")
    if not args.stream_hz > 0 or args.stream_seconds < 0:
        raise UsageError("--stream-hz must be > 0 and --stream-seconds >= 0")
    return BenchConfig(preset=args.preset, device=args.device, dtype=dtype_name(args.dtype),
                       sdpa=args.sdpa,
                       compile=args.compile, runtime=args.runtime, runs=args.runs,
                       warmup=args.warmup,
                       image_size=(w, h), text=args.text,
                       checkpoints_from_cache=args.checkpoints_from_cache, node=args.node,
                       node_frames=args.node_frames, stream_hz=args.stream_hz,
                       stream_seconds=args.stream_seconds, rgbd=args.rgbd, out=Path(args.out))


def _bench(argv: list[str] | None) -> int:
    result = run(config_from_args(build_parser().parse_args(argv)))
    print(to_markdown(result))
    print("wrote " + ", ".join(result["files"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    # Expected failures: missing or refused weights (WeightsError, CheckpointError), a device
    # torch cannot use, the node not starting (NodeError), an unwritable --out; one line each.
    return run_cli(PROG, lambda: _bench(argv), (RuntimeError, ValueError, OSError),
                   logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
