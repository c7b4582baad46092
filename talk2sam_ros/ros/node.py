"""talk2sam_node: the Talk2SAM lifecycle node (images + prompts in, masks and maps out).

A thin adapter over :class:`talk2sam_ros.model.Talk2SAMPredictor`; behaviour, topics and
parameters are documented in docs/node.md. Threads: the executor runs the subscription,
service and timer callbacks, which only check and store messages; one worker thread runs the
model on the newest frame (older unprocessed frames are dropped and counted) and publishes.
"""
from __future__ import annotations

import dataclasses
import gc
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Point32, Polygon
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from talk2sam_ros.common.cli import one_line
from talk2sam_ros.common.params import check_value, descriptor
from talk2sam_ros.common.visualize import blend_similarity, draw_overlay, label_image
from talk2sam_ros.grasp import grasp_from_mask
from talk2sam_ros.model.errors import CheckpointError
from talk2sam_ros.msg import GraspCandidate, SegmentationResult, StageTiming, TextBoxPrompt
from talk2sam_ros.ros import conversions as conv
from talk2sam_ros.ros.params import (DIAGNOSTICS_TOPIC, NODE_NAME, PARAM_BY_NAME, PARAMS,
                                     NodeConfig, node_config_from_params)
from talk2sam_ros.weights.registry import WeightsError

# Prompts from `category` (text only) carry this id in their results.
CATEGORY_PROMPT_ID = -1
_LOG_PERIOD_S = 2.0  # per-frame log lines: one per kind of rejection (or call site) and period
_MAX_PROMPT_JOBS = 16  # stamped prompts waiting for the worker; older ones are dropped


@dataclass(frozen=True)
class Prompt:
    """The active request: text plus optional (N, 4) XYXY boxes in source pixels."""

    id: int
    text: str
    boxes: np.ndarray | None
    frame_id: str


@dataclass(eq=False)
class Frame:
    """A received image; `rgb` is filled by the worker when it is first needed."""

    seq: int
    header: Header
    msg: Image | CompressedImage
    received: float  # time.monotonic()
    rgb: np.ndarray | None = None


