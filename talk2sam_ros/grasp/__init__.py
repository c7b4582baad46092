"""Grasp geometry on masks (pure numpy/OpenCV, no torch, no ROS): the pixel grasp
(docs/node.md#grasp) and, with a registered depth image, the 3D grasp (docs/grasp.md)."""
from .cloud import object_points
from .depth import CameraModel, DepthInputError
from .pairing import DepthPairing, Pairing
from .pixel import Grasp, GraspConfig, grasp_from_mask
from .pose import Grasp3D, Grasp3DConfig, grasp_pose_from_depth, not_available

__all__ = ["CameraModel", "DepthInputError", "DepthPairing", "Grasp", "Grasp3D",
           "Grasp3DConfig", "GraspConfig", "Pairing", "grasp_from_mask",
           "grasp_pose_from_depth", "not_available", "object_points"]
