"""Messages of the RGB-D grasp (docs/grasp.md), pure: no node, no graph, no torch.

In: sensor_msgs Image (depth) and CameraInfo -> float32 metres and a CameraModel, with every
check of :mod:`talk2sam_ros.grasp.depth` (:func:`depth_for_frame` does them all for one colour
frame and raises DepthInputError with the one log line and the resulting depth_status).
Out: a Grasp3D -> PoseStamped (``grasp_pose``), the GraspCandidate 3D fields, a MarkerArray
(``grasp_markers``) and a PointCloud2 (``object_points``), all with the colour image's header.
"""
from __future__ import annotations

import numpy as np
from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion, Vector3
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from visualization_msgs.msg import Marker, MarkerArray

from talk2sam_ros.grasp import depth as gd
from talk2sam_ros.grasp import status as st
from talk2sam_ros.grasp.pairing import stamp_ns
from talk2sam_ros.grasp.pose import Grasp3D, jaw_outline
from talk2sam_ros.msg import GraspCandidate
from talk2sam_ros.ros.conversions import copy_header, same_frame

# The 3D outputs (relative topic names, as the node's other outputs) and their types; the
# GraspCandidate 3D fields go out on `grasp` as before.
TOPICS = {"grasp_pose": PoseStamped, "grasp_markers": MarkerArray, "object_points": PointCloud2}
# Inputs, with use_depth (remapped by the launch arguments depth_topic / camera_info_topic).
INPUT_TOPICS = {"depth": Image, "camera_info": CameraInfo}

# Marker ids per prompt namespace: every message carries all of them (ADD or DELETE), so a
# marker that a frame does not draw is removed instead of lingering from an earlier frame.
MARKER_CENTERLINE, MARKER_GRIPPER, MARKER_APPROACH, MARKER_LABEL = 0, 1, 2, 3
LINE_WIDTH_M = 0.002


def header_stamp_ns(header: Header) -> int:
    """The header's stamp in nanoseconds (the pairing key)."""
    return stamp_ns(header.stamp.sec, header.stamp.nanosec)


# --------------------------------------------------------------------------- inputs
def check_depth_msg(msg: Image) -> str:
    """"" when a depth Image is well formed (encoding, sizes, step, data length), O(1)."""
    return gd.check_depth_fields(msg.encoding, int(msg.width), int(msg.height), int(msg.step),
                                 len(msg.data))


def depth_from_msg(msg: Image, min_m: float, max_m: float) -> np.ndarray:
    """(H, W) float32 metres, NaN = invalid; raises DepthInputError (status bad_depth)."""
    return gd.decode_depth(msg.encoding, int(msg.width), int(msg.height), int(msg.step),
                           bool(msg.is_bigendian), msg.data, min_m, max_m)


def check_camera_info_msg(msg: CameraInfo) -> str:
    """"" when a CameraInfo gives a usable camera (K, D, model, size, no binning/ROI)."""
    if int(msg.binning_x) > 1 or int(msg.binning_y) > 1:
        return f"camera_info binning {msg.binning_x}x{msg.binning_y} is not supported"
    roi = msg.roi
    if int(roi.width) or int(roi.height) or int(roi.x_offset) or int(roi.y_offset):
        if (int(roi.width), int(roi.height)) != (int(msg.width), int(msg.height)):
            return "camera_info with a region of interest is not supported"
    return gd.check_camera_fields(int(msg.width), int(msg.height), list(msg.k), list(msg.d),
                                  msg.distortion_model)


def camera_from_msg(msg: CameraInfo) -> gd.CameraModel:
    """CameraModel of a CameraInfo; raises DepthInputError (status bad_camera_info)."""
    reason = check_camera_info_msg(msg)
    if reason:
        raise gd.DepthInputError(reason, st.BAD_CAMERA_INFO)
    return gd.camera_from_fields(int(msg.width), int(msg.height), list(msg.k), list(msg.d),
                                 msg.distortion_model)


def frame_warning(image_frame: str, depth_frame: str, camera_info_frame: str) -> str:
    """"" when depth and camera_info are in the colour image's frame, else a warning line
    (the data are still used: many drivers name the aligned depth's frame differently)."""
    frames = (("depth", depth_frame), ("camera_info", camera_info_frame))
    odd = [f"{what} {frame!r}" for what, frame in frames if not same_frame(image_frame, frame)]
    if not odd:
        return ""
    return f"frame_id of {' and '.join(odd)} differs from the image's {image_frame!r}; " \
           "depth must be registered to the colour image (aligned_depth_to_color)"


