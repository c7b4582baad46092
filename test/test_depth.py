"""Depth decoding, validity, resizing, camera checks, undistortion and deprojection
(talk2sam_ros.grasp.depth): every bad input gets one clear reason line."""
from __future__ import annotations

import numpy as np
import pytest

from talk2sam_ros.grasp import depth as gd
from talk2sam_ros.grasp import status as st

K = [500.0, 0.0, 320.0, 0.0, 505.0, 240.0, 0.0, 0.0, 1.0]
DISTORTIONS = {
    "plumb_bob": [-0.28, 0.09, 0.001, -0.0007, -0.01],
    "rational_polynomial": [0.5, -0.1, 0.0005, 0.0003, 0.01, 0.8, 0.0, 0.02],
    "equidistant": [0.05, -0.02, 0.004, -0.001],
}


def _decode(array: np.ndarray, encoding: str, min_m: float = 0.1, max_m: float = 10.0,
            pad: int = 0, bigendian: bool = False) -> np.ndarray:
    a = np.ascontiguousarray(array.astype(array.dtype.newbyteorder(">" if bigendian else "<")))
    rows = a.view(np.uint8).reshape(a.shape[0], -1)
    data = np.pad(rows, ((0, 0), (0, pad))).tobytes()
    return gd.decode_depth(encoding, a.shape[1], a.shape[0], rows.shape[1] + pad, bigendian,
                           data, min_m, max_m)


def test_16uc1_is_millimetres_and_zero_is_no_reading():
    mm = np.array([[0, 50, 100, 1234], [9999, 10000, 10001, 65535]], np.uint16)
    depth = _decode(mm, "16UC1")
    assert depth.dtype == np.float32
    expected = np.array([[np.nan, np.nan, 0.1, 1.234], [9.999, 10.0, np.nan, np.nan]])
    np.testing.assert_allclose(depth, expected, rtol=1e-6)


def test_32fc1_nan_inf_negative_and_out_of_range_are_invalid():
    m = np.array([[np.nan, np.inf, -np.inf, -0.5], [0.0, 0.05, 0.5, 11.0]], np.float32)
    depth = _decode(m, "32FC1")
    assert np.isnan(depth).sum() == 7 and depth[1, 2] == pytest.approx(0.5)


@pytest.mark.parametrize("encoding, dtype", [("16UC1", np.uint16), ("32FC1", np.float32)])
def test_padded_step_and_big_endian_decode_the_same(encoding, dtype):
    rng = np.random.default_rng(0)
    values = rng.uniform(200, 3000, (7, 5))
    array = values.astype(dtype) if encoding == "16UC1" else (values / 1000).astype(dtype)
    plain = _decode(array, encoding)
    np.testing.assert_array_equal(_decode(array, encoding, pad=8), plain)
    np.testing.assert_array_equal(_decode(array, encoding, bigendian=True), plain)
    np.testing.assert_allclose(plain, values / 1000 if encoding == "32FC1" else
                               np.floor(values) / 1000, rtol=1e-6)


@pytest.mark.parametrize("fields, phrase", [
    (("rgb8", 4, 3, 12, 36), "encoding 'rgb8' is not supported"),
    (("mono16", 4, 3, 8, 24), "16UC1 millimetres or 32FC1 metres"),
    (("16UC1", 0, 3, 0, 0), "empty depth image (0x3)"),
    (("32FC1", 4, 0, 16, 0), "empty depth image (4x0)"),
    (("16UC1", 20000, 1, 40000, 40000), "exceeds 16384"),
    (("16UC1", 4, 3, 6, 18), "step 6 < width*bytes 8"),
    (("32FC1", 4, 3, 18, 54), "not a multiple of 4 bytes"),
    (("16UC1", 4, 3, 8, 23), "23 bytes, expected step*height = 24"),
])
def test_malformed_depth_fields_are_rejected_with_a_reason(fields, phrase):
    reason = gd.check_depth_fields(*fields)
    assert phrase in reason and "\n" not in reason
    encoding, width, height, step, length = fields
    with pytest.raises(gd.DepthInputError, match="depth") as info:
        gd.decode_depth(encoding, width, height, step, False, bytes(length), 0.1, 5.0)
    assert info.value.status == st.BAD_DEPTH and phrase in str(info.value)