class Counters:
    """Thread-safe event counters, reset on activate."""

    NAMES = ("frames_received", "frames_processed", "frames_dropped", "frames_idle",
             "images_rejected", "prompts_received", "prompts_rejected", "frames_rejected",
             "prompt_frame_missed", "encodings", "reused_encodings", "errors", "out_of_memory")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(self.NAMES, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            values = dict(self._values)
        values["inputs_rejected"] = (values["images_rejected"] + values["prompts_rejected"]
                                     + values["frames_rejected"])
        return values


class Throttle:
    """Allows an event per key once per `period` seconds (thread-safe, bounded memory)."""

    def __init__(self, period: float, max_keys: int = 256) -> None:
        self.period, self.max_keys = period, max_keys
        self._last: dict[Any, float] = {}
        self._lock = threading.Lock()

    def allow(self, key: Any, now: float) -> bool:
        with self._lock:
            if now - self._last.get(key, -math.inf) < self.period:
                return False
            if len(self._last) >= self.max_keys:
                self._last.clear()
            self._last[key] = now
            return True


def reason_kind(reason: str) -> str:
    """The kind of a rejection reason: its text without numbers and quoted values."""
    return re.sub(r"\d+", "#", re.sub(r"'[^']*'", "''", reason))


class Talk2SAMNode(LifecycleNode):
    """Lifecycle node: configure loads the model, activate subscribes and starts the worker."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        # name -> why its --params-file / -p value was refused (wrong type or range): the node
        # stays up with the default, and configure fails until the parameter is set again
        self._refused: dict[str, str] = {}
        for spec in PARAMS:
            try:
                self.declare_parameter(spec.name, spec.default, descriptor(spec))
            except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
                self.declare_parameter(spec.name, spec.default, descriptor(spec),
                                       ignore_override=True)
                self._refused[spec.name] = str(exc)
                self.get_logger().error(f"parameter {spec.name} refused: {exc}")
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._parameters_changed)
        self._bridge = conv.make_bridge()
        self._cfg: NodeConfig | None = None
        self._model: Any = None
        self._predictor: Any = None
        self._device = "cpu"
        self._pubs: dict[str, Any] = {}
        self._subs: list[Any] = []
        # Lifecycle state as our transitions set it, and why the last configure failed: both
        # are on /diagnostics from start-up, so tools see a failure reason without reading logs.
        self._state = "unconfigured"
        self._configure_error = ""
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._diag_timer: Any = None
        self._set_diagnostics_period(self.get_parameter("diagnostics_period_s").value)
        self._counters = Counters()
        self._throttle = Throttle(_LOG_PERIOD_S)
        # Shared with the worker, guarded by _cond.
        self._cond = threading.Condition()
        self._frames: deque[Frame] = deque(maxlen=8)
        self._pending: Frame | None = None
        self._jobs: deque[tuple[Frame, Prompt | None]] = deque()
        self._prompt: Prompt | None = None
        self._seq = 0
        self._next_start = 0.0
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._encoded: Frame | None = None  # frame whose encoding the predictor holds (worker)

    # ------------------------------------------------------------------ parameters
    def _check_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            spec = PARAM_BY_NAME.get(param.name)
            if spec is None:
                continue
            problem = check_value(spec, param.value)
            if problem:
                return SetParametersResult(successful=False, reason=problem)
        return SetParametersResult(successful=True)

    def _parameters_changed(self, params: list[Parameter]) -> None:
        """Live parameters apply to the next frame; the others wait for the next configure."""
        for param in params:
            self._refused.pop(param.name, None)
        if self._cfg is None:
            return
        names = [p.name for p in params if p.name in PARAM_BY_NAME]
        later = [n for n in names if not PARAM_BY_NAME[n].live]
        if len(later) < len(names):
            live = {spec.name: self.get_parameter(spec.name).value for spec in PARAMS
                    if spec.live}
            try:
                self._cfg = node_config_from_params({**dataclasses.asdict(self._cfg), **live})
            except ValueError as exc:
                self.get_logger().warning(f"parameter change not applied yet: {exc}")
        if later:
            self.get_logger().info(f"{', '.join(later)} will apply at the next configure")

    def read_config(self) -> NodeConfig:
        """NodeConfig from the node's current parameter values (ValueError when invalid)."""
        if self._refused:
            raise ValueError("start-up values refused (set these parameters again): "
                             + "; ".join(self._refused.values()))
        return node_config_from_params({spec.name: self.get_parameter(spec.name).value
                                        for spec in PARAMS})

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        log = self.get_logger()
        try:
            cfg = self.read_config()
            self._load_model(cfg)
        except Exception as exc:  # bad parameters or files, CUDA errors: stay unconfigured
            expected = isinstance(exc, (ValueError, CheckpointError, WeightsError))
            self._configure_error = (f"{'' if expected else type(exc).__name__ + ': '}"
                                     f"{one_line(exc)}")
            log.error(f"configure failed: {self._configure_error}")
            self._release_model()
            self._publish_diagnostics()
            return TransitionCallbackReturn.FAILURE
        self._configure_error = ""
        self._state = "inactive"
        self._cfg = cfg
        out_qos = QoSProfile(depth=cfg.qos_depth, history=HistoryPolicy.KEEP_LAST,
                             reliability=_reliability(cfg.output_qos_reliability),
                             durability=DurabilityPolicy.VOLATILE)
        types = {"mask": Image, "mask_labels": Image, "similarity": Image,
                 "similarity_color": Image, "overlay": Image, "result": SegmentationResult,
                 "grasp": GraspCandidate}
        self._pubs = {name: self.create_lifecycle_publisher(kind, name, out_qos)
                      for name, kind in types.items()}
        with self._cond:
            self._frames = deque(maxlen=cfg.frame_cache_size)
        self._set_diagnostics_period(cfg.diagnostics_period_s)
        log.info(f"configured: preset {cfg.preset} on {self._device}")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        cfg = self._cfg
        assert cfg is not None
        self._counters = Counters()
        image_qos = QoSProfile(depth=cfg.qos_depth, history=HistoryPolicy.KEEP_LAST,
                               reliability=_reliability(cfg.qos_reliability),
                               durability=DurabilityPolicy.VOLATILE)
        # Prompts are small commands: a deep reliable queue so bursts are not lost.
        prompt_qos = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                                reliability=ReliabilityPolicy.RELIABLE)
        if cfg.image_transport == "compressed":
            topic = self.resolve_topic_name("image") + "/compressed"
            self._subs.append(self.create_subscription(CompressedImage, topic,
                                                       self._on_image, image_qos))
        else:
            self._subs.append(self.create_subscription(Image, "image", self._on_image,
                                                       image_qos))
        self._subs.append(self.create_subscription(TextBoxPrompt, "prompt", self._on_prompt,
                                                   prompt_qos))
        self._subs.append(self.create_subscription(String, "category", self._on_category,
                                                   prompt_qos))
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._work, args=(self._stop,),
                                        name="talk2sam_worker", daemon=True)
        self._worker.start()
        self._state = "active"
        self.get_logger().info("active: waiting for images and prompts")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_processing()
        self._state = "inactive"
        self.get_logger().info("inactive")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown_outputs()
        self._release_model()
        with self._cond:
            self._prompt = None
        self._state = "unconfigured"
        self.get_logger().info("cleaned up: model released")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.teardown()
        self._state = "finalized"
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.teardown()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def teardown(self) -> None:
        """Stop processing and free everything (shutdown, errors, process exit)."""
        self._stop_processing()
        self._teardown_outputs()
        self._release_model()

    def autostart(self) -> None:
        """Configure and activate when the `autostart` parameter is true."""
        if not self.get_parameter("autostart").value:
            self.get_logger().info("autostart is false: waiting for lifecycle transitions")
            return
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.get_logger().error("autostart: configure failed; fix the parameters and "
                                    "send the configure transition again")
            return
        self.trigger_activate()

    def _load_model(self, cfg: NodeConfig) -> None:
        from talk2sam_ros.model import Talk2SAMPredictor
        from talk2sam_ros.weights.inference import load_for_inference

        log = self.get_logger()
        loaded = load_for_inference(cfg.inference_spec, progress=log.info)  # ONNX export steps
        self._device = loaded.device
        self._model = loaded.model
        self._predictor = Talk2SAMPredictor(self._model, text_cache_size=cfg.text_cache_size)
        for part, path in loaded.checkpoints.items():
            log.info(f"{part}: {path}")
        if cfg.preset != "tiny" and "talk2sam" not in loaded.checkpoints:
            log.warning("checkpoint_talk2sam is not set: the mask-prompt encoder is SAM-HQ's "
                        "own (zero-shot); set it to a talk2sam-train output for trained results")

    def _release_model(self) -> None:
        self._predictor = None
        self._model = None
        self._encoded = None
        gc.collect()
        if self._device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def _stop_processing(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=120.0)
            if self._worker.is_alive():
                self.get_logger().error("worker did not stop within 120 s")
            self._worker = None
        # Frames received before deactivation must not be answered after a re-activation
        # (an unstamped prompt applies to the newest cached frame); and they hold images.
        with self._cond:
            self._pending = None
            self._jobs.clear()
            self._frames.clear()
        self._encoded = None
        if self._predictor is not None:
            self._predictor.reset_image()  # frees the last frame's encoder features

    def _teardown_outputs(self) -> None:
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}

    # ------------------------------------------------------------------ callbacks
    def _reject(self, counter: str, what: str, reason: str) -> None:
        """Count a rejection and log it: one line per kind of reason and period."""
        self._counters.add(counter)
        if self._throttle.allow((counter, reason_kind(reason)), time.monotonic()):
            self.get_logger().warning(f"rejected {what}: {reason}")

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self._counters.add("frames_received")
        try:
            if isinstance(msg, CompressedImage):
                if len(msg.data) == 0:
                    raise conv.InputRejected("compressed image has no data")
            else:
                conv.check_image(msg, self._bridge)
        except conv.InputRejected as exc:
            self._reject("images_rejected", "image", str(exc))
            return
        with self._cond:
            self._seq += 1
            frame = Frame(self._seq, msg.header, msg, time.monotonic())
            self._frames.append(frame)
            if self._prompt is None and not self._idle_similarity():
                self._counters.add("frames_idle")
                return
            if self._pending is not None:
                self._counters.add("frames_dropped")
            self._pending = frame
            self._cond.notify()

    def _on_prompt(self, msg: TextBoxPrompt) -> None:
        self._counters.add("prompts_received")
        cfg = self._cfg
        assert cfg is not None
        try:
            text = conv.clean_text(msg.text, cfg.max_text_length)
            boxes = conv.boxes_from_msg(msg.boxes, cfg.max_boxes)
        except conv.InputRejected as exc:
            self._reject("prompts_rejected", f"prompt {msg.id}", str(exc))
            return
        prompt = Prompt(int(msg.id), text, boxes, msg.header.frame_id) if text else None
        self._set_prompt(prompt, conv.stamp_key(msg.header))

    def _on_category(self, msg: String) -> None:
        self._counters.add("prompts_received")
        cfg = self._cfg
        assert cfg is not None
        try:
            text = conv.clean_text(msg.data, cfg.max_text_length)
        except conv.InputRejected as exc:
            self._reject("prompts_rejected", "category", str(exc))
            return
        self._set_prompt(Prompt(CATEGORY_PROMPT_ID, text, None, "") if text else None, (0, 0))

    def _set_prompt(self, prompt: Prompt | None, stamp: tuple[int, int]) -> None:
        """Make `prompt` the state (None clears it) and queue the frame(s) it applies to now:
        the cached frame with `stamp`, or for an unstamped prompt the newest frame (so a
        prompt sent after a still image is answered)."""
        log = self.get_logger()
        with self._cond:
            previous, self._prompt = self._prompt, prompt
            if prompt is None:
                log.info("prompt cleared")
                return
            line = (f"prompt {prompt.id}: {prompt.text[:80]!r}, "
                    f"{0 if prompt.boxes is None else len(prompt.boxes)} box(es)")
            # A detector re-sends its boxes every frame: log the text when it changes, the
            # rest at debug level so 30 Hz prompts do not flood the console.
            if previous is None or previous.text != prompt.text:
                log.info(line)
            else:
                log.debug(line)
            if stamp != (0, 0):
                match = next((f for f in reversed(self._frames)
                              if conv.stamp_key(f.header) == stamp), None)
                if match is None:
                    self._counters.add("prompt_frame_missed")
                    log.warning(f"prompt {prompt.id}: frame {stamp[0]}.{stamp[1]:09d} is not "
                                f"among the {len(self._frames)} cached frames; it applies to "
                                "the following frames", throttle_duration_sec=_LOG_PERIOD_S)
                else:
                    if self._pending is match:
                        self._pending = None  # the job answers it, with this same prompt
                    if len(self._jobs) >= _MAX_PROMPT_JOBS:
                        self._jobs.popleft()
                        self._counters.add("frames_dropped")
                    self._jobs.append((match, prompt))
            elif self._pending is None and self._frames:
                self._pending = self._frames[-1]
            self._cond.notify()

    def _idle_similarity(self) -> bool:
        cfg = self._cfg
        return cfg is not None and cfg.publish_similarity_without_prompt

    # ------------------------------------------------------------------ worker
    def _work(self, stop: threading.Event) -> None:
        while not stop.is_set():
            with self._cond:
                cfg = self._cfg
                wait = 0.5
                job = None
                if self._jobs or self._pending is not None:
                    now = time.monotonic()
                    if now < self._next_start:
                        wait = self._next_start - now
                    elif self._jobs:
                        job = self._jobs.popleft()
                    else:
                        job = (self._pending, self._prompt)
                        self._pending = None
                if job is None:
                    self._cond.wait(timeout=wait)
                    continue
                if cfg.max_rate_hz > 0:
                    self._next_start = time.monotonic() + 1.0 / cfg.max_rate_hz
            self._run_job(job[0], job[1], cfg)

    def _run_job(self, frame: Frame, prompt: Prompt | None, cfg: NodeConfig) -> None:
        import torch

        log = self.get_logger()
        if prompt is None and not cfg.publish_similarity_without_prompt:
            self._counters.add("frames_idle")
            return
        try:
            self._process(frame, prompt, cfg)
        except (conv.InputRejected, ValueError) as exc:
            self._reject("frames_rejected", f"frame {_stamp_text(frame.header)}", str(exc))
        except torch.cuda.OutOfMemoryError:
            self._counters.add("out_of_memory")
            self._encoded = None
            torch.cuda.empty_cache()
            log.error(f"CUDA out of memory on a {_size_text(frame)} frame: dropped",
                      throttle_duration_sec=_LOG_PERIOD_S)
        except Exception as exc:  # keep the node alive whatever the model does
            if self._stop.is_set() or not self.context.ok():
                return  # shutting down: publishers are gone
            self._counters.add("errors")
            self._encoded = None
            log.error(f"frame {_stamp_text(frame.header)} failed: {type(exc).__name__}: {exc}",
                      throttle_duration_sec=_LOG_PERIOD_S)

    def _process(self, frame: Frame, prompt: Prompt | None, cfg: NodeConfig) -> None:
        timing: list[tuple[str, float]] = []
        clock = [time.perf_counter()]

        def lap(stage: str) -> None:
            now = time.perf_counter()
            timing.append((stage, (now - clock[0]) * 1e3))
            clock[0] = now

        if frame.rgb is None:
            if isinstance(frame.msg, CompressedImage):
                frame.rgb = conv.compressed_to_rgb(frame.msg, self._bridge)
            else:
                frame.rgb = conv.image_to_rgb(frame.msg, self._bridge)
        rgb = frame.rgb
        height, width = rgb.shape[:2]
        lap("convert")
        if cfg.debug_delay_ms:
            time.sleep(cfg.debug_delay_ms / 1000.0)
            lap("debug_delay")
        boxes, kept = None, np.zeros(0, np.int64)
        if prompt is not None and prompt.boxes is not None:
            if not conv.same_frame(prompt.frame_id, frame.header.frame_id):
                raise conv.InputRejected(f"prompt {prompt.id} boxes are in frame "
                                         f"{prompt.frame_id!r}, the image in "
                                         f"{frame.header.frame_id!r}")
            boxes, kept = conv.boxes_inside(prompt.boxes, width, height)
            if len(boxes) == 0:
                raise conv.InputRejected(f"none of prompt {prompt.id}'s {len(prompt.boxes)} "
                                         f"box(es) overlaps the {width}x{height} image")
        predictor = self._predictor
        reused = self._encoded is frame
        if reused:
            self._counters.add("reused_encodings")
        else:
            self._encoded = None
            predictor.set_image(rgb)
            self._encoded = frame
            self._counters.add("encodings")
            lap("encode_image")
            timing.extend((f"encode.{k}", float(v)) for k, v in
                          getattr(predictor, "last_encode_timings", {}).items())
        text = prompt.text if prompt is not None else cfg.idle_text.strip()
        res = predictor.predict(text=text, boxes=boxes)
        lap("predict")
        timing.extend((f"predict.{k}", float(v)) for k, v in res.timings.items())
        self._publish(frame, prompt, res, kept, reused, cfg, timing, lap)

    def _wanted(self, name: str, enabled: bool) -> bool:
        pub = self._pubs.get(name)
        return enabled and pub is not None and pub.get_subscription_count() > 0

    def _publish(self, frame: Frame, prompt: Prompt | None, res: Any, kept: np.ndarray,
                 reused: bool, cfg: NodeConfig, timing: list[tuple[str, float]],
                 lap: Callable[[str], None]) -> None:
        header, rgb, bridge = frame.header, frame.rgb, self._bridge
        self._counters.add("frames_processed")
        similarity = res.similarity
        if similarity is not None:
            if self._wanted("similarity", cfg.publish_similarity):
                self._pubs["similarity"].publish(conv.float_to_msg(similarity, header, bridge))
            if self._wanted("similarity_color", cfg.publish_similarity_color):
                colour = blend_similarity(rgb, similarity, cfg.overlay_alpha)
                self._pubs["similarity_color"].publish(conv.rgb_to_bgr8_msg(colour, header,
                                                                            bridge))
        if prompt is None:  # idle similarity only
            lap("publish")
            return
        masks = np.asarray(res.logits) > cfg.mask_threshold
        scores = np.asarray(res.scores, np.float32)
        union = masks.any(axis=0) if len(masks) else np.zeros(rgb.shape[:2], bool)
        if self._wanted("mask", cfg.publish_mask):
            self._pubs["mask"].publish(conv.mask_to_msg(union, header, bridge))
        if self._wanted("mask_labels", cfg.publish_mask_labels):
            self._pubs["mask_labels"].publish(conv.labels_to_msg(label_image(masks, scores),
                                                                 header, bridge))
        lap("publish_maps")
        grasp = None
        if self._wanted("grasp", cfg.publish_grasp):
            grasp = grasp_from_mask(union, cfg.grasp)
            self._pubs["grasp"].publish(_grasp_msg(grasp, header, prompt.id))
            lap("grasp")
        if self._wanted("overlay", cfg.publish_overlay):
            picture = draw_overlay(rgb, masks, np.asarray(res.boxes), prompt.text, scores,
                                   cfg.overlay_alpha,
                                   centerline=None if grasp is None else grasp.centerline,
                                   grasp_point=grasp.point if grasp and grasp.valid else None)
            self._pubs["overlay"].publish(conv.rgb_to_bgr8_msg(picture, header, bridge))
            lap("overlay")
        result = SegmentationResult(header=conv.copy_header(header), prompt_id=prompt.id,
                                    text=prompt.text, image_width=rgb.shape[1],
                                    image_height=rgb.shape[0])
        result.boxes = np.asarray(res.boxes, np.float32).ravel().tolist()
        result.boxes_from_text = bool(res.boxes_from_text)
        result.box_indices = [] if res.boxes_from_text else [int(i) for i in kept]
        result.scores = scores.tolist()
        result.areas = masks.reshape(len(masks), -1).sum(axis=1).astype(int).tolist()
        result.mask_area = int(union.sum())
        result.reused_encoding = reused
        result.frame_age_ms = self._age_ms(frame)
        result.timing = [StageTiming(stage=s, ms=float(ms)) for s, ms in timing]
        counts = self._counters.snapshot()
        result.frames_received = counts["frames_received"]
        result.frames_processed = counts["frames_processed"]
        result.frames_dropped = counts["frames_dropped"]
        result.inputs_rejected = counts["inputs_rejected"]
        self._pubs["result"].publish(result)

    def _age_ms(self, frame: Frame) -> float:
        sec, nsec = conv.stamp_key(frame.header)
        if (sec, nsec) == (0, 0):
            return (time.monotonic() - frame.received) * 1e3
        now = self.get_clock().now().nanoseconds
        return (now - (sec * 1_000_000_000 + nsec)) / 1e6

    # ------------------------------------------------------------------ diagnostics
    def _set_diagnostics_period(self, period_s: float) -> None:
        """Periodic /diagnostics every period_s (0: none; a failed configure still reports)."""
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
            self._diag_timer = None
        if period_s > 0:
            self._diag_timer = self.create_timer(period_s, self._publish_diagnostics)

    def diagnostics(self) -> dict[str, Any]:
        """Counters since activation plus the predictor's encode_count, the lifecycle state
        and, while unconfigured after a failed configure, its reason (configure_error)."""
        values: dict[str, Any] = self._counters.snapshot()
        predictor = self._predictor
        values["encode_count"] = getattr(predictor, "encode_count", 0) if predictor else 0
        values["state"] = self._state
        values["configure_error"] = self._configure_error
        values["device"] = self._device
        with self._cond:
            prompt = self._prompt
        values["prompt"] = "" if prompt is None else f"{prompt.id}: {prompt.text[:80]}"
        return values

    def _publish_diagnostics(self) -> None:
        if self._diag_pub is None:
            return
        values = self.diagnostics()
        status = DiagnosticStatus(name=f"talk2sam: {self.get_fully_qualified_name()}",
                                  hardware_id=str(values["device"]))
        bad = values["errors"] + values["out_of_memory"]
        status.level = DiagnosticStatus.WARN if bad else DiagnosticStatus.OK
        status.message = f"{values['state']}, {values['frames_processed']} processed, " \
                         f"{values['frames_dropped']} dropped, {values['inputs_rejected']} " \
                         f"rejected, {bad} failed"
        if values["configure_error"]:
            status.level = DiagnosticStatus.ERROR
            status.message = f"configure failed: {values['configure_error']}"
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)


