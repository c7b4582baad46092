"""The one node harness: the real talk2sam node in a subprocess and a DDS client that feeds it
and collects its outputs by source stamp. Used by talk2sam-demo, talk2sam-bench and the tests.

Pieces, each usable alone:

- ``start_process`` / ``stop_process``: a child with its output in a log file; stopped with
  SIGINT (rclpy shuts down cleanly), a second SIGINT if it still waits for a frame, killed if
  it hangs.
- :class:`NodeSettings`: the node's command line (preset, device, dtype, checkpoint_<part>,
  other parameters), spelled as the node's parameter table spells them.
- :class:`NodeClient`: an rclpy node in its own Context. Publishes an image with any header
  (`publish_image_msg`: a recorded frame keeps its stamp), prompts and categories; keeps every
  output message by topic and by source stamp with its arrival time (:class:`Outputs`, and an
  optional per-message callback, e.g. a recorder); the node's /diagnostics; lifecycle
  get_state / change_state; set_parameters.
- :class:`NodeHarness`: process + client for the tools: brings the node to active (a failed
  configure is reported with the reason the node puts on /diagnostics), sets prompts, sends a
  frame and waits for its answer, streams.

Every wait is bounded in time and in count; the node process never outlives the harness.
"""
from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String
from visualization_msgs.msg import MarkerArray

from talk2sam_ros.common.timing import summarize
from talk2sam_ros.common.transport import chosen_profile, profile_variables
from talk2sam_ros.model.config import dtype_name
from talk2sam_ros.msg import TextBoxPrompt
from talk2sam_ros.ros import conversions as conv
from talk2sam_ros.ros import grasp3d_messages as gm
from talk2sam_ros.ros.messages import message_class
from talk2sam_ros.ros.params import (DIAGNOSTICS_TOPIC, NODE_NAME, PUBLICATIONS, RGBD_PUBLICATIONS,
                                     TOPIC_BY_NAME)

Stamp = tuple[int, int]  # (sec, nanosec) of a header: the key of a frame and its outputs

# Every output of the node's topic table with its message class (new outputs come with it);
# the 3D ones (use_depth) apart: listened to only when asked for, since a node without
# use_depth does not advertise them.
OUTPUT_TYPES: dict[str, type] = {
    topic: message_class(TOPIC_BY_NAME[topic].msg_type) for topic in PUBLICATIONS}
RGBD_OUTPUT_TYPES: dict[str, type] = {
    topic: message_class(TOPIC_BY_NAME[topic].msg_type) for topic in RGBD_PUBLICATIONS}
CATEGORY_PROMPT_ID = -1  # the node answers `category` prompts with this id
# Top-level stages of SegmentationResult.timing that are model work; every other top-level
# lap (convert, publish_masks, grasp, overlay, ...) is the node's own overhead.
MODEL_STAGES = ("encode_image", "predict", "debug_delay")
RELIABLE = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE)
TRANSITIONS = {"configure": Transition.TRANSITION_CONFIGURE,
               "activate": Transition.TRANSITION_ACTIVATE,
               "deactivate": Transition.TRANSITION_DEACTIVATE,
               "cleanup": Transition.TRANSITION_CLEANUP,
               "shutdown": Transition.TRANSITION_INACTIVE_SHUTDOWN}
NODE_MODULE = "talk2sam_ros.ros.node"  # what `ros2 launch` / `ros2 run` run
START_TIMEOUT_S = 150.0  # node start-up (torch import + tiny model) on a loaded 2-core machine
# Stopping the node: SIGINT; after HURRY_AFTER_S a second SIGINT (stop waiting for the frame
# in progress); killed STOP_TIMEOUT_S after the first if it still runs (its teardown and
# interpreter exit, freeing torch, take seconds on a loaded machine).
HURRY_AFTER_S = 10.0
STOP_TIMEOUT_S = 30.0
DIAGNOSTICS_WAIT_S = 10.0


class NodeError(RuntimeError):
    """The node did not start, could not configure, exited or did not answer (one line)."""


# ----------------------------------------------------------------------------- processes


