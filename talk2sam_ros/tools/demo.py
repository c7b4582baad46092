"""``talk2sam-demo``: the whole system on a fresh machine, no weights and no camera needed.

1. Weights: with the default tiny preset and no trained head in the cache
   (``<weights cache>/trained/tiny_synthetic.pt``), generate the synthetic thin-object set and
   train the tiny head briefly (talk2sam_ros.training), saving the weights there.
2. Start the real node (``python -m talk2sam_ros.ros.node``, the code ``ros2 launch`` runs) on a
   ROS_DOMAIN_ID ($ROS_DOMAIN_ID, else one derived from the pid) with DDS kept on loopback,
   and a camera stand-in in this process that publishes CC0 scikit-image photos and
   held-out synthetic wire scenes with ground truth (or ``--images DIR`` / ``--video
   FILE``), with text + box prompts on ``prompt`` and text-only prompts on ``category``.
   SIGTERM/SIGHUP stop the node like Ctrl-C does.
3. Collect what the node publishes and write PNGs (overlay, mask, similarity colour map, grasp)
   plus ``summary.json`` / ``summary.md`` (frames processed / dropped, per-stage latency, mIoU
   on the synthetic scenes) into the output folder printed at the end.

With real checkpoints (``--params-file config/talk2sam.yaml`` or ``--checkpoint part=path``,
``--preset b|l|h``) the same command runs the full-size model. ``--bag`` plays a recorded ROS 2
bag into the node instead and records its outputs into a bag (talk2sam_ros.tools.bag_player).
The node is driven through talk2sam_ros.tools.harness (shared with ``talk2sam-bench`` and the
tests).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from std_msgs.msg import Header

from talk2sam_ros.common.cli import CliParser, UsageError, run_cli
from talk2sam_ros.common.timing import summarize
from talk2sam_ros.grasp import Grasp, Grasp3D
from talk2sam_ros.model.config import CHECKPOINT_PARTS, PRESET_NAMES
from talk2sam_ros.model.errors import CheckpointError
from talk2sam_ros.ros.conversions import make_bridge
from talk2sam_ros.ros.grasp3d_messages import camera_info_msg
from talk2sam_ros.ros.params import PUBLICATIONS, RGBD_PUBLICATIONS
from talk2sam_ros.tools import bag_player as bp
from talk2sam_ros.tools.bags import (BagError, BagTopics, InputBag, OutputBag, OutputRecorder,
                                     PromptChange, check_output_path, load_prompt_schedule,
                                     play_frames, prompt_schedule)
from talk2sam_ros.tools.harness import (FrameResult, NodeError, NodeHarness, NodeSettings,
                                        keep_dds_on_loopback, node_counters)
from talk2sam_ros.weights.registry import WeightsError, cache_dir_path, trained_weights_path

LOG = logging.getLogger(__name__)

PROG = "talk2sam-demo"
OUTPUT_TOPICS = ("result", "mask", "similarity_color", "overlay", "grasp")
BAG_RATES = tuple(bp.PLAYERS)  # --bag-rate: max (the default), recorded


class DemoError(RuntimeError):
    """A one-line, user-facing failure (node did not start, training failed, ...)."""


# ----------------------------------------------------------------------------- demo content


@dataclass
class DemoFrame:
    """One image with its prompt (boxes None: text-only on `category`) and optional GT;
    an RGB-D frame also has its registered depth (16UC1 mm or 32FC1 m) and camera."""

    name: str
    rgb: np.ndarray
    text: str
    boxes: np.ndarray | None
    gt: np.ndarray | None = None
    source: str = ""
    depth: np.ndarray | None = None
    camera: Any = None  # grasp.CameraModel


# CC0 / public-domain photos bundled with scikit-image, with thin-object prompts.
PHOTO_PROMPTS: tuple[tuple[str, str, tuple[float, float, float, float] | None], ...] = (
    ("rocket", "antenna", (432.0, 118.0, 472.0, 412.0)),  # lightning-rod mast, right
    ("coffee", "spoon", (318.0, 62.0, 428.0, 330.0)),
    ("rocket", "tower", None),
    ("chelsea", "cat", None),
)


def photo_frames() -> list[DemoFrame]:
    from skimage import data

    out = []
    for name, text, box in PHOTO_PROMPTS:
        rgb = getattr(data, name)()
        boxes = None if box is None else np.asarray([box], np.float32)
        out.append(DemoFrame(f"{name}_{text}", rgb, text, boxes, source="skimage"))
    return out


def synthetic_frames(folder: Path, n: int, seed: int, size: int | tuple[int, int],
                     distractor_prob: float = 0.5, text_only_every: int = 3
                     ) -> list[DemoFrame]:
    """Held-out synthetic scenes (a seed training never sees) with GT masks and boxes;
    every `text_only_every`-th scene is prompted with its category alone."""
    from talk2sam_ros.common.metrics import binarize_gt
    from talk2sam_ros.training.data import box_from_mask, list_many, read_gt, read_image
    from talk2sam_ros.training.synthetic import generate_synthetic_dataset

    generate_synthetic_dataset(folder, n=max(n, 2), seed=seed, image_size=size,
                               val_fraction=0.5, distractor_prob=distractor_prob,
                               progress=False, overwrite=True)
    samples = list_many([f"folder:{folder}:train", f"folder:{folder}:val"])
    out = []
    for i, s in enumerate(samples[:n]):
        gt = binarize_gt(read_gt(s.mask))
        text_only = i % text_only_every == text_only_every - 1
        out.append(DemoFrame(f"synthetic_{s.stem}", read_image(s.image), s.category,
                             None if text_only else box_from_mask(gt)[None], gt,
                             source="synthetic"))
    return out


def rgbd_frames(n: int) -> list[DemoFrame]:
    """Synthetic RGB-D scenes of the 3D grasp work (grasp.synthetic, 640x480: a cable on a
    plane, exact ground truth), prompted "cable" with the ground-truth box."""
    from talk2sam_ros.grasp.synthetic import render_scene, scene_specs
    from talk2sam_ros.training.data import box_from_mask

    specs = list(scene_specs().items())
    out = []
    for i in range(n):
        name, spec = specs[i % len(specs)]
        scene = render_scene(spec)
        out.append(DemoFrame(f"rgbd_{name}", scene.rgb, "cable", box_from_mask(scene.mask)[None],
                             scene.mask, source="synthetic_rgbd", depth=scene.depth_raw,
                             camera=scene.camera))
    return out


def folder_frames(folder: Path, text: str, boxes: np.ndarray | None, limit: int
                  ) -> list[DemoFrame]:
    from talk2sam_ros.training.data import IMAGE_EXTS, read_image

    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not paths:
        raise DemoError(f"no images ({', '.join(IMAGE_EXTS)}) in {folder}")
    out = []
    for p in paths[:limit]:
        try:
            out.append(DemoFrame(p.stem, read_image(p), text, boxes, source=str(p)))
        except OSError:
            LOG.warning("skipping unreadable image %s", p)
    return out


def video_frames(path: Path, text: str, boxes: np.ndarray | None, limit: int,
                 stride: int = 1) -> list[DemoFrame]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DemoError(f"cannot open video {path}")
    out, index = [], 0
    try:
        while len(out) < limit:
            ok, bgr = cap.read()
            if not ok:
                break
            if index % stride == 0:
                out.append(DemoFrame(f"{Path(path).stem}_{index:05d}",
                                     cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), text, boxes,
                                     source=str(path)))
            index += 1
    finally:
        cap.release()
    if not out:
        raise DemoError(f"no frames could be read from {path}")
    return out


# ----------------------------------------------------------------------------- training


TRAIN_RECIPE = "tiny_synthetic"  # config/train/tiny_synthetic.yaml (the training helper's)


@dataclass(frozen=True)
class TrainBudget:
    """Overrides of the tiny_synthetic recipe; None keeps the recipe's value."""

    images: int | None = None  # synthetic_n
    image_size: int | None = None  # synthetic_size
    epochs: int | None = None
    max_steps: int | None = None

    def overrides(self) -> dict[str, Any]:
        pairs = (("synthetic_n", self.images), ("synthetic_size", self.image_size),
                 ("epochs", self.epochs), ("max_steps", self.max_steps))
        return {k: v for k, v in pairs if v is not None}


