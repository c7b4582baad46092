"""Stopping the nodes as a ROS user does: Ctrl-C in a terminal sends SIGINT to the whole process
group, and `ros2 launch` then sends its own SIGINT (and SIGTERM later) while the node tears down.

Each node runs as the leader of its own process group (a terminal's foreground job); the test
signals the group and checks exit code 0, no traceback on stderr and no process left in it.
The helper both nodes use (talk2sam_ros.common.shutdown) is also tested alone, in-process.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from node_harness import Client, ros_environment, sample_picture
from rosutil import REPO, in_own_process, spin_until

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


def _segmentation_node(tmp: Path, domain: int, busy: bool, *params: str):
    """The node, active, and (busy) its worker in the middle of a 60 s frame; params: more
    `name:=value` parameters."""
    extra = [arg for param in params for arg in ("-p", param)]
    proc = _start("talk2sam_ros.ros.node", tmp, domain, "-p", "preset:=tiny",
                  "-p", "diagnostics_period_s:=0.2", "-p", "worker_stop_timeout_s:=5.0",
                  "-p", f"debug_delay_ms:={60000 if busy else 0}", *extra)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    client = Client(context)
    try:
        assert client.wait_active(), (tmp / "stderr.log").read_text()[-3000:]
        if busy:
            # Again each second until the worker is busy: one prompt and frame sent may reach
            # the node before its readers have matched us, or the frame before the prompt
            # (CI flake). The same prompt again replaces itself.
            busy_now = False
            for _ in range(60):
                client.publish_prompt(1, "person", boxes=[10, 10, 80, 100])
                client.publish_image(sample_picture())
                busy_now = client.spin_until(lambda: client.diagnostics and
                                             client.diagnostics[-1]["worker"] == "busy", 1.0)
                if busy_now:
                    break
            assert busy_now, (tmp / "stderr.log").read_text()[-3000:]
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


def test_two_sigints_stop_a_node_whose_encoders_run_in_openvino(tmp_path, ros_domain):
    """OpenVINO's native thread pool is alive in the node: the signals must still end it
    cleanly (in the test suite's own process, a signal after OpenVINO crashed it)."""
    pytest.importorskip("openvino")
    proc = _segmentation_node(tmp_path, ros_domain, True, "runtime:=openvino",
                              f"export_dir:={tmp_path / 'exports'}")
    _signal_group(proc, signal.SIGINT, signal.SIGINT, 0.05)
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


# ---------------------------------------------------------------------- the helper alone
# common.shutdown.ShutdownSignals in this process (real signals to ourselves, no ROS).

def _spin_once_counter(calls: list, fail_after: int | None = None):
    def spin_once(timeout_s: float) -> None:
        calls.append(timeout_s)
        if fail_after is not None and len(calls) > fail_after:
            raise RuntimeError("publisher's context is invalid")
        time.sleep(0.01)
    return spin_once


@in_own_process
def test_signals_are_recorded_not_raised_and_the_handlers_come_back():
    from talk2sam_ros.common.shutdown import ShutdownSignals

    previous = signal.getsignal(signal.SIGINT)
    with ShutdownSignals() as signals:
        os.kill(os.getpid(), signal.SIGINT)
        assert signals.stop.wait(5) and not signals.hurry.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert signals.hurry.wait(5)
        assert signals.received == [signal.SIGINT, signal.SIGTERM]
        calls: list = []
        signals.spin(_spin_once_counter(calls), lambda: True)
        assert calls == []  # already stopped: the loop does not start
    assert signal.getsignal(signal.SIGINT) is previous


@in_own_process
def test_a_signal_during_start_up_raises_keyboard_interrupt_once():
    from talk2sam_ros.common.shutdown import ShutdownSignals

    with ShutdownSignals() as signals:
        with pytest.raises(KeyboardInterrupt):
            with signals.interruptible():
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(500):  # the handler runs between bytecodes: bounded wait
                    time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)  # outside the block: recorded only
        assert signals.hurry.wait(5)
        with pytest.raises(KeyboardInterrupt):  # stop came before the block
            with signals.interruptible():
                pass


@in_own_process
def test_spin_ends_on_a_signal_and_on_shutdown_but_raises_other_errors():
    from talk2sam_ros.common.shutdown import ShutdownSignals

    with ShutdownSignals() as signals:
        calls: list = []
        with pytest.raises(RuntimeError):  # a callback failing while ROS runs is a real error
            signals.spin(_spin_once_counter(calls, fail_after=2), lambda: True)
        ok = [True]
        calls = []

        def failing_after_shutdown(timeout_s: float) -> None:
            calls.append(timeout_s)
            if len(calls) == 3:
                ok[0] = False  # the context was shut down from outside...
                raise RuntimeError("publisher's context is invalid")  # ...mid-callback

        signals.spin(failing_after_shutdown, lambda: ok[0])
        assert len(calls) == 3
        timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
        timer.start()
        calls = []
        signals.spin(_spin_once_counter(calls), lambda: True)  # until the signal
        timer.join(5)
        assert signals.stop.is_set() and calls


def test_an_entry_point_ignores_signals_after_its_block():
    """restore=False: after main() the process is exiting; a late signal must not kill it
    while Python finalizes (Python resets its own handlers to the default then)."""
    code = ("import os, signal, time; from talk2sam_ros.common.shutdown import ShutdownSignals\n"
            "with ShutdownSignals(restore=False):\n    pass\n"
            "os.kill(os.getpid(), signal.SIGINT); os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(0.2); print('alive')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert (proc.returncode, proc.stdout.strip()) == (0, "alive"), proc.stderr[-2000:]


@pytest.mark.parametrize("module", ["talk2sam_ros.common.shutdown",
                                    "talk2sam_ros.ros.scheduler", "talk2sam_ros.ros.counters"])
def test_the_pure_parts_import_without_rclpy_and_torch(module):
    code = f"import sys, {module}; print(sorted({{'rclpy', 'torch'}} & set(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.stdout.strip() == "[]", proc.stderr[-2000:]
