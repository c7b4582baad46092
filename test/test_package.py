"""Package metadata is consistent and every declared entry point and message is there."""
from __future__ import annotations

import importlib
import importlib.metadata as md
import re
import shutil
import xml.etree.ElementTree as ET

import pytest
from rosutil import REPO

PKG = ET.parse(REPO / "package.xml").getroot()


def test_package_xml_and_python_metadata_agree():
    import talk2sam_ros

    name, version = PKG.findtext("name"), PKG.findtext("version")
    assert name == "talk2sam_ros"
    assert md.version(name) == version == talk2sam_ros.__version__
    assert PKG.find("export/build_type").text == "ament_cmake"
    assert re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", PKG.find("maintainer").get("email"))


def test_every_console_script_resolves():
    eps = [ep for ep in md.distribution("talk2sam_ros").entry_points
           if ep.group == "console_scripts"]
    names = {ep.name for ep in eps}
    assert {"talk2sam_node", "talk2sam-train", "talk2sam-eval", "talk2sam-demo",
            "talk2sam-weights", "talk2sam-bench"} <= names
    for ep in eps:
        assert callable(ep.load()), ep
        assert shutil.which(ep.name), f"{ep.name} is not on PATH"


def test_every_message_is_built_and_importable():
    cmake = (REPO / "CMakeLists.txt").read_text()
    files = sorted((REPO / "msg").glob("*.msg"))
    assert files
    msg = importlib.import_module("talk2sam_ros.msg")
    for f in files:
        assert f'"msg/{f.name}"' in cmake, f"{f.name} not in rosidl_generate_interfaces"
        cls = getattr(msg, f.stem)
        cls()  # constructible with defaults


def test_ros2_run_executables_are_installed():
    cmake = (REPO / "CMakeLists.txt").read_text()
    ament = pytest.importorskip("ament_index_python")
    prefix = ament.get_package_prefix("talk2sam_ros")
    for exe in re.search(r"install\(PROGRAMS([^)]*)DESTINATION", cmake).group(1).split():
        assert (REPO / exe).exists()
        installed = REPO.joinpath(prefix, "lib", "talk2sam_ros", exe.split("/")[-1])
        assert installed.exists(), installed
