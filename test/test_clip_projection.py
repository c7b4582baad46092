"""The paper's "CLIP partial" setting: ModelConfig.train_clip_projection makes CLIP's final
text_projection trainable (gradients, weights file, fingerprint, predictor text cache), and
talk2sam-train's tune_clip_projection trains it end to end. The default stays unchanged."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data as skdata

from talk2sam_ros.model import (CheckpointError, Talk2SAMPredictor, build_talk2sam,
                                get_preset, load_trained_weights, save_trained_weights)
from talk2sam_ros.model.talk2sam import CLIP_PROJECTION_KEY
from talk2sam_ros.training.data import box_from_mask, list_samples, read_gt, read_image
from talk2sam_ros.training.train import train
from train_helpers import shared_dirs, tiny_config  # noqa: F401 (fixture)

TINY = get_preset("tiny")
CLIP_TINY = TINY.replace(train_clip_projection=True)
BOXES = torch.tensor([[10.0, 10, 120, 140], [0, 0, 200, 149]])


@pytest.fixture(scope="module")
def default_model():
    return build_talk2sam(TINY)


@pytest.fixture(scope="module")
def clip_model():
    return build_talk2sam(CLIP_TINY)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.ascontiguousarray(skdata.chelsea()[::2, ::2])  # 150 x 225 RGB


def _fingerprint(model, skip_clip_projection: bool) -> str:
    """The documented fingerprint, written out independently: sha256 over names, shapes and
    float32 values of every frozen floating tensor."""
    trained = ("projection.", "mask_prompt.")
    hq = ("hf_token", "hf_mlp", "compress_vit_feat", "embedding_encoder",
          "embedding_maskfeature")
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if name.startswith(trained) or not tensor.is_floating_point():
            continue
        if name.startswith("sam.mask_decoder.") and any(p in name for p in hq):
            continue
        if skip_clip_projection and name.startswith(CLIP_PROJECTION_KEY):
            continue
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _backward(model, image) -> None:
    feats = model.encode_images([image, image[:, ::-1].copy()])
    model.train()
    try:
        model.zero_grad(set_to_none=True)
        texts = model.encode_texts(["cat", "ear"])  # cacheable, no grad
        out = model.forward_features(feats, None, BOXES, text_embeddings=texts)
        (out.low_res_logits.mean() + out.iou.mean()).backward()
    finally:
        model.eval()


def test_gradients_reach_text_projection_only_with_the_flag(default_model, clip_model, image):
    _backward(default_model, image)
    proj = default_model.text_encoder.tower.text_projection
    assert not proj.requires_grad and proj.grad is None
    assert not any(n.startswith(CLIP_PROJECTION_KEY)
                   for n, _ in default_model.named_trainable_parameters())

    _backward(clip_model, image)
    proj = clip_model.text_encoder.tower.text_projection
    assert proj.requires_grad and proj.grad is not None and proj.grad.abs().sum() > 0
    for name, param in clip_model.text_encoder.named_parameters():  # the rest stays frozen
        if param is not proj:
            assert param.grad is None and not param.requires_grad, name
    names = {n for n, _ in clip_model.named_trainable_parameters()}
    assert names - {n for n, _ in default_model.named_trainable_parameters()} == \
        {CLIP_PROJECTION_KEY}
    assert CLIP_PROJECTION_KEY in clip_model.trainable_state_dict()
    extra = clip_model.parameter_counts()["trainable"] - \
        default_model.parameter_counts()["trainable"]
    assert extra == proj.numel() == 64 * 512
    for m in (default_model, clip_model):
        m.zero_grad(set_to_none=True)


def test_text_features_and_similarity_match_the_default(default_model, clip_model):
    tokens = default_model.text_encoder.tokenizer(["a photo of a cable", "fork"])
    enc = default_model.text_encoder
    # Our split of open_clip's forward (pooled, then text_projection) is its forward exactly.
    assert torch.equal(enc.project(enc._pooled(tokens)), enc.tower(tokens))
    pooled = clip_model.encode_texts(["cable", "fork"])
    assert pooled.shape == (2, 64) and not pooled.requires_grad  # before the 64 -> 512 projection
    assert default_model.encode_texts(["cable"]).shape == (1, 512)
    # Same frozen weights: averaging before the (linear) projection gives the same text.
    torch.testing.assert_close(clip_model.project_text(pooled),
                               default_model.project_text(default_model.encode_texts(
                                   ["cable", "fork"])), atol=1e-6, rtol=0)


def test_fingerprints_and_default_weights_files(default_model, clip_model, tmp_path):
    assert default_model.encoder_fingerprint == _fingerprint(default_model, False)
    assert clip_model.encoder_fingerprint == _fingerprint(clip_model, True)
    assert clip_model.encoder_fingerprint != default_model.encoder_fingerprint
    # Default files: no CLIP tensors; files written before the flag existed still load.
    path = tmp_path / "default.pt"
    save_trained_weights(default_model, path)
    saved = torch.load(path, weights_only=True)
    assert not any(k.startswith("text_encoder.") for k in saved["state_dict"])
    assert saved["config"]["train_clip_projection"] is False
    del saved["config"]["train_clip_projection"]
    torch.save(saved, path)
    load_trained_weights(build_talk2sam(TINY), path)
    assert build_talk2sam(None, checkpoints={"talk2sam": path}).config == TINY
    # A CLIP-partial file is refused by a default model (architecture field), and vice versa.
    clip_path = tmp_path / "clip.pt"
    save_trained_weights(clip_model, clip_path)
    with pytest.raises(CheckpointError, match="train_clip_projection"):
        load_trained_weights(build_talk2sam(TINY), clip_path)
    with pytest.raises(CheckpointError, match="train_clip_projection"):
        load_trained_weights(build_talk2sam(CLIP_TINY), path)


def test_predictor_text_cache_survives_a_new_clip_projection(clip_model, image, tmp_path):
    model = build_talk2sam(CLIP_TINY)
    pred = Talk2SAMPredictor(model)
    pred.set_image(image)
    before = pred.predict("cat", [[10, 10, 120, 140]])  # "cat" is now in the LRU cache
    other = build_talk2sam(CLIP_TINY)
    with torch.no_grad():
        other.text_encoder.tower.text_projection.mul_(-2.0)
    path = tmp_path / "clip.pt"
    save_trained_weights(other, path)
    # Changing only CLIP's projection leaves the frozen-encoder fingerprint as it was.
    assert other.encoder_fingerprint == other.compute_fingerprint() == \
        clip_model.encoder_fingerprint
    load_trained_weights(model, path)
    after = pred.predict("cat", [[10, 10, 120, 140]])
    assert pred.text_encode_count == 1  # served from the cache ...
    fresh = Talk2SAMPredictor(build_talk2sam(None, checkpoints={"talk2sam": path}))
    fresh.set_image(image)
    ref = fresh.predict("cat", [[10, 10, 120, 140]])
    # ... and still follows the new projection (sign flip -> other similarity map).
    np.testing.assert_array_equal(after.similarity, ref.similarity)
    np.testing.assert_array_equal(after.logits, ref.logits)
    assert np.abs(after.similarity - before.similarity).max() > 1e-3


def test_bf16_build_keeps_the_trained_projection_float32():
    model = build_talk2sam(CLIP_TINY, dtype=torch.bfloat16)
    assert model.text_encoder.tower.token_embedding.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    text = model.project_text(model.encode_texts(["cable"]))
    assert text.dtype == torch.float32 and torch.isfinite(text).all()


def test_training_tunes_clip_projection_and_exports_it(shared_dirs, tmp_path: Path) -> None:
    data, cache_dir = shared_dirs
    cfg = tiny_config(data, cache_dir, tmp_path / "run", train_limit=8, val_limit=2,
                      max_steps=2, tune_clip_projection=True)
    weights = train(cfg)
    saved = torch.load(weights, map_location="cpu", weights_only=True)
    assert saved["config"]["train_clip_projection"] is True
    untrained = build_talk2sam(CLIP_TINY)
    start = untrained.text_encoder.tower.text_projection.detach()
    assert CLIP_PROJECTION_KEY in saved["state_dict"]
    assert not torch.equal(saved["state_dict"][CLIP_PROJECTION_KEY], start)
    assert saved["parameter_counts"] == untrained.parameter_counts()

    # A fresh build from the file alone (config included) reproduces the training-path output.
    loaded = build_talk2sam(None, checkpoints={"talk2sam": weights})
    assert loaded.config.train_clip_projection
    assert torch.equal(loaded.text_encoder.tower.text_projection,
                       saved["state_dict"][CLIP_PROJECTION_KEY])
    sample = list_samples(f"folder:{data}:val")[0]
    rgb, gt = read_image(sample.image), read_gt(sample.mask) > 128
    box = box_from_mask(gt)
    pred = Talk2SAMPredictor(loaded)
    pred.set_image(rgb)
    res = pred.predict(sample.category, box)
    reference = build_talk2sam(CLIP_TINY)
    load_trained_weights(reference, weights)
    with torch.no_grad():
        out = reference.forward_features(reference.encode_images([rgb]), [sample.category],
                                         torch.as_tensor(box, dtype=torch.float32)[None])
    np.testing.assert_allclose(res.low_res_logits[0], out.low_res_logits[0, 0].numpy(),
                               atol=1e-5, rtol=0)
    # The trained CLIP projection is in use: putting back the untrained one alone changes
    # the similarity map (the predictor's cached text features stay valid).
    with torch.no_grad():
        loaded.text_encoder.tower.text_projection.copy_(start)
    assert np.abs(pred.predict(sample.category, box).similarity - res.similarity).max() > 0