def depth_for_frame(depth_msg: Image, camera_info_msg: CameraInfo, width: int, height: int,
                    min_m: float, max_m: float) -> tuple[np.ndarray, gd.CameraModel]:
    """Depth in metres resized to the W x H colour image, and its camera, for one frame.

    Raises DepthInputError with the log line; its `status` is bad_camera_info for a
    camera_info of another size or with bad K/D, bad_depth for everything about the depth
    (encoding, sizes, step, another aspect ratio, no valid reading).
    """
    camera = camera_from_msg(camera_info_msg)
    reason = gd.check_camera_matches(camera, width, height)
    if reason:
        raise gd.DepthInputError(reason, st.BAD_CAMERA_INFO)
    reason = check_depth_msg(depth_msg) or \
        gd.check_depth_size(int(depth_msg.width), int(depth_msg.height), width, height)
    if reason:
        raise gd.DepthInputError(reason, st.BAD_DEPTH)
    return gd.match_depth_to_image(depth_from_msg(depth_msg, min_m, max_m), width, height), \
        camera


def depth_msg(raw: np.ndarray, header: Header) -> Image:
    """Depth Image of an (H, W) uint16 millimetre (16UC1) or float32 metre (32FC1) array, e.g.
    a synthetic scene's ``depth_raw`` (demo camera stand-in, tests)."""
    raw = np.ascontiguousarray(raw)
    encoding = {np.dtype(np.uint16): "16UC1", np.dtype(np.float32): "32FC1"}.get(raw.dtype)
    if encoding is None or raw.ndim != 2:
        raise ValueError(f"depth must be (H, W) uint16 mm or float32 m, got {raw.dtype} "
                         f"{raw.shape}")
    return Image(header=copy_header(header), height=raw.shape[0], width=raw.shape[1],
                 encoding=encoding, is_bigendian=int(raw.dtype.byteorder == ">"),
                 step=raw.strides[0], data=raw.tobytes())


def camera_info_msg(camera: gd.CameraModel, header: Header) -> CameraInfo:
    """CameraInfo of a CameraModel (P = [K | 0], R = identity: a monocular camera)."""
    k = camera.k.ravel()
    p = np.zeros((3, 4))
    p[:, :3] = camera.k
    return CameraInfo(header=copy_header(header), width=camera.width, height=camera.height,
                      distortion_model=camera.distortion_model or "plumb_bob",
                      d=[float(v) for v in camera.d], k=[float(v) for v in k],
                      r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
                      p=[float(v) for v in p.ravel()])


# --------------------------------------------------------------------------- outputs
def _point(v: np.ndarray) -> Point:
    return Point(x=float(v[0]), y=float(v[1]), z=float(v[2]))


def _pose(grasp: Grasp3D) -> Pose:
    qx, qy, qz, qw = grasp.quaternion
    return Pose(position=_point(grasp.position), orientation=Quaternion(x=qx, y=qy, z=qz, w=qw))


def pose_msg(grasp: Grasp3D, header: Header) -> PoseStamped:
    """``grasp_pose`` (publish only when grasp.ok)."""
    return PoseStamped(header=copy_header(header), pose=_pose(grasp))


def fill_grasp_3d(msg: GraspCandidate, grasp: Grasp3D) -> GraspCandidate:
    """Sets the GraspCandidate's 3D fields from `grasp` (pixel fields untouched); returns it."""
    msg.depth_status = grasp.status
    msg.depth_reason = grasp.reason
    msg.valid_depth_fraction = float(grasp.valid_depth_fraction)
    msg.centerline_3d = [_point(p) for p in grasp.centerline]
    msg.centerline_3d_index = [int(i) for i in grasp.centerline_index]
    if grasp.ok:
        msg.pose = _pose(grasp)
        msg.width_m = float(grasp.width_m)
        msg.depth_point = Point(x=grasp.depth_pixel[0], y=grasp.depth_pixel[1], z=0.0)
        msg.depth_point_shift_px = float(grasp.point_shift_px)
        msg.approach_from = grasp.approach_from
    return msg


def _marker(header: Header, ns: str, marker_id: int, kind: int) -> Marker:
    return Marker(header=copy_header(header), ns=ns, id=marker_id, type=kind,
                  action=Marker.ADD)


