"""Distributed set-up and the few collectives training needs (torch.distributed).

One process is the degenerate case: every helper works without a process group (world 1) and
then does no communication. Under ``torchrun`` (WORLD_SIZE > 1) the group is NCCL on GPU and
gloo on CPU; collective tensors live where the backend needs them (:func:`comm_device`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "all_gather", "all_gather_floats", "all_reduce_sum", "barrier",
           "comm_device", "destroy", "init_distributed", "pick_device", "same_on_all_ranks"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on GPU, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local)
    backend = "nccl" if device_kind == "cuda" else "gloo"
    dist.init_process_group(backend=backend, init_method="env://")
    return DistInfo(rank, world, local, True)


def destroy(info: DistInfo) -> None:
    """Leave the process group if :func:`init_distributed` created it."""
    if info.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def pick_device(name: str, info: DistInfo) -> torch.device:
    """The torch device for option ``name`` ("auto", "cpu", "cuda", "cuda:1"); a bare "cuda"
    is this process's local rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", info.local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def comm_device() -> torch.device:
    """Where collective tensors must live: NCCL only moves CUDA tensors, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sum over ranks (float64)."""
    if info.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=comm_device())
    dist.all_reduce(t)
    return t.tolist()


def all_gather_floats(value: float, info: DistInfo) -> list[float]:
    """Every rank's ``value``, in rank order (NaN and inf arrive as they are)."""
    if info.world == 1:
        return [value]
    out = [torch.zeros(1, dtype=torch.float64, device=comm_device()) for _ in range(info.world)]
    dist.all_gather(out, torch.tensor([value], dtype=torch.float64, device=comm_device()))
    return [float(t) for t in out]


def all_gather(obj: Any, info: DistInfo) -> list[Any]:
    """``obj`` of every rank, in rank order (a one-item list without DDP)."""
    if info.world == 1:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def same_on_all_ranks(flat: torch.Tensor, info: DistInfo) -> bool:
    """True when every rank holds exactly the same 1-D tensor as rank 0."""
    if info.world == 1:
        return True
    flat = flat.detach().to(comm_device())
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    diff = (flat - ref).abs().max().reshape(1)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff) == 0.0