def test_well_formed_fields_pass():
    assert gd.check_depth_fields("16UC1", 4, 3, 8, 24) == ""
    assert gd.check_depth_fields("32FC1", 4, 3, 20, 60) == ""   # padded rows


def test_all_invalid_depth_is_rejected():
    with pytest.raises(gd.DepthInputError, match="no valid reading") as info:
        _decode(np.zeros((4, 4), np.uint16), "16UC1")
    assert info.value.status == st.BAD_DEPTH
    with pytest.raises(gd.DepthInputError, match=r"valid range \[0.1, 2\] m"):
        _decode(np.full((4, 4), 3.0, np.float32), "32FC1", max_m=2.0)
    assert "no valid reading" in gd.check_depth_values(np.full((2, 2), np.nan, np.float32))
    assert gd.check_depth_values(np.array([[np.nan, 1.0]], np.float32)) == ""


@pytest.mark.parametrize("low, high", [(0.5, 0.5), (-1.0, 2.0), (0.1, float("inf")),
                                       (float("nan"), 1.0)])
def test_bad_depth_range_is_rejected(low, high):
    assert "depth range" in gd.check_depth_range(low, high)
    with pytest.raises(gd.DepthInputError, match="depth range"):
        _decode(np.ones((2, 2), np.float32), "32FC1", low, high)


def test_encode_depth_round_trips():
    m = np.array([[0.5, np.nan], [1.2345, 7.0]], np.float32)
    mm = gd.encode_depth(m, "16UC1")
    np.testing.assert_array_equal(mm, [[500, 0], [1234, 7000]])
    np.testing.assert_allclose(_decode(mm, "16UC1"), [[0.5, np.nan], [1.234, 7.0]], rtol=1e-6)
    np.testing.assert_array_equal(_decode(gd.encode_depth(m, "32FC1"), "32FC1"), m)
    with pytest.raises(gd.DepthInputError, match="not supported"):
        gd.encode_depth(m, "mono8")


