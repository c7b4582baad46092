"""The package's layers (ARCHITECTURE.md), checked on the source: who may import whom, no
import cycles inside talk2sam_ros, and the modules that must stay light stay light."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from rosutil import REPO

PACKAGE = REPO / "talk2sam_ros"
# layer -> the talk2sam_ros layers it may import (besides itself). Top-level modules of the
# package (__init__) belong to no layer. `msg` is the generated messages.
ALLOWED = {
    "common": set(),
    "model": {"common"},
    "weights": {"common", "model"},
    "grasp": {"common"},
    "training": {"common", "model", "weights"},
    "speech": {"common", "msg"},
    "ros": {"common", "model", "weights", "grasp", "msg"},
    "tools": {"common", "model", "weights", "grasp", "training", "ros", "speech", "msg"},
}
# Layers that must import without rclpy (ROS-free use: training/eval/bench on a GPU box).
ROS_FREE = ("common", "model", "weights", "grasp", "training")


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every talk2sam_ros module `path` imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] == "talk2sam_ros"}


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None


def test_layers_import_only_what_they_may():
    bad = []
    for module, deps in _graph().items():
        layer = _layer(module)
        if layer is None:
            continue
        for dep in deps:
            other = _layer(dep)
            if other not in (None, layer) and other not in ALLOWED[layer]:
                bad.append(f"{module} -> {dep}")
    assert not bad, "imports across layers that ARCHITECTURE.md does not allow:\n" + \
        "\n".join(sorted(bad))


def test_no_import_cycles():
    graph = _graph()
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("module, forbidden", [
    ("talk2sam_ros.ros.conversions", "torch"),
    ("talk2sam_ros.ros.params", "torch"),
    ("talk2sam_ros.model.config", "torch"),
    ("talk2sam_ros.weights", "torch"),
    ("talk2sam_ros.common.params", "rclpy"),
    *[(f"talk2sam_ros.{layer}", "rclpy") for layer in ROS_FREE],
])
def test_light_modules_stay_light(module, forbidden):
    code = (f"import sys, {module}; "
            f"sys.exit(1 if {forbidden!r} in sys.modules else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, f"importing {module} imports {forbidden}: {proc.stderr[-1500:]}"
