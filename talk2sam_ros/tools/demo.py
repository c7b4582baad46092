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
``--preset b|l|h``) the same command runs the full-size model. :class:`NodeHarness` (start the
node, publish, collect) is shared with ``talk2sam-bench``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from talk2sam_ros.tools.bench import summarize
from talk2sam_ros.common.cli import cli_logging
from talk2sam_ros.model.config import dtype_name

LOG = logging.getLogger(__name__)

OUTPUT_TOPICS = ("result", "mask", "similarity_color", "overlay", "grasp")
CATEGORY_PROMPT_ID = -1  # the node answers `category` prompts with this id
# Top-level stages of SegmentationResult.timing that are model work; every other top-level
# lap (convert, publish_masks, grasp, overlay, ...) is the node's own overhead.
MODEL_STAGES = ("encode_image", "predict", "debug_delay")


class DemoError(RuntimeError):
    """A one-line, user-facing failure (node did not start, training failed, ...)."""


# ----------------------------------------------------------------------------- node harness


@dataclass(frozen=True)
class NodeSettings:
    """How to start the node: preset, device and any extra ROS parameters."""

    preset: str = "tiny"
    device: str = "cpu"
    dtype: str = "float32"  # the node's dtype parameter (fp32 / bf16 / fp16 also accepted)
    checkpoints: Mapping[str, str] = field(default_factory=dict)  # part -> path / registry name
    checkpoints_from_cache: bool = False  # presets t/b/l/h: registry files in the cache
    params_file: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # other node parameters
    node_name: str = "talk2sam"

    def ros_args(self) -> list[str]:
        params: dict[str, Any] = {"preset": self.preset, "device": self.device,
                                  "dtype": dtype_name(self.dtype), "diagnostics_period_s": 0.0}
        if self.preset not in ("tiny",) and not self.checkpoints_from_cache \
                and not self.params_file and not self.checkpoints:
            params["allow_random_weights"] = True  # benchmark-only real-size random weights
        params.update({f"checkpoint_{k}": str(v) for k, v in self.checkpoints.items()})
        params.update(self.extra)
        args = ["--ros-args", "-r", f"__node:={self.node_name}"]
        if self.params_file:
            args += ["--params-file", str(self.params_file)]
        for key, value in params.items():
            text = ("true" if value else "false") if isinstance(value, bool) else str(value)
            args += ["-p", f"{key}:={text}"]
        return args


@dataclass
class FrameResult:
    """What the node published for one (frame, prompt)."""

    stamp: tuple[int, int]
    result: Any  # SegmentationResult
    outputs: dict[str, Any]  # topic -> message (mask, overlay, ...)
    latency_ms: float  # image publish -> mask (or result) received
    stages: dict[str, float]  # SegmentationResult.timing, ms

    @property
    def node_overhead_ms(self) -> float:
        return sum(ms for name, ms in self.stages.items()
                   if "." not in name and name not in MODEL_STAGES)

    @property
    def pipeline_ms(self) -> float:
        return sum(ms for name, ms in self.stages.items() if "." not in name)


