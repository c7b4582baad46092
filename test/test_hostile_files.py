"""Weights are data, never code: crafted files through the model's loaders.

Every code-carrying file is first proven live (loading it unsafely creates the marker); our
loaders must refuse each file with one CheckpointError line naming it, and create no marker.
The node, CLI and demo entry points are covered in test_hostile_entry_points.py.
"""
from __future__ import annotations

import pytest
import torch

from hostile_files import Hostile, make_all, prove_live
from talk2sam_ros.model import CheckpointError, build_talk2sam, save_trained_weights
from talk2sam_ros.model.checkpoints import read_state_dict, read_torchscript_tensors
from talk2sam_ros.model.config import get_preset
from talk2sam_ros.model.sam_hq import load_sam_hq_checkpoint


@pytest.fixture(scope="module")
def tiny():
    return build_talk2sam("tiny")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny) -> tuple[list[Hostile], object]:
    folder = tmp_path_factory.mktemp("hostile")
    marker = folder / "MARKER"
    valid = folder / "valid_head.pt"
    save_trained_weights(tiny, valid)
    files = make_all(folder, marker, valid)
    for file in files:
        if file.carries_code:
            prove_live(file, marker)
    return files, marker


def _loaders(model):
    return {
        "sam_hq": lambda p: load_sam_hq_checkpoint(model.sam, p),
        "dinov2": model.dino.load_checkpoint,
        "clip": model.text_encoder.load_checkpoint,
        "projection": model.projection.load_checkpoint,
        "talk2sam": lambda p: build_talk2sam("tiny", {"talk2sam": p}),
    }


def test_every_loader_refuses_every_hostile_file_in_one_line(hostile, tiny):
    files, marker = hostile
    for part, load in _loaders(tiny).items():
        for file in files:
            with pytest.raises(CheckpointError) as info:
                load(file.path)
            message = str(info.value)
            assert not marker.exists(), f"{file.name} as {part} ran its code"
            assert "\n" not in message and str(file.path) in message, (file.name, message)
            assert "weights_only=False" not in message and part in message, message


def test_refusal_reasons_say_what_was_wrong(hostile):
    files = {f.name: f.path for f in hostile[0]}
    expect = {"pickle_reduce_zip": "refused .* references io.open",
              "pickle_reduce_legacy": "refused .* references io.open",
              "torchscript_setstate": "refused TorchScript archive .* custom __setstate__",
              "safetensors_bad_header": "cannot read .*SafetensorError",
              "zip_huge_declared_size": "entries declare .* bytes in a .*-byte file",
              "truncated": "cannot read .* corrupt or truncated"}
    for name, pattern in expect.items():
        with pytest.raises(CheckpointError, match=pattern):
            read_state_dict(files[name], "clip")


def test_torchscript_tensors_equal_jit_load_without_running_code(tmp_path, tiny):
    """A traced module's archive (the form of OpenAI's ViT-B-16.pt): same keys, values,
    dtypes and strides as torch.jit.load(...).state_dict(), plain attributes left out."""

    class Small(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seq = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
            self.register_buffer("fp16", torch.arange(5.0).half())
            self.transposed = torch.nn.Parameter(torch.randn(2, 3).t())
            self.attn_mask = torch.ones(2)  # a plain tensor attribute, not in state_dict

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (self.seq(x).sum() + self.fp16.float().sum() + self.transposed.sum()
                    + self.attn_mask.sum())

    traced = torch.jit.trace(Small().eval(), torch.randn(2, 3))
    traced.save(str(tmp_path / "small.pt"))
    expected = torch.jit.load(str(tmp_path / "small.pt")).state_dict()  # our own file
    got = read_torchscript_tensors(tmp_path / "small.pt", "test")
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and got[key].stride() == value.stride(), key
        assert torch.equal(got[key], value), key


def test_wrong_shapes_and_wrong_architecture_head_are_one_line(tmp_path, tiny):
    state = tiny.projection.state_dict()
    state["linear_layer.weight"] = torch.zeros(3, 3)
    torch.save(state, tmp_path / "wrong_shape.pth")
    with pytest.raises(CheckpointError, match="shape mismatch") as info:
        tiny.projection.load_checkpoint(tmp_path / "wrong_shape.pth")
    assert "\n" not in str(info.value)
    other = build_talk2sam(get_preset("tiny").replace(train_full_decoder=True))
    save_trained_weights(other, tmp_path / "full_decoder_head.pt")
    with pytest.raises(CheckpointError, match="different architecture") as info:
        build_talk2sam("tiny", {"talk2sam": tmp_path / "full_decoder_head.pt"})
    assert "\n" not in str(info.value)
