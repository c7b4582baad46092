"""Pure conversions between ROS image/prompt messages and numpy arrays (no node, no model).

Incoming images are checked cheaply (:func:`check_image`, O(1): encoding, sizes, step, data
length) in the subscription callback, and converted (:func:`image_to_rgb`, a pixel copy) on the
worker thread, so that dropped frames cost nothing. Pixel data go through cv_bridge's encoding
table and colour conversions; the row view is ours because the PyPI cv_bridge ignores a padded
``step`` and byte order.
"""
from __future__ import annotations

import io
import re
from collections.abc import Sequence

import cv2
import numpy as np
import PIL.Image
from cv_bridge import CvBridge, CvBridgeError
from cv_bridge.boost import cv_bridge_boost
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from talk2sam_ros.common.boxes import check_boxes

# Colour encodings the node accepts; 16-bit ones are scaled to 8 bit (value >> 8) first.
SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8",
                       "rgb16", "bgr16", "rgba16", "bgra16", "mono16")
_EIGHT_BIT = {"rgb16": "rgb8", "bgr16": "bgr8", "rgba16": "rgba8", "bgra16": "bgra8",
              "mono16": "mono8"}
# One side longer than this is rejected as garbage (no camera sends 16k+ wide frames).
MAX_IMAGE_SIDE = 16384


class InputRejected(ValueError):
    """A message the node cannot use; the text is the one log line that says why."""


class Bridge(CvBridge):
    """CvBridge with the PyPI port's 16UC1..4 bug fixed: its table maps them to CV_8UCn, so
    16UC1 depth images would decode to uint8 from the wrong bytes. Overriding the public
    lookup keeps the library's module state untouched."""

    def encoding_to_cvtype2(self, encoding: str) -> int:
        match = re.fullmatch(r"16UC([1-4])", encoding)
        if match:
            return getattr(cv2, f"CV_16UC{match.group(1)}")
        return super().encoding_to_cvtype2(encoding)


def make_bridge() -> CvBridge:
    """The bridge every conversion here uses (:class:`Bridge`)."""
    return Bridge()


def copy_header(header: Header) -> Header:
    """An independent copy of `header` (stamp and frame_id) for an output message."""
    out = Header(frame_id=header.frame_id)
    out.stamp.sec, out.stamp.nanosec = header.stamp.sec, header.stamp.nanosec
    return out


def same_frame(a: str, b: str) -> bool:
    """Whether two frame_ids name the same frame: equal up to tf2's leading '/' (which tf2
    strips), or either one empty (unknown)."""
    a, b = a.lstrip("/"), b.lstrip("/")
    return not a or not b or a == b


def stamp_key(header: Header) -> tuple[int, int]:
    """Hashable (sec, nanosec) of a header's stamp; (0, 0) means "not stamped"."""
    return int(header.stamp.sec), int(header.stamp.nanosec)


def _layout(bridge: CvBridge, encoding: str) -> tuple[np.dtype, int]:
    dtype, channels = bridge.encoding_to_dtype_with_channels(encoding)
    return np.dtype(dtype), int(channels)


def check_image(msg: Image, bridge: CvBridge) -> None:
    """Raise InputRejected unless `msg` is a well-formed image in a supported encoding."""
    if msg.encoding not in SUPPORTED_ENCODINGS:
        raise InputRejected(f"image encoding {msg.encoding!r} is not supported "
                            f"(supported: {', '.join(SUPPORTED_ENCODINGS)})")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise InputRejected(f"empty image ({w}x{h})")
    if h > MAX_IMAGE_SIDE or w > MAX_IMAGE_SIDE:
        raise InputRejected(f"image {w}x{h} exceeds {MAX_IMAGE_SIDE} px per side")
    dtype, channels = _layout(bridge, msg.encoding)
    row = w * channels * dtype.itemsize
    if step < row:
        raise InputRejected(f"step {step} < width*channels*bytes {row} for {w}x{h} "
                            f"{msg.encoding}")
    if step % dtype.itemsize:
        raise InputRejected(f"step {step} is not a multiple of {dtype.itemsize} bytes "
                            f"({msg.encoding})")
    if len(msg.data) != step * h:
        raise InputRejected(f"data has {len(msg.data)} bytes, expected step*height = "
                            f"{step * h} ({w}x{h} {msg.encoding}, step {step})")