@contextlib.contextmanager
def interrupt_on_termination() -> Iterator[None]:
    """SIGTERM / SIGHUP (kill, a closing terminal, a supervisor) act like Ctrl-C while the
    block runs: KeyboardInterrupt unwinds the `with NodeHarness` blocks, so the node
    subprocess is stopped instead of being left running. Main thread only (signal API)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _domain_id() -> int:
    env = os.environ.get("ROS_DOMAIN_ID")
    return int(env) if env else 1 + (os.getpid() % 100)


class NodeHarness:
    """The real node in a subprocess plus an in-process rclpy client that feeds and listens.

    Use as a context manager; everything runs on the current ROS_DOMAIN_ID (or one derived
    from the pid) with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and ROS_LOCALHOST_ONLY=1.
    """

    def __init__(self, settings: NodeSettings, log_path: Path, timeout_s: float = 180.0,
                 outputs: Sequence[str] = ("result", "mask"), frame_id: str = "camera") -> None:
        self.settings = settings
        self.log_path = Path(log_path)
        self.timeout_s = timeout_s
        self.output_topics = tuple(dict.fromkeys(("result", *outputs)))
        self.frame_id = frame_id
        self.domain = _domain_id()
        self.proc: subprocess.Popen | None = None
        self._log_fh: Any = None
        self._context: Any = None
        self._node: Any = None
        self._executor: Any = None
        self._sent: dict[tuple[int, int], float] = {}
        self._received: dict[tuple[int, int], dict[str, tuple[Any, float]]] = {}
        self.results: list[tuple[Any, float]] = []
        self.answer_timeout_s = timeout_s  # per answer; warm_up() tightens it
        self.latency_estimate_s = 1.0  # one frame's processing; measured by warm_up()
        self.prompt_id = 0
        self._active_prompt: tuple[int, str] | None = None
        self._last_stamp: tuple[int, int] | None = None

    # -- lifecycle of the harness
    def __enter__(self) -> NodeHarness:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        from talk2sam_ros.ros.conversions import make_bridge
        from talk2sam_ros.msg import GraspCandidate, SegmentationResult, TextBoxPrompt

        env = dict(os.environ, ROS_DOMAIN_ID=str(self.domain),
                   ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_LOCALHOST_ONLY="1",
                   PYTHONUNBUFFERED="1")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_fh = open(self.log_path, "w")
        cmd = [sys.executable, "-m", "talk2sam_ros.ros.node", *self.settings.ros_args()]
        self._log_fh.write("$ " + " ".join(cmd) + "\n")
        self._log_fh.flush()
        self.proc = subprocess.Popen(cmd, stdout=self._log_fh, stderr=subprocess.STDOUT, env=env)
        self._context = rclpy.Context()
        rclpy.init(context=self._context, domain_id=self.domain)
        self._node = rclpy.create_node("talk2sam_demo_client", context=self._context)
        self._bridge = make_bridge()
        reliable = QoSProfile(depth=10, history=HistoryPolicy.KEEP_LAST,
                              reliability=ReliabilityPolicy.RELIABLE)
        self._image_pub = self._node.create_publisher(Image, "image", reliable)
        self._prompt_pub = self._node.create_publisher(TextBoxPrompt, "prompt", reliable)
        self._category_pub = self._node.create_publisher(String, "category", reliable)
        kinds = {"result": SegmentationResult, "grasp": GraspCandidate}
        self._subs = [self._node.create_subscription(kinds.get(t, Image), t,
                                                     self._callback(t), reliable)
                      for t in self.output_topics]
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._wait_for_node()

    def close(self) -> None:
        try:
            if self._executor is not None:
                self._executor.shutdown()
            if self._node is not None:
                self._node.destroy_node()
            if self._context is not None:
                self._context.try_shutdown()
        finally:  # whatever happened above, the node process must not outlive us
            self._executor = self._node = self._context = None
            self._stop_node()

    def _stop_node(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # the node tears down cleanly
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            except KeyboardInterrupt:  # a second Ctrl-C: do not wait any longer
                self.proc.kill()
                self.proc.wait(10)
                raise
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise DemoError(f"the node exited with code {self.proc.returncode}; last lines of "
                            f"{self.log_path}:\n{self.log_tail()}")
        # The node logs "configure failed: <reason>" and then a generic autostart line; the
        # reason is what the user needs (e.g. which weights to download).
        failed = [ln.split("configure failed: ", 1)[1].strip()
                  for ln in self.log_tail(40).splitlines() if "configure failed: " in ln]
        if failed:
            raise DemoError(f"the node could not load the model: {failed[-1]}")

    def _wait_for_node(self) -> None:
        """Until the node is active: its subscriptions and our output subscriptions matched."""
        def ready() -> bool:
            return (self._image_pub.get_subscription_count() > 0
                    and self._prompt_pub.get_subscription_count() > 0
                    and self._category_pub.get_subscription_count() > 0
                    and all(s.get_publisher_count() > 0 for s in self._subs))

        deadline = time.monotonic() + self.timeout_s
        while not ready():
            self._check_alive()
            if time.monotonic() > deadline:
                raise DemoError(f"the node did not become active within {self.timeout_s:.0f} s;"
                                f" see {self.log_path}")
            self._executor.spin_once(timeout_sec=0.2)
        self.spin(0.3)  # let matching settle in both directions

    # -- io
    def _callback(self, topic: str):  # noqa: ANN202 (closure)
        def store(msg: Any) -> None:
            now = time.perf_counter()
            key = (int(msg.header.stamp.sec), int(msg.header.stamp.nanosec))
            if topic == "result":
                self.results.append((msg, now))
            self._received.setdefault(key, {})[topic] = (msg, now)
        return store

    def spin(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self._executor.spin_once(timeout_sec=max(0.0, min(0.05, end - time.monotonic())))

    def spin_until(self, done: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        checks = 0
        while not done():
            if time.monotonic() > deadline:
                return False
            checks += 1
            if checks % 20 == 0:
                self._check_alive()
            self._executor.spin_once(timeout_sec=0.05)
        return True

    def send_image(self, rgb: np.ndarray) -> tuple[int, int]:
        """Publish `rgb` (H, W, 3 uint8) stamped now; returns the stamp key."""
        from std_msgs.msg import Header

        from talk2sam_ros.ros.conversions import rgb_to_msg

        now = self._node.get_clock().now().to_msg()
        header = Header(frame_id=self.frame_id)
        header.stamp = now
        key = (int(now.sec), int(now.nanosec))
        msg = rgb_to_msg(rgb, "rgb8", header, self._bridge)
        self._sent[key] = time.perf_counter()
        self._image_pub.publish(msg)
        self._last_stamp = key
        return key

    def set_prompt(self, text: str, boxes: np.ndarray | None = None, *,
                   prompt_id: int | None = None, via_category: bool = False,
                   settle_s: float = 0.5) -> int:
        """Make (text, boxes) the node's prompt; returns the prompt id its results carry.

        Unstamped prompts re-run the newest frame the node holds; that answer is awaited (at
        most answer_timeout_s: the node may reject the prompt for that frame, e.g. a box outside
        it), or `settle_s` before the first frame, so the next image is under this prompt.
        """
        from std_msgs.msg import String

        from talk2sam_ros.msg import TextBoxPrompt

        if via_category:
            pid = CATEGORY_PROMPT_ID
            self._category_pub.publish(String(data=text))
        else:
            self.prompt_id = self.prompt_id + 1 if prompt_id is None else prompt_id
            pid = self.prompt_id
            msg = TextBoxPrompt(id=pid, text=text)
            msg.header.frame_id = self.frame_id
            if boxes is not None:
                msg.boxes = np.asarray(boxes, np.float32).reshape(-1).tolist()
            self._prompt_pub.publish(msg)
        self._active_prompt = (pid, text)
        if self._last_stamp is None:
            self.spin(settle_s)
        else:
            last = self._last_stamp
            self.spin_until(lambda: self._find(last, pid, text) is not None,
                            self.answer_timeout_s)
        return pid

    def _find(self, stamp: tuple[int, int], pid: int, text: str) -> Any:
        got = self._received.get(stamp, {}).get("result")
        if got and got[0].prompt_id == pid and got[0].text == text:
            return got
        return None

    def wait_frame(self, stamp: tuple[int, int], timeout: float | None = None
                   ) -> FrameResult | None:
        """The node's answer to frame `stamp` under the active prompt (None on timeout)."""
        assert self._active_prompt is not None, "set_prompt first"
        pid, text = self._active_prompt
        timeout = self.answer_timeout_s if timeout is None else timeout
        if not self.spin_until(lambda: self._find(stamp, pid, text) is not None, timeout):
            return None
        wanted = [t for t in self.output_topics if t != "result"]
        self.spin_until(lambda: all(t in self._received.get(stamp, {}) for t in wanted), 2.0)
        got = self._received[stamp]
        result, t_result = got["result"]
        t_done = got["mask"][1] if "mask" in got else t_result
        return FrameResult(stamp, result, {t: m for t, (m, _) in got.items()},
                           (t_done - self._sent[stamp]) * 1e3,
                           {s.stage: float(s.ms) for s in result.timing})

    def send_and_wait(self, rgb: np.ndarray, timeout: float | None = None
                      ) -> FrameResult | None:
        return self.wait_frame(self.send_image(rgb), timeout)

    def warm_up(self, rgb: np.ndarray, tries: int = 3) -> FrameResult:
        """A first answered frame (lazy initialisation; its numbers are not kept). Retried:
        the very first samples of a new publisher can be lost while discovery settles."""
        for _ in range(tries):
            res = self.send_and_wait(rgb, self.timeout_s)
            if res is not None:
                self.latency_estimate_s = res.latency_ms / 1e3
                self.answer_timeout_s = min(self.timeout_s, max(30.0, 20 * res.latency_ms / 1e3))
                return res
        raise DemoError(f"the node answered none of {tries} warm-up frames; see {self.log_path}")

    def stream(self, frames: Sequence[np.ndarray], rate_hz: float, seconds: float
               ) -> dict[str, Any]:
        """Publish `frames` cyclically at `rate_hz` for `seconds` under the active prompt.

        processed = distinct frames answered; drop rate = 1 - processed / sent. Frame age: the
        node's own `frame_age_ms` (processing finished - stamp) and receipt age (result
        received here - publish).
        """
        period = 1.0 / rate_hz
        stamps: list[tuple[int, int]] = []
        first_result = len(self.results)
        start = time.monotonic()
        i = 0
        while True:
            due = start + i * period
            if due - start >= seconds:
                break
            while time.monotonic() < due:
                self._executor.spin_once(timeout_sec=max(0.0, min(0.01, due - time.monotonic())))
            stamps.append(self.send_image(frames[i % len(frames)]))
            i += 1
        wall = time.monotonic() - start
        sent = set(stamps)
        # Stragglers: the node holds at most the frame in work plus the newest pending one, so
        # wait until answers stop coming for ~2.5 frame times (bounded by answer_timeout_s).
        quiet_s = max(3.0, 2.5 * self.latency_estimate_s)
        quiet_until = time.monotonic() + quiet_s
        seen = len(self.results)
        deadline = time.monotonic() + max(quiet_s, self.answer_timeout_s)
        while time.monotonic() < min(quiet_until, deadline):
            self._executor.spin_once(timeout_sec=0.05)
            if len(self.results) != seen:
                seen = len(self.results)
                quiet_until = time.monotonic() + quiet_s
        answers = [(m, t) for m, t in self.results[first_result:]
                   if (m.header.stamp.sec, m.header.stamp.nanosec) in sent]
        done = {(m.header.stamp.sec, m.header.stamp.nanosec) for m, _ in answers}
        ages = [float(m.frame_age_ms) for m, _ in answers]
        receipt = [(t - self._sent[(m.header.stamp.sec, m.header.stamp.nanosec)]) * 1e3
                   for m, t in answers]
        last = answers[-1][0] if answers else None
        return {"rate_hz": rate_hz, "seconds": wall, "sent": len(sent),
                "processed": len(done), "drop_rate": 1.0 - len(done) / max(len(sent), 1),
                "processed_hz": len(done) / max(wall, 1e-9),
                "frame_age_ms": summarize(ages), "receipt_age_ms": summarize(receipt),
                "node_counters": None if last is None else {
                    "frames_received": int(last.frames_received),
                    "frames_processed": int(last.frames_processed),
                    "frames_dropped": int(last.frames_dropped),
                    "inputs_rejected": int(last.inputs_rejected)}}


