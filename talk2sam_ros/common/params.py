"""Parameter tables: one ParamSpec per ROS parameter, checked in one place.

Pure Python (rcl_interfaces is imported only to build descriptors): the segmentation node's
table (talk2sam_ros.ros.params) and the speech node's (talk2sam_ros.speech.params) use it,
and so do the launch-file check and the docs generator.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    from rcl_interfaces.msg import ParameterDescriptor

ParamValue = Union[bool, int, float, str]


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter: default (its type is the parameter type), description, limits.

    live: a change applies to the next frame; otherwise it applies at the next configure.
    """

    name: str
    default: ParamValue
    description: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    live: bool = False
    pattern: str = ""  # a str value must match this regular expression (fullmatch)
    pattern_help: str = ""  # what the pattern allows, for the error message


def check_value(spec: ParamSpec, value: Any) -> str | None:
    """Why `value` is not allowed for `spec` (None when it is)."""
    kind = type(spec.default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        return f"{spec.name} must be {kind.__name__}, got {type(value).__name__} {value!r}"
    if spec.choices and value not in spec.choices:
        return f"{spec.name}={value!r} is not one of {', '.join(spec.choices)}"
    if spec.low is not None and not spec.low <= value <= spec.high:
        return f"{spec.name}={value!r} is outside [{spec.low}, {spec.high}]"
    if spec.pattern and not re.fullmatch(spec.pattern, value):
        return f"{spec.name}={value!r}: expected {spec.pattern_help or spec.pattern}"
    return None


def values_from_params(specs: Sequence[ParamSpec],
                       values: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(every spec's value, missing ones defaulted and ints widened to float parameters;
    why each bad value is not allowed) for a node's parameter table.

    Raises ValueError on names that are not in `specs`.
    """
    unknown = sorted(set(values) - {spec.name for spec in specs})
    if unknown:
        raise ValueError(f"unknown parameters: {', '.join(unknown)}")
    merged: dict[str, Any] = {}
    problems = []
    for spec in specs:
        value = values.get(spec.name, spec.default)
        problem = check_value(spec, value)
        if problem:
            problems.append(problem)
        merged[spec.name] = float(value) if isinstance(spec.default, float) and \
            isinstance(value, int) else value
    return merged, problems


def descriptor(spec: ParamSpec, *, read_only: bool = False) -> ParameterDescriptor:
    """ROS parameter descriptor (description, choices, range) of one parameter.

    read_only: the node reads it once at start-up; otherwise non-live ones apply at configure.
    """
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

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