def domain_id() -> int:
    """$ROS_DOMAIN_ID, else one derived from the pid (1..100, safe for FastDDS ports)."""
    env = os.environ.get("ROS_DOMAIN_ID")
    return int(env) if env else 1 + (os.getpid() % 100)


def loopback_environment(domain: int) -> dict[str, str]:
    """The environment of a child on `domain` with DDS discovery kept on this machine, and
    the Fast DDS image profile (the user's own if set; docs/transport.md), without which most
    camera-size frames published best effort never arrive."""
    return {"ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "ROS_LOCALHOST_ONLY": "1", "PYTHONUNBUFFERED": "1",
            **profile_variables(chosen_profile())}


def keep_dds_on_loopback() -> int:
    """Put this process (its in-process client) on domain_id() with discovery kept on this
    machine; rmw reads these variables when a Context is initialised. Returns the domain."""
    domain = domain_id()
    os.environ.update(loopback_environment(domain))
    return domain


def node_command(ros_args: Sequence[str], console_script: bool = False) -> list[str]:
    """The node's command line: `python -m talk2sam_ros.ros.node` or the talk2sam_node
    console script, followed by `ros_args` (starting with --ros-args)."""
    if not console_script:
        return [sys.executable, "-m", NODE_MODULE, *ros_args]
    script = shutil.which("talk2sam_node")
    if script is None:
        raise NodeError("the talk2sam_node console script is not on PATH")
    return [sys.executable, script, *ros_args]


