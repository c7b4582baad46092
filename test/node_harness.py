"""Test harness for talk2sam_node: start it as a real process, talk to it over DDS on loopback.

Used by test_node*.py. One node process per test module (start-up imports torch: ~10-20 s on
2 busy cores); every wait is bounded in time and count (rosutil.spin_until).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosutil import spin_until, start_python, stop
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

from talk2sam_ros.ros import conversions as conv
from talk2sam_ros.msg import GraspCandidate, SegmentationResult, TextBoxPrompt

OUTPUTS = {"mask": Image, "mask_labels": Image, "similarity": Image, "similarity_color": Image,
           "overlay": Image, "result": SegmentationResult, "grasp": GraspCandidate}
START_TIMEOUT = 150.0  # node start-up (torch import + tiny model) on a loaded 2-core machine
QOS = QoSProfile(depth=100, history=HistoryPolicy.KEEP_LAST,
                 reliability=ReliabilityPolicy.RELIABLE)
TRANSITIONS = {"configure": Transition.TRANSITION_CONFIGURE,
               "activate": Transition.TRANSITION_ACTIVATE,
               "deactivate": Transition.TRANSITION_DEACTIVATE,
               "cleanup": Transition.TRANSITION_CLEANUP,
               "shutdown": Transition.TRANSITION_INACTIVE_SHUTDOWN}


def module_domain(salt: int) -> int:
    """A ROS_DOMAIN_ID for one test module, derived from the run's (scripts/test.sh) id."""
    base = int(os.environ.get("ROS_DOMAIN_ID", str(os.getpid() % 100)))
    return (base + 50 + salt) % 100 + 1


def ros_environment(domain: int) -> dict[str, str]:
    return {"ROS_DOMAIN_ID": str(domain), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "ROS_LOCALHOST_ONLY": "1", "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}


def start_node(log: Path, domain: int, *ros_args: str, console_script: bool = False):
    """talk2sam_node with the tiny preset as a subprocess (`python -m` or the console script)."""
    env = {**os.environ, **ros_environment(domain)}
    entry = [shutil.which("talk2sam_node")] if console_script else ["-m", "talk2sam_ros.ros.node"]
    assert entry[0], "talk2sam_node console script not on PATH"
    return start_python([*entry, "--ros-args", "-p", "preset:=tiny", *ros_args], log, env)


class RunningNode:
    """A node process started by running_node, the test-side client talking to it, its log."""

    def __init__(self, client: Any, proc: subprocess.Popen, log: Path) -> None:
        self.client, self.proc, self.log = client, proc, log

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextmanager
def running_node(domain: int, log: Path, start: Callable[[], subprocess.Popen],
                 make_client: Callable[[rclpy.Context], Any], ready: Callable[[Any], bool],
                 expect_clean_exit: bool = False) -> Iterator[RunningNode]:
    """Run `start()` with the domain's loopback ROS environment, connect `make_client(context)`
    and wait until `ready(client)`; on exit close the client and stop the process (asserting
    exit status 0 with expect_clean_exit). For module-scoped fixtures (one process per module).
    """
    with pytest.MonkeyPatch.context() as mp:
        for name, value in ros_environment(domain).items():
            mp.setenv(name, value)
        proc = start()
        context = rclpy.Context()
        rclpy.init(context=context, domain_id=domain)
        client = make_client(context)
        try:
            assert ready(client), log.read_text()[-3000:]
            yield RunningNode(client, proc, log)
        finally:
            client.close()
            context.try_shutdown()
            code = stop(proc)
            if expect_clean_exit:
                assert code == 0, log.read_text()[-3000:]


def sample_picture(height: int = 120, width: int = 160) -> np.ndarray:
    """scikit-image's CC0 astronaut, resized to a small non-square RGB frame."""
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_AREA)


def stamped_header(frame_id: str = "camera_optical", sec: int | None = None,
                   nanosec: int | None = None) -> Header:
    header = Header(frame_id=frame_id)
    now = time.time_ns()
    header.stamp.sec = now // 1_000_000_000 if sec is None else sec
    header.stamp.nanosec = now % 1_000_000_000 if nanosec is None else nanosec
    return header


def key(header: Header) -> tuple[int, int]:
    return header.stamp.sec, header.stamp.nanosec


