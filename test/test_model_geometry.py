"""Pure geometry and similarity functions (talk2sam_ros.model.transforms / .similarity)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything_hq.utils.transforms import ResizeLongestSide

from talk2sam_ros.common.boxes import check_boxes
from talk2sam_ros.model import transforms as T
from talk2sam_ros.model.similarity import (attention_max_cosine, boxes_from_similarity,
                                           head_embeddings, l2_normalize, patch_cosine)


@pytest.mark.parametrize("size", [(480, 640), (640, 480), (333, 1001), (1024, 1024), (7, 3)])
def test_sam_frame_sizes_and_box_mapping(size):
    in_size = T.sam_input_size(size)
    assert max(in_size) == 1024
    assert in_size == tuple(ResizeLongestSide.get_preprocess_shape(*size, 1024))
    boxes = np.array([[0, 0, size[1], size[0]], [1.5, 2.0, 3.0, 5.5]], np.float32)
    ref = T.boxes_to_sam(boxes, size)
    batched = T.boxes_to_sam_torch(torch.tensor(boxes), torch.tensor([size, size]))
    assert torch.allclose(ref, batched, atol=1e-3)
    np.testing.assert_allclose(ref[0].numpy(), [0, 0, in_size[1], in_size[0]], atol=1e-3)


def test_mask_prompt_lands_in_valid_top_left_region():
    grid = torch.ones(2, 1, 32, 32)
    out = T.grid_to_mask_prompt(grid, [(768, 1024), (1024, 575)])
    assert out.shape == (2, 1, 256, 256)
    assert torch.all(out[0, 0, :192] == 1) and torch.all(out[0, 0, 192:] == 0)
    assert torch.all(out[1, 0, :, :144] == 1) and torch.all(out[1, 0, :, 144:] == 0)
    assert T.prompt_valid_size((1024, 575)) == (256, 144)
    # a left/right gradient over the image stays a left/right gradient inside the valid region
    ramp = torch.linspace(0, 1, 32).view(1, 1, 1, 32).expand(1, 1, 32, 32)
    placed = T.grid_to_mask_prompt(ramp, [(768, 1024)])[0, 0, :192]
    assert torch.all(placed[:, 1:] >= placed[:, :-1])


@pytest.mark.parametrize("size", [(480, 640), (640, 480), (333, 1001), (1001, 333)])
def test_one_image_point_lands_at_the_same_place_in_every_frame(size):
    """A hot DINOv2 cell (the grid covers the whole, squashed image) must appear at the same
    image point in the source-resolution similarity, in SAM's 256x256 mask prompt (long side
    1024, padded bottom/right) and for a box around that point mapped to SAM's 1024 frame."""
    h, w = size
    row, col = 5, 20
    grid = torch.zeros(1, 1, 32, 32)
    grid[0, 0, row, col] = 1.0
    y, x = (row + 0.5) / 32 * h, (col + 0.5) / 32 * w  # cell centre, source px
    src = T.grid_to_source(grid, size)[0, 0]
    sy, sx = divmod(int(src.argmax()), w)
    assert abs(sy + 0.5 - y) <= h / 64 and abs(sx + 0.5 - x) <= w / 64
    in_size = T.sam_input_size(size)
    prompt = T.grid_to_mask_prompt(grid, [in_size])[0, 0]
    py, px = divmod(int(prompt.argmax()), 256)
    box = T.boxes_to_sam(np.array([[x - 1, y - 1, x + 1, y + 1]]), size)[0]
    cy, cx = float(box[1] + box[3]) / 2 / 4, float(box[0] + box[2]) / 2 / 4  # in 256 px
    assert abs(py + 0.5 - cy) <= 1.0 and abs(px + 0.5 - cx) <= 1.0
    vh, vw = T.prompt_valid_size(in_size)
    assert torch.all(prompt[vh:] == 0) and torch.all(prompt[:, vw:] == 0)


