"""Image/prompt message <-> numpy conversions (no running graph)."""
from __future__ import annotations

import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image
from rosutil import REPO
from std_msgs.msg import Header

from talk2sam_ros.ros import conversions as conv

RNG = np.random.default_rng(7)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def bridge():
    return conv.make_bridge()


def _header(sec=12, nsec=34, frame="cam") -> Header:
    h = Header(frame_id=frame)
    h.stamp.sec, h.stamp.nanosec = sec, nsec
    return h


def _raw(array: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    """Image message built by hand (independent of the code under test), `pad` junk bytes/row."""
    array = np.ascontiguousarray(array)
    if bigendian:
        array = array.astype(array.dtype.newbyteorder(">"))
    rows = array.reshape(array.shape[0], -1).view(np.uint8)
    junk = RNG.integers(0, 256, (rows.shape[0], pad), dtype=np.uint8)
    data = np.concatenate([rows, junk], axis=1)
    return Image(height=array.shape[0], width=array.shape[1], encoding=encoding,
                 is_bigendian=int(bigendian), step=data.shape[1], data=data.tobytes())


GREY = cv2.cvtColor(RGB, cv2.COLOR_RGB2GRAY)
EIGHT_BIT = {
    "rgb8": (RGB, RGB),
    "bgr8": (RGB[:, :, ::-1], RGB),
    "rgba8": (np.dstack([RGB, np.full(RGB.shape[:2], 9, np.uint8)]), RGB),
    "bgra8": (np.dstack([RGB[:, :, ::-1], np.full(RGB.shape[:2], 9, np.uint8)]), RGB),
    "mono8": (GREY, np.dstack([GREY] * 3)),
}


@pytest.mark.parametrize("encoding", sorted(EIGHT_BIT))
@pytest.mark.parametrize("pad", [0, 3, 64])
def test_eight_bit_encodings_to_rgb_with_and_without_row_padding(bridge, encoding, pad):
    pixels, expected = EIGHT_BIT[encoding]
    msg = _raw(pixels, encoding, pad=pad)
    conv.check_image(msg, bridge)
    out = conv.image_to_rgb(msg, bridge)
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("encoding", ["rgb16", "bgr16", "rgba16", "bgra16", "mono16"])
def test_sixteen_bit_encodings_are_scaled_to_eight_bit(bridge, encoding, bigendian):
    wide = RGB.astype(np.uint16) * 256 + 255  # low byte must not leak into the result
    channels = {"rgb16": wide, "bgr16": wide[:, :, ::-1],
                "rgba16": np.dstack([wide, wide[:, :, :1]]),
                "bgra16": np.dstack([wide[:, :, ::-1], wide[:, :, :1]]),
                "mono16": wide[:, :, 0]}[encoding]
    out = conv.image_to_rgb(_raw(channels, encoding, pad=4, bigendian=bigendian), bridge)
    expected = np.dstack([RGB[:, :, 0]] * 3) if encoding == "mono16" else RGB
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_bridge_reads_16uc_images_as_uint16(bridge, channels):
    assert bridge.encoding_to_dtype_with_channels(f"16UC{channels}") == ("uint16", channels)
    values = np.arange(12 * channels, dtype=np.uint16).reshape(3, 4, channels) * 1000
    values = values[:, :, 0] if channels == 1 else values
    back = bridge.imgmsg_to_cv2(_raw(values, f"16UC{channels}"))
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, values)
    assert bridge.encoding_to_dtype_with_channels("mono8") == ("uint8", 1)  # the rest as is