def _reliability(name: str) -> ReliabilityPolicy:
    return ReliabilityPolicy.RELIABLE if name == "reliable" else ReliabilityPolicy.BEST_EFFORT


def _stamp_text(header: Header) -> str:
    sec, nsec = conv.stamp_key(header)
    return f"{sec}.{nsec:09d}"


def _size_text(frame: Frame) -> str:
    msg = frame.msg
    return f"{msg.width}x{msg.height}" if isinstance(msg, Image) else "compressed"


def _grasp_msg(grasp: Any, header: Header, prompt_id: int) -> GraspCandidate:
    msg = GraspCandidate(header=conv.copy_header(header), prompt_id=prompt_id,
                         valid=bool(grasp.valid))
    msg.centerline = Polygon(points=[Point32(x=float(x), y=float(y), z=0.0)
                                     for x, y in grasp.centerline])
    if grasp.valid:
        msg.grasp_point = Point(x=grasp.point[0], y=grasp.point[1], z=grasp.width_px)
        msg.angle = float(grasp.angle)
        msg.width_px = float(grasp.width_px)
    return msg


def main(args: list[str] | None = None) -> int:
    """Entry point of `talk2sam_node` / `python -m talk2sam_ros.ros.node [--ros-args ...]`."""
    rclpy.init(args=args)
    node = None
    try:
        node = Talk2SAMNode()
        node.autostart()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.teardown()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
