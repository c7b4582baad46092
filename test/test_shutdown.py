"""Stopping the nodes as a ROS user does: Ctrl-C in a terminal sends SIGINT to the whole process
group, and `ros2 launch` then sends its own SIGINT (and SIGTERM later) while the node tears down.

Each node runs as the leader of its own process group (a terminal's foreground job); the test
signals the group and checks exit code 0, no traceback on stderr and no process left in it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from node_harness import Client, ros_environment, sample_picture
from rosutil import REPO, spin_until

EXIT_TIMEOUT = 90.0  # teardown + interpreter exit (freeing torch) on a loaded 2-core machine


def _start(module: str, tmp: Path, domain: int, *ros_args: str) -> subprocess.Popen:
    env = {**os.environ, **ros_environment(domain)}
    with (tmp / "stdout.log").open("w") as out, (tmp / "stderr.log").open("w") as err:
        return subprocess.Popen([sys.executable, "-m", module, "--ros-args", *ros_args],
                                stdout=out, stderr=err, env=env, cwd=REPO,
                                start_new_session=True)  # its own group, like a terminal job


def _signal_group(proc: subprocess.Popen, first: int, second: int, interval_s: float) -> None:
    os.killpg(proc.pid, first)
    time.sleep(interval_s)
    try:
        os.killpg(proc.pid, second)
    except ProcessLookupError:
        pass  # already gone


def _assert_clean_exit(proc: subprocess.Popen, tmp: Path) -> None:
    try:
        code = proc.wait(EXIT_TIMEOUT)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    stderr = (tmp / "stderr.log").read_text(errors="replace")
    assert code == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    with pytest.raises(ProcessLookupError):  # nothing of the group is left running
        os.killpg(proc.pid, 0)


def _segmentation_node(tmp: Path, domain: int, busy: bool):
    """The node, active, and (busy) its worker in the middle of a 60 s frame."""
    proc = _start("talk2sam_ros.ros.node", tmp, domain, "-p", "preset:=tiny",
                  "-p", "diagnostics_period_s:=0.2", "-p", "worker_stop_timeout_s:=5.0",
                  "-p", f"debug_delay_ms:={60000 if busy else 0}")
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    client = Client(context)
    try:
        assert client.wait_active(), (tmp / "stderr.log").read_text()[-3000:]
        if busy:
            client.publish_prompt(1, "person", boxes=[10, 10, 80, 100])
            client.publish_image(sample_picture())
            assert client.spin_until(lambda: client.diagnostics
                                     and client.diagnostics[-1]["worker"] == "busy", 60)
    finally:
        client.close()
        context.try_shutdown()
    return proc


@pytest.mark.parametrize("interval_s", [0.0, 0.05, 0.2])
def test_two_sigints_while_the_worker_runs_a_frame_exit_cleanly(interval_s, tmp_path,
                                                                ros_domain):
    """The second SIGINT lands while teardown waits for the frame in progress: teardown stops
    waiting (the frame is abandoned with the process) instead of dying of KeyboardInterrupt.
    0 ms apart the kernel may merge the two into one: teardown then waits
    worker_stop_timeout_s and exits all the same."""
    proc = _segmentation_node(tmp_path, ros_domain, busy=True)
    _signal_group(proc, signal.SIGINT, signal.SIGINT, interval_s)
    _assert_clean_exit(proc, tmp_path)


@pytest.mark.parametrize("second", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_while_an_idle_node_tears_down_exits_cleanly(second, tmp_path,
                                                                     ros_domain):
    """Teardown destroys the lifecycle publishers and Python then frees torch (seconds): a
    second SIGINT, or launch's SIGTERM, during either is harmless."""
    proc = _segmentation_node(tmp_path, ros_domain, busy=False)
    _signal_group(proc, signal.SIGINT, second, 0.05)
    _assert_clean_exit(proc, tmp_path)


@pytest.mark.parametrize("interval_s", [0.0, 0.05, 0.2])
def test_speech_node_exits_cleanly_on_two_sigints(interval_s, tmp_path, ros_domain):
    pytest.importorskip("pocketsphinx", reason="pocketsphinx (the `speech` extra) not installed")
    proc = _start("talk2sam_ros.speech.node", tmp_path, ros_domain)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain)
    node = rclpy.create_node("speech_shutdown_test", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        assert spin_until(executor, lambda: node.count_publishers("/category") > 0, 60), \
            (tmp_path / "stderr.log").read_text()[-3000:]
    finally:
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()
    _signal_group(proc, signal.SIGINT, signal.SIGINT, interval_s)
    _assert_clean_exit(proc, tmp_path)
