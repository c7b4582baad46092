"""DDP: two gloo processes on CPU (torchrun, rendezvous on 127.0.0.1) train one model and
export the same kind of weights file as a single-process run -- and the same weights: 2 ranks x
batch 2 see the same images per step as 1 process x batch 4, so averaged gradients, logged
losses and validation must agree with it."""
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
from torch.utils.data import DistributedSampler

from talk2sam_ros.model import build_talk2sam, load_trained_weights
from talk2sam_ros.model.talk2sam import ImageFeatures
from talk2sam_ros.training.data import list_samples, read_image
from talk2sam_ros.training.config import TrainConfig
from talk2sam_ros.training.feature_cache import FeatureCache
from talk2sam_ros.training.train import train
from train_helpers import shared_dirs, tiny_config  # noqa: F401 (fixture)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun_two_ranks(cfg: TrainConfig, cfg_file: Path) -> subprocess.CompletedProcess:
    """talk2sam-train under torchrun: 2 gloo processes on CPU, rendezvous on 127.0.0.1;
    bounded: a rank left waiting in a collective hits the timeout instead of hanging."""
    cfg_file.write_text(yaml.safe_dump(cfg.to_dict()))
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           "-m", "talk2sam_ros.training.train", f"--config={cfg_file}"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)


def _records(out: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
            if r["kind"] == kind]


@pytest.mark.slow
def test_ddp_two_gloo_processes(shared_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    data, cache = shared_dirs
    # dense loss and plain SGD: no per-rank point sampling, no Adam normalisation, so the
    # comparison with one process is a float-rounding one. One step only: the similarity
    # branch's gradients (sums with heavy cancellation, ~1e-4 relative rounding noise) make
    # two runs drift apart visibly from the second step on, DDP or not.
    common = dict(train_limit=4, val_limit=2, epochs=1, loss={"kind": "dense"},
                  optimizer="sgd", lr=0.05, momentum=0.0, grad_clip=0.0,
                  lr_schedule="constant", warmup_steps=0, threads=1, val_at_start=False)
    out = tmp_path / "ddp"
    cfg = tiny_config(data, cache, out, batch_size=2, **common)
    proc = _torchrun_two_ranks(cfg, tmp_path / "ddp.yaml")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["ranks_in_sync"] is True  # DDP averaged the gradients on both ranks
    # 4 images over 2 ranks, batch 2 per rank: 1 optimizer step for the epoch
    assert summary["steps"] == 1 and summary["epochs_done"] == 1
    assert summary["last_val"]["val_images"] == 2  # validation sharded, then reduced
    # only rank 0 writes the log: each step once
    assert [r["step"] for r in _records(out, "train")] == [1]
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
    # each rank's own RNG state is kept for resume (ranks are seeded seed + rank)
    assert len(ck["rng"]) == 2 and not torch.equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])

    # One process, batch 4: same images per step, so the same update and the same numbers.
    single_out = tmp_path / "single"
    single = train(tiny_config(data, cache, single_out, batch_size=4, **common))
    ref = torch.load(single, map_location="cpu", weights_only=True)["state_dict"]
    init = build_talk2sam("tiny").trainable_state_dict()
    for k, v in ref.items():
        # gradients averaged over ranks (a sum would double the step): equal up to rounding
        assert torch.allclose(saved["state_dict"][k], v, rtol=1e-4, atol=1e-5), k
    assert sum(float((ref[k] - init[k]).abs().max()) > 1e-4 for k in ref) >= len(ref) // 2
    for ddp_rec, one_rec in zip(_records(out, "train"), _records(single_out, "train"),
                                strict=True):
        # the logged loss is the mean over ranks, not rank 0's half of the batch
        assert ddp_rec["loss"] == pytest.approx(one_rec["loss"], rel=1e-5)
    ddp_val, one_val = _records(out, "val")[-1], _records(single_out, "val")[-1]
    for key in ("val_loss", "miou", "mbiou"):
        assert ddp_val[key] == pytest.approx(one_val[key], rel=1e-3, abs=1e-5), key


@pytest.mark.slow
def test_ddp_non_finite_loss_on_one_rank_stops_every_rank(shared_dirs: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    """One rank's image has corrupt (NaN) cached features: its loss is NaN at step 2. DDP
    would average the NaN gradients into rank 0's step (and checkpoint); instead both ranks
    stop before that optimizer step with the same one-line error, and the step-1 checkpoint
    stays finite."""
    data, _ = shared_dirs
    cache_dir = tmp_path / "cache"  # this test's own cache: one entry gets corrupted
    cfg = tiny_config(data, cache_dir, tmp_path / "run", train_limit=4, val_limit=1,
                      batch_size=1, epochs=1, ckpt_every=1, threads=1, val_at_start=False,
                      optimizer="sgd", lr=0.01, momentum=0.0, lr_schedule="constant",
                      warmup_steps=0)
    samples = list_samples(cfg.train_sets[0])
    # the image rank 1 trains on at step 2 (batch 1: the 2nd index of its sampler shard)
    sampler = DistributedSampler(range(len(samples)), num_replicas=2, rank=1, shuffle=True,
                                 seed=cfg.seed)
    sampler.set_epoch(0)
    target = samples[list(sampler)[1]]
    model = build_talk2sam("tiny")
    with torch.no_grad():
        feats = model.encode_images([read_image(target.image)]).to_dict()
    feats["sam_embedding"].fill_(float("nan"))
    FeatureCache(cache_dir, model).save(target, ImageFeatures.from_dict(feats))

    proc = _torchrun_two_ranks(cfg, tmp_path / "nan.yaml")
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("talk2sam-train: error:")]
    assert len(errors) == 2 and errors[0] == errors[1], proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "non-finite training loss (nan on rank 1) at epoch 1, step 2" in errors[0]
    out = tmp_path / "run"
    ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ck["position"]["step"] == 1
    assert all(torch.isfinite(v).all() for v in ck["trainable"].values())
    assert not (out / "talk2sam_weights.pt").exists()
