"""Talk2SAM model core on the tiny preset: stage shapes and ranges, predictor contract, reuse,
text-only mode, training path, trained-weights files and fixed-seed encoders."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from skimage import data

from talk2sam_ros.model import (CheckpointError, Talk2SAMPredictor, build_talk2sam, get_preset,
                                load_trained_weights, save_trained_weights)
from talk2sam_ros.model import transforms as T


@pytest.fixture(scope="module")
def model():
    return build_talk2sam("tiny")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.ascontiguousarray(data.chelsea()[::2, ::2])  # 150 x 226, landscape


@pytest.fixture(scope="module")
def predictor(model, image):
    pred = Talk2SAMPredictor(model, text_cache_size=4)
    pred.set_image(image)
    return pred


def test_stage_shapes_and_ranges(model, image):
    feats = model.encode_images([image])
    assert feats.sam_embedding.shape == (1, 64, 64, 64)
    assert feats.sam_interm.shape == (1, 64, 64, 64)
    assert feats.dino_patches.shape == (1, 1024, 64)
    assert feats.dino_attn.shape == (1, 2, 1024)
    assert feats.input_sizes.tolist() == [[680, 1024]]
    assert feats.original_sizes.tolist() == [[150, 226]]
    clip = model.encode_texts(["cable", "fork"])
    assert clip.shape == (2, 512) and torch.isfinite(clip).all()
    text = model.project_text(clip)
    assert text.shape == (2, 64)
    assert torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    out = model.forward_features(feats.select([0, 0]), ["cable", "fork"],
                                 torch.tensor([[10.0, 10, 100, 120], [50, 5, 220, 140]]),
                                 upsample=True)
    assert out.cosine.shape == (2, 1, 32, 32)
    assert out.cosine.abs().max() <= 1.0 + 1e-5
    assert 0.0 <= out.similarity.min() and out.similarity.max() <= 1.0
    assert out.mask_prompt.shape == (2, 1, 256, 256)
    valid = T.prompt_valid_size((680, 1024))
    assert valid == (170, 256)
    assert torch.all(out.mask_prompt[:, :, valid[0]:, :] == 0)  # padding rows stay empty
    assert out.mask_prompt[:, :, : valid[0]].abs().sum() > 0
    assert out.low_res_logits.shape == (2, 1, 256, 256)
    assert out.iou.shape == (2, 1)
    assert out.logits[0].shape == (1, 150, 226)


def test_predict_text_and_boxes(predictor, image):
    res = predictor.predict("cat", [[10, 10, 120, 140], [100, 20, 220, 145]])
    h, w = image.shape[:2]
    assert res.masks.shape == (2, h, w) and res.masks.dtype == bool
    assert res.logits.shape == (2, h, w) and res.logits.dtype == np.float32
    assert res.low_res_logits.shape == (2, 256, 256)
    assert res.scores.shape == (2,) and res.scores.dtype == np.float32
    assert res.similarity.shape == (h, w) and res.similarity.dtype == np.float32
    assert 0.0 <= res.similarity.min() and res.similarity.max() <= 1.0
    assert res.boxes.shape == (2, 4) and not res.boxes_from_text
    np.testing.assert_array_equal(res.masks, res.logits > 0)
    assert {"text", "similarity", "mask_prompt", "prompt", "decode", "postprocess"} <= set(
        res.timings)


def test_similarity_responds_to_text(predictor):
    a = predictor.predict("cable", [[10, 10, 120, 140]])
    b = predictor.predict("a red umbrella", [[10, 10, 120, 140]])
    assert np.abs(a.similarity - b.similarity).max() > 1e-3
    assert np.abs(a.low_res_logits - b.low_res_logits).max() > 1e-4


def test_text_only_mode_returns_masks_and_boxes(predictor, image):
    res = predictor.predict("cat")
    h, w = image.shape[:2]
    assert res.boxes_from_text
    assert 1 <= len(res.boxes) <= predictor.model.config.max_text_boxes
    assert res.masks.shape == (len(res.boxes), h, w)
    assert np.all(res.boxes[:, 0] >= 0) and np.all(res.boxes[:, 2] <= w)
    assert np.all(res.boxes[:, 1] >= 0) and np.all(res.boxes[:, 3] <= h)
    assert np.all(res.boxes[:, 2] > res.boxes[:, 0]) and np.all(res.boxes[:, 3] > res.boxes[:, 1])


def test_box_only_mode_has_no_similarity(predictor):
    res = predictor.predict(None, [5, 5, 100, 100])
    assert res.similarity is None and res.masks.shape[0] == 1


def test_reuse_runs_encoders_once_and_matches_from_scratch(model, image):
    prompts = [("cat", [[10, 10, 120, 140]]), ("ear", [[60, 5, 200, 100], [0, 0, 80, 80]]),
               (None, [[30, 30, 190, 140]]), ("cat", None)]
    shared = Talk2SAMPredictor(model)
    shared.set_image(image)
    results = [shared.predict(t, b) for t, b in prompts]
    assert shared.encode_count == 1
    assert shared.text_encode_count == 2  # "cat" came from the text cache the second time
    for (text, boxes), reused in zip(prompts, results):
        fresh = Talk2SAMPredictor(model)
        fresh.set_image(image)
        alone = fresh.predict(text, boxes)
        assert fresh.encode_count == 1
        np.testing.assert_allclose(reused.logits, alone.logits, atol=1e-5, rtol=0)
        np.testing.assert_allclose(reused.scores, alone.scores, atol=1e-6, rtol=0)
        np.testing.assert_array_equal(reused.boxes, alone.boxes)


def test_text_cache_is_bounded(model, image):
    pred = Talk2SAMPredictor(model, text_cache_size=2)
    pred.set_image(image)
    for word in ("a", "b", "c", "a"):
        pred.predict(word, [[0, 0, 50, 50]])
    assert len(pred._text_cache) == 2
    assert pred.text_encode_count == 4  # "a" was evicted before its second use


def test_bad_inputs_raise_clear_errors(model, image):
    pred = Talk2SAMPredictor(model)
    with pytest.raises(RuntimeError, match="no image set"):
        pred.predict("cat", [[0, 0, 10, 10]])
    with pytest.raises(ValueError, match="H x W x 3"):
        pred.set_image(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        pred.set_image(np.zeros((10, 10, 3), np.float32))
    key = pred.set_image(image)
    for boxes, match in (([[0, 0, 10]], "shape"), ([[0, np.nan, 10, 10]], "NaN"),
                         ([[50, 50, 10, 10]], "inverted"), (np.zeros((0, 4)), "shape")):
        with pytest.raises(ValueError, match=match):
            pred.predict("cat", boxes)
    with pytest.raises(ValueError, match="text"):
        pred.predict("  ", [[0, 0, 10, 10]])
    with pytest.raises(ValueError, match="needs a text"):
        pred.predict(None, None)
    pred.predict("cat", [[0, 0, 10, 10]], frame_key=key)
    pred.set_image(image)
    with pytest.raises(RuntimeError, match="stale frame"):
        pred.predict("cat", [[0, 0, 10, 10]], frame_key=key)
    pred.reset_image()
    with pytest.raises(RuntimeError, match="no image set"):
        pred.predict(None, [[0, 0, 10, 10]])


def test_training_path_grads_only_into_trainable_parts(model, image):
    feats = model.encode_images([image, image[:, ::-1].copy()])
    model.train()
    try:
        for frozen in (model.text_encoder, model.dino, model.sam.image_encoder):
            assert not any(m.training for m in frozen.modules())  # no train-mode behaviour
        assert model.mask_prompt.training and model.sam.mask_decoder.training
        model.zero_grad(set_to_none=True)
        out = model.forward_features(feats, ["cat", "ear"],
                                     torch.tensor([[10.0, 10, 120, 140], [0, 0, 200, 149]]))
        (out.low_res_logits.mean() + out.iou.mean()).backward()
    finally:
        model.eval()
    trainable = {n for n, _ in model.named_trainable_parameters()}
    assert any(n.startswith("projection.") for n in trainable)
    assert any(n.startswith("mask_prompt.") for n in trainable)
    assert any("hf_token" in n for n in trainable)
    for name, param in model.named_parameters():
        if name in trainable:
            assert param.requires_grad
        else:
            assert param.grad is None and not param.requires_grad, name
    assert model.projection.linear_layer.weight.grad.abs().sum() > 0
    assert model.mask_prompt.mask_downscaling[0].weight.grad.abs().sum() > 0
    assert model.sam.mask_decoder.compress_vit_feat[0].weight.grad.abs().sum() > 0
    counts = model.parameter_counts()
    assert 0 < counts["trainable"] < counts["total"]
    assert counts["trainable"] == sum(p.numel() for p in model.trainable_parameters())
    model.zero_grad(set_to_none=True)


def test_encode_images_matches_predictor_cache(model, image):
    feats = model.encode_images([image])
    pred = Talk2SAMPredictor(model)
    pred.set_image(image)
    out = model.forward_features(feats, ["cat"], torch.tensor([[10.0, 10, 120, 140]]))
    res = pred.predict("cat", [[10, 10, 120, 140]])
    np.testing.assert_allclose(out.low_res_logits[0, 0].detach().numpy(), res.low_res_logits[0],
                               atol=1e-5, rtol=0)


def test_trained_weights_round_trip(model, tmp_path, image):
    path = tmp_path / "head.pt"
    other = build_talk2sam("tiny")
    with torch.no_grad():
        for p in other.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    save_trained_weights(other, path, extra={"epoch": 3})
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left no temporary file
    fresh = build_talk2sam("tiny")
    meta = load_trained_weights(fresh, path)
    assert meta == {"epoch": 3}
    for key, value in other.trainable_state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    loaded = build_talk2sam("tiny", checkpoints={"talk2sam": path})
    for key, value in other.trainable_state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert build_talk2sam(None, checkpoints={"talk2sam": path}).config == other.config


def test_trained_weights_warn_about_other_behaviour(tmp_path, caplog):
    """A head trained on attention_max maps loads onto a patch-map model (experiments), but
    not silently."""
    trained = build_talk2sam(get_preset("tiny").replace(similarity_mode="attention_max"))
    save_trained_weights(trained, tmp_path / "head.pt")
    with caplog.at_level("WARNING", logger="talk2sam_ros.model.build"):
        load_trained_weights(build_talk2sam("tiny"), tmp_path / "head.pt")
    assert "similarity_mode='attention_max'" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="talk2sam_ros.model.build"):
        build_talk2sam(None, checkpoints={"talk2sam": tmp_path / "head.pt"})
    assert "trained with other" not in caplog.text


def test_trained_weights_errors(tmp_path):
    model = build_talk2sam("tiny")
    path = tmp_path / "head.pt"
    save_trained_weights(model, path)
    seeded_differently = build_talk2sam(get_preset("tiny").replace(init_seed=1))
    with pytest.raises(CheckpointError, match="different frozen encoders"):
        load_trained_weights(seeded_differently, path)
    other_arch = build_talk2sam(get_preset("tiny").replace(train_full_decoder=True))
    with pytest.raises(CheckpointError, match="train_full_decoder"):
        load_trained_weights(other_arch, path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_trained_weights(model, bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_trained_weights(model, tmp_path / "missing.pt")
    torch.save({"x": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="not a Talk2SAM"):
        load_trained_weights(model, bad)


def test_tiny_encoders_identical_across_builds_and_processes(model):
    again = build_talk2sam("tiny")
    assert again.encoder_fingerprint == model.encoder_fingerprint
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    code = ("import torch; torch.manual_seed(123); from talk2sam_ros.model import build_talk2sam;"
            "print(build_talk2sam('tiny').encoder_fingerprint)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == model.encoder_fingerprint


def test_build_does_not_touch_global_rng():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    build_talk2sam("tiny")
    assert torch.equal(torch.rand(3), expected)


def test_build_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown preset"):
        build_talk2sam("xl")
    with pytest.raises(ValueError, match="unknown checkpoint parts"):
        build_talk2sam("tiny", checkpoints={"sam": "x.pth"})
    with pytest.raises(ValueError, match="dtype"):
        build_talk2sam("tiny", dtype=torch.int8)
    with pytest.raises(ValueError, match="text_box_relative"):
        get_preset("tiny").replace(text_box_relative=1.5)
    with pytest.raises(ValueError, match="text_box_min_cells"):
        get_preset("tiny").replace(text_box_min_cells=0)


def test_bfloat16_encoders_close_to_float32(predictor, image):
    model = build_talk2sam("tiny", dtype=torch.bfloat16)
    assert model.encoder_fingerprint == predictor.model.encoder_fingerprint
    assert model.sam.image_encoder.patch_embed.proj.weight.dtype == torch.bfloat16
    assert model.mask_prompt.scale.dtype == torch.float32  # head and similarity stay fp32
    pred = Talk2SAMPredictor(model)
    pred.set_image(image)
    res = pred.predict("cat", [[10, 10, 120, 140]])
    ref = predictor.predict("cat", [[10, 10, 120, 140]])
    assert res.logits.dtype == np.float32 and res.similarity.dtype == np.float32
    assert np.abs(res.similarity - ref.similarity).max() < 0.02
    assert (res.masks == ref.masks).mean() > 0.95


def test_attention_max_mode(image):
    model = build_talk2sam(get_preset("tiny").replace(similarity_mode="attention_max"))
    feats = model.encode_images([image])
    out = model.forward_features(feats.select([0, 0]), ["cat", "ear"],
                                 torch.tensor([[10.0, 10, 120, 140]] * 2))
    assert out.cosine.shape == (2, 1, 32, 32) and out.cosine.abs().max() <= 1 + 1e-5
    assert out.global_score.shape == (2,)
    assert not torch.allclose(out.cosine[0], out.cosine[1])
    out.global_score.sum().backward()
    assert model.projection.linear_layer.weight.grad.abs().sum() > 0


def test_compile_encoders_compiles_the_modules_that_run(image):
    """compile=True must compile what the encode path calls (DinoBackbone's forward uses
    vit.forward_features, which a compiled vit.__call__ would never see). The eager backend
    only traces, so this stays fast; the outputs and state-dict keys must not change."""
    import torch._dynamo as dynamo

    model = build_talk2sam("tiny")
    keys = list(model.state_dict())
    x_dino = T.dino_preprocess(image)
    x_sam, _ = T.sam_preprocess(image)
    ref_dino, ref_sam = model.encode_dino(x_dino), model.encode_sam(x_sam)
    dynamo.reset()
    dynamo.utils.counters.clear()
    try:
        model.compile_encoders(backend="eager")
        got_dino = model.encode_dino(x_dino)
        assert dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # DINOv2 was traced
        graphs = dynamo.utils.counters["stats"]["unique_graphs"]
        got_sam = model.encode_sam(x_sam)
        assert dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # SAM too
        model.encode_dino(x_dino + 0.1)  # same shapes: no recompilation (per-call hook)
        assert not dynamo.utils.counters["recompiles"]
    finally:
        dynamo.reset()
    for got, ref in zip(got_dino + got_sam, ref_dino + ref_sam):
        assert torch.allclose(got, ref, atol=1e-5, rtol=0)
    assert list(model.state_dict()) == keys


def test_cached_hq_features_follow_weight_changes(tmp_path, image):
    """The per-frame HQ features depend on trainable decoder weights: loading other trained
    weights (or an in-place optimiser-style update) after set_image must not pair the new
    decoder with features computed from the old weights."""
    model = build_talk2sam("tiny")
    other = build_talk2sam("tiny")
    with torch.no_grad():
        for p in other.trainable_parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    save_trained_weights(other, tmp_path / "other.pt")
    pred = Talk2SAMPredictor(model)
    pred.set_image(image)
    box = [[10, 10, 120, 140]]
    before = pred.predict("cat", box)

    def from_scratch() -> np.ndarray:
        fresh = Talk2SAMPredictor(model)
        fresh.set_image(image)
        return fresh.predict("cat", box).logits

    load_trained_weights(model, tmp_path / "other.pt")
    after = pred.predict("cat", box)
    assert "frame_refresh" in after.timings and pred.encode_count == 1
    assert np.abs(after.logits - before.logits).max() > 1e-3  # the new head is used ...
    np.testing.assert_allclose(after.logits, from_scratch(), atol=1e-5, rtol=0)  # ... fully
    assert "frame_refresh" not in pred.predict("cat", box).timings  # refreshed once
    with torch.no_grad():  # an optimiser step updates parameters in place
        model.sam.mask_decoder.compress_vit_feat[3].bias.add_(1.0)
    stepped = pred.predict("cat", box).logits
    assert np.abs(stepped - after.logits).max() > 1e-3
    np.testing.assert_allclose(stepped, from_scratch(), atol=1e-5, rtol=0)


def test_dino_cls_attention_is_what_timm_computes(model, image):
    """DinoBackbone's per-head CLS->patch logits, completed with the CLS->prefix logits, must
    reproduce the CLS output of timm's own last attention layer (q/k/v split, head layout and
    scale right), and patches must exclude CLS and registers."""
    attn_mod = model.dino.vit.blocks[-1].attn
    seen: dict[str, torch.Tensor] = {}
    handle = attn_mod.register_forward_hook(lambda _m, i, o: seen.update(x=i[0], out=o))
    try:
        patches, logits = model.encode_dino(T.dino_preprocess(image))
    finally:
        handle.remove()
    n_prefix = model.dino.num_prefix
    assert n_prefix == 5 and patches.shape[1] == logits.shape[2] == 1024
    b, n, _ = seen["x"].shape
    heads, hd = model.dino.num_heads, model.dino.head_dim
    with torch.no_grad():
        q, k, v = attn_mod.qkv(seen["x"]).reshape(b, n, 3, heads, hd).unbind(2)
        prefix = torch.einsum("bhd,bnhd->bhn", q[:, 0] * hd ** -0.5, k[:, :n_prefix])
        full = torch.cat([prefix, logits], dim=-1).softmax(dim=-1)  # (B, heads, N)
        cls_out = attn_mod.proj(torch.einsum("bhn,bnhd->bhd", full, v).reshape(b, -1))
    assert torch.allclose(cls_out, seen["out"][:, 0], atol=1e-5, rtol=0)


def test_frame_on_another_device_is_a_clear_error(image):
    """A frame cached before the model moved must not be decoded against the moved model."""
    model = build_talk2sam("tiny")
    pred = Talk2SAMPredictor(model)
    pred.set_image(image)
    model.to("meta")  # any other device
    with pytest.raises(RuntimeError, match="set_image again"):
        pred.predict(None, [[0, 0, 10, 10]])
