"""talk2sam-export (in-process main): export, reuse, --list, and a failed export as one line."""
from __future__ import annotations

import pytest

from talk2sam_ros.tools.export import main

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