def image_to_rgb(msg: Image, bridge: CvBridge) -> np.ndarray:
    """(H, W, 3) uint8 RGB copy of a checked Image (padded step and big-endian handled)."""
    check_image(msg, bridge)
    dtype, channels = _layout(bridge, msg.encoding)
    dtype = dtype.newbyteorder(">" if msg.is_bigendian else "<")
    h, w = int(msg.height), int(msg.width)
    rows = np.frombuffer(msg.data, np.uint8).reshape(h, int(msg.step))
    pixels = rows[:, : w * channels * dtype.itemsize].view(dtype).reshape(h, w, channels)
    pixels = pixels.astype(dtype.newbyteorder("="), copy=False)
    encoding = msg.encoding
    if encoding in _EIGHT_BIT:
        pixels = (pixels >> 8).astype(np.uint8)
        encoding = _EIGHT_BIT[encoding]
    if channels == 1:
        pixels = pixels[:, :, 0]
    pixels = np.ascontiguousarray(pixels)
    return np.ascontiguousarray(cv_bridge_boost.cvtColor2(pixels, encoding, "rgb8"))


def _check_declared_size(data: bytes) -> None:
    """Reject an image whose header declares more than MAX_IMAGE_SIDE px per side before
    anything is decoded: a few bytes could otherwise make the decoder allocate gigabytes.
    Pillow reads only the header here; formats it does not know are left to OpenCV."""
    try:
        with PIL.Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except PIL.Image.DecompressionBombError as exc:  # far beyond any camera frame
        raise InputRejected(f"compressed image header: {exc}") from None
    except (OSError, ValueError, SyntaxError):
        return
    if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE:
        raise InputRejected(f"compressed image declares {width}x{height}, which exceeds "
                            f"{MAX_IMAGE_SIDE} px per side")


def compressed_to_rgb(msg: CompressedImage, bridge: CvBridge) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a CompressedImage (jpeg/png; grey and alpha are converted)."""
    if "compresseddepth" in msg.format.lower():
        raise InputRejected(f"compressed depth images are not supported ({msg.format!r})")
    if len(msg.data) == 0:
        raise InputRejected("compressed image has no data")
    _check_declared_size(bytes(msg.data))
    try:
        decoded = bridge.compressed_imgmsg_to_cv2(msg)  # passthrough: BGR, BGRA or grey
    except (CvBridgeError, cv2.error) as exc:
        raise InputRejected(f"cannot decode compressed image ({msg.format!r}): {exc}") from None
    if decoded is None or decoded.size == 0:
        raise InputRejected(f"cannot decode compressed image ({msg.format!r}, "
                            f"{len(msg.data)} bytes)")
    if decoded.dtype != np.uint8:
        decoded = (decoded >> 8).astype(np.uint8)
    if decoded.ndim == 3 and decoded.shape[2] == 1:
        decoded = decoded[:, :, 0]
    source = "mono8" if decoded.ndim == 2 else {3: "bgr8", 4: "bgra8"}.get(decoded.shape[2])
    if source is None:
        raise InputRejected(f"compressed image decodes to {decoded.shape[2]} channels")
    h, w = decoded.shape[:2]
    if h > MAX_IMAGE_SIDE or w > MAX_IMAGE_SIDE:
        raise InputRejected(f"image {w}x{h} exceeds {MAX_IMAGE_SIDE} px per side")
    return np.ascontiguousarray(cv_bridge_boost.cvtColor2(decoded, source, "rgb8"))


def _to_msg(array: np.ndarray, encoding: str, header: Header, bridge: CvBridge) -> Image:
    # cv_bridge checks that dtype/channels match the encoding; the message itself is filled
    # here because CvBridge.cv2_to_imgmsg uses ndarray.tostring (gone in numpy 2.3).
    array = np.ascontiguousarray(array)
    channels = 1 if array.ndim == 2 else array.shape[2]
    dtype, expected = _layout(bridge, encoding)
    if (array.dtype, channels) != (dtype, expected):
        raise ValueError(f"{encoding} needs {expected} channel(s) of {dtype}, got {channels} "
                         f"of {array.dtype}")
    return Image(header=copy_header(header), height=array.shape[0], width=array.shape[1],
                 encoding=encoding, is_bigendian=int(array.dtype.byteorder == ">"),
                 step=array.strides[0], data=array.tobytes())


def mask_to_msg(mask: np.ndarray, header: Header, bridge: CvBridge) -> Image:
    """mono8 Image, 255 where `mask` (H, W) is true, 0 elsewhere."""
    return _to_msg(np.where(mask, np.uint8(255), np.uint8(0)), "mono8", header, bridge)


def labels_to_msg(labels: np.ndarray, header: Header, bridge: CvBridge) -> Image:
    """Label image (H, W) int: mono8 when every label fits in 0..255, else mono16."""
    if labels.size and int(labels.max()) > 255:
        return _to_msg(labels.astype(np.uint16), "mono16", header, bridge)
    return _to_msg(labels.astype(np.uint8), "mono8", header, bridge)


def float_to_msg(values: np.ndarray, header: Header, bridge: CvBridge) -> Image:
    """32FC1 Image of an (H, W) float map."""
    return _to_msg(values.astype(np.float32, copy=False), "32FC1", header, bridge)


def rgb_to_bgr8_msg(rgb: np.ndarray, header: Header, bridge: CvBridge) -> Image:
    """bgr8 Image of an (H, W, 3) uint8 RGB picture (for rviz)."""
    return _to_msg(cv_bridge_boost.cvtColor2(rgb, "rgb8", "bgr8"), "bgr8", header, bridge)


def rgb_to_msg(rgb: np.ndarray, encoding: str, header: Header, bridge: CvBridge) -> Image:
    """Image in `encoding` (one of SUPPORTED_ENCODINGS' 8-bit ones) of an RGB picture."""
    converted = cv_bridge_boost.cvtColor2(np.ascontiguousarray(rgb), "rgb8", encoding)
    return _to_msg(converted, encoding, header, bridge)


def boxes_from_msg(values: Sequence[float], max_boxes: int) -> np.ndarray | None:
    """(N, 4) float32 XYXY boxes from a flat prompt array; None when there are none.

    Rejects a length that is not a multiple of 4, more than `max_boxes` boxes and non-finite
    values. Inverted corners are swapped (x_min/x_max and y_min/y_max sorted); clipping to the
    image happens per frame in :func:`boxes_inside`, because the image size is not known here.
    """
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size == 0:
        return None
    if flat.size % 4:
        raise InputRejected(f"prompt has {flat.size} box values, not a multiple of 4 "
                            "(x_min, y_min, x_max, y_max per box)")
    if flat.size // 4 > max_boxes:
        raise InputRejected(f"prompt has {flat.size // 4} boxes, more than max_boxes "
                            f"{max_boxes}")
    if not np.isfinite(flat).all():
        raise InputRejected("prompt boxes contain NaN or inf")
    boxes = flat.reshape(-1, 4)
    xs, ys = np.sort(boxes[:, 0::2], axis=1), np.sort(boxes[:, 1::2], axis=1)
    return np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1).astype(np.float32)


