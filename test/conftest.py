"""Shared fixtures: every test gets its own ROS_DOMAIN_ID with discovery kept on loopback."""
from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import count

import pytest

# Domain ids 1..100 are safe for FastDDS port mapping. Start from the run's ROS_DOMAIN_ID
# (scripts/test.sh picks a random one) so concurrent runs on one machine rarely collide.
_BASE = int(os.environ.get("ROS_DOMAIN_ID", str(os.getpid() % 100)))
_NEXT = count()


@pytest.fixture
def ros_domain(monkeypatch: pytest.MonkeyPatch) -> int:
    """A fresh domain id for this test, exported for the processes it starts."""
    domain = (_BASE + next(_NEXT)) % 100 + 1
    monkeypatch.setenv("ROS_DOMAIN_ID", str(domain))
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_LOCALHOST_ONLY", "1")
    return domain


@pytest.fixture
def rclpy_context(ros_domain: int) -> Iterator[object]:
    """An initialised rclpy Context on the test's own domain, shut down afterwards."""
    rclpy = pytest.importorskip("rclpy")
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain)
    try:
        yield context
    finally:
        context.try_shutdown()
