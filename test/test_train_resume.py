"""Resume is exact: a run killed with SIGKILL mid-epoch (or stopped by max_steps) and resumed
ends with bit-identical weights to the uninterrupted run (same seed, CPU, one thread)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from talk2sam_ros.model import build_talk2sam
from talk2sam_ros.training.run_state import RunLog
from talk2sam_ros.training.train import train
from train_helpers import shared_dirs, tiny_config  # noqa: F401 (fixture)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    diff = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not diff, f"weights differ after resume: {diff[:5]}"


def _train_steps(log: Path) -> list[int]:
    if not log.is_file():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if rec.get("kind") == "train":
            out.append(rec["step"])
    return out


@pytest.mark.slow
def test_resume_after_kill_and_after_max_steps(shared_dirs: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    data, cache = shared_dirs
    # 6 train images, batch 2: 3 steps per epoch, 2 epochs. Point-sampled loss, box jitter
    # and a warmup + cosine schedule exercise every random and stateful part.
    common = dict(train_limit=6, val_limit=2, batch_size=2, epochs=2,
                  loss={"kind": "points", "num_points": 512}, augment={"box_jitter": 0.1},
                  optimizer="sgd", lr=0.05, momentum=0.9,
                  lr_schedule="cosine", warmup_steps=2, threads=1, ckpt_every=1,
                  val_at_start=False)
    ref = train(tiny_config(data, cache, tmp_path / "ref", **common))

    # 1) stop after 4 optimizer steps (mid epoch 2), then resume in a new Trainer
    cfg = tiny_config(data, cache, tmp_path / "stopped", max_steps=4, **common)
    train(cfg)
    ck = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    assert ck["position"] == {"epoch": 1, "micro": 1, "step": 4, "best_miou": ck["position"][
        "best_miou"]}
    # resuming with the same max_steps trains nothing more
    again = train(cfg.replace(resume=True))
    assert torch.load(again, weights_only=True)["meta"]["step"] == 4
    assert _train_steps(tmp_path / "stopped" / "log.jsonl") == [1, 2, 3, 4]
    _assert_same(ref, train(cfg.replace(max_steps=0, resume=True)))

    # 2) SIGKILL a real training process after its second step, resume from its checkpoint
    out = tmp_path / "killed"
    killed_cfg = tiny_config(data, cache, out, **common)
    cfg_file = tmp_path / "killed.yaml"
    cfg_file.write_text(yaml.safe_dump(killed_cfg.to_dict()))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "talk2sam_ros.training.train",
                             f"--config={cfg_file}"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if len(_train_steps(out / "log.jsonl")) >= 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the training process ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    steps_before = _train_steps(out / "log.jsonl")
    assert 2 <= len(steps_before) < 6, steps_before
    assert not (out / "talk2sam_weights.pt").exists()  # it really died mid-run
    resumed = train(killed_cfg.replace(resume=True))
    _assert_same(ref, resumed)
    # the log is continuous: each step once, in order
    assert _train_steps(out / "log.jsonl") == list(range(1, 7))


@pytest.mark.slow
def test_grad_accumulation_equals_the_larger_batch(shared_dirs: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    data, cache = shared_dirs
    common = dict(train_limit=4, val_limit=1, epochs=1, threads=1, val_at_start=False,
                  optimizer="sgd", lr=0.05, momentum=0.0, grad_clip=0.0, lr_schedule="constant")
    big = train(tiny_config(data, cache, tmp_path / "b2", batch_size=2, **common))
    acc = train(tiny_config(data, cache, tmp_path / "b1x2", batch_size=1, grad_accum=2,
                            **common))
    wa, wb = _weights(big), _weights(acc)
    assert torch.load(big, weights_only=True)["meta"]["step"] == 2
    assert torch.load(acc, weights_only=True)["meta"]["step"] == 2
    init = build_talk2sam("tiny").trainable_state_dict()
    assert any(not torch.allclose(wa[k], init[k]) for k in wa)  # both really trained
    for k in wa:  # mean of two 1-image losses == loss of the 2-image batch
        assert torch.allclose(wa[k], wb[k], atol=1e-5, rtol=1e-4), k


def test_resume_refuses_changes_that_break_exactness(shared_dirs: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    data, cache = shared_dirs
    own = tmp_path / "data" / "train"
    names = [p.name for p in sorted((data / "train" / "images").glob("*.png"))[:4]]
    for sub in ("images", "masks"):
        (own / sub).mkdir(parents=True)
        for name in names[:3]:
            shutil.copy(data / "train" / sub / name, own / sub / name)
    cfg = tiny_config(data, cache, tmp_path / "run", val_limit=1, batch_size=1, epochs=1,
                      max_steps=1, val_at_start=False, threads=1).replace(
        train_sets=(f"folder:{own.parent}:train",))
    train(cfg)
    resume = cfg.replace(max_steps=0, resume=True)
    # a new batch size would skip the wrong samples; a new lr would be ignored (the optimizer
    # state holds the old one): both are refused, naming the key and both values
    with pytest.raises(ValueError, match=r"batch_size \(1 -> 2\)"):
        train(resume.replace(batch_size=2))
    with pytest.raises(ValueError, match=r"lr \(0.01 -> 0.02\)"):
        train(resume.replace(lr=0.02))
    # same spec, but another image appeared in the folder: the data order changed
    for sub in ("images", "masks"):
        shutil.copy(data / "train" / sub / names[3], own / sub / names[3])
    with pytest.raises(ValueError, match="training set changed .*3 images then, 4 now"):
        train(resume)
    for sub in ("images", "masks"):
        (own / sub / names[3]).unlink()
    # how the run is executed may change freely
    weights = train(resume.replace(log_every=2, ckpt_every=7))
    assert torch.load(weights, weights_only=True)["meta"]["step"] == 3


def test_diverged_training_stops_and_keeps_the_last_good_checkpoint(
        shared_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    data, cache = shared_dirs
    out = tmp_path / "nan"
    # lr 1e30: the first step blows the weights up, the second loss is NaN
    cfg = tiny_config(data, cache, out, train_limit=8, val_limit=1, batch_size=2, epochs=1,
                      optimizer="sgd", lr=1e30, momentum=0.0, grad_clip=0.0,
                      lr_schedule="constant", warmup_steps=0, val_at_start=False,
                      ckpt_every=1, threads=1)
    with pytest.raises(FloatingPointError, match="non-finite training loss .* step 2"):
        train(cfg)
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["position"]["step"] == 1
    assert all(torch.isfinite(v).all() for v in ck["trainable"].values())
    assert not (out / "talk2sam_weights.pt").exists()  # no NaN export for the node to load


def test_run_log_survives_a_torn_line(tmp_path: Path) -> None:
    log = RunLog(tmp_path / "log.jsonl", enabled=True)
    for step in (1, 2, 3):
        log.write({"kind": "train", "step": step, "loss": 1.0 / step})
    with log.path.open("a") as f:
        f.write('{"kind": "train", "step": 4, "lo')  # the crash hit mid-append
    assert [r["step"] for r in log.records()] == [1, 2, 3]
    log.truncate_after(2)  # what --resume does from a step-2 checkpoint
    assert [r["step"] for r in log.records()] == [1, 2]
    assert log.path.read_text().endswith("}\n")
