"""Grasp geometry on masks (pure numpy/OpenCV, no torch, no ROS): see docs/node.md#grasp."""
from .pixel import Grasp, GraspConfig, grasp_from_mask

__all__ = ["Grasp", "GraspConfig", "grasp_from_mask"]
