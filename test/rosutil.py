"""Helpers for tests that talk to real ROS 2 processes over DDS on loopback."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def spin_until(executor, done: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Spin `executor` until `done()` or `timeout` seconds pass; bounded in time and count."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 10):
        if done():
            return True
        if time.monotonic() > deadline:
            break
        executor.spin_once(timeout_sec=step)
    return done()


def start_python(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start `python args...` from this venv with the test's ROS environment; output to `log`."""
    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    fh = open(log, "w")  # closed by stop()
    proc = subprocess.Popen([sys.executable, *args], stdout=fh, stderr=subprocess.STDOUT,
                            env=full_env, cwd=REPO)
    proc._t2s_log = fh  # type: ignore[attr-defined]
    return proc


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> int:
    """Interrupt a process started by start_python and wait for it (kill if it hangs)."""
    if proc.poll() is None:
        proc.send_signal(2)  # SIGINT: rclpy nodes shut down cleanly
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    fh = getattr(proc, "_t2s_log", None)
    if fh is not None:
        fh.close()
    return proc.returncode
