"""Parity of Talk2SAM's box-only / mask_input paths with segment_anything_hq's own SamPredictor
(same random weights, same image and boxes), and of our cached-feature decoder with
MaskDecoderHQ.forward."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from segment_anything_hq import SamPredictor
from skimage import data

from talk2sam_ros.model import Talk2SAMPredictor, build_talk2sam, get_preset
from talk2sam_ros.model import transforms as T
from talk2sam_ros.model.sam_hq import decode_hq, hq_features

TOL = 1e-5


@pytest.fixture(scope="module")
def exact_model():
    # segment_anything_hq's own attention (no SDPA) so both sides run the same ops.
    return build_talk2sam(get_preset("tiny").replace(sam_sdpa=False))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[40:340, :])  # 300 x 512, non-square


@pytest.fixture(scope="module")
def predictors(exact_model, image):
    ours = Talk2SAMPredictor(exact_model)
    ours.set_image(image)
    ref = SamPredictor(exact_model.sam)
    ref.set_image(image)
    return ours, ref


BOXES = np.array([[20, 30, 200, 280], [150, 10, 500, 290], [0, 0, 512, 300]], np.float32)


@pytest.mark.parametrize("multimask,hq_only", [(False, True), (False, False), (True, False),
                                               (True, True)])
def test_box_only_matches_sam_predictor(predictors, image, multimask, hq_only):
    ours, ref = predictors
    res = ours.predict(None, BOXES, multimask_output=multimask, hq_token_only=hq_only)
    boxes_t = torch.as_tensor(ref.transform.apply_boxes(BOXES, image.shape[:2]),
                              dtype=torch.float)
    masks, iou, low = ref.predict_torch(None, None, boxes_t, None, multimask_output=multimask,
                                        return_logits=True, hq_token_only=hq_only)
    assert res.logits.shape == (3, 300, 512)
    assert np.abs(res.low_res_logits - low[:, 0].numpy()).max() <= TOL
    assert np.abs(res.logits - masks[:, 0].numpy()).max() <= TOL
    assert np.abs(res.scores - iou[:, 0].numpy()).max() <= TOL
    agree = res.masks == (masks[:, 0].numpy() > 0)
    assert agree.mean() > 0.9999  # only pixels with |logit| ~ 0 may flip


def test_single_box_numpy_api_matches(predictors):
    ours, ref = predictors
    res = ours.predict(None, BOXES[0], multimask_output=False, hq_token_only=True)
    masks, iou, low = ref.predict(box=BOXES[0], multimask_output=False, return_logits=True,
                                  hq_token_only=True)
    assert np.abs(res.logits - masks).max() <= TOL
    assert np.abs(res.scores - iou).max() <= TOL
    assert np.abs(res.low_res_logits - low).max() <= TOL


def test_explicit_mask_input_matches(predictors):
    ours, ref = predictors
    rng = np.random.default_rng(3)
    mask_input = rng.normal(0, 5, size=(1, 256, 256)).astype(np.float32)
    res = ours.predict(None, BOXES[1], mask_input=mask_input, multimask_output=False,
                       hq_token_only=False)
    masks, iou, low = ref.predict(box=BOXES[1], mask_input=mask_input, multimask_output=False,
                                  return_logits=True, hq_token_only=False)
    assert np.abs(res.logits - masks).max() <= TOL
    assert np.abs(res.scores - iou).max() <= TOL
    # ... and the mask prompt changes the result (it is really used)
    plain = ours.predict(None, BOXES[1], multimask_output=False, hq_token_only=False)
    assert np.abs(plain.low_res_logits - res.low_res_logits).max() > 1e-3


def test_decode_with_cached_hq_features_equals_forward(exact_model):
    torch.manual_seed(0)
    sam = exact_model.sam
    emb = torch.randn(1, 64, 64, 64)
    interm = torch.randn(1, 64, 64, 64)
    sparse = torch.randn(2, 2, 64)
    dense = torch.randn(2, 64, 64, 64)
    pe = sam.prompt_encoder.get_dense_pe()
    with torch.no_grad():
        feats = hq_features(sam.mask_decoder, emb, interm)
        for mm in (False, True):
            for hq in (False, True):
                ref_m, ref_i = sam.mask_decoder(emb, pe, sparse, dense, mm, hq, [interm])
                m, i = decode_hq(sam.mask_decoder, emb, pe, sparse, dense, feats, mm, hq)
                assert torch.allclose(m, ref_m, atol=TOL, rtol=0)
                assert torch.allclose(i, ref_i, atol=TOL, rtol=0)


def test_sdpa_attention_close_to_reference(exact_model, image):
    """The default (SDPA) SAM encoder equals the reference attention up to float rounding."""
    tiny = get_preset("tiny")  # with relative positions, the harder case for SDPA
    config = tiny.replace(sam_sdpa=True, sam=dataclasses.replace(tiny.sam, use_rel_pos=True))
    fast = build_talk2sam(config)
    slow = build_talk2sam(config.replace(sam_sdpa=False))
    x, _ = T.sam_preprocess(image)
    a, ia = fast.encode_sam(x)
    b, ib = slow.encode_sam(x)
    assert torch.allclose(a, b, atol=1e-4, rtol=0)
    assert torch.allclose(ia, ib, atol=1e-4, rtol=0)
