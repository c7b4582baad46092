"""Depth/camera_info pairing by stamp (talk2sam_ros.grasp.pairing), in many arrival orders."""
from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from talk2sam_ros.grasp import status as st
from talk2sam_ros.grasp.pairing import DepthPairing, StampBuffer, stamp_ns

MS = 1_000_000
T0 = stamp_ns(1_700_000_000, 500_000_000)


def _pairing(max_dt_ms: float = 20.0, capacity: int = 8) -> DepthPairing:
    return DepthPairing(int(max_dt_ms * MS), capacity)


def test_stamp_ns():
    assert stamp_ns(2, 5) == 2_000_000_005
    assert stamp_ns(0, 0) == 0


def test_each_colour_frame_gets_the_depth_of_its_own_stamp():
    p = _pairing()
    for i in range(5):  # a 30 Hz camera: depth and camera_info with the colour stamp
        p.add_depth(T0 + 33 * i * MS, f"depth{i}")
        p.add_camera_info(T0 + 33 * i * MS, f"info{i}")
    for i in range(5):
        m = p.match(T0 + 33 * i * MS)
        assert m.ok and m.status == st.OK and m.reason == ""
        assert (m.depth, m.camera_info) == (f"depth{i}", f"info{i}")
        assert m.depth_dt_ns == 0 and m.camera_info_dt_ns == 0
    # a depth stamped 5 ms after the frame still pairs (drivers stamp each sensor)
    m = p.match(T0 + 33 * 2 * MS + 5 * MS)
    assert m.ok and m.depth == "depth2" and m.depth_dt_ns == -5 * MS


def test_a_depth_frame_of_another_stamp_is_not_used():
    p = _pairing(max_dt_ms=10)
    p.add_depth(T0 + 100 * MS, "later")
    p.add_camera_info(T0, "info")
    m = p.match(T0)
    assert m.status == st.DEPTH_STALE and m.depth is None and not m.ok
    assert "100.0 ms newer than the image" in m.reason and "depth_max_dt_ms 10.0 ms" in m.reason
    p.add_depth(T0 - 250 * MS, "earlier")
    m = p.match(T0)
    assert m.status == st.DEPTH_STALE and "100.0 ms newer" in m.reason
    m = p.match(T0 - 240 * MS)
    assert m.status == st.CAMERA_INFO_STALE and "240.0 ms newer" in m.reason
    p.add_depth(T0 + 3 * MS, "right")
    assert p.match(T0).depth == "right"
    m = p.match(T0 - 300 * MS)
    assert m.status == st.DEPTH_STALE and "50.0 ms newer" in m.reason
    m = p.match(T0 + 200 * MS)
    assert m.status == st.DEPTH_STALE and "100.0 ms older" in m.reason


def test_depth_without_camera_info_and_the_reverse():
    p = _pairing()
    m = p.match(T0)
    assert m.status == st.NO_DEPTH and "no depth frame and no camera_info" in m.reason
    p.add_depth(T0, "d")
    p.add_depth(T0 + MS, "d2")
    m = p.match(T0)
    assert m.status == st.NO_CAMERA_INFO
    assert m.reason == "depth frames arrive (2 so far) but no camera_info has been received"
    q = _pairing()
    q.add_camera_info(T0, "i")
    m = q.match(T0)
    assert m.status == st.NO_DEPTH
    assert m.reason == "camera_info arrives (1 so far) but no depth frame has been received"
    assert p.received == (2, 0) and q.received == (0, 1)


def test_buffers_are_bounded_and_forget_the_oldest():
    p = _pairing(max_dt_ms=1, capacity=3)
    for i in range(10):
        p.add_depth(T0 + 10 * i * MS, i)
        p.add_camera_info(T0 + 10 * i * MS, i)
    assert p.match(T0 + 90 * MS).depth == 9 and p.match(T0 + 70 * MS).depth == 7
    m = p.match(T0 + 60 * MS)  # evicted: the nearest kept is 10 ms away
    assert m.status == st.DEPTH_STALE and "10.0 ms newer" in m.reason
    assert p.received == (10, 10)


def test_ties_and_exact_matching():
    p = DepthPairing(0, 4)
    p.add_depth(T0, "first")
    p.add_camera_info(T0, "info")
    p.add_depth(T0, "resent")  # a driver re-publishing the same stamp: the newer one wins
    assert p.match(T0).depth == "resent"
    assert p.match(T0 + 1).status == st.DEPTH_STALE  # max_dt 0 = the exact stamp only
    b = StampBuffer(2)
    b.add(10, "a")
    b.add(20, "b")
    assert b.nearest(15) == (5, "b") and b.nearest(0) == (10, "a") and len(b) == 2
    assert StampBuffer(1).nearest(0) is None