def ensure_trained_tiny(cache_dir: Path | None, budget: TrainBudget, force: bool = False,
                        progress: bool = True) -> Path:
    """Path of the trained tiny head; trains it first (config/train/tiny_synthetic.yaml on
    freshly generated synthetic data, CPU) when the cache has none."""
    target = trained_weights_path("tiny", cache_dir=cache_dir)
    if target.is_file() and not force:
        LOG.info("trained tiny weights: %s", target)
        return target
    from talk2sam_ros.model.checkpoints import atomic_torch_save, safe_torch_load
    from talk2sam_ros.training.config import load_config
    from talk2sam_ros.training.train import train

    work = target.parent / "tiny_synthetic_run"
    try:
        cfg = load_config(TRAIN_RECIPE, {"out_dir": str(work), "device": "cpu",
                                         "progress": progress, "resume": False,
                                         **budget.overrides()})
    except (ValueError, FileNotFoundError) as exc:
        raise DemoError(f"training recipe {TRAIN_RECIPE}: {exc}") from None
    print(f"[demo] no trained tiny weights in {target.parent}: generating {cfg.synthetic_n} "
          f"synthetic images and training the tiny head ({cfg.epochs} epochs, CPU; a few "
          "minutes)", flush=True)
    if work.exists():  # a previous, interrupted run: start clean
        shutil.rmtree(work)
    try:
        weights = Path(train(cfg))
    except Exception as exc:
        raise DemoError(f"training the tiny head failed: {type(exc).__name__}: {exc}") from exc
    # The trainer's own save (fsynced data and folder): after a crash or power loss the cache
    # holds the old head or the whole new one, never a torn file the node would refuse.
    atomic_torch_save(safe_torch_load(weights, "talk2sam"), target)
    print(f"[demo] trained tiny weights saved to {target}", flush=True)
    return target


# ----------------------------------------------------------------------------- outputs


def image_array(msg: Any, bridge: Any = None) -> np.ndarray:
    """Image message -> numpy (cv_bridge): colour as RGB, mono8 / 32FC1 as they are."""
    bridge = bridge or make_bridge()
    return bridge.imgmsg_to_cv2(msg, "rgb8" if msg.encoding in ("bgr8", "rgb8") else
                                "passthrough")


