"""DDP: two gloo processes on CPU (torchrun, rendezvous on 127.0.0.1) train one model and
export the same kind of weights file as a single-process run."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from talk2sam_ros.model import build_talk2sam, load_trained_weights
from train_helpers import shared_dirs, tiny_config  # noqa: F401 (fixture)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_ddp_two_gloo_processes(shared_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    data, cache = shared_dirs
    out = tmp_path / "ddp"
    cfg = tiny_config(data, cache, out, train_limit=8, val_limit=2, batch_size=2, epochs=1,
                      loss="points", num_points=512, threads=1, val_at_start=False)
    cfg_file = tmp_path / "ddp.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.to_dict()))
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           "-m", "talk2sam_ros.training.train", f"--config={cfg_file}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["ranks_in_sync"] is True  # DDP averaged the gradients on both ranks
    # 8 images over 2 ranks, batch 2 per rank: 2 optimizer steps for the epoch
    assert summary["steps"] == 2 and summary["epochs_done"] == 1
    assert summary["last_val"]["val_images"] == 2  # validation sharded, then reduced
    weights = out / "talk2sam_weights.pt"
    saved = torch.load(weights, map_location="cpu", weights_only=True)
    model = build_talk2sam("tiny")
    assert set(saved["state_dict"]) == set(model.trainable_state_dict())
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    load_trained_weights(model, weights)
    after = model.trainable_state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained
    ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ck["world"] == 2
