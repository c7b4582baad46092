"""Weights are data, never code: crafted files through every entry point that takes a path.

The node's checkpoint_* parameter of every part, talk2sam-eval, talk2sam-train (init_weights
and --resume), talk2sam-weights verify and talk2sam-demo. Each code-carrying file is first
proven live (loading it unsafely creates the marker). Pass: no marker, the node alive and
unconfigured with one clear log line, each CLI non-zero with one `<tool>: error: ...` line.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import rclpy
import torch
from hostile_files import Hostile, make_all, prove_live
from node_harness import Client, module_domain, ros_environment, start_node
from rosutil import REPO, stop

from talk2sam_ros.model import build_talk2sam, save_trained_weights
from talk2sam_ros.model.config import CHECKPOINT_PARTS


@pytest.fixture(scope="module")
def crafted(tmp_path_factory) -> tuple[list[Hostile], Path, Path]:
    """(hostile files, marker, a valid tiny head) shared by the module."""
    folder = tmp_path_factory.mktemp("crafted")
    marker = folder / "MARKER"
    valid = folder / "valid_tiny_head.pt"
    save_trained_weights(build_talk2sam("tiny"), valid)
    files = make_all(folder, marker, valid)
    for file in files:
        if file.carries_code:
            prove_live(file, marker)
    wrong_shapes = folder / "wrong_shapes.pth"
    torch.save({"linear_layer.weight": torch.zeros(3, 3), "transformer.resblocks.0.w":
                torch.zeros(2), "mask_decoder.hf_token.weight": torch.zeros(1, 2),
                "register_tokens": torch.zeros(1, 4, 8)}, wrong_shapes)
    files.append(Hostile("state_dict_wrong_shapes", wrong_shapes, False))
    # a head whose tensors belong to another architecture (same config entries)
    head = torch.load(valid, weights_only=True)
    name = next(iter(head["state_dict"]))
    head["state_dict"][name] = torch.zeros(7, 3)
    other_arch = folder / "head_other_architecture.pt"
    torch.save(head, other_arch)
    files.append(Hostile("head_wrong_architecture", other_arch, False))
    return files, marker, valid


def _one_error_line(tool: str, stderr: str, path: Path) -> str:
    errors = [ln for ln in stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1, stderr[-3000:]
    line = errors[0]
    assert line.startswith(f"{tool}: error: ") and str(path) in line, line
    assert "Traceback" not in stderr and "weights_only=False" not in stderr, stderr[-3000:]
    return line


# ---------------------------------------------------------------------------- the node
def test_node_refuses_every_crafted_file_for_every_part(crafted, tmp_path):
    files, marker, _ = crafted
    domain = module_domain(41)
    log = tmp_path / "node.log"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in ros_environment(domain).items():
            mp.setenv(name, value)
        proc = start_node(log, domain, "-p", "autostart:=false",
                          "-p", "diagnostics_period_s:=0.0")
        context = rclpy.Context()
        rclpy.init(context=context, domain_id=domain)
        client = Client(context)
        try:
            assert client.spin_until(lambda: "autostart is false" in log.read_text(), 150)
            for part in CHECKPOINT_PARTS:
                for file in files:
                    before = log.read_text(errors="replace")
                    ok = client.set_parameters(**{f"checkpoint_{part}": str(file.path)})
                    assert all(r.successful for r in ok)
                    assert client.change_state("configure") is False, (part, file.name)
                    assert client.state() == "unconfigured"
                    assert not marker.exists(), f"{file.name} as checkpoint_{part} ran code"
                    assert proc.poll() is None, log.read_text()[-3000:]
                    new = log.read_text(errors="replace")[len(before):]
                    lines = [ln for ln in new.splitlines() if str(file.path) in ln]
                    assert len(lines) == 1 and "configure failed: " in lines[0], \
                        (part, file.name, new[-2000:])
                    assert "Traceback" not in new and "weights_only=False" not in new, new
                assert all(r.successful for r in client.set_parameters(
                    **{f"checkpoint_{part}": ""}))
            # still a working node: with the files cleared it configures
            assert client.change_state("configure") is True, log.read_text()[-3000:]
        finally:
            client.close()
            context.try_shutdown()
            assert stop(proc, timeout=30) == 0, log.read_text()[-3000:]


# ---------------------------------------------------------------------------- the CLIs
def test_eval_refuses_every_crafted_file(crafted, tmp_path, capsys):
    from talk2sam_ros.training.evaluate import main

    files, marker, _ = crafted
    for file in files:
        for option in ("--checkpoint_talk2sam", "--checkpoint_clip", "--checkpoint_sam_hq"):
            rc = main(["--preset", "tiny", option, str(file.path), "--sets",
                       f"folder:{tmp_path}/none:val", "--out_dir", str(tmp_path / "out"),
                       "--no_progress"])
            err = capsys.readouterr().err
            assert rc != 0 and not marker.exists(), (file.name, option, err)
            _one_error_line("talk2sam-eval", err, file.path)


def test_train_refuses_crafted_init_weights_and_resume_checkpoints(crafted, tmp_path, capsys):
    from talk2sam_ros.training.train import main

    files, marker, _ = crafted
    for file in files:
        rc = main(["--preset=tiny", f"--init_weights={file.path}", "--device=cpu",
                   f"--train_sets=folder:{tmp_path}/none:train",
                   f"--out_dir={tmp_path / 'init'}", "--progress=false"])
        err = capsys.readouterr().err
        assert rc != 0 and not marker.exists(), (file.name, err)
        _one_error_line("talk2sam-train", err, file.path)
    # --resume reads <out_dir>/checkpoint.pt: a crafted one there is refused the same way
    from talk2sam_ros.training.synthetic import generate_synthetic_dataset

    data = generate_synthetic_dataset(tmp_path / "data", n=4, seed=0, image_size=64,
                                      distractor_prob=0.0, progress=False)
    for file in (f for f in files if f.carries_code):
        out = tmp_path / f"resume_{file.name}"
        out.mkdir()
        shutil.copyfile(file.path, out / "checkpoint.pt")
        rc = main(["--preset=tiny", "--device=cpu", f"--train_sets=folder:{data}:train",
                   f"--out_dir={out}", "--resume", "--progress=false", "--num_workers=0"])
        err = capsys.readouterr().err
        assert rc != 0 and not marker.exists(), (file.name, err)
        _one_error_line("talk2sam-train", err, out / "checkpoint.pt")


def test_weights_verify_hashes_crafted_files_without_loading_them(crafted, tmp_path, capsys,
                                                                   monkeypatch):
    from talk2sam_ros.tools.weights import main

    files, marker, _ = crafted
    cache = tmp_path / "cache"
    cache.mkdir()
    entries = {}
    for file in files:
        shutil.copyfile(file.path, cache / file.path.name)
        entries[file.name] = {"filename": file.path.name, "url": "http://127.0.0.1:9/x",
                              "part": "clip", "sha256": "0" * 64}
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps({"files": entries}))
    monkeypatch.setenv("TALK2SAM_WEIGHTS_DIR", str(cache))
    rc = main(["--registry", str(registry), "verify", *entries])
    out = capsys.readouterr().out
    assert rc == 1 and not marker.exists()
    assert all(f"{name}" in out and "mismatch" in out for name in entries), out


def test_demo_refuses_crafted_heads_and_encoders_in_one_line(crafted, tmp_path):
    files, marker, valid = crafted
    by_name = {f.name: f.path for f in files}
    cache = tmp_path / "weights"
    cached_head = cache / "trained" / "tiny_synthetic.pt"  # the demo's own trained head
    cached_head.parent.mkdir(parents=True)
    shutil.copyfile(by_name["pickle_reduce_zip"], cached_head)
    env = {**os.environ, **ros_environment(module_domain(43)), "TALK2SAM_WEIGHTS_DIR": str(cache)}
    runs = [
        ([], cached_head),
        (["--checkpoint", f"talk2sam={by_name['pickle_reduce_legacy']}"],
         by_name["pickle_reduce_legacy"]),
        (["--checkpoint", f"talk2sam={valid}", "--checkpoint",
          f"clip={by_name['torchscript_setstate']}"], by_name["torchscript_setstate"]),
    ]
    for extra, refused in runs:
        proc = subprocess.run(
            [sys.executable, "-m", "talk2sam_ros.tools.demo", "--out", str(tmp_path / "out"),
             "--synthetic", "1", "--no-photos", "--quiet", "--timeout", "300", *extra],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode != 0 and not marker.exists(), proc.stderr[-3000:]
        _one_error_line("talk2sam-demo", proc.stderr, refused)