def test_low_res_to_source_crops_padding():
    logits = torch.full((1, 1, 256, 256), -5.0)
    logits[..., :192, :] = 5.0  # valid rows of a 768x1024 input
    out = T.low_res_to_source(logits, (768, 1024), (480, 640))
    assert out.shape == (1, 1, 480, 640)
    assert torch.all(out > 0)  # the padded (negative) rows are cropped away


def test_check_boxes_clips_and_rejects():
    out = check_boxes([[-5, -5, 700, 20]], (480, 640))
    np.testing.assert_array_equal(out, [[0, 0, 640, 20]])
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="inverted"):
        check_boxes([[700, 0, 800, 10]], (480, 640))  # empty once clipped
    with pytest.raises(ValueError, match="inf"):
        check_boxes([[0, 0, np.inf, 10]], (480, 640))
    for junk in ({"x0": 1}, [[0, 0, 10, "a"]], [[0, 0, 10, [1]]], object()):
        with pytest.raises(ValueError, match="boxes"):  # never a TypeError for the caller
            check_boxes(junk, (480, 640))


def test_boxes_from_similarity_components():
    grid = np.full((32, 32), 0.5, np.float32)
    grid[2:6, 3:9] = 0.8  # strongest blob
    grid[20:30, 20:24] = 0.7
    grid[15, 15] = 0.9  # single cell: below min_cells
    cells, peaks = boxes_from_similarity(grid, threshold=0.55, relative=0.3, max_boxes=3,
                                         min_cells=2)
    assert cells.tolist() == [[3, 2, 8, 5], [20, 20, 23, 29]]
    np.testing.assert_allclose(peaks, [0.8, 0.7])
    one, _ = boxes_from_similarity(grid, 0.55, 0.3, max_boxes=1, min_cells=2)
    assert one.tolist() == [[3, 2, 8, 5]]
    flat, _ = boxes_from_similarity(np.full((32, 32), 0.5), 0.55, 0.5, 3, 2)
    assert len(flat) == 0  # nothing above the absolute floor -> caller uses the full image
    boxes = T.grid_cells_to_source_boxes(cells[:1], (32, 32), (320, 640))
    np.testing.assert_allclose(boxes, [[60, 20, 180, 60]])


def test_similarity_maps():
    gen = torch.Generator().manual_seed(0)
    patches = torch.randn(1, 16, 8, generator=gen)
    text = torch.randn(1, 8, generator=gen)
    cos = patch_cosine(text, l2_normalize(patches))
    expected = torch.nn.functional.cosine_similarity(text[:, None], patches, dim=-1)
    assert torch.allclose(cos, expected, atol=1e-6)
    attn = torch.randn(1, 3, 16, generator=gen)
    heads = head_embeddings(patches, attn)
    assert heads.shape == (1, 3, 8)
    cmap, score = attention_max_cosine(text, heads, attn)
    assert cmap.shape == (1, 16) and score.shape == (1,)
    assert cmap.abs().max() <= 1 + 1e-6
    s = torch.einsum("bd,bhd->bh", l2_normalize(text), heads)
    assert torch.allclose(score, s.max(dim=1).values)
    # the patch each head attends to most carries that head's score exactly (when positive)
    best = int(s.argmax())
    peak = int(attn[0, best].argmax())
    assert cmap[0, peak] >= s[0, best] - 1e-6


def test_similarity_maths_stay_fp32_under_autocast():
    """Mixed-precision training wraps forward_features in autocast; the cosines, softmaxes and
    head embeddings must still be float32 maths (autocast would run the einsums in bf16)."""
    gen = torch.Generator().manual_seed(1)
    patches = torch.randn(2, 1024, 64, generator=gen)
    text = torch.randn(2, 64, generator=gen)
    attn = torch.randn(2, 4, 1024, generator=gen) * 3

    def run() -> list[torch.Tensor]:
        heads = head_embeddings(patches, attn)
        return [patch_cosine(text, l2_normalize(patches)), heads,
                *attention_max_cosine(text, heads, attn)]

    ref = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run()
    for a, b in zip(got, ref):
        assert a.dtype == torch.float32
        assert torch.allclose(a, b, atol=1e-6, rtol=0)