def start_process(cmd: Sequence[str], log_path: str | os.PathLike,
                  env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None
                  ) -> subprocess.Popen:
    """Start `cmd` with stdout and stderr into `log_path` (its first line: the command).

    The child holds the log file open; this process closes its own handle at once.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        return subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT,
                                env=None if env is None else dict(env), cwd=cwd)


def stop_process(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT_S,
                 hurry_after: float = HURRY_AFTER_S) -> int:
    """SIGINT; a second SIGINT after `hurry_after` s (the node then stops waiting for the frame
    in progress, docs/node.md "Stopping"); kill after `timeout` s in all. A Ctrl-C here while
    waiting kills at once. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            try:
                proc.wait(min(hurry_after, timeout))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGINT)
                proc.wait(max(timeout - hurry_after, 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
        except KeyboardInterrupt:
            proc.kill()
            proc.wait(timeout)
            raise
    return proc.returncode


def last_lines(path: str | os.PathLike, lines: int = 15) -> str:
    """The end of a log file ("" when it cannot be read), for error context."""
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------- the node's CLI


@dataclass(frozen=True)
class NodeSettings:
    """How to start the node: preset, device, dtype, checkpoints and other ROS parameters."""

    preset: str = "tiny"
    device: str = "cpu"
    dtype: str = "float32"  # the node's dtype parameter (fp32 / bf16 / fp16 also accepted)
    checkpoints: Mapping[str, str] = field(default_factory=dict)  # part -> path / registry name
    checkpoints_from_cache: bool = False  # presets t/b/l/h: registry files in the cache
    params_file: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # other node parameters
    node_name: str = NODE_NAME

    def ros_args(self) -> list[str]:
        """--ros-args for the node; these -p values override the parameter file's."""
        params: dict[str, Any] = {"preset": self.preset, "device": self.device,
                                  "dtype": dtype_name(self.dtype), "diagnostics_period_s": 0.0}
        if self.preset != "tiny" and not self.checkpoints_from_cache \
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


# ----------------------------------------------------------------------------- the DDS client


def stamped_header(frame_id: str = "camera_optical", sec: int | None = None,
                   nanosec: int | None = None) -> Header:
    """A header stamped now (the wall clock, as the node's without sim time) or at sec.nanosec."""
    header = Header(frame_id=frame_id)
    now = time.time_ns()
    header.stamp.sec = now // 1_000_000_000 if sec is None else sec
    header.stamp.nanosec = now % 1_000_000_000 if nanosec is None else nanosec
    return header


def spin_until(executor: Any, done: Callable[[], Any], timeout: float, step: float = 0.05,
               check: Callable[[], None] | None = None) -> bool:
    """Spin `executor` until `done()` or `timeout` s pass; bounded in time and in count.
    `check()` runs every 20 steps and may raise to stop early (e.g. the node exited)."""
    deadline = time.monotonic() + timeout
    for i in range(int(timeout / step) + 10):
        if done():
            return True
        if time.monotonic() > deadline:
            break
        if check is not None and i % 20 == 19:
            check()
        executor.spin_once(timeout_sec=step)
    return bool(done())


@dataclass(frozen=True)
class Received:
    """One output message and when it arrived here (time.perf_counter())."""

    topic: str
    msg: Any
    at: float


def output_header(msg: Any) -> Header:
    """The source frame's header an output carries (a MarkerArray: on each of its markers,
    and the node always sends at least one)."""
    return msg.markers[0].header if isinstance(msg, MarkerArray) else msg.header


class Outputs:
    """What the node published: by topic in arrival order, and by source stamp (every output
    carries the header of the frame it answers)."""

    def __init__(self) -> None:
        self.by_topic: dict[str, list[Received]] = defaultdict(list)
        self.by_stamp: dict[Stamp, dict[str, list[Received]]] = defaultdict(
            lambda: defaultdict(list))

    def add(self, item: Received) -> None:
        self.by_topic[item.topic].append(item)
        self.by_stamp[conv.stamp_key(output_header(item.msg))][item.topic].append(item)

    def latest(self, stamp: Stamp, topic: str, match: Callable[[Any], bool] | None = None
               ) -> Received | None:
        """The last `topic` message for frame `stamp` (that `match`es, if given)."""
        found = self.by_stamp.get(stamp, {}).get(topic, ())
        return next((r for r in reversed(found) if match is None or match(r.msg)), None)


class NodeClient:
    """In-process rclpy client of one talk2sam node (namespace/node_name) in `context`."""

    def __init__(self, context: Any, *, namespace: str = "", node_name: str = NODE_NAME,
                 image_topic: str = "image", compressed: bool = False,
                 outputs: Iterable[str] = PUBLICATIONS, frame_id: str = "camera_optical",
                 name: str = "talk2sam_client",
                 on_output: Callable[[Received], None] | None = None) -> None:
        self.context = context
        self.node = rclpy.create_node(name, context=context, namespace=namespace or "/")
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.fqn = f"{namespace.rstrip('/')}/{node_name}"
        self.frame_id = frame_id
        self.bridge = conv.make_bridge()
        self.outputs = Outputs()
        self.on_output = on_output
        self.sent: dict[Stamp, float] = {}  # image stamp -> time.perf_counter() at publish
        self.diagnostics: list[dict[str, str]] = []  # the node's statuses, oldest first
        self.check: Callable[[], None] | None = None  # run while waiting; may raise
        self.output_topics = tuple(dict.fromkeys(outputs))
        for topic in self.output_topics:
            self.listen(topic)
        self._diagnostics_sub = self.node.create_subscription(
            DiagnosticArray, DIAGNOSTICS_TOPIC, self._on_diagnostics, 50)
        self.image_pub = self.node.create_publisher(
            CompressedImage if compressed else Image, image_topic, RELIABLE)
        self.prompt_pub = self.node.create_publisher(TextBoxPrompt, "prompt", RELIABLE)
        self.category_pub = self.node.create_publisher(String, "category", RELIABLE)
        # RGB-D inputs (the node's use_depth): depth and camera_info with the colour stamp
        self.depth_pub = self.node.create_publisher(Image, "depth", RELIABLE)
        self.camera_info_pub = self.node.create_publisher(CameraInfo, "camera_info", RELIABLE)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()

    # ------------------------------------------------------------------ receiving
    def _recorder(self, topic: str) -> Callable[[Any], None]:
        def record(msg: Any) -> None:
            item = Received(topic, msg, time.perf_counter())
            self.outputs.add(item)
            if self.on_output is not None:
                self.on_output(item)
        return record

    def listen(self, topic: str) -> Any:
        """Record every message the node publishes on `topic` (an output, 2D or 3D); returns
        the subscription (destroy it to stop)."""
        kind = OUTPUT_TYPES.get(topic) or RGBD_OUTPUT_TYPES[topic]
        self.output_topics = tuple(dict.fromkeys((*self.output_topics, topic)))
        return self.node.create_subscription(kind, topic, self._recorder(topic), RELIABLE)

    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.endswith(self.fqn):
                self.diagnostics.append({kv.key: kv.value for kv in status.values})

    @property
    def received(self) -> dict[str, list[Any]]:
        """topic -> messages in arrival order (a snapshot)."""
        return {t: [r.msg for r in self.outputs.by_topic.get(t, ())]
                for t in self.output_topics}

    def output(self, topic: str, header: Header, prompt_id: int | None = None) -> Any:
        """The last message on `topic` for the frame `header` (and prompt id), or None."""
        item = self.outputs.latest(conv.stamp_key(header), topic, None if prompt_id is None
                                   else lambda m: m.prompt_id == prompt_id)
        return None if item is None else item.msg

    def wait_output(self, topic: str, header: Header, prompt_id: int | None = None,
                    timeout: float = 60.0) -> Any:
        self.spin_until(lambda: self.output(topic, header, prompt_id) is not None, timeout)
        return self.output(topic, header, prompt_id)

    def latest_diagnostics(self, timeout: float = DIAGNOSTICS_WAIT_S) -> dict[str, str]:
        """A status of the node published after this call."""
        start = len(self.diagnostics)
        if not self.spin_until(lambda: len(self.diagnostics) > start, timeout):
            raise NodeError(f"no diagnostics from {self.fqn} within {timeout:g} s")
        return self.diagnostics[-1]

    def counter(self, name: str, timeout: float = DIAGNOSTICS_WAIT_S) -> int:
        return int(self.latest_diagnostics(timeout)[name])

    def configure_error(self, since: int = 0) -> str:
        """Why the node's last configure failed, from its diagnostics after index `since`
        ("" if none says so)."""
        return next((d["configure_error"] for d in reversed(self.diagnostics[since:])
                     if d.get("configure_error")), "")

    # ------------------------------------------------------------------ waiting
    def spin_until(self, done: Callable[[], Any], timeout: float) -> bool:
        return spin_until(self.executor, done, timeout, check=self.check)

    def spin_for(self, seconds: float) -> None:
        spin_until(self.executor, lambda: False, seconds, check=self.check)

    def wait_active(self, timeout: float = START_TIMEOUT_S) -> bool:
        """Until the node subscribes to our inputs and publishes every output we listen to."""
        return self.spin_until(
            lambda: self.image_pub.get_subscription_count() > 0
            and self.prompt_pub.get_subscription_count() > 0
            and self.category_pub.get_subscription_count() > 0
            and all(self.node.count_publishers(self.node.resolve_topic_name(t)) > 0
                    for t in self.output_topics), timeout)

    def wait_rgbd_active(self, timeout: float = START_TIMEOUT_S) -> bool:
        """Until the node (use_depth) subscribes to our depth and camera_info."""
        return self.spin_until(lambda: self.depth_pub.get_subscription_count() > 0
                               and self.camera_info_pub.get_subscription_count() > 0, timeout)

    def wait_diagnostics_matched(self, timeout: float = DIAGNOSTICS_WAIT_S) -> bool:
        """Until a /diagnostics publisher is matched (a status published then reaches us)."""
        return self.spin_until(lambda: self._diagnostics_sub.get_publisher_count() > 0,
                               timeout)

    # ------------------------------------------------------------------ publishing
    def publish_image_msg(self, msg: Image | CompressedImage) -> Stamp:
        """Publish a ready image message as it is (its header kept: a recorded frame keeps
        its stamp); returns its stamp, the key of the node's answers."""
        stamp = conv.stamp_key(msg.header)
        self.sent[stamp] = time.perf_counter()
        self.image_pub.publish(msg)
        return stamp

    def publish_image(self, rgb: np.ndarray, encoding: str = "rgb8",
                      header: Header | None = None) -> Header:
        """Publish an RGB uint8 frame (as `encoding`, or PNG on a compressed topic) with
        `header` (default: stamped now in frame_id); returns the header."""
        header = header or stamped_header(self.frame_id)
        if self.image_pub.msg_type is CompressedImage:
            import cv2

            ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
            if not ok:
                raise ValueError(f"cannot PNG-encode a {rgb.shape} frame")
            msg = CompressedImage(header=header, format="png", data=data.tobytes())
        else:
            msg = conv.rgb_to_msg(rgb, encoding, header, self.bridge)
        self.publish_image_msg(msg)
        return header

    def publish_prompt(self, prompt_id: int, text: str, boxes: Any = (),
                       stamp: Header | None = None, frame_id: str = "") -> None:
        """A TextBoxPrompt (boxes XYXY source px, flattened); `stamp`: the header of the
        frame it is for (unstamped: the newest frame)."""
        msg = TextBoxPrompt(id=prompt_id, text=text,
                            boxes=[float(v) for v in np.asarray(boxes, float).ravel()])
        msg.header.frame_id = frame_id
        if stamp is not None:
            msg.header.stamp = stamp.stamp
        self.prompt_pub.publish(msg)

    def publish_depth(self, depth: np.ndarray | Image, header: Header) -> None:
        """A depth image: (H, W) uint16 mm (16UC1) or float32 m (32FC1), or a ready Image
        (sent as it is, e.g. a malformed one); stamped with `header`."""
        msg = depth if isinstance(depth, Image) else gm.depth_msg(depth, header)
        msg.header = conv.copy_header(header)
        self.depth_pub.publish(msg)

    def publish_camera_info(self, camera: Any, header: Header) -> None:
        """CameraInfo of a grasp.CameraModel, or a ready CameraInfo; stamped with `header`."""
        msg = camera if isinstance(camera, CameraInfo) else gm.camera_info_msg(camera, header)
        msg.header = conv.copy_header(header)
        self.camera_info_pub.publish(msg)

    def publish_rgbd(self, rgb: np.ndarray, depth: np.ndarray | Image, camera: Any,
                     encoding: str = "rgb8", header: Header | None = None) -> Header:
        """An RGB-D frame as a camera driver sends it: depth and camera_info, then the colour
        image, all with one header (default: stamped now); returns the header. Depth first,
        so it has arrived when the node pairs it with the frame."""
        header = header or stamped_header(self.frame_id)
        self.publish_depth(depth, header)
        self.publish_camera_info(camera, header)
        return self.publish_image(rgb, encoding, header)

    def publish_category(self, text: str) -> None:
        self.category_pub.publish(String(data=text))

    # ------------------------------------------------------------------ services
    def call(self, srv_type: Any, name: str, request: Any, timeout: float = 60.0) -> Any:
        """One service call of the node, bounded by `timeout` s (NodeError otherwise)."""
        client = self.node.create_client(srv_type, name)
        try:
            if not self.spin_until(client.service_is_ready, timeout):
                raise NodeError(f"{name} is not available after {timeout:g} s")
            future = client.call_async(request)
            if not self.spin_until(future.done, timeout):
                raise NodeError(f"{name} did not answer within {timeout:g} s")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def change_state(self, transition: str, timeout: float = 120.0) -> bool:
        request = ChangeState.Request()
        request.transition.id = TRANSITIONS[transition]
        return self.call(ChangeState, f"{self.fqn}/change_state", request, timeout).success

    def state(self, timeout: float = 60.0) -> str:
        """The node's lifecycle state label (unconfigured, inactive, active, finalized)."""
        return self.call(GetState, f"{self.fqn}/get_state", GetState.Request(),
                         timeout).current_state.label

    def set_parameters(self, **values: Any) -> list:
        request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                    for k, v in values.items()])
        return self.call(SetParameters, f"{self.fqn}/set_parameters", request).results


