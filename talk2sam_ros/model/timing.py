"""The device side of talk2sam_ros.common.timing: what a stopwatch waits for on CUDA."""
from __future__ import annotations

import torch

from talk2sam_ros.common.timing import Sync


def device_sync(device: torch.device | str | None) -> Sync:
    """torch.cuda.synchronize of `device` when it is a CUDA device (CUDA runs asynchronously:
    without it a timer measures kernel launches), else None (CPU work is synchronous)."""
    if device is None:
        return None
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return lambda: torch.cuda.synchronize(device)
