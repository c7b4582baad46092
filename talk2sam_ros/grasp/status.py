"""The 3D grasp's status strings (GraspCandidate.depth_status), one place for all of them.

Pairing statuses come from :mod:`talk2sam_ros.grasp.pairing`, input statuses from the node's
depth/camera_info checks (:mod:`talk2sam_ros.grasp.depth`), geometry statuses from
:func:`talk2sam_ros.grasp.pose.grasp_pose_from_depth`. Only ``ok`` comes with a pose.
"""
from __future__ import annotations

OK = "ok"
DISABLED = ""                                    # use_depth is false: no 3D side at all
NO_DEPTH = "no_depth"                            # no depth frame received (at all)
NO_CAMERA_INFO = "no_camera_info"                # no camera_info received (at all)
DEPTH_STALE = "depth_stale"                      # nearest depth frame outside depth_max_dt_ms
CAMERA_INFO_STALE = "camera_info_stale"          # nearest camera_info outside depth_max_dt_ms
BAD_DEPTH = "bad_depth"                          # depth rejected: encoding, size, step, no reading
BAD_CAMERA_INFO = "bad_camera_info"              # camera_info rejected: K, D, model, size
NO_GRASP = "no_grasp"                            # the pixel grasp is not valid
NO_VALID_DEPTH = "no_valid_depth"                # no valid depth reading on the mask
# no reading at the grasp point nor on the centreline (within max_point_shift_px)
NO_VALID_DEPTH_NEAR_POINT = "no_valid_depth_near_point"

DESCRIPTIONS: dict[str, str] = {
    OK: "pose, 3D centreline and width computed",
    NO_DEPTH: "no depth frame received on depth_topic",
    NO_CAMERA_INFO: "no camera_info received on camera_info_topic",
    DEPTH_STALE: "the depth frame nearest in stamp is more than depth_max_dt_ms away",
    CAMERA_INFO_STALE: "the camera_info nearest in stamp is more than depth_max_dt_ms away",
    BAD_DEPTH: "the paired depth frame was rejected (the log line says why)",
    BAD_CAMERA_INFO: "the paired camera_info was rejected (the log line says why)",
    NO_GRASP: "the pixel grasp is not valid (GraspCandidate.valid is false)",
    NO_VALID_DEPTH: "the mask has no valid depth reading",
    NO_VALID_DEPTH_NEAR_POINT: "neither the grasp point nor any centreline point (within "
                               "max_point_shift_px) has a valid depth reading",
}
