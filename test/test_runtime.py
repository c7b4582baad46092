"""runtime onnxruntime on the tiny preset: ONNX exports of the frozen encoders against PyTorch
(parity of features, logits and masks in both similarity modes), the export cache (reuse, a
stale export after changed weights, a tampered file, failed exports) and the options.

One export is made per module into a shared folder and reused by the tests that only read it;
tests that change the folder work on copies.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from talk2sam_ros.model import Talk2SAMPredictor, build_talk2sam, get_preset
from talk2sam_ros.model import transforms as T
from talk2sam_ros.model.errors import CheckpointError, ExportError
from talk2sam_ros.model.export import (FP32_TOLERANCE, INT8_MIN_MASK_IOU, RECORD_FILE,
                                       ensure_exports, export_key, read_record)
from talk2sam_ros.model.runtime import ENCODER_PARTS, OnnxEncoders
from talk2sam_ros.model.runtime_compare import (compare_runtimes, comparison_markdown,
                                                mask_agreement)
from talk2sam_ros.weights import InferenceSpec
from talk2sam_ros.weights.inference import load_for_inference

ort = pytest.importorskip("onnxruntime")

TOL = 1e-4  # the bound on fp32 features and logits
MARGIN = 1e-3  # "away from the threshold": |torch logit| > 10 x TOL (pixels nearer may flip)
BOXES = np.array([[20, 30, 200, 280], [150, 10, 500, 290]], np.float32)


def onnx_config(**changes):
    return get_preset("tiny").replace(runtime="onnxruntime", **changes)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="module")
def ort_model(export_dir):
    """The tiny model on ONNX Runtime: the module's one fresh export."""
    return build_talk2sam(onnx_config(), export_dir=export_dir)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[40:340, :])  # 300 x 512, non-square


def _folders(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()}


def _encoded(model, image: np.ndarray) -> list[torch.Tensor]:
    """What set_image caches comes from these four tensors (embedding, interm0, patch
    tokens, CLS attention); the rest is derived from them in torch."""
    sam_in = T.sam_preprocess(image)[0]
    dino_in = T.dino_preprocess(image, model.config.dino.img_size)
    return [*model.encode_sam(sam_in), *model.encode_dino(dino_in)]


def test_new_export_is_validated_recorded_and_attached(ort_model, export_dir):
    runtime = ort_model.image_runtime
    assert isinstance(runtime, OnnxEncoders) and set(runtime.records) == set(ENCODER_PARTS)
    assert _folders(export_dir) == {r.folder.name for r in runtime.records.values()}
    for part, rec in runtime.records.items():
        assert not rec.reused and rec.folder.name.startswith(f"{part}-fp32-")
        assert rec.key.fingerprint == ort_model.compute_fingerprint(
            {"sam_hq": "sam.image_encoder.", "dinov2": "dino."}[part])
        saved = json.loads((rec.folder / RECORD_FILE).read_text())
        assert saved["key"] == rec.key.to_dict() and "model.onnx.data" in saved["files"]
        val = saved["validation"]
        assert all(d <= FP32_TOLERANCE for d in val["max_abs_diff"].values()), val
        assert val["mask_logits_max_abs_diff"] <= val["mask_logits_tolerance"]
        assert val["mask_iou_min"] == 1.0
        assert runtime.sessions[part].get_providers()[0] == "CPUExecutionProvider"
    assert ort_model.describe()["runtime"]["runtime"] == "onnxruntime"


@pytest.mark.parametrize("mode", ["patch", "attention_max"])
def test_onnxruntime_matches_torch_logits_and_masks(ort_model, export_dir, image, mode):
    """Independently built torch and onnxruntime models (same seed): features, similarity,
    logits within 1e-4, identical masks wherever the logit is not at the threshold."""
    torch_model = build_talk2sam(get_preset("tiny").replace(similarity_mode=mode))
    ort_model = build_talk2sam(onnx_config(similarity_mode=mode), export_dir=export_dir)
    assert all(r.reused for r in ort_model.image_runtime.records.values())
    for name, ref, out in zip(("embedding", "interm0", "patches", "attention"),
                              _encoded(torch_model, image), _encoded(ort_model, image)):
        assert ref.shape == out.shape and (ref - out).abs().max().item() <= TOL, name
    preds = [Talk2SAMPredictor(m) for m in (torch_model, ort_model)]
    for p in preds:
        p.set_image(image)
    for text, boxes in (("cable", BOXES), ("person", None), (None, BOXES)):
        ref, out = (p.predict(text, boxes) for p in preds)
        assert np.array_equal(ref.boxes, out.boxes)
        assert np.abs(ref.logits - out.logits).max() <= TOL, (text, boxes is None)
        assert np.abs(ref.scores - out.scores).max() <= TOL
        if text is not None:
            assert np.abs(ref.similarity - out.similarity).max() <= TOL
        away = np.abs(ref.logits) > MARGIN
        assert away.mean() > 0.9 and np.array_equal(ref.masks[away], out.masks[away])