def boxes_inside(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes clipped to the W x H image, and the indices of those kept.

    Boxes with no area left inside the image (entirely outside, or zero width/height) are
    dropped; the caller decides what an empty result means. Clipping is the model's own
    (common.boxes.check_boxes), applied box by box so one bad box does not sink the others.
    """
    kept, index = [], []
    for i, box in enumerate(boxes):
        try:
            kept.append(check_boxes(box, (height, width))[0])
        except ValueError:
            continue
        index.append(i)
    return np.asarray(kept, np.float32).reshape(-1, 4), np.asarray(index, np.int64)


def boxes_for_frame(boxes: np.ndarray, boxes_frame: str, image_frame: str, width: int,
                    height: int, prompt_id: int) -> tuple[np.ndarray, np.ndarray]:
    """A prompt's boxes clipped to this W x H frame and the indices kept (boxes_inside).

    Raises InputRejected when the boxes are in another camera frame (same_frame) or when no
    box overlaps the image.
    """
    if not same_frame(boxes_frame, image_frame):
        raise InputRejected(f"prompt {prompt_id} boxes are in frame {boxes_frame!r}, the "
                            f"image in {image_frame!r}")
    kept_boxes, kept = boxes_inside(boxes, width, height)
    if len(kept_boxes) == 0:
        raise InputRejected(f"none of prompt {prompt_id}'s {len(boxes)} box(es) overlaps "
                            f"the {width}x{height} image")
    return kept_boxes, kept


def clean_text(text: str, max_length: int) -> str:
    """Prompt text with surrounding whitespace removed; rejects more than `max_length` chars."""
    stripped = text.strip()
    if len(stripped) > max_length:
        raise InputRejected(f"prompt text has {len(stripped)} characters, more than "
                            f"max_text_length {max_length}")
    return stripped