def test_make_bridge_leaves_cv_bridge_module_state_alone():
    """The fix overrides a public method of our subclass instead of editing cv_bridge's
    private module table (a global every CvBridge in the process would see)."""
    code = ("import cv_bridge; from talk2sam_ros.ros.conversions import make_bridge; "
            "before = cv_bridge.CvBridge().encoding_to_cvtype2('16UC1'); make_bridge(); "
            "print(before == cv_bridge.CvBridge().encoding_to_cvtype2('16UC1'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.stdout.strip() == "True", proc.stderr[-2000:]


def _bad(**changes) -> Image:
    msg = _raw(RGB, "rgb8")
    for key, value in changes.items():
        setattr(msg, key, value)
    return msg


@pytest.mark.parametrize("msg, words", [
    (_bad(encoding="32FC1"), "not supported"),
    (_bad(encoding="yuv422"), "not supported"),
    (_bad(encoding="bayer_rggb8"), "not supported"),
    (_bad(encoding=""), "not supported"),
    (_bad(encoding="RGB8"), "not supported"),
    (_bad(height=0, data=b""), "empty"),
    (_bad(width=0), "empty"),
    (_bad(step=20), "step 20 <"),
    (_bad(step=22), "data has"),
    (_bad(data=bytes(10)), "data has 10 bytes"),
    (_bad(height=20000, width=1, step=3, data=bytes(60000)), "exceeds"),
    (Image(height=2, width=3, encoding="mono16", step=7, data=bytes(14)), "multiple of 2"),
])
def test_malformed_images_are_rejected_with_a_reason(bridge, msg, words):
    with pytest.raises(conv.InputRejected, match=words):
        conv.check_image(msg, bridge)
    with pytest.raises(conv.InputRejected):
        conv.image_to_rgb(msg, bridge)


@pytest.mark.parametrize("ext, kind", [(".png", "bgr"), (".png", "grey"), (".png", "bgra"),
                                       (".jpg", "bgr"), (".jpg", "grey")])
def test_compressed_images_decode_to_rgb(bridge, ext, kind):
    big = cv2.resize(RGB, (70, 50), interpolation=cv2.INTER_NEAREST)
    picture = {"bgr": big[:, :, ::-1], "grey": cv2.cvtColor(big, cv2.COLOR_RGB2GRAY),
               "bgra": np.dstack([big[:, :, ::-1], np.full(big.shape[:2], 200, np.uint8)])}[kind]
    ok, data = cv2.imencode(ext, np.ascontiguousarray(picture))
    assert ok
    out = conv.compressed_to_rgb(CompressedImage(format=ext[1:], data=data.tobytes()), bridge)
    assert out.shape == (50, 70, 3) and out.dtype == np.uint8
    expected = np.dstack([picture] * 3) if kind == "grey" else big
    error = np.abs(out.astype(int) - expected.astype(int))
    if ext == ".png":
        assert error.max() == 0
    else:  # lossy
        assert error.mean() < 12


@pytest.mark.parametrize("msg, words", [
    (CompressedImage(format="jpeg", data=b""), "no data"),
    (CompressedImage(format="jpeg", data=b"not a jpeg at all"), "cannot decode"),
    (CompressedImage(format="16UC1; compressedDepth png", data=b"\x89PNG"), "depth"),
])
def test_bad_compressed_images_are_rejected(bridge, msg, words):
    with pytest.raises(conv.InputRejected, match=words):
        conv.compressed_to_rgb(msg, bridge)


def _declaring(ext: str, width: int, height: int) -> bytes:
    """A small real PNG/JPEG whose header is rewritten to declare width x height."""
    ok, data = cv2.imencode(ext, np.zeros((8, 8, 3), np.uint8))
    assert ok
    data = bytearray(data.tobytes())
    if ext == ".png":  # IHDR: width, height at 16..24, CRC over type + data at 29..33
        data[16:24] = struct.pack(">II", width, height)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    else:  # baseline SOF0: FFC0, length, precision, height, width
        sof = data.index(b"\xff\xc0")
        data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
@pytest.mark.parametrize("width, height", [(16400, 8), (8, 60000), (30000, 30000)])
def test_a_huge_declared_size_is_rejected_before_decoding(bridge, ext, width, height):
    msg = CompressedImage(format=ext[1:], data=_declaring(ext, width, height))
    with pytest.raises(conv.InputRejected, match="exceeds"):
        conv.compressed_to_rgb(msg, bridge)
    # The same rewrite within the limit is not refused by the size check.
    small = CompressedImage(format=ext[1:], data=_declaring(ext, 8, 8))
    assert conv.compressed_to_rgb(small, bridge).shape == (8, 8, 3)


def test_outputs_carry_an_independent_copy_of_the_source_header(bridge):
    header = _header()
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:6] = True
    msg = conv.mask_to_msg(mask, header, bridge)
    header.frame_id, header.stamp.sec = "changed", 99
    assert (msg.header.frame_id, msg.header.stamp.sec, msg.header.stamp.nanosec) == ("cam", 12,
                                                                                      34)
    assert (msg.encoding, msg.width, msg.height, msg.step) == ("mono8", 7, 5, 7)
    back = bridge.imgmsg_to_cv2(msg)
    np.testing.assert_array_equal(back, np.where(mask, 255, 0))


def test_label_image_is_mono8_up_to_255_and_mono16_above(bridge):
    labels = np.arange(35, dtype=np.int32).reshape(5, 7)
    small = conv.labels_to_msg(labels, _header(), bridge)
    assert small.encoding == "mono8"
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(small), labels)
    big = conv.labels_to_msg(labels * 10, _header(), bridge)
    assert big.encoding == "mono16"
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(big), labels * 10)


