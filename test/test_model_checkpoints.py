"""Official checkpoint layouts (SAM-HQ, DINOv2 Meta + timm, open_clip, Talk2DINO projection):
random state dicts in those layouts are saved, loaded through the real loaders, and checked
tensor by tensor; corrupt, truncated and mismatched files give CheckpointError."""
from __future__ import annotations

import dataclasses

import open_clip
import pytest
import timm
import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import save_file
from segment_anything_hq import sam_model_registry

from talk2sam_ros.model import CheckpointError, build_talk2sam, get_preset
from talk2sam_ros.model.config import PRESETS
from talk2sam_ros.model.sam_hq import build_sam_hq, load_sam_hq_checkpoint

TINY = get_preset("tiny")
# Tiny encoders but SAM-HQ's real vit_tiny (TinyViT) layout, as in sam_hq_vit_tiny.pth.
TINY_WITH_SAM_T = TINY.replace(sam=PRESETS["t"].sam)


def _randomize(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone())
            for k, v in state.items()}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    # SAM-HQ vit_tiny: the registry's own module gives the official key layout.
    sam_state = _randomize(sam_model_registry["vit_tiny"]().state_dict(), 1)
    torch.save(sam_state, root / "sam_hq_vit_tiny.pth")
    # DINOv2 in Meta's layout (dinov2_vits14_reg4_pretrain.pth style, 518 px, 37x37 grid).
    vit = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=518,
                            embed_dim=64, depth=2, num_heads=2, num_classes=0)
    timm_state = _randomize(vit.state_dict(), 2)
    gen = torch.Generator().manual_seed(3)
    pos_cls = torch.randn(1, 1, 64, generator=gen)
    meta = {k: v for k, v in timm_state.items() if k not in ("cls_token", "reg_token",
                                                             "pos_embed")}
    meta.update(cls_token=timm_state["cls_token"] - pos_cls,
                pos_embed=torch.cat([pos_cls, timm_state["pos_embed"]], dim=1),
                register_tokens=timm_state["reg_token"],
                mask_token=torch.randn(1, 64, generator=gen))
    torch.save(meta, root / "dinov2_meta_reg4.pth")
    # open_clip full CLIP (vision + text), text tower as the tiny preset's.
    clip = CLIP(512, CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=16,
                                     image_size=32),
                CLIPTextCfg(width=64, layers=2, heads=2), quick_gelu=True)
    clip_state = _randomize(clip.state_dict(), 4)
    clip.load_state_dict(clip_state)
    save_file(clip_state, str(root / "open_clip_model.safetensors"))
    # Talk2DINO projection, legacy key names (linear_layer2.*) as in older files.
    proj = {"linear_layer.weight": torch.randn(64, 512), "linear_layer.bias": torch.randn(64),
            "linear_layer2.weight": torch.randn(64, 64), "linear_layer2.bias": torch.randn(64)}
    torch.save(proj, root / "vit_mlp_infonce.pth")
    return {"root": root, "sam": sam_state, "timm": timm_state, "pos_cls": pos_cls,
            "clip": clip.eval(), "clip_state": clip_state, "proj": proj}


@pytest.fixture(scope="module")
def loaded(files):
    root = files["root"]
    return build_talk2sam(TINY_WITH_SAM_T, checkpoints={
        "sam_hq": root / "sam_hq_vit_tiny.pth", "dinov2": root / "dinov2_meta_reg4.pth",
        "clip": root / "open_clip_model.safetensors", "projection": root / "vit_mlp_infonce.pth",
    })


def test_sam_hq_every_tensor_arrived(files, loaded):
    state = loaded.sam.state_dict()
    for key, value in files["sam"].items():
        assert torch.equal(state[key], value), key
    # the trainable mask-prompt encoder starts from SAM's mask_downscaling
    for key, value in loaded.mask_prompt.mask_downscaling.state_dict().items():
        assert torch.equal(value, files["sam"][f"prompt_encoder.mask_downscaling.{key}"])


def test_dinov2_meta_layout_converted(files, loaded):
    state = loaded.dino.vit.state_dict()
    for key, value in files["timm"].items():
        if key.startswith("blocks.") or key.startswith(("patch_embed.", "norm.")):
            assert torch.equal(state[key], value), key
    assert torch.equal(state["reg_token"], files["timm"]["reg_token"])
    assert torch.allclose(state["cls_token"], files["timm"]["cls_token"], atol=1e-6)
    assert state["pos_embed"].shape == (1, 32 * 32, 64)  # resampled 37x37 -> 32x32 (448 px)
    # at the native 518 px grid the position embeddings arrive unchanged
    native = dataclasses.replace(TINY.dino, img_size=518)
    model518 = build_talk2sam(TINY.replace(dino=native), checkpoints={
        "dinov2": files["root"] / "dinov2_meta_reg4.pth"})
    assert torch.equal(model518.dino.vit.state_dict()["pos_embed"], files["timm"]["pos_embed"])


def test_dinov2_timm_layout(files, tmp_path):
    torch.save(files["timm"], tmp_path / "timm.pth")
    model = build_talk2sam("tiny", checkpoints={"dinov2": tmp_path / "timm.pth"})
    assert torch.equal(model.dino.vit.state_dict()["blocks.1.attn.qkv.weight"],
                       files["timm"]["blocks.1.attn.qkv.weight"])


