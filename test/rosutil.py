"""Helpers for tests that talk to real ROS 2 processes over DDS on loopback: the processes and
waits of talk2sam_ros.tools.harness, with the tests' defaults (run from the checkout).

The harness is imported in the functions: tests that only need REPO do not load rclpy.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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
