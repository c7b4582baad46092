"""Where the package's config files are found, however it was installed.

A source checkout (`config/` next to the package), a colcon install (the ament share
directory) and a pip install (`setup.py` data_files put `config/` under
`<prefix>/share/talk2sam_ros/`) all ship the same files.
"""
from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = "talk2sam_ros"


def share_dirs() -> list[Path]:
    """Candidate package share folders (holding config/, msg/, ...), most specific first:
    the source tree, the ament share directory, the pip prefix."""
    dirs = [Path(__file__).resolve().parents[2]]
    try:  # a colcon install tree (optional: training and the CLIs never need ROS)
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory(PACKAGE)))
    except Exception:  # noqa: BLE001 - no ament index, or the package is not in it
        pass
    dirs.append(Path(sys.prefix) / "share" / PACKAGE)
    return list(dict.fromkeys(dirs))


def config_dirs() -> list[Path]:
    """Candidate `config/` folders, most specific first: source tree, ament share, pip prefix."""
    return [d / "config" for d in share_dirs()]


def find_share_file(relative: str) -> Path:
    """The first existing `<share>/<relative>`; the source-tree path when none exists (so an
    error message names where the file was expected)."""
    dirs = share_dirs()
    return next((d / relative for d in dirs if (d / relative).is_file()), dirs[0] / relative)


def find_config(name: str) -> Path:
    """The first existing `config/<name>` (see find_share_file)."""
    return find_share_file(f"config/{name}")