# ----------------------------------------------------------------------------- demo content


@dataclass
class DemoFrame:
    """One image with its prompt (boxes None: text-only on `category`) and optional GT."""

    name: str
    rgb: np.ndarray
    text: str
    boxes: np.ndarray | None
    gt: np.ndarray | None = None
    source: str = ""


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
    from talk2sam_ros.weights import trained_weights_path

    target = trained_weights_path("tiny", cache_dir=cache_dir)
    if target.is_file() and not force:
        LOG.info("trained tiny weights: %s", target)
        return target
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
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".pt.tmp")
    shutil.copyfile(weights, tmp)
    os.replace(tmp, target)
    print(f"[demo] trained tiny weights saved to {target}", flush=True)
    return target


# ----------------------------------------------------------------------------- outputs


def _image_array(msg: Any) -> np.ndarray:
    """Image message -> numpy: mono8 (H, W) uint8, 32FC1 (H, W) float32, bgr8/rgb8 -> RGB."""
    h, w = msg.height, msg.width
    if msg.encoding in ("mono8", "8UC1"):
        return np.frombuffer(bytes(msg.data), np.uint8).reshape(h, msg.step)[:, :w].copy()
    if msg.encoding == "32FC1":
        return np.frombuffer(bytes(msg.data), np.float32).reshape(h, msg.step // 4)[:, :w]
    rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(h, msg.step)[:, : w * 3]
    img = rows.reshape(h, w, 3)
    return img[..., ::-1].copy() if msg.encoding == "bgr8" else img.copy()


def save_frame_pngs(out_dir: Path, index: int, frame: DemoFrame, res: FrameResult
                    ) -> dict[str, str]:
    """input/overlay/mask/similarity/grasp PNGs of one answer; returns kind -> relative path."""
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
        mask = _image_array(res.outputs["mask"])
        write("mask", mask)
    if "overlay" in res.outputs:
        write("overlay", _image_array(res.outputs["overlay"]))
    if "similarity_color" in res.outputs:
        write("similarity", _image_array(res.outputs["similarity_color"]))
    grasp = res.outputs.get("grasp")
    if grasp is not None:
        line = np.array([(p.x, p.y) for p in grasp.centerline.points], np.float32)
        point = (grasp.grasp_point.x, grasp.grasp_point.y) if grasp.valid else None
        masks = None if mask is None else (mask > 127)[None]
        write("grasp", draw_overlay(frame.rgb, masks, None,
                                    f"grasp: {'valid' if grasp.valid else 'none'}",
                                    centerline=line if len(line) > 1 else None,
                                    grasp_point=point))
    return files


def summarize_run(records: list[dict[str, Any]], answers: list[FrameResult],
                  stream: dict[str, Any] | None, meta: dict[str, Any]) -> dict[str, Any]:
    stages: dict[str, list[float]] = {}
    for a in answers:
        for name, ms in a.stages.items():
            stages.setdefault(name, []).append(ms)
    ious = {"text+box": [r["iou"] for r in records
                         if r.get("iou") is not None and r["mode"] == "text+box"],
            "text-only": [r["iou"] for r in records
                          if r.get("iou") is not None and r["mode"] == "text-only"]}
    last = answers[-1].result if answers else None
    return {
        **meta,
        "frames_sent": len(records),
        "frames_processed": sum(1 for r in records if r["answered"]),
        "frames_unanswered": sum(1 for r in records if not r["answered"]),
        "end_to_end_ms": summarize([a.latency_ms for a in answers]),
        "node_overhead_ms": summarize([a.node_overhead_ms for a in answers]),
        "pipeline_ms": summarize([a.pipeline_ms for a in answers]),
        "stages_ms": {k: summarize(v) for k, v in stages.items()},
        "miou_synthetic": {k: (float(np.mean(v)) if v else None) for k, v in ious.items()},
        "synthetic_scenes": {k: len(v) for k, v in ious.items()},
        "node_counters": None if last is None else {
            "frames_received": int(last.frames_received),
            "frames_processed": int(last.frames_processed),
            "frames_dropped": int(last.frames_dropped),
            "inputs_rejected": int(last.inputs_rejected)},
        "stream": stream,
        "frames": records,
    }


def summary_markdown(s: dict[str, Any]) -> str:
    def f(x: Any, d: int = 1) -> str:
        return "-" if x is None else f"{x:.{d}f}"

    lines = [f"# talk2sam-demo: preset `{s['preset']}` on {s['device']}", "",
             f"Weights: {s['weights']}. {s['quality_note']}", "",
             f"Frames sent one at a time: {s['frames_sent']}, answered: "
             f"{s['frames_processed']}, unanswered: {s['frames_unanswered']}.", ""]
    miou = s["miou_synthetic"]
    lines += ["| mIoU on held-out synthetic scenes | value | scenes |", "|---|---:|---:|",
              f"| text + GT box | {f(miou['text+box'], 3)} | "
              f"{s['synthetic_scenes']['text+box']} |",
              f"| text only (boxes from similarity) | {f(miou['text-only'], 3)} | "
              f"{s['synthetic_scenes']['text-only']} |", "",
              "| latency (ms) | median | p90 |", "|---|---:|---:|"]
    for label, key in (("image publish -> mask received", "end_to_end_ms"),
                       ("node pipeline (sum of top-level stages)", "pipeline_ms"),
                       ("node overhead (convert, publish, grasp, overlay)", "node_overhead_ms")):
        lines.append(f"| {label} | {f(s[key].get('median'))} | {f(s[key].get('p90'))} |")
    for name, st in s["stages_ms"].items():
        lines.append(f"| stage `{name}` | {f(st.get('median'), 2)} | {f(st.get('p90'), 2)} |")
    st = s.get("stream")
    if st:
        lines += ["", f"Stream at {st['rate_hz']:.0f} Hz for {st['seconds']:.1f} s: "
                      f"{st['sent']} frames sent, {st['processed']} processed, "
                      f"{st['sent'] - st['processed']} dropped "
                      f"({100 * st['drop_rate']:.0f} %); processed-frame age median "
                      f"{f(st['frame_age_ms'].get('median'))} ms."]
    lines += ["", "| # | frame | prompt | mode | IoU | score | mask px | grasp | ms |",
              "|---:|---|---|---|---:|---:|---:|---|---:|"]
    for r in s["frames"]:
        lines.append(f"| {r['index']} | {r['name']} | {r['text']} | {r['mode']} | "
                     f"{f(r.get('iou'), 3)} | {f(r.get('score'), 2)} | "
                     f"{r.get('mask_area', '-')} | {r.get('grasp', '-')} | "
                     f"{f(r.get('latency_ms'))} |")
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
    if not frames:
        raise DemoError("no frames to publish (use --images, --video or the defaults)")
    return frames[: cfg.max_frames]


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """The whole demo; returns the summary (also written to cfg.out)."""
    from talk2sam_ros.common.metrics import mask_iou
    from talk2sam_ros.weights import default_cache_dir

    cache = Path(cfg.weights_dir) if cfg.weights_dir else default_cache_dir()
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = dict(cfg.checkpoints)
    trained = cfg.preset == "tiny" and "talk2sam" not in checkpoints and not cfg.params_file
    if trained:
        checkpoints["talk2sam"] = str(ensure_trained_tiny(cache, cfg.train, cfg.retrain,
                                                          cfg.progress))
    frames = build_frames(cfg, cache)
    extra: dict[str, Any] = {"qos_reliability": "reliable"}
    if cfg.weights_dir:
        extra["weights_dir"] = str(cfg.weights_dir)
    settings = NodeSettings(preset=cfg.preset, device=cfg.device, checkpoints=checkpoints,
                            params_file=cfg.params_file,
                            checkpoints_from_cache=cfg.preset != "tiny", extra=extra)
    print(f"[demo] starting the node (preset {cfg.preset}, {cfg.device}); log: "
          f"{out / 'node.log'}", flush=True)
    records: list[dict[str, Any]] = []
    answers: list[FrameResult] = []
    stream = None
    with NodeHarness(settings, out / "node.log", cfg.timeout_s, outputs=OUTPUT_TOPICS) as h:
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
            res = h.send_and_wait(fr.rgb)
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
                           files=save_frame_pngs(out, i, fr, res))
                grasp = res.outputs.get("grasp")
                rec["grasp"] = None if grasp is None else ("valid" if grasp.valid else "none")
                if fr.gt is not None and "mask" in res.outputs:
                    rec["iou"] = mask_iou(fr.gt, _image_array(res.outputs["mask"]) > 127)
            records.append(rec)
        if cfg.stream_seconds > 0 and frames:
            # Text-only: valid on every frame whatever its size.
            h.set_prompt(frames[0].text, None, via_category=True)
            print(f"[demo] streaming at {cfg.rate_hz:g} Hz for {cfg.stream_seconds:g} s",
                  flush=True)
            stream = h.stream([f.rgb for f in frames], cfg.rate_hz, cfg.stream_seconds)
    weights, quality = describe_weights(cfg.preset, checkpoints, cfg.params_file, trained)
    meta = {"preset": cfg.preset, "device": cfg.device, "output_dir": str(out),
            "weights": weights, "quality_note": quality, "ros_domain_id": h.domain}
    summary = summarize_run(records, answers, stream, meta)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default) + "\n")
    (out / "summary.md").write_text(summary_markdown(summary))
    return summary


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, (Path,)):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _parse_checkpoint(text: str) -> tuple[str, str]:
    part, sep, path = text.partition("=")
    if not sep or not path:
        raise argparse.ArgumentTypeError(f"--checkpoint wants PART=PATH, got {text!r}")
    return part, path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="talk2sam-demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None,
                   help="output folder (default talk2sam_demo_<date-time> here)")
    p.add_argument("--preset", help="tiny (default unless --params-file sets one), t, b, l, h")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, auto")
    p.add_argument("--checkpoint", action="append", type=_parse_checkpoint, default=[],
                   metavar="PART=PATH", help="node checkpoint (sam_hq, dinov2, clip, "
                   "projection, talk2sam); path or talk2sam-weights name; repeatable")
    p.add_argument("--params-file", help="node parameter YAML (e.g. config/talk2sam.yaml)")
    p.add_argument("--weights-dir", help="talk2sam-weights cache (default "
                   "$TALK2SAM_WEIGHTS_DIR or ~/.cache/talk2sam_ros/weights)")
    p.add_argument("--images", help="folder of your images instead of the built-in set")
    p.add_argument("--video", help="video file instead of the built-in set")
    p.add_argument("--text", default="cable", help="prompt for --images/--video (cable)")
    p.add_argument("--box", type=float, nargs=4, metavar=("X0", "Y0", "X1", "Y1"),
                   help="box prompt for --images/--video (default: text-only)")
    p.add_argument("--synthetic", type=int, default=6, help="held-out synthetic scenes (6)")
    p.add_argument("--synthetic-size", type=int,
                   help="side of the synthetic scenes, px (default: the training recipe's, "
                   "with its distractor setting; set: 50 %% distractors)")
    p.add_argument("--no-photos", action="store_true", help="skip the scikit-image photos")
    p.add_argument("--max-frames", type=int, default=30)
    p.add_argument("--rate", type=float, default=10.0, help="stream rate, Hz (10)")
    p.add_argument("--stream-seconds", type=float, default=4.0, help="0 skips the stream")
    p.add_argument("--train-images", type=int, help="synthetic training images (recipe: 48)")
    p.add_argument("--train-size", type=int, help="synthetic image side, px (recipe: 128)")
    p.add_argument("--train-epochs", type=int, help="training epochs (recipe: 6)")
    p.add_argument("--train-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--retrain", action="store_true", help="train the tiny head again")
    p.add_argument("--timeout", type=float, default=300.0, help="node start / answer timeout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


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
    preset = args.preset
    if preset is None:
        preset = (preset_from_params_file(args.params_file) if args.params_file else None)
        preset = preset or "tiny"
    out = Path(args.out) if args.out else Path(time.strftime("talk2sam_demo_%Y%m%d_%H%M%S"))
    return DemoConfig(
        out=out.resolve(), preset=preset, device=args.device,
        checkpoints=dict(args.checkpoint), params_file=args.params_file,
        images=Path(args.images) if args.images else None,
        video=Path(args.video) if args.video else None, text=args.text,
        boxes=None if args.box is None else np.asarray([args.box], np.float32),
        photos=not args.no_photos, synthetic=args.synthetic,
        synthetic_size=args.synthetic_size, max_frames=args.max_frames,
        rate_hz=args.rate, stream_seconds=args.stream_seconds,
        train=TrainBudget(images=args.train_images, image_size=args.train_size,
                          epochs=args.train_epochs, max_steps=args.train_steps),
        retrain=args.retrain, weights_dir=Path(args.weights_dir) if args.weights_dir else None,
        timeout_s=args.timeout, progress=not args.quiet)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("ROS_DOMAIN_ID", str(_domain_id()))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_LOCALHOST_ONLY"] = "1"
    try:
        cfg = config_from_args(build_parser().parse_args(argv))
        with cli_logging(logging.WARNING), interrupt_on_termination():
            summary = run_demo(cfg)
    except DemoError as exc:
        print(f"talk2sam-demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("talk2sam-demo: interrupted", file=sys.stderr)
        return 130
    print(summary_markdown(summary))
    print(f"[demo] output folder: {summary['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