def markers_msg(grasp: Grasp3D, header: Header, label: str, prompt_id: int) -> MarkerArray:
    """``grasp_markers``: 3D centreline (line strip), gripper at the pose (jaws with the
    width), approach arrow and a text label, in namespace ``grasp/<prompt_id>``. Markers
    this frame cannot draw (no pose, fewer than 2 centreline points) are DELETEd."""
    ns = f"grasp/{prompt_id}"
    out = []
    line = _marker(header, ns, MARKER_CENTERLINE, Marker.LINE_STRIP)
    if len(grasp.centerline) >= 2:
        line.pose.orientation.w = 1.0
        line.scale = Vector3(x=LINE_WIDTH_M)
        line.color = ColorRGBA(r=0.1, g=0.9, b=0.2, a=1.0)
        line.points = [_point(p) for p in grasp.centerline]
    else:
        line.action = Marker.DELETE
    out.append(line)
    drawn = {MARKER_GRIPPER: Marker.LINE_LIST, MARKER_APPROACH: Marker.ARROW,
             MARKER_LABEL: Marker.TEXT_VIEW_FACING}
    if not grasp.ok:
        for marker_id, kind in drawn.items():
            gone = _marker(header, ns, marker_id, kind)
            gone.action = Marker.DELETE
            out.append(gone)
        return MarkerArray(markers=out)
    gripper = _marker(header, ns, MARKER_GRIPPER, Marker.LINE_LIST)
    gripper.pose = _pose(grasp)
    gripper.scale = Vector3(x=LINE_WIDTH_M)
    gripper.color = ColorRGBA(r=1.0, g=0.55, b=0.0, a=1.0)
    gripper.points = [_point(p) for p in jaw_outline(grasp.width_m)]
    arrow = _marker(header, ns, MARKER_APPROACH, Marker.ARROW)
    arrow.pose.orientation.w = 1.0
    approach = grasp.rotation[:, 2]
    arrow.points = [_point(grasp.position - 0.06 * approach), _point(grasp.position)]
    arrow.scale = Vector3(x=0.003, y=0.006, z=0.01)  # shaft, head diameters, head length
    arrow.color = ColorRGBA(r=0.2, g=0.4, b=1.0, a=1.0)
    text = _marker(header, ns, MARKER_LABEL, Marker.TEXT_VIEW_FACING)
    text.pose.position = _point(grasp.position - 0.08 * approach)
    text.pose.orientation.w = 1.0
    text.scale = Vector3(z=0.015)  # letter height
    text.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
    text.text = f"{label} ({1000.0 * grasp.width_m:.0f} mm)" if label else \
        f"{1000.0 * grasp.width_m:.0f} mm"
    return MarkerArray(markers=[*out, gripper, arrow, text])


_XYZ = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
        for i, n in enumerate("xyz")]


def cloud_msg(points: np.ndarray, header: Header, colours: np.ndarray | None = None
              ) -> PointCloud2:
    """``object_points``: unorganised PointCloud2, x y z float32 (+ rgb packed in a float32,
    the PCL/rviz convention, when `colours` (N, 3) uint8 is given)."""
    points = np.asarray(points, np.float32).reshape(-1, 3)
    fields = list(_XYZ)
    names, formats = ["x", "y", "z"], ["<f4"] * 3
    if colours is not None:
        fields.append(PointField(name="rgb", offset=12, datatype=PointField.FLOAT32, count=1))
        names.append("rgb")
        formats.append("<u4")
    record = np.zeros(len(points), dtype={"names": names, "formats": formats})
    record["x"], record["y"], record["z"] = points.T
    if colours is not None:
        c = np.asarray(colours, np.uint32).reshape(-1, 3)
        record["rgb"] = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    step = record.dtype.itemsize
    return PointCloud2(header=copy_header(header), height=1, width=len(points), fields=fields,
                       is_bigendian=False, point_step=step, row_step=step * len(points),
                       data=record.tobytes(), is_dense=True)


def cloud_points(msg: PointCloud2) -> np.ndarray:
    """(N, 3) float32 x y z of a PointCloud2 written by :func:`cloud_msg` (tests, tools)."""
    offsets = {f.name: f.offset for f in msg.fields}
    dtype = np.dtype({"names": ["x", "y", "z"], "formats": ["<f4"] * 3,
                      "offsets": [offsets["x"], offsets["y"], offsets["z"]],
                      "itemsize": int(msg.point_step)})
    record = np.frombuffer(bytes(msg.data), dtype, count=int(msg.width) * int(msg.height))
    return np.stack([record["x"], record["y"], record["z"]], axis=1)