def test_depth_of_the_same_aspect_ratio_is_resized_nearest():
    rng = np.random.default_rng(1)
    small = rng.uniform(0.3, 2.0, (240, 320)).astype(np.float32)
    small[rng.random(small.shape) < 0.2] = np.nan
    big = gd.match_depth_to_image(small, 640, 480)
    assert big.shape == (480, 640)
    yy, xx = np.mgrid[0:480, 0:640]
    np.testing.assert_array_equal(big, small[yy // 2, xx // 2])  # no value invented
    assert gd.match_depth_to_image(small, 320, 240) is small
    assert gd.check_depth_size(1280, 720, 640, 360) == ""
    assert gd.check_depth_size(848, 480, 424, 240) == ""


@pytest.mark.parametrize("depth_size, image_size", [((640, 400), (640, 480)),
                                                    ((480, 640), (640, 480)),
                                                    ((0, 480), (640, 480))])
def test_depth_of_another_aspect_ratio_is_rejected(depth_size, image_size):
    reason = gd.check_depth_size(*depth_size, *image_size)
    assert reason and f"{image_size[0]}x{image_size[1]}" in reason
    if depth_size[0]:
        with pytest.raises(gd.DepthInputError, match="aspect ratio"):
            gd.match_depth_to_image(np.ones(depth_size[::-1], np.float32), *image_size)


@pytest.mark.parametrize("k, d, model, phrase", [
    ([0.0] * 9, [], "plumb_bob", "not calibrated"),
    ([500, 0, 320, 0, float("nan"), 240, 0, 0, 1], [], "plumb_bob", "K contains NaN"),
    ([-500, 0, 320, 0, 500, 240, 0, 0, 1], [], "plumb_bob", "fx=-500"),
    ([500, 0, 320, 0, 500, 240, 0, 0, 0], [], "plumb_bob", "bottom row"),
    ([500, 0, 320, 0, 500], [], "plumb_bob", "K has 5 values"),
    ([500, 0, 9000, 0, 500, 240, 0, 0, 1], [], "plumb_bob", "principal point"),
    (K, [0.1, float("nan"), 0, 0, 0], "plumb_bob", "D contains NaN"),
    (K, [0.1, 0.0, 0.0], "plumb_bob", "D has 3 coefficients"),
    (K, [0.1] * 5, "kannala_brandt_9", "not supported"),
])
def test_bad_camera_info_is_rejected_with_a_reason(k, d, model, phrase):
    reason = gd.check_camera_fields(640, 480, k, d, model)
    assert phrase in reason and "\n" not in reason
    with pytest.raises(gd.DepthInputError) as info:
        gd.camera_from_fields(640, 480, k, d, model)
    assert info.value.status == st.BAD_CAMERA_INFO and phrase in str(info.value)


def test_camera_of_another_size_is_rejected():
    camera = gd.camera_from_fields(640, 480, K, [], "plumb_bob")
    assert gd.check_camera_matches(camera, 640, 480) == ""
    assert "640x480 but the image is 1280x720" in gd.check_camera_matches(camera, 1280, 720)
    assert "size 0x480" in gd.check_camera_fields(0, 480, K, [], "plumb_bob")


def test_pinhole_deprojection_is_exact():
    camera = gd.camera_from_fields(640, 480, K, [0.0] * 5, "plumb_bob")
    assert not camera.distorted
    pixels = np.array([[320.0, 240.0], [820.0, 240.0], [0.0, 0.0]])
    points = gd.deproject(camera, pixels, np.array([1.0, 2.0, 0.5]))
    np.testing.assert_allclose(points, [[0, 0, 1], [2.0, 0, 2.0],
                                        [-0.32, -0.5 * 240 / 505, 0.5]])
    np.testing.assert_allclose(gd.project(camera, points), pixels, atol=1e-9)


@pytest.mark.parametrize("model", sorted(DISTORTIONS))
def test_undistortion_inverts_opencv_projection_to_the_corners(model):
    camera = gd.camera_from_fields(640, 480, K, DISTORTIONS[model], model)
    assert camera.distorted
    xs, ys = np.meshgrid(np.linspace(0, 639, 9), np.linspace(0, 479, 7))
    pixels = np.stack([xs.ravel(), ys.ravel()], axis=1)
    z = np.linspace(0.3, 3.0, len(pixels))
    points = gd.deproject(camera, pixels, z)
    np.testing.assert_allclose(points[:, 2], z)
    np.testing.assert_allclose(gd.project(camera, points), pixels, atol=1e-4)
    # and undistortion is not the identity at the corners (the distortion is real)
    pinhole = gd.camera_from_fields(640, 480, K, [], "")
    shift = np.abs(gd.normalized_coordinates(camera, pixels[:1]) -
                   gd.normalized_coordinates(pinhole, pixels[:1])).max() * 500
    assert shift > 2.0


def test_depth_near_is_the_median_of_masked_valid_readings():
    rng = np.random.default_rng(1)
    depth = rng.uniform(0.5, 1.0, (50, 60)).astype(np.float32)
    depth[rng.random(depth.shape) < 0.4] = np.nan
    mask = rng.random(depth.shape) < 0.7
    pixels = np.c_[rng.uniform(0, 59, 300), rng.uniform(0, 49, 300)]
    median, count = gd.depth_near(depth, mask, pixels, 3.3)
    offsets = gd.disk_offsets(3.3)
    assert len(offsets) == 37  # the pixels within 3.3 px
    for (x, y), got, n in zip(np.rint(pixels).astype(int), median, count):
        xs, ys = x + offsets[:, 0], y + offsets[:, 1]
        inside = (xs >= 0) & (xs < 60) & (ys >= 0) & (ys < 50)
        values = depth[ys[inside], xs[inside]][mask[ys[inside], xs[inside]]]
        values = values[np.isfinite(values)]
        assert n == len(values)
        assert (np.isnan(got) and n == 0) or got == pytest.approx(np.median(values))
    none, zero = gd.depth_near(np.full((5, 5), np.nan, np.float32), np.ones((5, 5), bool),
                               np.array([[2.0, 2.0]]), 2.0)
    assert np.isnan(none[0]) and zero[0] == 0


def test_valid_depth_is_the_one_validity_rule():
    d = np.array([np.nan, np.inf, 0.0, 0.2, 0.5, 3.0, 3.1], np.float32)
    np.testing.assert_array_equal(gd.valid_depth(d, 0.2, 3.0),
                                  [False, False, False, True, True, True, False])