def save_frame_pngs(out_dir: Path, index: int, frame: DemoFrame, res: FrameResult,
                    camera_info: Any = None) -> dict[str, str]:
    """input/overlay/mask/similarity/grasp PNGs of one answer, and grasp3d when it has a 3D
    side and the frame's `camera_info` is given; returns kind -> relative path."""
    import cv2

    from talk2sam_ros.common.visualize import draw_overlay

    stem = f"{index:02d}_{frame.name}"
    files: dict[str, str] = {}

    def write(kind: str, rgb_or_gray: np.ndarray) -> None:
        path = out_dir / f"{stem}_{kind}.png"
        img = rgb_or_gray if rgb_or_gray.ndim == 2 else rgb_or_gray[..., ::-1]
        if not cv2.imwrite(str(path), img):
            raise DemoError(f"cannot write {path}")
        files[kind] = path.name

    write("input", frame.rgb)
    mask = None
    if "mask" in res.outputs:
        mask = image_array(res.outputs["mask"])
        write("mask", mask)
    if "overlay" in res.outputs:
        write("overlay", image_array(res.outputs["overlay"]))
    if "similarity_color" in res.outputs:
        write("similarity", image_array(res.outputs["similarity_color"]))
    grasp = res.outputs.get("grasp")
    if grasp is not None:
        line = np.array([(p.x, p.y) for p in grasp.centerline.points], np.float32)
        point = (grasp.grasp_point.x, grasp.grasp_point.y) if grasp.valid else None
        masks = None if mask is None else (mask > 127)[None]
        write("grasp", draw_overlay(frame.rgb, masks, None,
                                    f"grasp: {'valid' if grasp.valid else 'none'}",
                                    centerline=line if len(line) > 1 else None,
                                    grasp_point=point))
    figure = out_dir / f"{stem}_grasp3d.png"
    if save_grasp3d_png(figure, frame.rgb, res, camera_info):
        files["grasp3d"] = figure.name
    return files


def latency_summary(answers: list[FrameResult]) -> dict[str, Any]:
    """End-to-end, pipeline, overhead and per-stage latency of the answers (ms summaries)."""
    stages: dict[str, list[float]] = {}
    for a in answers:
        for name, ms in a.stages.items():
            stages.setdefault(name, []).append(ms)
    return {"end_to_end_ms": summarize([a.latency_ms for a in answers]),
            "node_overhead_ms": summarize([a.node_overhead_ms for a in answers]),
            "pipeline_ms": summarize([a.pipeline_ms for a in answers]),
            "stages_ms": {k: summarize(v) for k, v in stages.items()}}


def grasp_from_msg(msg: Any) -> tuple[Grasp, Grasp3D]:
    """(pixel Grasp, Grasp3D) carried by a GraspCandidate: what the demo's 3D figure draws
    (the inverse of ros.messages.grasp_message + ros.grasp3d_messages.fill_grasp_3d)."""
    from scipy.spatial.transform import Rotation

    def xyz(points: Any) -> np.ndarray:
        return np.array([(p.x, p.y, p.z) for p in points], np.float64).reshape(-1, 3)

    pixel = Grasp(valid=bool(msg.valid),
                  centerline=xyz(msg.centerline.points)[:, :2].astype(np.float32),
                  point=(float(msg.grasp_point.x), float(msg.grasp_point.y)),
                  angle=float(msg.angle), width_px=float(msg.width_px))
    q = msg.pose.orientation
    quaternion = (float(q.x), float(q.y), float(q.z), float(q.w))
    if not any(quaternion):  # no pose (depth_status not ok): the identity
        quaternion = (0.0, 0.0, 0.0, 1.0)
    grasp3d = Grasp3D(status=msg.depth_status, reason=msg.depth_reason,
                      position=xyz([msg.pose.position])[0],
                      rotation=Rotation.from_quat(quaternion).as_matrix(),
                      quaternion=quaternion, width_m=float(msg.width_m),
                      centerline=xyz(msg.centerline_3d).astype(np.float32),
                      centerline_index=np.asarray(msg.centerline_3d_index, np.int32),
                      valid_depth_fraction=float(msg.valid_depth_fraction),
                      depth_pixel=(float(msg.depth_point.x), float(msg.depth_point.y)),
                      point_shift_px=float(msg.depth_point_shift_px),
                      approach_from=msg.approach_from)
    return pixel, grasp3d


def save_grasp3d_png(path: Path, rgb: np.ndarray, res: FrameResult, camera_info: Any
                     ) -> bool:
    """The 3D grasp figure (grasp.figure: image with the projected gripper frame | the
    object's points with the gripper) of an answer with a 3D side; False when it has none."""
    from talk2sam_ros.grasp.figure import save_grasp_figure
    from talk2sam_ros.ros.grasp3d_messages import camera_from_msg, cloud_points

    grasp, cloud, mask = (res.outputs.get(t) for t in ("grasp", "object_points", "mask"))
    if grasp is None or not grasp.depth_status or camera_info is None or mask is None:
        return False
    pixel, grasp3d = grasp_from_msg(grasp)
    points = cloud_points(cloud) if cloud is not None else np.zeros((0, 3), np.float32)
    width = f", width {1000 * grasp3d.width_m:.1f} mm" if grasp3d.ok else ""
    save_grasp_figure(path, rgb, image_array(mask) > 127, pixel, grasp3d,
                      camera_from_msg(camera_info), points,
                      title=f"3D grasp: {grasp3d.status}{width}")
    return True


def summarize_run(records: list[dict[str, Any]], answers: list[FrameResult],
                  stream: dict[str, Any] | None, meta: dict[str, Any]) -> dict[str, Any]:
    # the held-out scenes of the training generator (the RGB-D scenes' IoU is per frame)
    scored = [r for r in records if r.get("iou") is not None and r["source"] == "synthetic"]
    ious = {mode: [r["iou"] for r in scored if r["mode"] == mode]
            for mode in ("text+box", "text-only")}
    last = answers[-1].result if answers else None
    return {
        **meta,
        "frames_sent": len(records),
        "frames_processed": sum(1 for r in records if r["answered"]),
        "frames_unanswered": sum(1 for r in records if not r["answered"]),
        **latency_summary(answers),
        "miou_synthetic": {k: (float(np.mean(v)) if v else None) for k, v in ious.items()},
        "synthetic_scenes": {k: len(v) for k, v in ious.items()},
        "node_counters": None if last is None else node_counters(last),
        "stream": stream,
        "frames": records,
    }


