"""talk2sam-export: export, reuse, --list (in-process main), and the project's CLI conventions
(a bad option: one line, exit 2; an error: one line, exit 1) as a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from talk2sam_ros.tools.export import main

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("onnxruntime")


def test_export_then_reuse_then_list(tmp_path, capsys):
    args = ["--preset", "tiny", "--export_dir", str(tmp_path / "exports")]
    assert main(args) == 0
    first = capsys.readouterr()
    assert "sam_hq: exported " in first.out and "dinov2: exported " in first.out
    assert "exporting the SAM-HQ image encoder to ONNX" in first.err  # progress
    assert "max abs diff embedding" in first.out and "mask IoU 1.0000" in first.out

    assert main(args) == 0
    again = capsys.readouterr()
    assert "sam_hq: reused " in again.out and "dinov2: reused " in again.out
    assert "exporting" not in again.err

    assert main([*args, "--list"]) == 0
    listing = capsys.readouterr().out
    assert f"exports in {tmp_path / 'exports'}: 2" in listing
    assert "sam_hq fp32 1024 px" in listing and "dinov2 fp32 448 px" in listing


def test_failed_export_is_one_error_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["--preset", "tiny", "--export_dir", str(blocker / "exports")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("talk2sam-export: error: cannot create the export folder ")
    assert "Traceback" not in "\n".join(err)


def test_missing_weights_are_one_error_line(tmp_path, capsys):
    assert main(["--preset", "t", "--weights_dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("talk2sam-export: error: preset 't' needs weight files")


def _run_export(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TALK2SAM_WEIGHTS_DIR": str(tmp_path / "weights")}
    return subprocess.run([sys.executable, "-m", "talk2sam_ros.tools.export", *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_bad_option_is_one_usage_line_exit_2(tmp_path):
    proc = _run_export(["--preset", "tiny", "--no_such_option"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "talk2sam-export: error: unrecognized arguments: --no_such_option"]
    assert proc.stdout == ""


def test_missing_checkpoint_is_one_error_line_exit_1(tmp_path):
    missing = tmp_path / "sam_hq_vit_tiny.pth"
    proc = _run_export(["--preset", "tiny", "--checkpoint_sam_hq", str(missing),
                        "--export_dir", str(tmp_path / "exports")], tmp_path)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("talk2sam-export: error: checkpoint_sam_hq=")
    assert str(missing) in lines[0] and "neither a file nor a registry name" in lines[0]
    assert not (tmp_path / "exports").exists()  # nothing exported for a refused file
