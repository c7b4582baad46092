"""talk2sam_node: the Talk2SAM lifecycle node (images + prompts in, masks and maps out).

A thin adapter: parameters and topics (ros.params), which frame runs with which prompt
(ros.scheduler), the worker thread that runs :class:`talk2sam_ros.model.Talk2SAMPredictor` and
publishes (ros.worker, ros.messages). Behaviour is documented in docs/node.md. The executor
runs the subscription, service and timer callbacks, which only check and store messages.
"""
from __future__ import annotations

import dataclasses
import gc
import threading
import time
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.event_handler import QoSMessageLostInfo, SubscriptionEventCallbacks
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.executors import SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import MessageInfo
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from talk2sam_ros.common.cli import one_line
from talk2sam_ros.common.params import descriptor
from talk2sam_ros.common.shutdown import ShutdownSignals
from talk2sam_ros.common.transport import SequenceGaps
from talk2sam_ros.grasp import DepthPairing
from talk2sam_ros.model.errors import CheckpointError
from talk2sam_ros.msg import TextBoxPrompt
from talk2sam_ros.ros import conversions as conv
from talk2sam_ros.ros import grasp3d_messages as gm
from talk2sam_ros.ros import messages as build
from talk2sam_ros.ros import rgbd
from talk2sam_ros.ros.counters import Counters, Throttle, reason_kind
from talk2sam_ros.ros.params import (DIAGNOSTICS_TOPIC, NODE_NAME, PARAM_BY_NAME, PARAMS,
                                     PUBLICATIONS, RGBD_PUBLICATIONS, TOPIC_BY_NAME, NodeConfig,
                                     change_problem, node_config_from_params)
from talk2sam_ros.ros.scheduler import UNSTAMPED, Prompt, Request, Scheduler, Stamp
from talk2sam_ros.ros.worker import LOG_PERIOD_S, Worker, stamp_text
from talk2sam_ros.weights.registry import WeightsError

