"""Launch file, parameter YAML, rviz config, docs/node.md and the node's parameter table agree.

`launch`/`launch_ros` are not installable from PyPI, so the launch file is checked statically
(ast), and its launch-free part (argument tables, the rviz check) is imported and run; where
`launch` is importable it is also loaded for real.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import yaml
from rosutil import REPO

from talk2sam_ros.ros.params import (NODE_NAME, PARAM_BY_NAME, PARAMS, PUBLICATIONS,
                                     SUBSCRIPTIONS, NodeConfig, change_problem,
                                     node_config_from_params, update_markdown)

LAUNCH = REPO / "launch" / "segment.launch.py"
PARAMS_YAML = REPO / "config" / "talk2sam.yaml"
RVIZ = REPO / "config" / "talk2sam.rviz"
NODE_DOC = REPO / "docs" / "node.md"


def _module_constant(tree: ast.Module, name: str):
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} not found in {LAUNCH.name}")


@pytest.fixture(scope="module")
def tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


def test_every_launch_argument_has_a_description_and_a_purpose(tree):
    arguments = _module_constant(tree, "ARGUMENTS")
    names = [a[0] for a in arguments]
    assert len(names) == len(set(names))
    for name, default, description in arguments:
        assert isinstance(default, str) and len(description) > 15, name
    param_args = _module_constant(tree, "PARAM_ARGS")
    remap_args = _module_constant(tree, "REMAP_ARGS")
    launch_args = set(_module_constant(tree, "LAUNCH_ARGS"))
    # each argument is exactly one of: node parameter override, topic remap, launch-only
    groups = [set(param_args), set(remap_args), launch_args]
    assert sum(map(len, groups)) == len(set().union(*groups)) == len(names)
    assert set().union(*groups) == set(names)
    for arg, param in param_args.items():
        assert param in PARAM_BY_NAME, f"{arg} -> unknown node parameter {param}"
        # launch arguments are strings: only string parameters can take them unconverted
        assert isinstance(PARAM_BY_NAME[param].default, str), param
    for arg, topic in remap_args.items():
        assert topic in SUBSCRIPTIONS + PUBLICATIONS, f"{arg} -> unknown topic {topic}"
    assert {"namespace", "params_file", "use_rviz", "use_speech", "image_topic", "device",
            "preset", "checkpoint_sam_hq", "checkpoint_talk2sam"} <= set(names)
    defaults = dict((a[0], a[1]) for a in arguments)
    assert defaults["use_speech"] == "false" and defaults["use_rviz"] == "true"


def test_arguments_are_declared_through_declare_launch_argument(tree):
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "id", None) == "DeclareLaunchArgument"]
    assert calls, "no DeclareLaunchArgument"
    assert {k.arg for k in calls[0].keywords} >= {"default_value", "description"}


def test_referenced_files_and_executables_exist(tree):
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
               and isinstance(n.value, str)}
    for name in ("talk2sam.yaml", "talk2sam.rviz", "speech.yaml"):
        assert name in strings and (REPO / "config" / name).is_file()
    node_calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
                  and getattr(n.func, "id", None) == "Node"]
    executables = {ast.literal_eval(k.value) for n in node_calls for k in n.keywords
                   if k.arg == "executable"}
    assert executables == {"talk2sam_node", "talk2sam_speech", "rviz2"}
    cmake = (REPO / "CMakeLists.txt").read_text()
    for exe in executables - {"rviz2"}:
        assert f"scripts/{exe}" in cmake and (REPO / "scripts" / exe).is_file()
    assert re.search(r"install\(DIRECTORY[^)]*\blaunch\b[^)]*\bconfig\b", cmake)
    package = ET.parse(REPO / "package.xml").getroot()
    depends = {e.text for e in package.iter() if e.tag.endswith("depend")}
    assert {"launch", "launch_ros", "rviz2"} <= depends
    assert _module_constant(tree, "NODE_NAME") == NODE_NAME


def _launch_module():
    """The launch file as a module: it imports launch/launch_ros only inside its functions."""
    spec = importlib.util.spec_from_file_location("segment_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ament_prefix(root, packages: tuple[str, ...]):
    """A real install prefix whose ament index lists `packages`."""
    index = root / "share" / "ament_index" / "resource_index" / "packages"
    index.mkdir(parents=True)
    for name in packages:
        (index / name).write_text("")
        (root / "share" / name).mkdir()
    return root


def test_rviz_is_started_only_where_the_ament_index_has_it(tmp_path, monkeypatch, tree):
    module = _launch_module()
    without = _ament_prefix(tmp_path / "without", ("talk2sam_ros",))
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(without))
    assert module.rviz_available() is False
    with_rviz = _ament_prefix(tmp_path / "with", ("rviz2",))
    monkeypatch.setenv("AMENT_PREFIX_PATH", f"{without}:{with_rviz}")
    assert module.rviz_available() is True
    # the rviz2 Node is created only in the branch where rviz_available() holds
    setup = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_setup")
    branch = next(n for n in ast.walk(setup) if isinstance(n, ast.If)
                  and "rviz_available" in ast.unparse(n.test))
    in_branch = {ast.literal_eval(k.value) for n in ast.walk(ast.Module(branch.body, []))
                 if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "Node"
                 for k in n.keywords if k.arg == "executable"}
    assert in_branch == {"rviz2"}
    warning = ast.unparse(ast.Module(branch.orelse, []))
    assert "warning(" in warning and "rviz2 is not installed" in warning


def test_launch_file_loads_for_real_where_launch_is_installed():
    # launch_ros first: the repo's own launch/ folder imports as an (empty) namespace package
    pytest.importorskip("launch_ros", reason="launch/launch_ros are not on PyPI; checked "
                        "statically above")
    import launch
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    description = PythonLaunchDescriptionSource(str(LAUNCH)).get_launch_description(
        launch.LaunchContext())
    declared = {a.name for a in description.get_launch_arguments()}
    assert "image_topic" in declared and "use_speech" in declared


def test_params_yaml_lists_every_parameter_with_a_comment():
    text = PARAMS_YAML.read_text()
    data = yaml.safe_load(text)
    assert list(data) == [f"/**/{NODE_NAME}"]
    values = data[f"/**/{NODE_NAME}"]["ros__parameters"]
    assert list(values) == [p.name for p in PARAMS]
    node_config_from_params(values)  # types and ranges are valid
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"\s{4}(\w+):", line)
        if match:
            assert lines[i - 1].strip().startswith("#"), f"{match.group(1)} has no comment"


def test_rviz_config_shows_image_overlay_similarity_and_mask():
    config = yaml.safe_load(RVIZ.read_text())
    displays = config["Visualization Manager"]["Displays"]
    topics = {d["Topic"]["Value"] for d in displays
              if d["Class"] == "rviz_default_plugins/Image"}
    assert topics == {"image", "overlay", "similarity_color", "mask"}
    assert topics <= set(SUBSCRIPTIONS + PUBLICATIONS)


def test_parameter_table_is_complete_and_consistent():
    assert {f.name for f in dataclasses.fields(NodeConfig)} == set(PARAM_BY_NAME)
    for spec in PARAMS:
        assert len(spec.description) > 20, spec.name
        assert not spec.choices or spec.default in spec.choices, spec.name
        if spec.low is not None:
            assert spec.low <= spec.default <= spec.high, spec.name
    defaults = node_config_from_params({})
    assert defaults.preset == "b" and defaults.autostart and defaults.debug_delay_ms == 0
    assert defaults.qos_reliability == "best_effort"


def test_a_change_is_checked_as_a_whole_against_the_current_values():
    current = {spec.name: spec.default for spec in PARAMS}
    assert "non-empty idle_text" in change_problem(
        current, {"publish_similarity_without_prompt": True})
    assert change_problem(current, {"publish_similarity_without_prompt": True,
                                    "idle_text": "cable"}) is None
    assert "outside" in change_problem(current, {"mask_threshold": 99.0})
    # a problem already there (both values from a params file) blocks only what keeps it
    bad = {**current, "publish_similarity_without_prompt": True}
    assert change_problem(bad, {"mask_threshold": 1.0}) is None
    assert change_problem(bad, {"idle_text": "cable"}) is None
    assert change_problem(bad, {"idle_text": "  "}) is None  # no new problem
    ok = {**current, "publish_similarity_without_prompt": True, "idle_text": "cable"}
    assert "non-empty idle_text" in change_problem(ok, {"idle_text": " "})


@pytest.mark.parametrize("values, words", [
    ({"preset": "xl"}, "preset='xl' is not one of"),
    ({"mask_threshold": 99.0}, "outside"),
    ({"qos_depth": "5"}, "must be int"),
    ({"device": "gpu0"}, "device='gpu0'"),
    ({"no_such": 1}, "unknown parameters: no_such"),
    ({"publish_similarity_without_prompt": True}, "non-empty idle_text"),
])
def test_bad_parameter_values_are_named(values, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        node_config_from_params(values)


def test_node_config_derived_settings():
    cfg = node_config_from_params({"checkpoint_clip": " clip.pt ", "max_rate_hz": 3,
                                   "grasp_end_margin": 0.3})
    assert cfg.checkpoints == {"clip": "clip.pt"}
    assert cfg.max_rate_hz == 3.0 and isinstance(cfg.max_rate_hz, float)
    assert cfg.grasp.end_margin == 0.3
    assert set(cfg.inference_spec.overrides) <= {f.name for f in dataclasses.fields(
        __import__("talk2sam_ros.model", fromlist=["ModelConfig"]).ModelConfig)}


def test_docs_tables_are_generated_from_the_parameter_and_topic_tables(tree):
    """docs/node.md is the one place for the tables: regenerate them and compare."""
    doc = NODE_DOC.read_text(encoding="utf-8")
    assert update_markdown(doc) == doc, \
        "docs/node.md is out of date: python -m talk2sam_ros.ros.params docs/node.md"
    for spec in PARAMS:
        assert f"| `{spec.name}` |" in doc, spec.name
    for topic in SUBSCRIPTIONS + PUBLICATIONS:
        assert f"| `{topic}` |" in doc, topic
    for name, _, _ in _module_constant(tree, "ARGUMENTS"):
        assert f"`{name}`" in doc, name


def test_the_docs_generator_rewrites_stale_tables_and_checks(tmp_path):
    doc = NODE_DOC.read_text(encoding="utf-8")
    stale = tmp_path / "node.md"
    stale.write_text(doc.replace("| `mask_threshold` |", "| `old_name` |"), encoding="utf-8")
    command = [sys.executable, "-m", "talk2sam_ros.ros.params"]
    check = subprocess.run([*command, "--check", str(stale)], capture_output=True, text=True,
                           cwd=REPO, timeout=120)
    assert check.returncode == 1 and "out of date" in check.stderr
    assert subprocess.run([*command, str(stale)], cwd=REPO, timeout=120).returncode == 0
    assert stale.read_text(encoding="utf-8") == doc
    with pytest.raises(ValueError, match="no generated region for: parameters"):
        update_markdown(doc.replace("<!-- END GENERATED parameters -->", ""))
