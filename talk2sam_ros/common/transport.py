"""The Fast DDS profile for camera images, and counting frames the transport lost.

docs/transport.md explains both: which profile, why, and how to enable it. Pure helpers (no
rclpy): the launch file, the demo, the tests and talk2sam-transport-bench share them.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from talk2sam_ros.common.resources import find_config

PROFILE_FILE = "fastdds_images.xml"  # in config/
# Fast DDS 3 (Kilted and later) reads the first variable, Fast DDS 2 (Humble, Jazzy) the
# second. Only one is set: Kilted's rmw_fastrtps also reads the old one, but logs a
# deprecation warning in every process that has it.
PROFILE_ENV_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")  # $ROS_DISTRO of apt installs; unset on PyPI


def images_profile() -> Path:
    """config/fastdds_images.xml, wherever the package is installed."""
    return find_config(PROFILE_FILE)


def profile_variable(env: Mapping[str, str] | None = None) -> str:
    """The variable this ROS distribution's Fast DDS reads (by $ROS_DISTRO in `env`)."""
    distro = (os.environ if env is None else env).get("ROS_DISTRO", "").lower()
    return PROFILE_ENV_VARS[1] if distro in FAST_DDS_2_DISTROS else PROFILE_ENV_VARS[0]


def profile_variables(profile: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that makes Fast DDS load `profile`: {variable: absolute path}."""
    return {profile_variable(env): str(Path(profile).resolve())}


def chosen_profile(env: Mapping[str, str] | None = None) -> Path:
    """The profile a user already set in `env` (default: os.environ), else the shipped one."""
    env = os.environ if env is None else env
    own = next((env[v] for v in PROFILE_ENV_VARS if env.get(v)), None)
    return Path(own) if own else images_profile()


def profile_environment(profile: Path | None,
                        base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of `base` (default: os.environ) with the Fast DDS profile variables set to
    `profile`, or removed for None (Fast DDS defaults). Fast DDS reads them once, when a
    process creates its first participant, so they belong in a child process's environment
    (or in os.environ before rclpy.init)."""
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if k not in PROFILE_ENV_VARS}
    return env if profile is None else {**env, **profile_variables(profile, base)}


class SequenceGaps:
    """Frames a subscriber never got, from the publishers' sequence numbers.

    Feed every received message's publisher id and publication sequence number (rclpy's
    MessageInfo: ``publisher_gid``, ``publication_sequence_number``); `missing` is the number
    skipped between consecutive messages of each publisher: lost on the wire or overwritten
    in the subscriber's queue. Frames before a publisher's first received message and after
    its last one are invisible this way; a publisher that restarts starts a new count.
    """

    def __init__(self) -> None:
        self.missing = 0
        self._last: dict[str, int] = {}

    def add(self, publisher: str, sequence: int) -> int:
        """Record one message; returns how many of this publisher's frames it skipped."""
        last = self._last.get(publisher)
        self._last[publisher] = sequence if last is None else max(last, sequence)
        skipped = 0 if last is None or sequence <= last else sequence - last - 1
        self.missing += skipped
        return skipped

    @property
    def publishers(self) -> int:
        return len(self._last)
