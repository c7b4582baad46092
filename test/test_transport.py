"""talk2sam-transport-bench and the shipped Fast DDS profile (docs/transport.md).

The counting helpers on known inputs, then short real runs: a publisher and a subscriber
process exchanging numbered rgb8 frames over DDS on this host. No rates are asserted (those
are the benchmark's figures); what is checked is that every frame is accounted for, that the
publishers' sequence numbers show the same holes as the frame numbers, and that the profile
really is what Fast DDS loaded (the size of each process's shared-memory segment).
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from talk2sam_ros.common.transport import (PROFILE_ENV_VARS, SequenceGaps, chosen_profile,
                                           images_profile, profile_environment)
from talk2sam_ros.tools import transport as tb

NS = {"f": "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"}


def segment_size(profile: Path) -> int:
    """The SHM segment size a profile declares."""
    sizes = ET.parse(profile).getroot().findall(".//f:transport_descriptor/f:segment_size", NS)
    assert len(sizes) == 1, f"{profile} declares {len(sizes)} SHM segment sizes"
    return int(sizes[0].text)


# ----------------------------------------------------------------------------- pure helpers


def test_sequence_gaps_per_publisher():
    gaps = SequenceGaps()
    # two publishers interleaved: a skips 3 and 4, b skips 11; a late duplicate of a's 2
    got = [gaps.add(p, s) for p, s in [("a", 1), ("b", 10), ("a", 2), ("a", 5), ("b", 12),
                                      ("a", 2), ("b", 13)]]
    assert got == [0, 0, 0, 2, 1, 0, 0]
    assert (gaps.missing, gaps.publishers) == (3, 2)


def test_sequence_gaps_new_publisher_starts_fresh():
    gaps = SequenceGaps()
    gaps.add("camera", 40)
    assert gaps.add("camera-restarted", 1) == 0  # a new writer id, not a hole of 39
    assert gaps.missing == 0


def test_count_frames():
    counts = tb.count_frames([0, 2, 2, 5, 6], sent=9)
    assert (counts.sent, counts.received, counts.missing, counts.duplicates) == (9, 4, 5, 1)
    assert counts.inner_missing == 3  # 1, 3, 4 between frames 0 and 6
    assert counts.first_missing == (1, 3, 4, 7, 8)
    assert tb.count_frames([], sent=3).missing == 3


def test_summary_table_adds_up_repeats():
    row = {"profile": "none", "profile_on": "both", "reliability": "best_effort", "depth": 5}
    rows = [{**row, "size": "640x480", "received": 3, "sent": 100, "received_pct": 3.0},
            {**row, "size": "640x480", "received": 5, "sent": 100, "received_pct": 5.0},
            {**row, "size": "1280x720", "error": "subscriber did not start"}]
    lines = tb.summary_table(rows).splitlines()
    assert lines[0] == "| profile | loaded by | reliability | depth | 640x480 | 1280x720 |"
    assert lines[2] == "| none | both | best_effort | 5 | 4.0 % (8/200; worst run 3 %) | error |"


def test_profile_environment_sets_the_distros_variable_only():
    base = {"PATH": "/bin", PROFILE_ENV_VARS[1]: "/old.xml"}
    env = profile_environment(Path("config/x.xml"), base)
    assert env == {"PATH": "/bin", PROFILE_ENV_VARS[0]: str(Path("config/x.xml").resolve())}
    assert base[PROFILE_ENV_VARS[1]] == "/old.xml"  # a copy
    jazzy = profile_environment(Path("/p.xml"), {"ROS_DISTRO": "jazzy"})
    assert jazzy == {"ROS_DISTRO": "jazzy", PROFILE_ENV_VARS[1]: "/p.xml"}
    assert profile_environment(None, base) == {"PATH": "/bin"}


def test_chosen_profile_keeps_the_users_own():
    assert chosen_profile({}) == images_profile()
    assert chosen_profile({PROFILE_ENV_VARS[0]: ""}) == images_profile()
    assert chosen_profile({PROFILE_ENV_VARS[1]: "/etc/mine.xml"}) == Path("/etc/mine.xml")


def test_shipped_profile_is_installed_and_well_formed():
    profile = images_profile()
    assert profile.is_file(), profile
    root = ET.parse(profile).getroot()
    participant = root.find("f:participant", NS)
    assert participant is not None and participant.get("is_default_profile") == "true"
    declared = {t.findtext("f:transport_id", namespaces=NS)
                for t in root.iterfind(".//f:transport_descriptor", NS)}
    used = {t.text for t in participant.iterfind("f:rtps/f:userTransports/f:transport_id", NS)}
    assert used == declared and len(used) == 2
    assert participant.findtext("f:rtps/f:useBuiltinTransports", namespaces=NS) == "false"
    assert segment_size(profile) >= 4 * 1280 * 720 * 3  # several 720p rgb8 frames


@pytest.mark.parametrize("name", list(tb.STUDY))
def test_study_variants_are_well_formed(name, tmp_path):
    profile = tb.resolve_profiles([name], tmp_path)[name]
    root = ET.parse(profile.path).getroot()
    ids = [t.text for t in root.iterfind(".//f:userTransports/f:transport_id", NS)]
    assert ids and len(ids) == len(root.findall(".//f:transport_descriptor", NS))


def test_cli_refuses_an_unknown_profile_in_one_line(tmp_path, capsys):
    rc = tb.main(["--profile", str(tmp_path / "missing.xml"), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith(f"{tb.PROG}: error: "), err


# ----------------------------------------------------------------------------- real DDS runs


def run_case(tmp_path: Path, profile: str, **case) -> dict:
    profiles = tb.resolve_profiles([profile], tmp_path)
    row = tb.measure(tb.Case(profile=profile, **case), profiles[profile], tmp_path,
                     timeout_s=60.0, base_env=os.environ)
    assert "error" not in row, row
    return row


def check_accounting(row: dict, sent: int) -> None:
    assert row["sent"] == sent and row["duplicates"] == 0, row
    assert 0 <= row["received"] <= sent and row["received"] + row["missing"] == sent, row
    # the writer's sequence numbers (what the node can see) have the frame numbers' holes
    assert row["seq_gaps"] == row["inner_missing"], row
    assert row["publishers"] == (1 if row["received"] else 0), row


def test_shipped_profile_over_dds(tmp_path):
    """Both processes load the shipped profile: every frame is accounted for, and each
    process's own shared-memory mapping is the profile's segment, not Fast DDS's 512 KiB."""
    row = run_case(tmp_path, "shipped", width=640, height=480, frames=20)
    check_accounting(row, 20)
    size = segment_size(images_profile())
    assert row["shm_segment_bytes"] >= size and row["pub_shm_segment_bytes"] >= size, row


