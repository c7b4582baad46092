"""segment.launch.py's RGB-D and transport arguments: use_depth, depth_topic,
camera_info_topic, fastdds_profile (test_launch.py checks every argument's form and docs).

`launch`/`launch_ros` are not on PyPI: the environment helper is imported from the launch file
and run; how the Nodes use it is checked on the file's syntax tree.
"""
from __future__ import annotations

import ast
import importlib.util

import pytest
from rosutil import REPO

from talk2sam_ros.common.transport import PROFILE_ENV_VARS, images_profile
from talk2sam_ros.ros.params import PARAM_BY_NAME, RGBD_SUBSCRIPTIONS

LAUNCH = REPO / "launch" / "segment.launch.py"
NEW, OLD = PROFILE_ENV_VARS  # Fast DDS 3 (Kilted) and Fast DDS 2 (Humble, Jazzy) variables


@pytest.fixture(scope="module")
def launch_module():
    spec = importlib.util.spec_from_file_location("segment_launch_rgbd", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup_tree() -> ast.FunctionDef:
    tree = ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))
    return next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_setup")


def test_depth_arguments_remap_the_depth_inputs_and_set_use_depth(launch_module, setup_tree):
    names = [a[0] for a in launch_module.ARGUMENTS]
    assert {"use_depth", "depth_topic", "camera_info_topic", "fastdds_profile"} <= set(names)
    remaps = {arg: topic for arg, topic in launch_module.REMAP_ARGS.items()
              if topic in RGBD_SUBSCRIPTIONS}
    assert remaps == {"depth_topic": "depth", "camera_info_topic": "camera_info"}
    # use_depth is a bool parameter: converted from the argument's string, only when given
    assert isinstance(PARAM_BY_NAME["use_depth"].default, bool)
    assert "use_depth" in launch_module.LAUNCH_ARGS
    source = ast.unparse(setup_tree)
    assert "overrides['use_depth'] = _true(arg('use_depth'))" in source
    assert dict((a[0], a[1]) for a in launch_module.ARGUMENTS)["use_depth"] == ""
    assert launch_module._true("true") and not launch_module._true("false")


def test_every_started_node_gets_the_profile_environment(setup_tree):
    nodes = [n for n in ast.walk(setup_tree) if isinstance(n, ast.Call)
             and getattr(n.func, "id", None) == "Node"]
    assert len(nodes) == 3  # talk2sam_node, rviz2, talk2sam_speech
    for node in nodes:
        env = [k for k in node.keywords if k.arg == "env"]
        assert env and ast.unparse(env[0].value) == "env", ast.unparse(node)
    assert "node_environment(arg('fastdds_profile'), dict(context.environment))" in \
        ast.unparse(setup_tree)


def test_fastdds_profile_default_is_the_users_own_else_the_shipped_one(launch_module,
                                                                       tmp_path):
    own = tmp_path / "mine.xml"
    own.write_text("<profiles/>")
    base = {"PATH": "/usr/bin", "ROS_DOMAIN_ID": "7"}
    env = launch_module.node_environment("", base)
    assert env[NEW] == str(images_profile().resolve()) and OLD not in env
    assert env["PATH"] == "/usr/bin" and env["ROS_DOMAIN_ID"] == "7"  # the rest is kept
    # the user's own (old variable on Kilted): kept, under the variable Kilted reads
    env = launch_module.node_environment("", {**base, OLD: str(own)})
    assert env[NEW] == str(own.resolve()) and OLD not in env
    # Humble / Jazzy read the old variable
    env = launch_module.node_environment("", {**base, "ROS_DISTRO": "humble"})
    assert env[OLD] == str(images_profile().resolve()) and NEW not in env


def test_fastdds_profile_none_a_file_or_a_missing_file(launch_module, tmp_path):
    own = tmp_path / "mine.xml"
    own.write_text("<profiles/>")
    base = {NEW: "/somewhere/else.xml", OLD: "/older.xml", "HOME": "/root"}
    env = launch_module.node_environment("none", base)
    assert NEW not in env and OLD not in env and env["HOME"] == "/root"
    assert launch_module.node_environment(" None ", base) == env
    env = launch_module.node_environment(str(own), base)
    assert env[NEW] == str(own.resolve()) and OLD not in env
    with pytest.raises(FileNotFoundError, match="fastdds_profile: .*nope.xml' is not a file"):
        launch_module.node_environment(str(tmp_path / "nope.xml"), base)