def test_clip_text_tower_and_encode_text(files, loaded):
    state = loaded.text_encoder.tower.state_dict()
    for key, value in state.items():
        assert torch.equal(value, files["clip_state"][key]), key
    tokens = open_clip.get_tokenizer("ViT-B-16")(["a photo of a cable."])
    with torch.no_grad():
        expected = files["clip"].encode_text(tokens)
    assert torch.allclose(loaded.text_encoder.encode(["a photo of a cable."]), expected,
                          atol=1e-5)


def test_clip_openai_torchscript_archive(files, tmp_path):
    """OpenAI's ViT-B-16.pt is a TorchScript archive with open_clip's key names."""
    clip = files["clip"]
    example = (torch.zeros(1, 3, 32, 32), torch.zeros(1, 77, dtype=torch.long))
    traced = torch.jit.trace(clip, example, check_trace=False, strict=False)
    traced.save(str(tmp_path / "ViT-B-16.pt"))
    model = build_talk2sam("tiny")
    model.text_encoder.load_checkpoint(tmp_path / "ViT-B-16.pt")
    for key, value in model.text_encoder.tower.state_dict().items():
        assert torch.equal(value, files["clip_state"][key]), key


def test_projection_legacy_keys(files, loaded):
    proj = loaded.projection
    assert torch.equal(proj.linear_layer.weight, files["proj"]["linear_layer.weight"])
    assert torch.equal(proj.hidden_layers[0].weight, files["proj"]["linear_layer2.weight"])
    assert torch.equal(proj.hidden_layers[0].bias, files["proj"]["linear_layer2.bias"])


def test_corrupt_truncated_and_mismatched_files(files, loaded, tmp_path):
    """Failed loads raise before touching the model, so `loaded` stays usable."""
    root = files["root"]
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint" * 100)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((root / "sam_hq_vit_tiny.pth").read_bytes()[:50_000])
    loaders = {"sam_hq": lambda p: load_sam_hq_checkpoint(loaded.sam, p),
               "dinov2": loaded.dino.load_checkpoint, "clip": loaded.text_encoder.load_checkpoint,
               "projection": loaded.projection.load_checkpoint}
    for part, load in loaders.items():
        for bad in (garbage, truncated, tmp_path / "absent.pth"):
            with pytest.raises(CheckpointError, match=bad.name) as info:
                load(bad)
            assert part in str(info.value)

    # wrong architecture: the custom tiny SAM layout into the vit_tiny model
    tiny_sam = tmp_path / "tiny_sam.pth"
    torch.save(build_sam_hq(TINY.sam).state_dict(), tiny_sam)
    with pytest.raises(CheckpointError, match="does not match"):
        build_talk2sam(TINY_WITH_SAM_T, {"sam_hq": tiny_sam})  # through the public builder
    # an original SAM file (no HQ parts)
    plain = tmp_path / "sam_vit_plain.pth"
    torch.save({k: v for k, v in files["sam"].items() if "hf_" not in k}, plain)
    with pytest.raises(CheckpointError, match="HQ"):
        load_sam_hq_checkpoint(loaded.sam, plain)
    # persistent buffers are weights too: a file without the box prompts' random Fourier matrix
    # or TinyViT's BatchNorm statistics must not silently keep the random ones
    partial = tmp_path / "sam_hq_partial.pth"
    for dropped in ("prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
                    "image_encoder.patch_embed.seq.0.bn.running_var"):
        torch.save({k: v for k, v in files["sam"].items() if k != dropped}, partial)
        with pytest.raises(CheckpointError, match=f"missing keys, e.g. \\['{dropped}'\\]"):
            load_sam_hq_checkpoint(loaded.sam, partial)
    # ... while BatchNorm's batch counters (unused in eval mode) may be absent
    torch.save({k: v for k, v in files["sam"].items()
                if not k.endswith("num_batches_tracked")}, partial)
    load_sam_hq_checkpoint(loaded.sam, partial)
    # wrong projection width (a ViT-B file for a 64-wide DINO)
    wide = tmp_path / "vitb_mlp_infonce.pth"
    torch.save({"linear_layer.weight": torch.zeros(768, 512),
                "linear_layer.bias": torch.zeros(768),
                "hidden_layers.0.weight": torch.zeros(768, 768),
                "hidden_layers.0.bias": torch.zeros(768)}, wide)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        loaded.projection.load_checkpoint(wide)
    # DINOv2 without registers
    noreg = tmp_path / "dinov2_noreg.pth"
    torch.save({k: v for k, v in torch.load(root / "dinov2_meta_reg4.pth").items()
                if k != "register_tokens"}, noreg)
    with pytest.raises(CheckpointError, match="register"):
        loaded.dino.load_checkpoint(noreg)
    # a DINO checkpoint given as the CLIP file
    with pytest.raises(CheckpointError, match="clip"):
        loaded.text_encoder.load_checkpoint(root / "dinov2_meta_reg4.pth")


def test_atomic_save_replaces_whole_files_and_keeps_the_old_one_on_failure(tmp_path):
    from talk2sam_ros.model.checkpoints import atomic_torch_save

    path = tmp_path / "ckpt" / "last.pt"
    atomic_torch_save({"step": 1, "w": torch.arange(4.0)}, path)
    atomic_torch_save({"step": 2, "w": torch.arange(8.0)}, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 2 and torch.equal(loaded["w"], torch.arange(8.0))
    with pytest.raises(Exception):  # a lambda cannot be pickled: the save fails midway
        atomic_torch_save({"step": 3, "bad": lambda: None}, path)
    assert torch.load(path, weights_only=True)["step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left
