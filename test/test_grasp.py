"""Grasp point from a thin-object mask, on synthetic lines and curves with known geometry."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from talk2sam_ros.grasp.pixel import (Grasp, GraspConfig, grasp_from_mask, largest_component,
                                      longest_path)


def _bar(shape, rows, cols) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = True
    return mask


def _angle_diff(a: float, b: float) -> float:
    """Difference of two undirected line angles, in [0, pi/2]."""
    d = abs(a - b) % math.pi
    return min(d, math.pi - d)


def test_straight_bar_is_grasped_in_the_middle_across_its_width():
    mask = _bar((100, 120), (48, 53), (10, 111))  # 5 px wide, x 10..110
    g = grasp_from_mask(mask)
    assert g.valid and g.reason == ""
    assert abs(g.point[0] - 60) <= 2 and g.point[1] == 50
    assert g.width_px == pytest.approx(5.0)
    assert _angle_diff(g.angle, 0.0) < 0.05
    xs, ys = g.centerline[:, 0], g.centerline[:, 1]
    assert np.all(np.abs(ys - 50) <= 2)  # skeleton ends may bend into the bar's corners
    assert np.all(np.diff(xs) > 0) or np.all(np.diff(xs) < 0)
    assert g.length_px > 90 and mask[int(g.point[1]), int(g.point[0])]


def test_vertical_and_diagonal_lines_report_their_direction():
    g = grasp_from_mask(_bar((120, 60), (10, 110), (28, 31)))
    assert g.valid and _angle_diff(g.angle, math.pi / 2) < 0.05
    assert -math.pi / 2 <= g.angle < math.pi / 2
    assert g.width_px == pytest.approx(3.0)
    diagonal = np.zeros((120, 120), np.uint8)
    cv2.line(diagonal, (10, 10), (100, 100), 1, 3)
    g = grasp_from_mask(diagonal > 0)
    assert g.valid and _angle_diff(g.angle, math.pi / 4) < 0.1
    assert abs(g.point[0] - 55) < 6 and abs(g.point[0] - g.point[1]) <= 2


def test_wider_part_wins_but_not_at_the_width_step():
    # 3 px wide on x 10..100, 9 px wide on x 100..190: the wide half is easier to hold.
    mask = _bar((100, 200), (49, 52), (10, 101)) | _bar((100, 200), (46, 55), (100, 191))
    g = grasp_from_mask(mask)
    assert g.valid and g.width_px == pytest.approx(9.0)
    assert 110 < g.point[0] < 160  # inside the wide part, clear of the step and the end margin


def test_end_margin_keeps_the_point_away_from_the_ends():
    # The widest spot is near one end; the margin forbids grasping there.
    mask = _bar((60, 200), (28, 33), (10, 191)) | _bar((60, 200), (24, 37), (12, 24))
    g = grasp_from_mask(mask, GraspConfig(end_margin=0.25))
    assert g.valid
    s_from_end = min(g.point[0] - 10, 190 - g.point[0])
    assert s_from_end >= 0.25 * g.length_px - 2


def test_crossing_is_avoided():
    cross = np.zeros((160, 160), np.uint8)
    cv2.line(cross, (10, 10), (150, 150), 1, 5)
    cv2.line(cross, (10, 150), (150, 10), 1, 5)
    g = grasp_from_mask(cross > 0)
    assert g.valid
    assert math.hypot(g.point[0] - 80, g.point[1] - 80) > 2 * g.width_px + 2


def test_sine_curve_centreline_is_ordered_and_on_the_object():
    x = np.arange(10, 300)
    y = np.round(60 + 40 * np.sin(x / 30)).astype(np.int32)
    mask = np.zeros((130, 320), np.uint8)
    cv2.polylines(mask, [np.stack([x, y], 1).reshape(-1, 1, 2)], False, 1, 4)
    g = grasp_from_mask(mask > 0, GraspConfig(max_points=50))
    assert g.valid and 2 <= len(g.centerline) <= 50
    steps = np.linalg.norm(np.diff(g.centerline, axis=0), axis=1)
    assert steps.max() < 4 * g.length_px / len(g.centerline)  # ordered, no jumps
    cols, rows = np.round(g.centerline).astype(int).T
    assert mask[rows, cols].all()
    assert g.length_px > 290  # longer than the chord: follows the curve
    # the tangent at the point matches the curve's slope there
    slope = math.atan(40 / 30 * math.cos(g.point[0] / 30))
    assert _angle_diff(g.angle, slope) < 0.3


def test_largest_component_is_used():
    mask = _bar((100, 200), (10, 13), (10, 40)) | _bar((100, 200), (60, 65), (20, 180))
    assert largest_component(mask).sum() == 5 * 160
    g = grasp_from_mask(mask)
    assert g.valid and 60 <= g.point[1] < 65


def test_loop_without_ends_is_handled():
    ring = np.zeros((120, 120), np.uint8)
    cv2.circle(ring, (60, 60), 40, 1, 5)
    g = grasp_from_mask(ring > 0)
    assert g.valid and abs(math.hypot(g.point[0] - 60, g.point[1] - 60) - 40) < 3


@pytest.mark.parametrize("mask, reason", [
    (np.zeros((20, 20), bool), "empty mask"),
    (_bar((20, 20), (5, 8), (5, 8)), "min_length_px"),
    (_bar((20, 20), (5, 6), (5, 6)), "shorter than 2 px"),
])
def test_unusable_masks_are_invalid_with_a_reason(mask, reason):
    g = grasp_from_mask(mask)
    assert isinstance(g, Grasp) and not g.valid and reason in g.reason


def test_longest_path_on_a_plain_skeleton():
    skel = np.zeros((5, 9), bool)
    skel[2, 1:8] = True
    skel[0:2, 4] = True  # short branch
    path = longest_path(skel)
    assert {tuple(path[0]), tuple(path[-1])} == {(2, 1), (2, 7)}
    assert len(path) == 7  # the branch is not on it


def test_config_is_checked():
    with pytest.raises(ValueError, match="end_margin"):
        GraspConfig(end_margin=0.5)
    with pytest.raises(ValueError):
        GraspConfig(max_points=1)