def test_training_features_match_in_batches(ort_model, image):
    """encode_images (training / evaluation path), two images in one batch."""
    images = [image, np.ascontiguousarray(image[::-1, ::2])]
    got = ort_model.encode_images(images)
    with ort_model.using_encoders(None):
        ref = ort_model.encode_images(images)
    for name in ("sam_embedding", "sam_interm", "dino_patches", "dino_attn"):
        assert getattr(got, name).shape == getattr(ref, name).shape
        assert (getattr(got, name) - getattr(ref, name)).abs().max().item() <= TOL, name


def test_valid_exports_are_reused_unchanged(ort_model, export_dir):
    before = {p: (r.folder, (r.folder / "model.onnx").stat().st_mtime_ns)
              for p, r in ort_model.image_runtime.records.items()}
    lines: list[str] = []
    again = build_talk2sam(onnx_config(), export_dir=export_dir, progress=lines.append)
    for part, rec in again.image_runtime.records.items():
        assert rec.reused and (rec.folder, rec.model_path.stat().st_mtime_ns) == before[part]
    assert sum("using the validated export" in line for line in lines) == 2
    assert not any("exporting" in line for line in lines)


def test_stale_export_after_changed_weights_is_not_reused(ort_model, export_dir, image,
                                                          tmp_path):
    """A different DINOv2 file: its export is redone (new key and folder), SAM-HQ's reused,
    and the new export computes the new weights, not the old."""
    cache = tmp_path / "exports"
    shutil.copytree(export_dir, cache)
    state = {k: v.clone() for k, v in ort_model.dino.vit.state_dict().items()}
    weight = state["blocks.1.mlp.fc2.weight"]  # (a constant shift would vanish in the norm)
    weight += 0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(1))
    dino_file = tmp_path / "dinov2_changed.pth"
    torch.save(state, dino_file)
    changed = build_talk2sam(onnx_config(), checkpoints={"dinov2": dino_file}, export_dir=cache)
    old, new = ort_model.image_runtime.records, changed.image_runtime.records
    assert new["sam_hq"].reused and new["sam_hq"].folder.name == old["sam_hq"].folder.name
    assert not new["dinov2"].reused
    assert new["dinov2"].key.fingerprint != old["dinov2"].key.fingerprint
    assert new["dinov2"].folder.name != old["dinov2"].folder.name
    assert (cache / old["dinov2"].folder.name).is_dir()  # the old one is left, not used
    patches = _encoded(changed, image)[2]
    with changed.using_encoders(None):
        ref = _encoded(changed, image)[2]
    assert (patches - ref).abs().max().item() <= TOL
    assert (_encoded(ort_model, image)[2] - ref).abs().max().item() > 1e-3  # the old export


def test_tampered_export_is_refused_and_redone(ort_model, export_dir, tmp_path):
    cache = tmp_path / "exports"
    shutil.copytree(export_dir, cache)
    key = export_key(ort_model, "dinov2", "fp32")
    data_file = cache / key.folder_name / "model.onnx.data"
    raw = bytearray(data_file.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data_file.write_bytes(bytes(raw))
    record, why = read_record(cache / key.folder_name, key)
    assert record is None and "model.onnx.data does not match its recorded sha256" in why
    records = ensure_exports(ort_model, cache)
    assert records["sam_hq"].reused and not records["dinov2"].reused
    assert read_record(cache / key.folder_name, key)[0] is not None
    assert not [p for p in cache.iterdir() if p.name.startswith(".staging")]


def test_export_that_does_not_match_torch_fails_and_keeps_nothing(tmp_path):
    """DINOv2 whose eager output differs from its traced graph (a Python branch, as in
    real data-dependent code): validation refuses it with one line; nothing is kept."""
    model = build_talk2sam("tiny")
    model.dino.register_forward_hook(
        lambda _m, _i, out: out if torch.compiler.is_exporting() else (out[0] + 0.01, out[1]))
    cache = tmp_path / "exports"
    with pytest.raises(ExportError) as err:
        ensure_exports(model, cache)
    message = str(err.value)
    assert message.startswith("dinov2: the ONNX export does not match PyTorch")
    assert "patches" in message and "not kept" in message and "\n" not in message
    assert list(cache.iterdir()) == []  # neither the SAM-HQ export nor a staging folder


def test_unwritable_export_folder_is_one_error_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match=r"^cannot create the export folder .*a_file/x: "):
        build_talk2sam(onnx_config(), export_dir=blocker / "x")
    assert isinstance(ExportError("x"), CheckpointError)  # the node reports it as one line


