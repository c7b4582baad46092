"""Package metadata is consistent and every declared entry point and message is there."""
from __future__ import annotations

import importlib
import importlib.metadata as md
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

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


def test_pip_wheel_ships_config_found_outside_a_checkout(tmp_path):
    """`pip install` (no colcon): the training presets and the speech vocabulary come with the
    wheel and are found from <prefix>/share, not from a source tree."""
    import os
    import subprocess
    import sys
    import sysconfig

    run = lambda *cmd, **kw: subprocess.run(  # noqa: E731
        cmd, check=True, capture_output=True, text=True, timeout=300, **kw)
    # Built from a copy of what setup.py reads, so setuptools' build/ and egg-info stay out of
    # the checkout (its build/ is colcon's).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "package.xml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("talk2sam_ros", "config"):
        shutil.copytree(REPO / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", str(tmp_path / "wheel"), str(src))
    wheel = next((tmp_path / "wheel").glob("talk2sam_ros-*.whl"))
    env = tmp_path / "env"
    run(sys.executable, "-m", "venv", "--without-pip", str(env))
    site = next(env.glob("lib/python*/site-packages"))
    # The new environment borrows this one's dependencies (after its own site-packages).
    (site / "deps.pth").write_text(
        f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    # --ignore-installed: never uninstall the checkout's own (editable) install from this env.
    run(sys.executable, "-m", "pip", "install", "--no-deps", "--ignore-installed", "-q",
        "--prefix", str(env),
        str(wheel))
    probe = ("import talk2sam_ros.common.resources as r, sys;"
             "from talk2sam_ros.training.config import resolve_config_path;"
             "from talk2sam_ros.speech.grammar import default_vocabulary_path;"
             "print(r.__file__); print(resolve_config_path('paper_vit_h'));"
             "print(default_vocabulary_path())")
    plain = {k: v for k, v in os.environ.items() if k != "AMENT_PREFIX_PATH"}  # no ROS
    out = run(str(env / "bin" / "python"), "-c", probe, cwd=tmp_path, env=plain).stdout.split()
    assert out[0].startswith(str(env)), out  # the installed copy, not the checkout
    share = env / "share" / "talk2sam_ros" / "config"
    assert out[1:] == [str(share / "train" / "paper_vit_h.yaml"),
                       str(share / "speech_vocabulary.yaml")]


@pytest.mark.slow
def test_ci_fails_when_no_test_is_collected():
    """.ci/run on this checkout (set-up is idempotent: current stamps, cached colcon build)
    with a selection that matches no test must exit non-zero, not report success."""
    import os
    import subprocess

    env = {**os.environ, "T2S_SKIP_APT": "1"}
    proc = subprocess.run(["bash", str(REPO / ".ci" / "run"), "-k", "no_test_is_called_this"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode != 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "collected no tests" in proc.stderr, proc.stderr[-2000:]


def test_the_tools_default_output_folders_are_git_ignored():
    """Run from a checkout, no tool's default output may show up in `git status`."""
    import subprocess

    from talk2sam_ros.tools import bench, demo, transport
    from talk2sam_ros.training.config import TrainConfig
    from talk2sam_ros.training.evaluate import EvalConfig

    assert demo.build_parser().get_default("out") is None  # then talk2sam_demo_<date-time>
    outputs = [Path("talk2sam_demo_20260101_000000"), bench.BenchConfig().out,
               Path(EvalConfig(sets=("folder:x:val",)).out_dir), Path(TrainConfig().out_dir),
               transport.build_parser().get_default("out")]
    probes = [str(folder / "result.json") for folder in outputs]
    proc = subprocess.run(["git", "check-ignore", "--no-index", *probes], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert sorted(proc.stdout.split()) == sorted(probes), proc.stdout + proc.stderr
