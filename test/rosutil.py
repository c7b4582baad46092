"""Helpers for tests that talk to real ROS 2 processes over DDS on loopback: the processes and
waits of talk2sam_ros.tools.harness, with the tests' defaults (run from the checkout).

The harness is imported in the functions: tests that only need REPO do not load rclpy.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_OWN_PROCESS = "TALK2SAM_TEST_IN_OWN_PROCESS"


def in_own_process(test: Callable) -> Callable:
    """Run `test` in a fresh pytest process: for tests that send signals to their own process.
    The suite's process holds the threads of every native library earlier tests loaded, and a
    signal sent to it after the OpenVINO tests crashed it (SIGSEGV); a real node with
    runtime openvino exits cleanly on SIGINT (test_shutdown tests the node as its own process).
    """
    @functools.wraps(test)
    def run(*args, **kwargs):
        if os.environ.get(_OWN_PROCESS) == test.__name__:
            return test(*args, **kwargs)
        node_id = f"{Path(test.__code__.co_filename).resolve()}::{test.__name__}"
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node_id],
            env={**os.environ, _OWN_PROCESS: test.__name__}, capture_output=True, text=True,
            timeout=300, cwd=REPO)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return run


def spin_until(executor, done: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Spin `executor` until `done()` or `timeout` seconds pass; bounded in time and count."""
    from talk2sam_ros.tools.harness import spin_until as harness_spin_until

    return harness_spin_until(executor, done, timeout, step)


def start_python(args: list[str], log: Path, env: dict | None = None):
    """Start `python args...` from this venv in the checkout; output to `log`."""
    from talk2sam_ros.tools.harness import start_process

    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    return start_process([sys.executable, *args], log, full_env, cwd=REPO)


def stop(proc, timeout: float = 10.0) -> int:
    """Interrupt a process started by start_python and wait for it (kill if it hangs)."""
    from talk2sam_ros.tools.harness import stop_process

    return stop_process(proc, timeout)