class Client:
    """Test-side rclpy node: publishes images/prompts, records every output of talk2sam_node."""

    def __init__(self, context, namespace: str = "", image_topic: str = "image",
                 compressed: bool = False, node_name: str = "talk2sam") -> None:
        self.context = context
        self.node = rclpy.create_node("talk2sam_test_client", context=context,
                                      namespace=namespace or "/")
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.fqn = f"{namespace.rstrip('/')}/{node_name}"
        self.received: dict[str, list] = defaultdict(list)
        for topic, kind in OUTPUTS.items():
            self.node.create_subscription(kind, topic, self._recorder(topic), QOS)
        self.diagnostics: list[dict[str, str]] = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        kind = CompressedImage if compressed else Image
        self.image_pub = self.node.create_publisher(kind, image_topic, QOS)
        self.prompt_pub = self.node.create_publisher(TextBoxPrompt, "prompt", QOS)
        self.category_pub = self.node.create_publisher(String, "category", QOS)
        self.bridge = conv.make_bridge()

    def _recorder(self, topic: str):
        return lambda msg: self.received[topic].append(msg)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.endswith(self.fqn):
                self.diagnostics.append({kv.key: kv.value for kv in status.values})

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()

    # ------------------------------------------------------------------ waiting
    def spin_until(self, done, timeout: float) -> bool:
        return spin_until(self.executor, done, timeout)

    def spin_for(self, seconds: float) -> None:
        spin_until(self.executor, lambda: False, seconds)

    def wait_active(self, timeout: float = START_TIMEOUT) -> bool:
        """Until the node subscribes to our inputs and publishes every output."""
        return self.spin_until(
            lambda: self.image_pub.get_subscription_count() > 0
            and self.prompt_pub.get_subscription_count() > 0
            and self.category_pub.get_subscription_count() > 0
            and all(self.node.count_publishers(self.node.resolve_topic_name(t)) > 0
                    for t in OUTPUTS), timeout)

    def output(self, topic: str, header: Header, prompt_id: int | None = None):
        """The last message on `topic` for the frame `header` (and prompt id), or None."""
        for msg in reversed(self.received[topic]):
            if key(msg.header) == key(header) and (prompt_id is None
                                                   or msg.prompt_id == prompt_id):
                return msg
        return None

    def wait_output(self, topic: str, header: Header, prompt_id: int | None = None,
                    timeout: float = 60.0):
        self.spin_until(lambda: self.output(topic, header, prompt_id) is not None, timeout)
        return self.output(topic, header, prompt_id)

    def latest_diagnostics(self, timeout: float = 10.0) -> dict[str, str]:
        """A diagnostics status published after this call."""
        start = len(self.diagnostics)
        assert self.spin_until(lambda: len(self.diagnostics) > start, timeout), \
            "no diagnostics from the node"
        return self.diagnostics[-1]

    def counter(self, name: str, timeout: float = 10.0) -> int:
        return int(self.latest_diagnostics(timeout)[name])

    # ------------------------------------------------------------------ publishing
    def publish_image(self, rgb: np.ndarray, encoding: str = "bgr8",
                      header: Header | None = None) -> Header:
        header = header or stamped_header()
        if self.image_pub.msg_type is CompressedImage:
            import cv2

            ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
            assert ok
            msg = CompressedImage(header=header, format="png", data=data.tobytes())
        else:
            msg = conv.rgb_to_msg(rgb, encoding, header, self.bridge)
        self.image_pub.publish(msg)
        return header

    def publish_prompt(self, prompt_id: int, text: str, boxes=(), stamp: Header | None = None,
                       frame_id: str = "") -> None:
        msg = TextBoxPrompt(id=prompt_id, text=text,
                            boxes=[float(v) for v in np.asarray(boxes, float).ravel()])
        msg.header.frame_id = frame_id
        if stamp is not None:
            msg.header.stamp = stamp.stamp
        self.prompt_pub.publish(msg)

    def publish_category(self, text: str) -> None:
        self.category_pub.publish(String(data=text))

    # ------------------------------------------------------------------ lifecycle / params
    def _call(self, srv_type, name: str, request, timeout: float = 60.0):
        client = self.node.create_client(srv_type, name)
        try:
            assert self.spin_until(client.service_is_ready, timeout), f"{name} not available"
            future = client.call_async(request)
            assert self.spin_until(future.done, timeout), f"{name} did not answer"
            return future.result()
        finally:
            self.node.destroy_client(client)

    def change_state(self, transition: str, timeout: float = 120.0) -> bool:
        request = ChangeState.Request()
        request.transition.id = TRANSITIONS[transition]
        return self._call(ChangeState, f"{self.fqn}/change_state", request, timeout).success

    def state(self) -> str:
        return self._call(GetState, f"{self.fqn}/get_state",
                          GetState.Request()).current_state.label

    def set_parameters(self, **values) -> list:
        request = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg()
                                                    for k, v in values.items()])
        return self._call(SetParameters, f"{self.fqn}/set_parameters", request).results