def fmt(x: Any, d: int = 1) -> str:
    """A number for the summary tables ('-' for none)."""
    return "-" if x is None else f"{x:.{d}f}"


def latency_table(s: dict[str, Any]) -> list[str]:
    """Markdown rows of latency_summary's figures."""
    lines = ["| latency (ms) | median | p90 |", "|---|---:|---:|"]
    for label, key in (("image publish -> mask received", "end_to_end_ms"),
                       ("node pipeline (sum of top-level stages)", "pipeline_ms"),
                       ("node overhead (convert, publish, grasp, overlay)", "node_overhead_ms")):
        lines.append(f"| {label} | {fmt(s[key].get('median'))} | {fmt(s[key].get('p90'))} |")
    for name, st in s["stages_ms"].items():
        lines.append(f"| stage `{name}` | {fmt(st.get('median'), 2)} | "
                     f"{fmt(st.get('p90'), 2)} |")
    return lines


def summary_markdown(s: dict[str, Any]) -> str:
    lines = [f"# talk2sam-demo: preset `{s['preset']}` on {s['device']}", "",
             f"Weights: {s['weights']}. {s['quality_note']}", "",
             f"Frames sent one at a time: {s['frames_sent']}, answered: "
             f"{s['frames_processed']}, unanswered: {s['frames_unanswered']}.", ""]
    miou = s["miou_synthetic"]
    lines += ["| mIoU on held-out synthetic scenes | value | scenes |", "|---|---:|---:|",
              f"| text + GT box | {fmt(miou['text+box'], 3)} | "
              f"{s['synthetic_scenes']['text+box']} |",
              f"| text only (boxes from similarity) | {fmt(miou['text-only'], 3)} | "
              f"{s['synthetic_scenes']['text-only']} |", "",
              *latency_table(s)]
    st = s.get("stream")
    if st:
        lines += ["", f"Stream at {st['rate_hz']:.0f} Hz for {st['seconds']:.1f} s: "
                      f"{st['sent']} frames sent, {st['processed']} processed, "
                      f"{st['sent'] - st['processed']} dropped "
                      f"({100 * st['drop_rate']:.0f} %); processed-frame age median "
                      f"{fmt(st['frame_age_ms'].get('median'))} ms."]
    lines += ["", "| # | frame | prompt | mode | IoU | score | mask px | grasp | ms |",
              "|---:|---|---|---|---:|---:|---:|---|---:|"]
    for r in s["frames"]:
        lines.append(f"| {r['index']} | {r['name']} | {r['text']} | {r['mode']} | "
                     f"{fmt(r.get('iou'), 3)} | {fmt(r.get('score'), 2)} | "
                     f"{r.get('mask_area', '-')} | {r.get('grasp', '-')}"
                     f"{' (3D: ' + r['depth_status'] + ')' if r.get('depth_status') else ''} | "
                     f"{fmt(r.get('latency_ms'))} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main flow


@dataclass(frozen=True)
class DemoConfig:
    out: Path
    preset: str = "tiny"
    device: str = "cpu"
    checkpoints: Mapping[str, str] = field(default_factory=dict)
    params_file: str | None = None
    images: Path | None = None
    video: Path | None = None
    text: str = "cable"
    boxes: np.ndarray | None = None
    photos: bool = True
    synthetic: int = 6
    rgbd: int = 2  # synthetic RGB-D scenes (the node then runs with use_depth)
    synthetic_size: int | None = None  # None: the training recipe's size and distractors
    max_frames: int = 30
    rate_hz: float = 10.0
    stream_seconds: float = 4.0
    train: TrainBudget = TrainBudget()
    retrain: bool = False
    weights_dir: Path | None = None
    timeout_s: float = 300.0
    progress: bool = True


QUALITY_TINY = ("The tiny preset has random frozen encoders (CLIP text, DINOv2, SAM-HQ image "
                "encoder); at most its head is trained (the demo's: a few minutes on synthetic "
                "wires): the masks show the data path working, not Talk2SAM's accuracy.")
QUALITY_REAL = "Official checkpoints: masks reflect the real model."


def describe_weights(preset: str, checkpoints: Mapping[str, str], params_file: str | None,
                     trained_by_demo: bool) -> tuple[str, str]:
    """(what the node ran with, what quality to expect) for the summary; claims only what
    the demo knows (a parameter file with preset tiny is still random encoders)."""
    if preset != "tiny":
        return f"preset {preset}: official checkpoints", QUALITY_REAL
    head = checkpoints.get("talk2sam")
    if trained_by_demo:
        head = f"trained on synthetic data by the demo ({head})"
    elif head is None:
        head = f"as set in {params_file}" if params_file else "untrained (random)"
    return f"tiny preset (random frozen encoders); head: {head}", QUALITY_TINY


def build_frames(cfg: DemoConfig, cache: Path) -> list[DemoFrame]:
    frames: list[DemoFrame] = []
    if cfg.images is not None:
        frames += folder_frames(cfg.images, cfg.text, cfg.boxes, cfg.max_frames)
    if cfg.video is not None:
        frames += video_frames(cfg.video, cfg.text, cfg.boxes, cfg.max_frames)
    if cfg.images is None and cfg.video is None:
        if cfg.photos:
            frames += photo_frames()
        if cfg.synthetic:
            # Same generator settings as the training recipe (the scenes the head was trained
            # for), another seed: held-out scenes of the trained kind.
            size, distract = cfg.synthetic_size, 0.5
            if size is None:
                from talk2sam_ros.training.config import load_config

                recipe = load_config(TRAIN_RECIPE, cfg.train.overrides())
                size, distract = recipe.synthetic_size, recipe.synthetic_distractors
            frames += synthetic_frames(cache / "demo_scenes", cfg.synthetic, seed=90210,
                                       size=size, distractor_prob=distract)
        frames += rgbd_frames(cfg.rgbd)
    if not frames:
        raise DemoError("no frames to publish (use --images, --video or the defaults)")
    return frames[: cfg.max_frames]


@dataclass(frozen=True)
class NodePlan:
    """The node the demo starts and what its summary says about the weights."""

    settings: NodeSettings
    weights: str
    quality_note: str


def plan_node(cfg: DemoConfig, cache: Path, extra: Mapping[str, Any] | None = None
              ) -> NodePlan:
    """The node's settings (reliable image QoS plus `extra` parameters); trains the tiny head
    first when the default tiny preset has none (ensure_trained_tiny)."""
    checkpoints = dict(cfg.checkpoints)
    trained = cfg.preset == "tiny" and "talk2sam" not in checkpoints and not cfg.params_file
    if trained:
        checkpoints["talk2sam"] = str(ensure_trained_tiny(cache, cfg.train, cfg.retrain,
                                                          cfg.progress))
    params: dict[str, Any] = {"qos_reliability": "reliable", **(extra or {})}
    if cfg.weights_dir:
        params["weights_dir"] = str(cfg.weights_dir)
    settings = NodeSettings(preset=cfg.preset, device=cfg.device, checkpoints=checkpoints,
                            params_file=cfg.params_file,
                            checkpoints_from_cache=cfg.preset != "tiny", extra=params)
    weights, quality = describe_weights(cfg.preset, checkpoints, cfg.params_file, trained)
    return NodePlan(settings, weights, quality)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """The whole demo; returns the summary (also written to cfg.out)."""
    from talk2sam_ros.common.metrics import mask_iou

    cache = cache_dir_path(cfg.weights_dir)
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    frames = build_frames(cfg, cache)
    rgbd = any(f.depth is not None for f in frames)
    node = plan_node(cfg, cache, {"use_depth": rgbd})
    print(f"[demo] starting the node (preset {cfg.preset}, {cfg.device}); log: "
          f"{out / 'node.log'}", flush=True)
    records: list[dict[str, Any]] = []
    answers: list[FrameResult] = []
    stream = None
    outputs = (*OUTPUT_TOPICS, *(RGBD_PUBLICATIONS if rgbd else ()))
    # grasp_pose comes for an ok 3D grasp only: not awaited (kept when it has come)
    awaited = [t for t in outputs if t != "grasp_pose"]
    with NodeHarness(node.settings, out / "node.log", cfg.timeout_s, outputs=outputs) as h:
        if rgbd and not h.client.wait_rgbd_active(cfg.timeout_s):
            raise NodeError(f"the node did not subscribe to depth and camera_info within "
                            f"{cfg.timeout_s:.0f} s; see {out / 'node.log'}")
        print(f"[demo] node active on ROS_DOMAIN_ID {h.domain}; publishing {len(frames)} "
              "frames", flush=True)
        from tqdm.auto import tqdm

        def prompt_key(fr: DemoFrame) -> tuple[str, bytes | None]:
            return fr.text, None if fr.boxes is None else fr.boxes.tobytes()

        h.set_prompt(frames[0].text, frames[0].boxes, via_category=frames[0].boxes is None)
        active = prompt_key(frames[0])
        h.warm_up(frames[0].rgb)
        for i, fr in enumerate(tqdm(frames, desc="frames", disable=not cfg.progress)):
            if prompt_key(fr) != active:
                h.set_prompt(fr.text, fr.boxes, via_category=fr.boxes is None)
                active = prompt_key(fr)
            stamp = h.send_image(fr.rgb) if fr.depth is None else \
                h.send_rgbd(fr.rgb, fr.depth, fr.camera)
            res = h.wait_frame(stamp, others=awaited)
            rec: dict[str, Any] = {"index": i, "name": fr.name, "text": fr.text,
                                   "mode": "text-only" if fr.boxes is None else "text+box",
                                   "source": fr.source, "answered": res is not None}
            if res is not None:
                answers.append(res)
                r = res.result
                rec.update(latency_ms=res.latency_ms, mask_area=int(r.mask_area),
                           score=float(max(r.scores)) if len(r.scores) else None,
                           boxes=[round(float(v), 1) for v in r.boxes],
                           reused_encoding=bool(r.reused_encoding),
                           files=save_frame_pngs(out, i, fr, res, None if fr.camera is None
                                                 else camera_info_msg(fr.camera, Header())))
                grasp = res.outputs.get("grasp")
                rec["grasp"] = None if grasp is None else ("valid" if grasp.valid else "none")
                if grasp is not None and fr.depth is not None:
                    rec["depth_status"] = grasp.depth_status
                if fr.gt is not None and "mask" in res.outputs:
                    rec["iou"] = mask_iou(fr.gt, image_array(res.outputs["mask"]) > 127)
            records.append(rec)
        if cfg.stream_seconds > 0 and frames:
            # Text-only: valid on every frame whatever its size.
            h.set_prompt(frames[0].text, None, via_category=True)
            print(f"[demo] streaming at {cfg.rate_hz:g} Hz for {cfg.stream_seconds:g} s",
                  flush=True)
            stream = h.stream([f.rgb for f in frames], cfg.rate_hz, cfg.stream_seconds)
    meta = {"preset": cfg.preset, "device": cfg.device, "output_dir": str(out),
            "weights": node.weights, "quality_note": node.quality_note,
            "ros_domain_id": h.domain}
    summary = summarize_run(records, answers, stream, meta)
    write_summary(out, summary, summary_markdown(summary))
    return summary


def write_summary(out: Path, summary: dict[str, Any], markdown: str) -> None:
    """summary.json and summary.md in the output folder."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    (out / "summary.md").write_text(markdown)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, (Path,)):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _parse_checkpoint(text: str) -> tuple[str, str]:
    """PART=PATH -> (part, path): the node's checkpoint_<part> parameter."""
    part, sep, path = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"wants PART=PATH, got {text!r}")
    if part not in CHECKPOINT_PARTS:
        raise argparse.ArgumentTypeError(f"unknown part {part!r} in {text!r}; parts: "
                                         f"{', '.join(CHECKPOINT_PARTS)}")
    return part, path