# ----------------------------------------------------------------------------- the harness


@dataclass
class FrameResult:
    """What the node published for one (frame, prompt)."""

    stamp: Stamp
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


def node_counters(result: Any) -> dict[str, int]:
    """The node's frame counters as a SegmentationResult carries them."""
    return {name: int(getattr(result, name)) for name in
            ("frames_received", "frames_processed", "frames_dropped", "inputs_rejected")}


class NodeHarness:
    """The real node in a subprocess plus a NodeClient that feeds and listens.

    Use as a context manager. Everything runs on domain_id() with DDS on loopback. On
    entry the node is brought to active: a node whose configure failed (missing or refused
    weights, bad parameters) gives NodeError with the node's own reason from /diagnostics.

    image_topic / compressed / on_output go to the NodeClient (e.g. a bag player: compressed
    frames on `image/compressed`, a recorder of the outputs).
    """

    def __init__(self, settings: NodeSettings, log_path: str | os.PathLike,
                 timeout_s: float = START_TIMEOUT_S, outputs: Sequence[str] = ("result", "mask"),
                 frame_id: str = "camera", *, image_topic: str = "image",
                 compressed: bool = False,
                 on_output: Callable[[Received], None] | None = None) -> None:
        self.settings = settings
        self.log_path = Path(log_path)
        self.timeout_s = timeout_s
        self.output_topics = tuple(dict.fromkeys(("result", *outputs)))
        self.frame_id = frame_id
        self._client_options = {"image_topic": image_topic, "compressed": compressed,
                                "on_output": on_output}
        self.domain = domain_id()
        self.proc: subprocess.Popen | None = None
        self.client: NodeClient | None = None
        self._context: Any = None
        self.answer_timeout_s = timeout_s  # per answer; warm_up() tightens it
        self.latency_estimate_s = 1.0  # one frame's processing; measured by warm_up()
        self.prompt_id = 0
        self._active_prompt: tuple[int, str] | None = None
        self._last_stamp: Stamp | None = None

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
        env = {**os.environ, **loopback_environment(self.domain)}
        self.proc = start_process(node_command(self.settings.ros_args()), self.log_path, env)
        self._context = rclpy.Context()
        rclpy.init(context=self._context, domain_id=self.domain)
        self.client = NodeClient(self._context, node_name=self.settings.node_name,
                                 outputs=self.output_topics, frame_id=self.frame_id,
                                 name="talk2sam_tool_client", **self._client_options)
        self.client.check = self._check_alive
        self._bring_up()

    def close(self) -> None:
        try:
            if self.client is not None:
                self.client.close()
            if self._context is not None:
                self._context.try_shutdown()
        finally:  # whatever happened above, the node process must not outlive us
            self.client = self._context = None
            if self.proc is not None:
                stop_process(self.proc)

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            last = last_lines(self.log_path, 1)
            raise NodeError(f"the node exited with code {self.proc.returncode} (log: "
                            f"{self.log_path}){': ' + last if last else ''}")

    def _bring_up(self) -> None:
        """Until the node is active and our inputs and outputs are matched.

        get_state is answered once the node spins, i.e. after its autostart attempt; a node
        left unconfigured (autostart failed, or autostart off) is configured here.
        """
        client = self.client
        state = client.state(self.timeout_s)
        if state == "unconfigured":
            self._configure()
            state = "inactive"
        if state == "inactive" and not client.change_state("activate", self.timeout_s):
            raise NodeError(f"the node did not activate; see {self.log_path}")
        if state not in ("inactive", "active"):
            raise NodeError(f"the node is {state}, not active; see {self.log_path}")
        if not client.wait_active(self.timeout_s):
            raise NodeError(f"the node's topics did not match within {self.timeout_s:.0f} s;"
                            f" see {self.log_path}")
        client.spin_for(0.3)  # let matching settle in both directions

    def _configure(self) -> None:
        """Configure the node; NodeError with its reason (from /diagnostics) if it fails.

        A status from the failed autostart may have been published before we were matched
        (volatile: lost), so unless we have it, configure again: the node publishes the
        reason at once when configure fails.
        """
        client = self.client
        reason = client.configure_error()
        if not reason:
            client.wait_diagnostics_matched()
            seen = len(client.diagnostics)
            if client.change_state("configure", self.timeout_s):
                return
            client.spin_until(lambda: client.configure_error(seen), DIAGNOSTICS_WAIT_S)
            reason = client.configure_error(seen) or f"no reason reported; see {self.log_path}"
        raise NodeError(f"the node could not load the model: {reason}")

    # -- prompts and frames
    def spin(self, seconds: float) -> None:
        self.client.spin_for(seconds)

    def send_image(self, rgb: np.ndarray) -> Stamp:
        """Publish `rgb` (H, W, 3 uint8) stamped now; returns its stamp."""
        header = self.client.publish_image(rgb, "rgb8", stamped_header(self.frame_id))
        self._last_stamp = conv.stamp_key(header)
        return self._last_stamp

    def set_prompt(self, text: str, boxes: np.ndarray | None = None, *,
                   prompt_id: int | None = None, via_category: bool = False,
                   settle_s: float = 0.5) -> int:
        """Make (text, boxes) the node's prompt; returns the prompt id its results carry.

        Unstamped prompts re-run the newest frame the node holds; that answer is awaited (at
        most answer_timeout_s: the node may reject the prompt for that frame, e.g. a box outside
        it), or `settle_s` before the first frame, so the next image is under this prompt.
        """
        if via_category:
            pid = CATEGORY_PROMPT_ID
            self.client.publish_category(text)
        else:
            self.prompt_id = self.prompt_id + 1 if prompt_id is None else prompt_id
            pid = self.prompt_id
            self.client.publish_prompt(pid, text, () if boxes is None else boxes,
                                       frame_id=self.frame_id)
        self._active_prompt = (pid, text)
        if self._last_stamp is None:
            self.spin(settle_s)
        else:
            last = self._last_stamp
            self.client.spin_until(lambda: self._answer(last, pid, text) is not None,
                                   self.answer_timeout_s)
        return pid

    def _answer(self, stamp: Stamp, pid: int, text: str) -> Received | None:
        """The node's last result for frame `stamp` if it is for prompt (pid, text)."""
        got = self.client.outputs.latest(stamp, "result")
        return got if got and got.msg.prompt_id == pid and got.msg.text == text else None

    def wait_frame(self, stamp: Stamp, timeout: float | None = None,
                   others: Sequence[str] | None = None) -> FrameResult | None:
        """The node's answer to frame `stamp` under the active prompt (None on timeout);
        `others`: as for wait_answer."""
        assert self._active_prompt is not None, "set_prompt first"
        return self.wait_answer(stamp, *self._active_prompt, timeout, others)

    def wait_answer(self, stamp: Stamp, pid: int, text: str, timeout: float | None = None,
                    others: Sequence[str] | None = None, others_s: float = 2.0
                    ) -> FrameResult | None:
        """The node's answer to frame `stamp` for prompt (pid, text), e.g. a stamped prompt;
        None on timeout. The frame's `others` outputs (default: all we listen to; the node
        publishes `result` last) are awaited `others_s` s at most."""
        timeout = self.answer_timeout_s if timeout is None else timeout
        client = self.client
        if not client.spin_until(lambda: self._answer(stamp, pid, text) is not None, timeout):
            return None
        wanted = [t for t in (self.output_topics if others is None else others)
                  if t != "result"]
        client.spin_until(lambda: all(client.outputs.latest(stamp, t) for t in wanted),
                          others_s)
        return self.frame_result(stamp, self._answer(stamp, pid, text))

    def frame_result(self, stamp: Stamp, result: Received) -> FrameResult:
        """FrameResult of frame `stamp` from its `result` and the outputs received for it."""
        client = self.client
        got = {t: client.outputs.latest(stamp, t) for t in self.output_topics}
        got["result"] = result
        done = got["mask"].at if got.get("mask") else result.at
        return FrameResult(stamp, result.msg, {t: r.msg for t, r in got.items() if r},
                           (done - client.sent[stamp]) * 1e3,
                           {s.stage: float(s.ms) for s in result.msg.timing})

    def listen(self, topics: Sequence[str]) -> None:
        """Also collect these outputs from now on (e.g. the 3D ones of a use_depth node,
        which computes them only while they have a subscriber); wait_frame then waits for
        them too. The node needs a moment to see the new subscriptions."""
        for topic in topics:
            if topic not in self.output_topics:
                self.client.listen(topic)
        self.output_topics = tuple(dict.fromkeys((*self.output_topics, *topics)))

    def send_rgbd(self, rgb: np.ndarray, depth: np.ndarray, camera: Any) -> Stamp:
        """Publish an RGB-D frame (depth, camera_info, colour; publish_rgbd) stamped now;
        returns its stamp. For a node with use_depth (wait_frame then collects its 3D
        outputs too, if listened to)."""
        header = self.client.publish_rgbd(rgb, depth, camera, "rgb8",
                                          stamped_header(self.frame_id))
        self._last_stamp = conv.stamp_key(header)
        return self._last_stamp

    def send_and_wait(self, rgb: np.ndarray, timeout: float | None = None
                      ) -> FrameResult | None:
        return self.wait_frame(self.send_image(rgb), timeout)

    def measured(self, res: FrameResult) -> None:
        """Tighten the answer timeout to this answer's latency (x20, 30 s at least)."""
        self.latency_estimate_s = res.latency_ms / 1e3
        self.answer_timeout_s = min(self.timeout_s, max(30.0, 20 * self.latency_estimate_s))

    def warm_up(self, rgb: np.ndarray, tries: int = 3) -> FrameResult:
        """A first answered frame (lazy initialisation; its numbers are not kept). Retried:
        the very first samples of a new publisher can be lost while discovery settles."""
        for _ in range(tries):
            res = self.send_and_wait(rgb, self.timeout_s)
            if res is not None:
                self.measured(res)
                return res
        raise NodeError(f"the node answered none of {tries} warm-up frames; see {self.log_path}")

    def wait_stragglers(self) -> None:
        """After a stream: the node holds at most the frame in work plus the newest pending
        one, so spin until results stop coming for ~2.5 frame times (bounded by
        answer_timeout_s)."""
        results = self.client.outputs.by_topic["result"]
        quiet_s = max(3.0, 2.5 * self.latency_estimate_s)
        quiet_until = time.monotonic() + quiet_s
        seen = len(results)
        deadline = time.monotonic() + max(quiet_s, self.answer_timeout_s)
        while time.monotonic() < min(quiet_until, deadline):
            self.client.executor.spin_once(timeout_sec=0.05)
            if len(results) != seen:
                seen = len(results)
                quiet_until = time.monotonic() + quiet_s

    def stream(self, frames: Sequence[np.ndarray], rate_hz: float, seconds: float
               ) -> dict[str, Any]:
        """Publish `frames` cyclically at `rate_hz` for `seconds` under the active prompt.

        processed = distinct frames answered; drop rate = 1 - processed / sent. Frame age: the
        node's own `frame_age_ms` (processing finished - stamp) and receipt age (result
        received here - publish).
        """
        client = self.client
        results = client.outputs.by_topic["result"]
        period = 1.0 / rate_hz
        stamps: list[Stamp] = []
        first_result = len(results)
        start = time.monotonic()
        i = 0
        while True:
            due = start + i * period
            if due - start >= seconds:
                break
            while time.monotonic() < due:
                client.executor.spin_once(
                    timeout_sec=max(0.0, min(0.01, due - time.monotonic())))
            stamps.append(self.send_image(frames[i % len(frames)]))
            i += 1
        wall = time.monotonic() - start
        sent = set(stamps)
        self.wait_stragglers()
        answers = [r for r in results[first_result:] if conv.stamp_key(r.msg.header) in sent]
        done = {conv.stamp_key(r.msg.header) for r in answers}
        ages = [float(r.msg.frame_age_ms) for r in answers]
        receipt = [(r.at - client.sent[conv.stamp_key(r.msg.header)]) * 1e3 for r in answers]
        return {"rate_hz": rate_hz, "seconds": wall, "sent": len(sent),
                "processed": len(done), "drop_rate": 1.0 - len(done) / max(len(sent), 1),
                "processed_hz": len(done) / max(wall, 1e-9),
                "frame_age_ms": summarize(ages), "receipt_age_ms": summarize(receipt),
                "node_counters": node_counters(answers[-1].msg) if answers else None}
