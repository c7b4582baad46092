"""Similarity colour maps and overlays: sizes, blending limits, who wins where masks overlap."""
from __future__ import annotations

import numpy as np
import pytest

from talk2sam_ros.common.visualize import (PALETTE, blend_similarity, colormap, draw_overlay,
                                    label_image)

RGB = np.random.default_rng(3).integers(0, 256, (60, 80, 3), dtype=np.uint8)


def test_colormap_orders_low_to_high_and_ignores_nan():
    ramp = np.linspace(0, 1, 80, dtype=np.float32)[None].repeat(60, 0)
    ramp[0, 0] = np.nan
    colours = colormap(ramp)
    assert colours.shape == (60, 80, 3) and colours.dtype == np.uint8
    np.testing.assert_array_equal(colours[0, 0], colours[1, 0])  # NaN drawn as the low end
    assert not np.array_equal(colours[5, 0], colours[5, -1])


def test_blend_limits_and_size_check():
    sim = np.random.default_rng(0).random((60, 80)).astype(np.float32)
    np.testing.assert_array_equal(blend_similarity(RGB, sim, alpha=0.0), RGB)
    np.testing.assert_array_equal(blend_similarity(RGB, sim, alpha=1.0), colormap(sim))
    with pytest.raises(ValueError, match="differ in size"):
        blend_similarity(RGB, sim[:10], 0.5)


def test_label_image_higher_score_wins_overlaps():
    masks = np.zeros((3, 4, 4), bool)
    masks[0, :2] = True
    masks[1, 1:3] = True
    masks[2, 3, 3] = True
    labels = label_image(masks, scores=[0.9, 0.2, 0.5])
    assert labels[1, 0] == 1  # box 0 (score 0.9) beats box 1 (0.2) on row 1
    assert labels[2, 0] == 2 and labels[3, 3] == 3 and labels[3, 0] == 0
    assert label_image(masks)[1, 0] == 2  # without scores the later mask wins


def test_overlay_tints_only_the_mask_and_keeps_the_input():
    original = RGB.copy()
    masks = np.zeros((1, 60, 80), bool)
    masks[0, 30:50, 40:70] = True
    out = draw_overlay(RGB, masks, boxes=None, text="", alpha=1.0)
    np.testing.assert_array_equal(RGB, original)
    assert np.all(out[masks[0]] == PALETTE[0])
    np.testing.assert_array_equal(out[~masks[0]], RGB[~masks[0]])


def test_overlay_draws_boxes_text_and_grasp_without_failing_on_unicode():
    masks = np.zeros((2, 60, 80), bool)
    out = draw_overlay(RGB, masks, boxes=np.array([[5, 5, 30, 40], [-10, 50, 200, 90.5]]),
                       text="провод 🔌", scores=[0.5, 0.25],
                       centerline=np.array([[10, 10], [20, 30], [40, 50]], np.float32),
                       grasp_point=(20.0, 30.0))
    assert out.shape == RGB.shape and out.dtype == np.uint8
    assert np.any(out[5, 10:30] != RGB[5, 10:30])  # top edge of box 0