CATEGORY_PROMPT_ID = -1  # prompts from `category` (text only) carry this id in their results
_MAX_REQUESTS = 16  # stamped prompts queued for the worker / held for their frame
_PROMPT_QOS = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,  # small commands: a deep
                         reliability=ReliabilityPolicy.RELIABLE)      # queue loses no burst


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
        self._predictor: Any = None
        self._device = "cpu"
        self._pubs: dict[str, Any] = {}
        self._subs: list[Any] = []
        # Lifecycle state as our transitions set it, and why the last configure failed: both
        # are on /diagnostics from start-up, so tools see a failure reason without reading logs.
        self._state = "unconfigured"
        self._configure_error = ""
        self._counters = Counters()
        self._throttle = Throttle(LOG_PERIOD_S)  # rejection lines: one per kind and period
        self._scheduler = Scheduler(self._counters, max_requests=_MAX_REQUESTS)
        self._last_text: str | None = None  # of the last prompt logged (executor thread)
        self._pairing: DepthPairing | None = None  # use_depth: depth + camera_info by stamp
        self._gaps = SequenceGaps()  # image publishers' sequence numbers (since activation)
        self._worker: Worker | None = None
        # A worker that did not stop in time still uses the model and publishers: they are
        # released once it has ended (checked by the diagnostics timer and every transition).
        self._release_deferred = False
        self._diag_pub = self.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._diag_timer: Any = None
        self._set_diagnostics_period(self.get_parameter("diagnostics_period_s").value)

    # ------------------------------------------------------------------ parameters
    def _values(self) -> dict[str, Any]:
        return {spec.name: self.get_parameter(spec.name).value for spec in PARAMS}

    def _check_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Refuse a change whose resulting configuration, as a whole, is invalid."""
        changes = {p.name: p.value for p in params if p.name in PARAM_BY_NAME}
        problem = change_problem(self._values(), changes) if changes else None
        return SetParametersResult(successful=problem is None, reason=problem or "")

    def _parameters_changed(self, params: list[Parameter]) -> None:
        """Live parameters apply to the next frame; the others wait for the next configure."""
        for param in params:
            self._refused.pop(param.name, None)
        names = [p.name for p in params if p.name in PARAM_BY_NAME]
        later = [n for n in names if not PARAM_BY_NAME[n].live]
        if self._cfg is not None and len(later) < len(names):
            live = {k: v for k, v in self._values().items() if PARAM_BY_NAME[k].live}
            self._apply(node_config_from_params({**dataclasses.asdict(self._cfg), **live}))
        if self._cfg is not None and later:
            self.get_logger().info(f"{', '.join(later)} will apply at the next configure")

    def _apply(self, cfg: NodeConfig) -> None:
        self._cfg = cfg
        self._scheduler.configure(cache_size=cfg.frame_cache_size, max_rate_hz=cfg.max_rate_hz,
                                  idle=cfg.publish_similarity_without_prompt)
        if self._pairing is not None:
            rgbd.configure_pairing(self._pairing, cfg)

    def read_config(self) -> NodeConfig:
        """NodeConfig from the node's current parameter values (ValueError when invalid)."""
        if self._refused:
            raise ValueError("start-up values refused (set these parameters again): "
                             + "; ".join(self._refused.values()))
        return node_config_from_params(self._values())

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._reap()
        try:
            if self._worker_running():
                raise ValueError("the previous activation's worker is still running a frame "
                                 "(worker_stop_timeout_s); configure again once it has ended")
            cfg = self.read_config()
            self._load_model(cfg)
        except Exception as exc:  # bad parameters or files, CUDA errors: stay unconfigured
            expected = isinstance(exc, (ValueError, CheckpointError, WeightsError))
            self._configure_error = f"{'' if expected else type(exc).__name__ + ': '}" \
                                    f"{one_line(exc)}"
            self.get_logger().error(f"configure failed: {self._configure_error}")
            self._release()
            self._publish_diagnostics()
            return TransitionCallbackReturn.FAILURE
        self._configure_error = ""
        out_qos = _qos(cfg.qos_depth, cfg.output_qos_reliability)
        self._pubs = {name: self.create_lifecycle_publisher(
            build.message_class(TOPIC_BY_NAME[name].msg_type), name, out_qos)
            for name in PUBLICATIONS + (RGBD_PUBLICATIONS if cfg.use_depth else ())}
        self._pairing = rgbd.make_pairing(cfg) if cfg.use_depth else None
        self._apply(cfg)
        self._set_diagnostics_period(cfg.diagnostics_period_s)
        self._state = "inactive"
        self.get_logger().info(f"configured: preset {cfg.preset} on {self._device}")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._reap()
        cfg = self._cfg
        assert cfg is not None
        if self._worker_running():
            self.get_logger().error("activate failed: the previous worker is still running a "
                                    "frame; activate again once it has ended")
            return TransitionCallbackReturn.FAILURE
        self._counters.reset()
        self._gaps = SequenceGaps()
        # compressed: `<resolved image>/compressed`, as image_transport names it
        image_type, image_topic = ((CompressedImage, self.resolve_topic_name("image")
                                    + "/compressed") if cfg.image_transport == "compressed"
                                   else (Image, "image"))
        image_qos = _qos(cfg.qos_depth, cfg.qos_reliability)
        self._subs = [
            self.create_subscription(image_type, image_topic, self._on_image, image_qos,
                                     event_callbacks=self._lost_events(
                                         "frames_lost_in_transport", "image frame")),
            self.create_subscription(TextBoxPrompt, "prompt", self._on_prompt, _PROMPT_QOS),
            self.create_subscription(String, "category", self._on_category, _PROMPT_QOS)]
        if self._pairing is not None:  # use_depth
            self._subs += [
                self.create_subscription(Image, "depth", self._on_depth, image_qos,
                                         event_callbacks=self._lost_events(
                                             "depth_lost_in_transport", "depth frame")),
                self.create_subscription(CameraInfo, "camera_info", self._on_camera_info,
                                         image_qos)]
        clock = self.get_clock()
        self._worker = Worker(self._scheduler, self._predictor, self._pubs, self._bridge,
                              self._counters, self.get_logger(), lambda: self._cfg,
                              self._reject, lambda: clock.now().nanoseconds, self.context.ok,
                              warn=self._warn, pairing=self._pairing)
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
        released = self._release()
        self._scheduler.set_standing(None)
        self._state = "unconfigured"
        self.get_logger().info("cleaned up: model released" if released else
                               "cleaned up: the model is released when the worker ends")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.teardown()
        self._state = "finalized"
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.teardown()
        self._state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def teardown(self, hurry: threading.Event | None = None) -> None:
        """Stop processing and free everything that no running worker uses (idempotent).
        hurry: once set, stop waiting for the frame in progress."""
        self._stop_processing(hurry)
        self._release()

    def close(self, hurry: threading.Event | None = None) -> None:
        """Process exit: teardown, then destroy the node unless a worker that did not stop
        still uses its publishers (the process exit ends it)."""
        self.teardown(hurry)
        if not self._worker_running():
            self.destroy_node()

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

        loaded = load_for_inference(cfg.inference_spec,
                                    progress=self.get_logger().info)  # ONNX export steps
        self._device = loaded.device
        self._predictor = Talk2SAMPredictor(loaded.model, text_cache_size=cfg.text_cache_size)
        for part, path in loaded.checkpoints.items():
            self.get_logger().info(f"{part}: {path}")
        if cfg.preset != "tiny" and "talk2sam" not in loaded.checkpoints:
            self.get_logger().warning(
                "checkpoint_talk2sam is not set: the mask-prompt encoder is SAM-HQ's own "
                "(zero-shot); set it to a talk2sam-train output for trained results")

    def _worker_running(self) -> bool:
        if self._worker is not None and not self._worker.alive:
            self._worker = None
        return self._worker is not None

    def _stop_processing(self, hurry: threading.Event | None = None) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        worker = self._worker
        timeout = self._cfg.worker_stop_timeout_s if self._cfg else 0.0
        if worker is not None and not worker.stop(timeout, hurry):
            self.get_logger().error(
                "the worker is still running a frame: the model and publishers are kept "
                "until it ends (configure and activate fail meanwhile)")
        # Frames received before deactivation must not be answered after a re-activation
        # (an unstamped prompt applies to the newest cached frame); and they hold images.
        self._scheduler.clear()
        if self._pairing is not None:
            self._pairing.clear()
        if not self._worker_running() and self._predictor is not None:
            self._predictor.reset_image()  # frees the last frame's encoder features

    def _release(self) -> bool:
        """Destroy the outputs and free the model, or defer it while a worker runs."""
        if self._worker_running():
            self._release_deferred = True
            return False
        self._release_deferred = False
        for pub in self._pubs.values():
            self.destroy_lifecycle_publisher(pub)
        self._pubs = {}
        self._predictor = None
        self._pairing = None
        gc.collect()
        if self._device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        return True

    def _reap(self) -> None:
        if self._release_deferred and not self._worker_running():
            self._release()
            self.get_logger().info("the stopped worker has ended: model and publishers released")

    # ------------------------------------------------------------------ callbacks
    def _reject(self, counter: str, what: str, reason: str) -> None:
        """Count a rejection and log it: one line per kind of reason and period."""
        self._warn(counter, f"rejected {what}: {reason}", reason_kind(reason))

    def _warn(self, counter: str, line: str, kind: str | None = None, count: int = 1) -> None:
        """Count `count` events and log their warning line: one line per counter, kind
        (default: the line without its numbers) and period."""
        self._counters.add(counter, count)
        if self._throttle.allow((counter, kind or reason_kind(line)), time.monotonic()):
            self.get_logger().warning(line)

    def _lost_events(self, counter: str, what: str) -> SubscriptionEventCallbacks:
        """DDS's message_lost event of a subscription, counted and logged (docs/transport.md)."""
        def lost(info: QoSMessageLostInfo) -> None:
            if info.total_count_change > 0:
                self._warn(counter, f"{info.total_count_change} {what}(s) lost in transport "
                           f"({info.total_count} since the subscription started): the "
                           "publisher needs the Fast DDS image profile, see docs/transport.md",
                           kind="lost", count=info.total_count_change)
        return SubscriptionEventCallbacks(message_lost=lost)

    def _on_image(self, msg: Image | CompressedImage, info: MessageInfo) -> None:
        self._counters.add("frames_received")
        sequence = info.get("publication_sequence_number")
        if sequence is not None:
            skipped = self._gaps.add(str(info.get("publisher_gid")), int(sequence))
            if skipped:
                self._counters.add("frames_missing_by_sequence", skipped)
        try:
            if isinstance(msg, CompressedImage):
                if len(msg.data) == 0:
                    raise conv.InputRejected("compressed image has no data")
            else:
                conv.check_image(msg, self._bridge)
        except conv.InputRejected as exc:
            self._reject("images_rejected", "image", str(exc))
            return
        for prompt in self._scheduler.add_frame(conv.stamp_key(msg.header), msg.header, msg):
            self._log_missed(prompt)

    def _on_depth(self, msg: Image) -> None:
        # checked on the worker with its frame (depth_for_frame): a bad one gives bad_depth
        self._counters.add("depth_received")
        self._pairing.add_depth(gm.header_stamp_ns(msg.header), msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._counters.add("camera_info_received")
        self._pairing.add_camera_info(gm.header_stamp_ns(msg.header), msg)

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
        prompt = Prompt(int(msg.id), text, boxes, msg.header.frame_id)
        stamp = conv.stamp_key(msg.header)
        if stamp == UNSTAMPED:
            self._set_standing(prompt if text else None)
        elif not text:
            self.get_logger().debug(f"prompt {msg.id}: empty text for one frame: nothing to do")
        else:
            self._log_prompt(prompt, stamp)
            if self._scheduler.request(prompt, stamp) is Request.MISSED:
                self._log_missed(prompt, stamp)

    def _on_category(self, msg: String) -> None:
        self._counters.add("prompts_received")
        cfg = self._cfg
        assert cfg is not None
        try:
            text = conv.clean_text(msg.data, cfg.max_text_length)
        except conv.InputRejected as exc:
            self._reject("prompts_rejected", "category", str(exc))
            return
        self._set_standing(Prompt(CATEGORY_PROMPT_ID, text) if text else None)

    def _set_standing(self, prompt: Prompt | None) -> None:
        if self._scheduler.set_standing(prompt) is not None and prompt is None:
            self.get_logger().info("prompt cleared")
        if prompt is not None:
            self._log_prompt(prompt, UNSTAMPED)

    def _log_prompt(self, prompt: Prompt, stamp: Stamp) -> None:
        # A detector re-sends its boxes every frame: log the text when it changes, the rest at
        # debug level so 30 Hz prompts do not flood the console.
        line = (f"prompt {prompt.id}: {prompt.text[:80]!r}, "
                f"{0 if prompt.boxes is None else len(prompt.boxes)} box(es)"
                + ("" if stamp == UNSTAMPED else f" for frame {stamp_text(stamp)}"))
        changed, self._last_text = prompt.text != self._last_text, prompt.text
        (self.get_logger().info if changed else self.get_logger().debug)(line)

    def _log_missed(self, prompt: Prompt, stamp: Stamp | None = None) -> None:
        frame = "its frame" if stamp is None else f"frame {stamp_text(stamp)}"
        self.get_logger().warning(
            f"prompt {prompt.id}: {frame} is not among the cached frames (it came and went, "
            "or never arrived): not applied to any other frame",
            throttle_duration_sec=LOG_PERIOD_S)

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
        and, while unconfigured after a failed configure, its reason (configure_error); the
        worker (none, idle, busy, or stopping: stopped but still running a frame) and
        whether a model is loaded."""
        values: dict[str, Any] = self._counters.snapshot()
        predictor = self._predictor
        values["encode_count"] = getattr(predictor, "encode_count", 0) if predictor else 0
        values["state"] = self._state
        values["configure_error"] = self._configure_error
        values["device"] = self._device
        values["worker"] = "none" if self._worker is None else self._worker.status
        values["model_loaded"] = predictor is not None
        prompt = self._scheduler.standing
        values["prompt"] = "" if prompt is None else f"{prompt.id}: {prompt.text[:80]}"
        return values

    def _publish_diagnostics(self) -> None:
        self._reap()
        self._diag_pub.publish(build.diagnostics_message(
            self.diagnostics(), f"talk2sam: {self.get_fully_qualified_name()}",
            self.get_clock().now().to_msg()))


def _qos(depth: int, reliability: str) -> QoSProfile:
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable"
                      else ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)


def main(args: list[str] | None = None) -> int:
    """Entry point of `talk2sam_node` / `python -m talk2sam_ros.ros.node [--ros-args ...]`.

    SIGINT/SIGTERM stop it with exit code 0: the first waits for the frame in progress
    (worker_stop_timeout_s), a second one stops waiting (docs/node.md, "Stopping").
    """
    with ShutdownSignals(restore=False) as signals:
        rclpy.init(args=args)
        node = None
        try:
            with signals.interruptible():
                node = Talk2SAMNode()
                node.autostart()
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            signals.spin(lambda timeout: executor.spin_once(timeout_sec=timeout), rclpy.ok)
        except KeyboardInterrupt:
            pass  # a signal during start-up
        finally:
            if node is not None:
                node.close(signals.hurry)
            rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