def build_parser() -> argparse.ArgumentParser:
    p = CliParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None,
                   help="output folder (default talk2sam_demo_<date-time> here)")
    p.add_argument("--preset", choices=PRESET_NAMES,
                   help="tiny (default unless --params-file sets one), t, b, l, h")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, auto")
    p.add_argument("--checkpoint", action="append", type=_parse_checkpoint, default=[],
                   metavar="PART=PATH", help="the node's checkpoint_<part> parameter ("
                   f"{', '.join(CHECKPOINT_PARTS)}): a path or talk2sam-weights name; "
                   "repeatable")
    p.add_argument("--params-file", help="node parameter YAML (e.g. config/talk2sam.yaml)")
    p.add_argument("--weights-dir", help="talk2sam-weights cache (default "
                   "$TALK2SAM_WEIGHTS_DIR or ~/.cache/talk2sam_ros/weights)")
    p.add_argument("--images", help="folder of your images instead of the built-in set")
    p.add_argument("--video", help="video file instead of the built-in set")
    p.add_argument("--text", help="prompt for --images/--video/--bag (cable)")
    p.add_argument("--box", "--boxes", dest="box", type=float, nargs=4, action="append",
                   metavar=("X0", "Y0", "X1", "Y1"), help="box prompt for --images/--video/"
                   "--bag, source pixels; repeatable (default: text-only)")
    p.add_argument("--synthetic", type=int, default=6, help="held-out synthetic scenes (6)")
    p.add_argument("--rgbd", type=int, default=2, help="synthetic RGB-D scenes with aligned "
                   "depth and camera_info (2; the node runs with use_depth and their PNGs "
                   "include the 3D grasp); 0: none")
    p.add_argument("--synthetic-size", type=int,
                   help="side of the synthetic scenes, px (default: the training recipe's, "
                   "with its distractor setting; set: 50 %% distractors)")
    p.add_argument("--no-photos", action="store_true", help="skip the scikit-image photos")
    p.add_argument("--max-frames", type=int,
                   help="most frames to publish (30; with --bag: all of the bag's)")
    p.add_argument("--rate", type=float, default=10.0, help="stream rate, Hz (10)")
    p.add_argument("--stream-seconds", type=float, default=4.0, help="0 skips the stream")
    p.add_argument("--train-images", type=int, help="synthetic training images (recipe: 48)")
    p.add_argument("--train-size", type=int, help="synthetic image side, px (recipe: 128)")
    p.add_argument("--train-epochs", type=int, help="training epochs (recipe: 6)")
    p.add_argument("--train-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--retrain", action="store_true", help="train the tiny head again")
    p.add_argument("--timeout", type=float, default=300.0, help="node start / answer timeout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    bag = p.add_argument_group("a recorded ROS 2 bag instead of the built-in set (docs/tools.md)")
    bag.add_argument("--bag", help="rosbag2 folder or file (.db3 or .mcap)")
    bag.add_argument("--image-topic", help="colour topic (sensor_msgs/Image or CompressedImage)")
    bag.add_argument("--depth-topic", help="aligned depth topic (sensor_msgs/Image 16UC1/32FC1)")
    bag.add_argument("--camera-info-topic", help="colour camera's sensor_msgs/CameraInfo topic")
    bag.add_argument("--prompts", help="prompt schedule YAML: a list of {t: seconds from the "
                     "bag's start, text: ..., boxes: [[x0, y0, x1, y1], ...]} (instead of "
                     "--text/--box)")
    bag.add_argument("--bag-rate", choices=BAG_RATES, help="max (default): each frame once "
                     "the node has answered the previous one, so every frame is processed; "
                     "recorded: at the bag's own timing, frames the node cannot keep up with "
                     "are dropped as on the robot")
    bag.add_argument("--output-bag", help="the bag of the node's outputs (default <out>/outputs)")
    bag.add_argument("--output-storage", choices=("mcap", "sqlite3"), help="mcap (default) or "
                     "sqlite3 (.db3)")
    bag.add_argument("--output-namespace", help="namespace of the output topics in the bag "
                     "(default: none, /mask, /result, ... as the node publishes them)")
    bag.add_argument("--with-inputs", action="store_true", help="also write the frames (and "
                     "depth, camera_info) played, as the node's inputs image, depth, camera_info")
    bag.add_argument("--png-every", type=int, help="PNGs of every N-th frame played (10; 0: "
                     "none)")
    return p


# Options of the bag mode only (dest names).
BAG_OPTIONS = ("image_topic", "depth_topic", "camera_info_topic", "prompts", "bag_rate",
               "output_bag", "output_storage", "output_namespace", "with_inputs", "png_every")


def preset_from_params_file(path: str | os.PathLike) -> str | None:
    """The `preset` parameter set for the node in a ROS parameter YAML (None if absent)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DemoError(f"cannot read parameter file {path}: {exc}") from None
    for section in data.values():
        params = section.get("ros__parameters", {}) if isinstance(section, dict) else {}
        if "preset" in params:
            return str(params["preset"])
    return None


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    for name, value in (("--rate", args.rate), ("--timeout", args.timeout)):
        if not value > 0:
            raise UsageError(f"{name} must be > 0, got {value:g}")
    max_frames = 30 if args.max_frames is None else args.max_frames
    if max_frames < 1 or min(args.synthetic, args.rgbd, args.stream_seconds) < 0:
        raise UsageError("--max-frames must be >= 1, --synthetic, --rgbd and --stream-seconds "
                         ">= 0")
    if args.bag is None:
        given = [name for name in BAG_OPTIONS if getattr(args, name) not in (None, False)]
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} needs --bag")
    elif args.images or args.video:
        raise UsageError("--bag cannot be combined with --images or --video")
    preset = args.preset
    if preset is None:
        preset = (preset_from_params_file(args.params_file) if args.params_file else None)
        preset = preset or "tiny"
    out = Path(args.out) if args.out else Path(time.strftime("talk2sam_demo_%Y%m%d_%H%M%S"))
    return DemoConfig(
        out=out.resolve(), preset=preset, device=args.device,
        checkpoints=dict(args.checkpoint), params_file=args.params_file,
        images=Path(args.images) if args.images else None,
        video=Path(args.video) if args.video else None, text=args.text or "cable",
        boxes=None if args.box is None else np.asarray(args.box, np.float32),
        photos=not args.no_photos, synthetic=args.synthetic, rgbd=args.rgbd,
        synthetic_size=args.synthetic_size, max_frames=max_frames,
        rate_hz=args.rate, stream_seconds=args.stream_seconds,
        train=TrainBudget(images=args.train_images, image_size=args.train_size,
                          epochs=args.train_epochs, max_steps=args.train_steps),
        retrain=args.retrain, weights_dir=Path(args.weights_dir) if args.weights_dir else None,
        timeout_s=args.timeout, progress=not args.quiet)


# ----------------------------------------------------------------------------- recorded bags


@dataclass(frozen=True)
class BagDemoConfig:
    """`--bag`: `node` holds the node and weights options shared with the demo."""

    node: DemoConfig
    bag: Path
    topics: BagTopics
    schedule: tuple[PromptChange, ...]
    rate: str = "max"  # BAG_RATES
    output_bag: Path | None = None  # None: <out>/outputs
    storage: str = "mcap"
    namespace: str = ""
    with_inputs: bool = False
    png_every: int = 10
    max_frames: int | None = None


def bag_config_from_args(args: argparse.Namespace, node: DemoConfig) -> BagDemoConfig:
    """The bag options of the command line (build_parser)."""
    if not args.image_topic:
        raise UsageError("--bag needs --image-topic (the bag's colour topic)")
    if bool(args.depth_topic) != bool(args.camera_info_topic):
        raise UsageError("--depth-topic and --camera-info-topic go together")
    if args.prompts and (args.text or args.box):
        raise UsageError("--prompts replaces --text/--box: give one or the other")
    if args.png_every is not None and args.png_every < 0:
        raise UsageError(f"--png-every must be >= 0, got {args.png_every}")
    if args.prompts:
        schedule = load_prompt_schedule(args.prompts)
    else:
        schedule = prompt_schedule([{"t": 0.0, "text": args.text or "cable",
                                     "boxes": args.box}], "--text/--box")
    return BagDemoConfig(
        node=node, bag=Path(args.bag),
        topics=BagTopics(args.image_topic, args.depth_topic or "", args.camera_info_topic or ""),
        schedule=schedule, rate=args.bag_rate or BAG_RATES[0],
        output_bag=Path(args.output_bag).resolve() if args.output_bag else None,
        storage=args.output_storage or "mcap", namespace=args.output_namespace or "",
        with_inputs=args.with_inputs, png_every=10 if args.png_every is None else args.png_every,
        max_frames=args.max_frames)


def run_bag_demo(cfg: BagDemoConfig) -> dict[str, Any]:
    """The bag mode; returns the summary (also written to the output folder). Every bad input
    is found before the node starts; the output bag is opened once the node is active."""
    out = cfg.node.out
    with InputBag(cfg.bag) as bag:
        bag.check(cfg.topics)
        compressed = bag.topics[cfg.topics.image] == "sensor_msgs/msg/CompressedImage"
        depth = bool(cfg.topics.depth)
        output_path = check_output_path(cfg.output_bag or out / "outputs", cfg.storage)
        out.mkdir(parents=True, exist_ok=True)
        extra: dict[str, Any] = {"image_transport": "compressed"} if compressed else {}
        extra["use_depth"] = depth  # the node's depth, camera_info and 3D outputs
        node = plan_node(cfg.node, cache_dir_path(cfg.node.weights_dir), extra)
        recorder = OutputRecorder(None, cfg.namespace)
        image_topic = "image/compressed" if compressed else "image"
        print(f"[demo] starting the node (preset {cfg.node.preset}, {cfg.node.device}); log: "
              f"{out / 'node.log'}", flush=True)
        with NodeHarness(node.settings, out / "node.log", cfg.node.timeout_s,
                         outputs=(*PUBLICATIONS, *(RGBD_PUBLICATIONS if depth else ())),
                         image_topic=image_topic, compressed=compressed,
                         on_output=recorder) as h:
            if depth and not h.client.wait_rgbd_active(cfg.node.timeout_s):
                raise NodeError(f"the node did not subscribe to depth and camera_info within "
                                f"{cfg.node.timeout_s:.0f} s; see {out / 'node.log'}")
            print(f"[demo] node active on ROS_DOMAIN_ID {h.domain}; playing {cfg.bag} "
                  f"({bag.count(cfg.topics.image)} frames on {cfg.topics.image}, "
                  f"{cfg.rate} rate) into {output_path}", flush=True)
            with OutputBag(output_path, cfg.storage) as output:
                recorder.bag = output
                items = bp.plan_frames(play_frames(bag.messages(cfg.topics), bag.start_ns),
                                       cfg.schedule, cfg.max_frames, cfg.png_every,
                                       bp.image_check(h.client.bridge))
                player = bp.Player(h, recorder, cfg.schedule, image_topic, cfg.with_inputs,
                                   cfg.rate)
                played = list(_with_pngs(bp.PLAYERS[cfg.rate](player, items), out, cfg,
                                         h.client.bridge))
                h.spin(0.5)  # the last frame's late outputs
    meta = {"mode": "bag", "preset": cfg.node.preset, "device": cfg.node.device,
            "output_dir": str(out), "weights": node.weights, "quality_note": node.quality_note,
            "ros_domain_id": h.domain, "bag": str(cfg.bag), "topics": cfg.topics.by_role(),
            "rate": cfg.rate, "frames_in_bag": bag.count(cfg.topics.image),
            "output_bag": str(output_path), "output_storage": cfg.storage,
            "output_counts": dict(output.counts),
            "outputs_not_from_played_frames": recorder.unplaced}
    summary = bag_summary(played, meta)
    write_summary(out, summary, bag_summary_markdown(summary))
    return summary


def bag_summary(played: list[tuple[bp.Played, dict[str, Any]]], meta: dict[str, Any]
                ) -> dict[str, Any]:
    """The bag run's summary from (bag_player.Played, record) pairs."""
    answers = [item.answer for item, _ in played if item.answer is not None]
    records = [rec for _, rec in played]
    status = Counter(r["status"] for r in records)
    return {
        **meta,
        "frames_read": len(records), "frames_played": status["played"],
        "frames_processed": len(answers), "frames_unanswered": status["played"] - len(answers),
        "frames_skipped": {k: status[k] for k in ("no_prompt", "stamp_not_increasing",
                                                  "rejected")},
        "depth_status": dict(Counter(r["depth_status"] for r in records
                                     if r.get("depth_status"))),
        **latency_summary(answers),
        "node_counters": node_counters(answers[-1].result) if answers else None,
        "frames": records,
    }


def _with_pngs(items: Iterator[bp.Played], out: Path, cfg: BagDemoConfig, bridge: Any
               ) -> Iterator[tuple[bp.Played, dict[str, Any]]]:
    """(bag_player.Played, its summary record), with the PNGs of its frames marked `png`."""
    for item in items:
        rec = bp.frame_record(item)
        if item.png and item.answer is not None:
            change = cfg.schedule[item.prompt_id - 1]
            frame = DemoFrame(f"t{item.frame.at_s:.3f}s",
                              bp.frame_rgb(item.frame.image.msg, bridge), change.text,
                              change.boxes, source=str(cfg.bag))
            rec["files"] = save_frame_pngs(out, item.frame.index, frame, item.answer,
                                           item.camera_info)
        item.release_image()
        yield item, rec


def bag_summary_markdown(s: Mapping[str, Any]) -> str:
    skipped = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in s["frames_skipped"].items()
                        if v) or "none"
    lines = [f"# talk2sam-demo --bag: preset `{s['preset']}` on {s['device']}", "",
             f"Weights: {s['weights']}. {s['quality_note']}", "",
             f"Bag {s['bag']} ({', '.join(f'{k} {v}' for k, v in s['topics'].items())}), "
             f"{s['rate']} rate: {s['frames_in_bag']} colour frames, {s['frames_read']} read, "
             f"{s['frames_played']} played, {s['frames_processed']} processed, "
             f"{s['frames_unanswered']} unanswered; skipped: {skipped}.", "",
             f"Output bag ({s['output_storage']}): {s['output_bag']}", "",
             "| topic | messages |", "|---|---:|"]
    lines += [f"| `{t}` | {n} |" for t, n in sorted(s["output_counts"].items())]
    if s["depth_status"]:
        lines += ["", "3D grasp depth_status: " + ", ".join(
            f"{k} {v}" for k, v in sorted(s["depth_status"].items()))]
    lines += ["", *latency_table(dict(s)), "",
              "| # | stamp | status | prompt | mask px | score | grasp | ms |",
              "|---:|---|---|---|---:|---:|---|---:|"]
    for r in s["frames"]:
        lines.append(f"| {r['index']} | {r['stamp']} | {r['status']} | {r.get('text', '-')} | "
                     f"{r.get('mask_area', '-')} | {fmt(r.get('score'), 2)} | "
                     f"{r.get('grasp', '-')} | {fmt(r.get('latency_ms'))} |")
    return "\n".join(lines) + "\n"


# The demo's expected failures; anything else is a bug and keeps its traceback.
ERRORS = (DemoError, NodeError, BagError, WeightsError, CheckpointError, OSError)


def _demo(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(args)
    if args.bag is not None:
        bag_cfg = bag_config_from_args(args, cfg)
        keep_dds_on_loopback()
        summary = run_bag_demo(bag_cfg)
        markdown = bag_summary_markdown(summary)
    else:
        keep_dds_on_loopback()
        summary = run_demo(cfg)
        markdown = summary_markdown(summary)
    print(markdown)
    print(f"[demo] output folder: {summary['output_dir']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, lambda: _demo(argv), ERRORS, logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
