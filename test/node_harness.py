"""talk2sam_node in tests: talk2sam_ros.tools.harness (the tools' node harness) with the tests'
defaults, plus a module-fixture helper.

Used by test_node*.py and test_speech*.py. One node process per test module (start-up imports
torch: ~10-20 s on 2 busy cores); every wait is bounded in time and count.
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rclpy
from rosutil import REPO, stop
from std_msgs.msg import Header

from talk2sam_ros.ros.conversions import stamp_key as key
from talk2sam_ros.tools.harness import OUTPUT_TYPES as OUTPUTS
from talk2sam_ros.tools.harness import RELIABLE as QOS
from talk2sam_ros.tools.harness import RGBD_OUTPUT_TYPES as RGBD_OUTPUTS
from talk2sam_ros.tools.harness import START_TIMEOUT_S as START_TIMEOUT
from talk2sam_ros.tools.harness import (NodeClient, loopback_environment, node_command,
                                        stamped_header, start_process)

__all__ = ["OUTPUTS", "QOS", "RGBD_OUTPUTS", "START_TIMEOUT", "Client", "RunningNode", "key",
           "module_domain", "ros_environment", "running_node", "sample_picture",
           "stamped_header", "start_node", "unsubscribed"]


def module_domain(salt: int) -> int:
    """A ROS_DOMAIN_ID for one test module, derived from the run's (scripts/test.sh) id."""
    base = int(os.environ.get("ROS_DOMAIN_ID", str(os.getpid() % 100)))
    return (base + 50 + salt) % 100 + 1


def ros_environment(domain: int) -> dict[str, str]:
    return {**loopback_environment(domain), "PYTHONWARNINGS": "ignore"}


def start_node(log: Path, domain: int, *ros_args: str, console_script: bool = False):
    """talk2sam_node with the tiny preset as a subprocess (`python -m` or the console script)."""
    env = {**os.environ, **ros_environment(domain)}
    cmd = node_command(["--ros-args", "-p", "preset:=tiny", *ros_args], console_script)
    return start_process(cmd, log, env, cwd=REPO)


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


@contextmanager
def unsubscribed(client: NodeClient, topics: tuple[str, ...]) -> Iterator[None]:
    """Without the client's subscriptions to these outputs (so the node stops computing
    them) inside the block; afterwards recorded again as before. Bounded waits."""
    for sub in [s for s in client.node.subscriptions if s.topic_name.lstrip("/") in topics]:
        client.node.destroy_subscription(sub)
    try:
        assert client.spin_until(lambda: all(client.node.count_subscribers(f"/{t}") == 0
                                             for t in topics), 10)
        client.spin_for(0.5)  # let the node's graph cache see the subscriptions go
        yield
    finally:
        for topic in topics:
            client.listen(topic)
        assert client.spin_until(lambda: all(client.node.count_subscribers(f"/{t}") == 1
                                             for t in topics), 10)
        client.spin_for(0.5)


def sample_picture(height: int = 120, width: int = 160) -> np.ndarray:
    """scikit-image's CC0 astronaut, resized to a small non-square RGB frame."""
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_AREA)


class Client(NodeClient):
    """The harness's NodeClient listening to every output (rgbd: the 3D ones too, for a node
    with use_depth), publishing bgr8 by default."""

    def __init__(self, context, namespace: str = "", image_topic: str = "image",
                 compressed: bool = False, node_name: str = "talk2sam",
                 rgbd: bool = False) -> None:
        super().__init__(context, namespace=namespace, node_name=node_name,
                         image_topic=image_topic, compressed=compressed,
                         outputs=[*OUTPUTS, *(RGBD_OUTPUTS if rgbd else ())],
                         name="talk2sam_test_client")

    def publish_image(self, rgb: np.ndarray, encoding: str = "bgr8",
                      header: Header | None = None) -> Header:
        return super().publish_image(rgb, encoding, header)
