"""ROS parameter descriptors built from the ParamSpec tables (rclpy messages only, no torch).

Shared by talk2sam_node and talk2sam_speech; the speech node must not pay node.py's torch
import just for this.
"""
from __future__ import annotations

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from talk2sam_ros.node_config import ParamSpec


def descriptor(spec: ParamSpec, *, read_only: bool = False) -> ParameterDescriptor:
    """ROS parameter descriptor (description, choices, range) of one parameter.

    read_only: the node reads it once at start-up; otherwise non-live ones apply at configure.
    """
    desc = ParameterDescriptor(name=spec.name, description=spec.description,
                               read_only=read_only)
    notes = []
    if spec.choices:
        notes.append(f"one of: {', '.join(spec.choices)}")
    if read_only:
        notes.append("read at start-up")
    elif not spec.live:
        notes.append("applied at configure")
    desc.additional_constraints = "; ".join(notes)
    if spec.low is not None and isinstance(spec.default, float):
        desc.floating_point_range = [FloatingPointRange(
            from_value=float(spec.low), to_value=float(spec.high), step=0.0)]
    elif spec.low is not None and not isinstance(spec.default, bool):
        desc.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high),
                                           step=1)]
    return desc