def test_arrival_order_does_not_change_the_pairing():
    """Depth, camera_info and colour stamps interleaved in every order (bounded: 6! orders
    of 3 depth + 3 info messages) give the same pairs, since only stamps count."""
    stamps = [T0, T0 + 33 * MS, T0 + 66 * MS]
    events = [("depth", s) for s in stamps] + [("info", s + 2 * MS) for s in stamps]
    expected = None
    for order in itertools.permutations(events):
        p = _pairing(max_dt_ms=5)
        for kind, stamp in order:
            (p.add_depth if kind == "depth" else p.add_camera_info)(stamp, (kind, stamp))
        got = [(m.status, m.depth, m.camera_info) for m in map(p.match, stamps)]
        expected = expected or got
        assert got == expected
    assert all(status == st.OK for status, _, _ in expected)
    assert [d[1] for _, d, _ in expected] == stamps


def test_random_streams_match_the_brute_force_nearest():
    rng = np.random.default_rng(7)
    for trial in range(30):
        p = _pairing(max_dt_ms=15, capacity=5)
        depth_stamps = list(T0 + rng.integers(0, 500, 12) * MS)
        info_stamps = list(T0 + rng.integers(0, 500, 12) * MS)
        for s in depth_stamps:
            p.add_depth(int(s), int(s))
        for s in info_stamps:
            p.add_camera_info(int(s), int(s))
        colour = int(T0 + rng.integers(0, 500) * MS)
        kept = depth_stamps[-5:]
        best = min(kept[::-1], key=lambda s: abs(s - colour))  # ties: the newer
        m = p.match(colour)
        if abs(best - colour) > 15 * MS:
            assert m.status == st.DEPTH_STALE, trial
        else:
            info_best = min(info_stamps[-5:][::-1], key=lambda s: abs(s - colour))
            ok = abs(info_best - colour) <= 15 * MS
            assert m.status == (st.OK if ok else st.CAMERA_INFO_STALE), trial
            assert m.depth_dt_ns == best - colour
            assert not ok or m.depth == best


def test_threads_add_while_another_matches():
    p = _pairing(capacity=4)

    def publish(add, count: int) -> None:
        for i in range(count):
            add(T0 + i * MS, i)

    threads = [threading.Thread(target=publish, args=(p.add_depth, 2000)),
               threading.Thread(target=publish, args=(p.add_camera_info, 2000))]
    for t in threads:
        t.start()
    results = []
    for _ in range(200):
        results.append(p.match(T0 + 1999 * MS).status)
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert p.received == (2000, 2000) and p.match(T0 + 1999 * MS).depth == 1999
    assert set(results) <= {st.OK, st.NO_DEPTH, st.NO_CAMERA_INFO, st.DEPTH_STALE,
                            st.CAMERA_INFO_STALE}


def test_clear_forgets_and_arguments_are_checked():
    p = _pairing()
    p.add_depth(T0, 1)
    p.add_camera_info(T0, 1)
    p.clear()
    assert p.match(T0).status == st.NO_DEPTH and p.received == (0, 0)
    with pytest.raises(ValueError, match="max_dt_ns"):
        DepthPairing(-1)
    with pytest.raises(ValueError, match="capacity"):
        DepthPairing(0, 0)


def test_camera_info_can_have_its_own_tolerance():
    """A driver or bag that publishes camera_info once a second (or once): with a large
    info_max_dt_ns the nearest camera_info is used, while depth stays strict."""
    p = DepthPairing(10 * MS, 8, info_max_dt_ns=10_000 * MS)
    p.add_camera_info(T0 - 900 * MS, "info")
    p.add_depth(T0 + 2 * MS, "depth")
    m = p.match(T0)
    assert m.ok and m.camera_info == "info" and m.camera_info_dt_ns == -900 * MS
    assert p.match(T0 + 50 * MS).status == st.DEPTH_STALE  # depth: still 10 ms
    strict = _pairing(max_dt_ms=10)
    strict.add_camera_info(T0 - 900 * MS, "info")
    strict.add_depth(T0 + 2 * MS, "depth")
    assert strict.match(T0).status == st.CAMERA_INFO_STALE
    p.info_max_dt_ns = 500 * MS  # a live change applies to the next match
    m = p.match(T0)
    assert m.status == st.CAMERA_INFO_STALE
    assert "900.0 ms older than the image (limit 500.0 ms)" in m.reason
    with pytest.raises(ValueError, match="info_max_dt_ns"):
        DepthPairing(0, 8, info_max_dt_ns=-1)
