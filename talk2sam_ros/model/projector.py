"""Talk2DINO projection head: CLIP text space (512) -> DINOv2 patch-feature space (D)."""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

from .checkpoints import CheckpointError, load_into, read_state_dict

log = logging.getLogger(__name__)


class Talk2DINOProjection(nn.Module):
    """Linear(512 -> D) -> tanh -> Linear(D -> D), nothing after the second Linear.

    Parameter names follow Talk2DINO's `ProjectionLayer` (`linear_layer.*`, `hidden_layers.0.*`)
    so the official `vit{b,l}_mlp_infonce.pth` files load directly.
    """

    def __init__(self, in_dim: int = 512, out_dim: int = 768) -> None:
        super().__init__()
        self.linear_layer = nn.Linear(in_dim, out_dim)
        self.act = nn.Tanh()
        self.hidden_layers = nn.ModuleList([nn.Linear(out_dim, out_dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden_layers[0](self.act(self.linear_layer(x)))

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Load an official Talk2DINO projection file (tensors may be saved on cuda:0)."""
        state = read_state_dict(path, "projection")
        state = {_rename_legacy(k): v for k, v in state.items()}
        if "linear_layer.weight" not in state:
            raise CheckpointError(
                f"projection: {path} has no 'linear_layer.weight'; expected a Talk2DINO "
                "projection state dict (linear_layer.*, hidden_layers.0.* or linear_layer2.*)"
            )
        load_into(self, state, path, "projection")
        log.info("loaded Talk2DINO projection from %s", path)


def _rename_legacy(key: str) -> str:
    """Talk2DINO's ProjectionLayer.load_state_dict renames old `linear_layer2.*` keys."""
    for prefix in ("module.", "proj."):
        if key.startswith(prefix):
            key = key[len(prefix):]
    if key.startswith("linear_layer2."):
        return "hidden_layers.0." + key[len("linear_layer2."):]
    return key