def test_fastdds_defaults_over_dds(tmp_path):
    """Without the profile (the set-up that loses best-effort frames): the same accounting
    holds whatever got lost, and the segment is Fast DDS's default, smaller than the
    profile's (so the check above tells the two apart)."""
    row = run_case(tmp_path, "none", width=1280, height=720, frames=20)
    check_accounting(row, 20)
    assert 0 < row["shm_segment_bytes"] < segment_size(images_profile()), row


def test_profile_on_the_publisher_only(tmp_path):
    """Only the process that loads the profile gets its segment (the docs' advice that the
    camera driver needs it rests on this)."""
    row = run_case(tmp_path, "shipped", width=640, height=480, frames=10,
                   reliability="reliable", profile_on="publisher")
    check_accounting(row, 10)
    size = segment_size(images_profile())
    assert row["pub_shm_segment_bytes"] >= size > row["shm_segment_bytes"], row


def test_processes_the_harness_starts_load_the_image_profile(monkeypatch, tmp_path):
    """The demo, the benchmark and the node tests start the node through the harness: its
    environment carries the shipped profile, or the user's own where one is set."""
    from talk2sam_ros.common.transport import PROFILE_ENV_VARS, images_profile
    from talk2sam_ros.tools.harness import loopback_environment

    for name in PROFILE_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ROS_DISTRO", raising=False)
    env = loopback_environment(7)
    assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(images_profile().resolve())
    assert images_profile().is_file()
    own = tmp_path / "mine.xml"
    own.write_text("<profiles/>")
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", str(own))
    assert loopback_environment(7)["FASTDDS_DEFAULT_PROFILES_FILE"] == str(own.resolve())