def test_float_and_colour_outputs_survive_serialization(bridge):
    values = RNG.random((5, 7)).astype(np.float32)
    sim = deserialize_message(serialize_message(conv.float_to_msg(values, _header(), bridge)),
                              Image)
    assert (sim.encoding, sim.step) == ("32FC1", 28)
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(sim), values)
    bgr = deserialize_message(serialize_message(conv.rgb_to_bgr8_msg(RGB, _header(), bridge)),
                              Image)
    assert bgr.encoding == "bgr8"
    np.testing.assert_array_equal(bridge.imgmsg_to_cv2(bgr), RGB[:, :, ::-1])
    np.testing.assert_array_equal(conv.image_to_rgb(bgr, bridge), RGB)
    with pytest.raises(ValueError, match="mono8 needs 1 channel"):
        conv.mask_to_msg(np.zeros((2, 2, 2), bool), _header(), bridge)


def test_rgb_to_msg_round_trips_every_eight_bit_encoding(bridge):
    for encoding in ("rgb8", "bgr8", "rgba8", "bgra8"):
        np.testing.assert_array_equal(
            conv.image_to_rgb(conv.rgb_to_msg(RGB, encoding, _header(), bridge), bridge), RGB)


def test_boxes_from_msg():
    assert conv.boxes_from_msg([], 4) is None
    boxes = conv.boxes_from_msg([30, 40, 10, 20, 0, 0, 5, 5], 4)  # first box inverted
    np.testing.assert_array_equal(boxes, [[10, 20, 30, 40], [0, 0, 5, 5]])
    assert boxes.dtype == np.float32
    for values, words in [([1, 2, 3], "multiple of 4"), ([1, 2, 3, 4, 5], "multiple of 4"),
                          ([0, 0, np.nan, 1], "NaN or inf"), ([0, 0, np.inf, 1], "NaN or inf"),
                          ([0, 0, 1, 1] * 5, "more than max_boxes 4")]:
        with pytest.raises(conv.InputRejected, match=words):
            conv.boxes_from_msg(values, 4)


def test_boxes_inside_clips_and_drops_boxes_outside_the_image():
    boxes = np.array([[-10, -5, 50, 60], [200, 10, 300, 20], [5, 5, 5, 30], [90, 70, 120, 90]],
                     np.float32)
    kept, index = conv.boxes_inside(boxes, width=100, height=80)
    np.testing.assert_array_equal(index, [0, 3])
    np.testing.assert_array_equal(kept, [[0, 0, 50, 60], [90, 70, 100, 80]])
    kept, index = conv.boxes_inside(boxes[1:3], width=100, height=80)
    assert kept.shape == (0, 4) and len(index) == 0


def test_boxes_for_frame_clips_and_checks_the_camera_frame():
    boxes = np.array([[-10, -10, 30, 20], [500, 500, 600, 600]], np.float32)
    kept, index = conv.boxes_for_frame(boxes, "/cam", "cam", 100, 80, prompt_id=3)
    np.testing.assert_array_equal(kept, [[0, 0, 30, 20]])
    assert index.tolist() == [0]
    with pytest.raises(conv.InputRejected, match="prompt 3 boxes are in frame 'other'"):
        conv.boxes_for_frame(boxes, "other", "cam", 100, 80, prompt_id=3)
    with pytest.raises(conv.InputRejected, match="none of prompt 3's 1 box"):
        conv.boxes_for_frame(boxes[1:], "", "cam", 100, 80, prompt_id=3)


def test_clean_text():
    assert conv.clean_text("  black cable \n", 20) == "black cable"
    assert conv.clean_text("провод — 電線 🔌", 20) == "провод — 電線 🔌"
    assert conv.clean_text("   ", 5) == ""
    with pytest.raises(conv.InputRejected, match="more than max_text_length 5"):
        conv.clean_text("x" * 6, 5)


def test_stamp_helpers():
    assert conv.stamp_key(_header(3, 4)) == (3, 4)
    assert conv.stamp_key(_header(0, 0)) == (0, 0)


def test_same_frame_ignores_tf2_leading_slash_and_unknown_frames():
    assert conv.same_frame("camera_optical", "/camera_optical")
    assert conv.same_frame("", "camera_optical") and conv.same_frame("camera_optical", "")
    assert not conv.same_frame("camera_optical", "other_camera")
    assert not conv.same_frame("/camera", "/camera_optical")