@pytest.mark.parametrize("changes, words", [
    ({"runtime": "tensorflow"}, "unknown runtime 'tensorflow'"),
    ({"runtime": "onnxruntime", "runtime_provider": "npu"}, "unknown runtime_provider"),
    ({"runtime_quantize": "int8_dynamic"}, "apply to runtime onnxruntime, not torch"),
    ({"runtime": "onnxruntime", "runtime_fp16": True}, "set runtime_provider tensorrt"),
    ({"runtime": "onnxruntime", "compile": True}, "compile (torch.compile) applies to"),
    ({"runtime": "onnxruntime", "runtime_provider": "cuda",
      "runtime_quantize": "int8_dynamic"}, "runs on the CPU execution provider"),
])
def test_contradictory_runtime_options_are_refused(changes, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        get_preset("tiny").replace(**changes)


def test_float16_encoders_are_refused_with_onnxruntime(export_dir):
    with pytest.raises(ValueError, match="runs the encoders in float32, not float16"):
        build_talk2sam(onnx_config(), export_dir=export_dir, dtype=torch.float16)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(),
                    reason="this onnxruntime has the CUDA provider")
def test_gpu_provider_without_onnxruntime_gpu_is_one_error_line(tmp_path):
    with pytest.raises(ExportError, match="CUDAExecutionProvider is not in this onnxruntime "
                                          r"\(.*\); install onnxruntime-gpu"):
        build_talk2sam(onnx_config(runtime_provider="cuda"), export_dir=tmp_path / "exports")
    assert not (tmp_path / "exports").exists()  # refused before exporting anything


def test_load_for_inference_keeps_exports_in_the_weights_cache(ort_model, export_dir, tmp_path):
    """export_dir "" -> <weights_dir>/exports; auto dtype is float32 with onnxruntime."""
    shutil.copytree(export_dir, tmp_path / "exports")
    spec = InferenceSpec(preset="tiny", weights_dir=str(tmp_path), device="cpu",
                         overrides={"runtime": "onnxruntime"})
    loaded = load_for_inference(spec)
    assert loaded.dtype == torch.float32
    recs = loaded.model.image_runtime.records
    assert all(r.reused and r.folder.parent == tmp_path / "exports" for r in recs.values())


def test_int8_dynamic_export_keeps_masks_close(ort_model, export_dir, tmp_path, image):
    shutil.copytree(export_dir, tmp_path / "exports")  # with the fp32 exports (ort_model)
    model = build_talk2sam(onnx_config(runtime_quantize="int8_dynamic"),
                           export_dir=tmp_path / "exports")
    recs = model.image_runtime.records
    for part, rec in recs.items():
        assert rec.folder.name.startswith(f"{part}-int8_dynamic-")
        assert rec.validation["mask_iou_min"] >= INT8_MIN_MASK_IOU
        fp32 = tmp_path / "exports" / export_key(model, part, "fp32").folder_name
        assert rec.model_path.stat().st_size < (fp32 / "model.onnx.data").stat().st_size
    agreement = mask_agreement(model, [("astronaut", image, "person", BOXES)])
    assert agreement["runtime"] == "onnxruntime-int8_dynamic"
    assert INT8_MIN_MASK_IOU <= agreement["min_iou"] < 1.0  # int8 changes some pixels


def test_side_by_side_comparison_times_both_runtimes_on_one_model(ort_model):
    result = compare_runtimes(ort_model, runs=1, warmup=0, image_size=(120, 160))
    assert set(result["median_ms"]) == {"torch", "onnxruntime"}
    assert result["set_image_speedup"]["torch"] == 1.0
    assert all(m["set_image"] > 0 for m in result["median_ms"].values())
    assert ort_model.image_runtime is not None  # attached again after the torch column
    table = comparison_markdown(result)
    assert "| median ms | `torch` | `onnxruntime` |" in table and "reuse ratio" in table
