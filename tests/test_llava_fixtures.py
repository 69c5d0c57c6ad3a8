"""LLaVA faithfulness: converter + model reproduce what the original (and transformers') code computed.

Fixtures: ``llava_v1_5/single_image`` (merged release), ``llava_v1/single_image_delta`` (delta + base LLaMA),
``hf_llava/single`` (transformers' llava-hf layout). See ../shared/fixtures/README.md.
"""

from __future__ import annotations

import pytest
import torch
from conftest import fixture_case, load_case, load_tensors

from hf_videollm.conversion import ConversionError, convert
from hf_videollm.modeling.llava import VideoLLMLlavaForConditionalGeneration
from hf_videollm.processors.llava import VideoLLMLlavaProcessor

ATOL = RTOL = 1e-4
SENTINEL = -200


def _convert(case_dir, tmp_path, **kw):
    out = tmp_path / "converted"
    report = convert("llava", case_dir / "original" / kw.pop("subdir", ""), out, progress=False, **kw)
    model = VideoLLMLlavaForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    processor = VideoLLMLlavaProcessor.from_pretrained(out)
    return model, processor, report, out


def _expand_sentinels(input_ids, attention_mask, token_id, n):
    """Original -200 sentinel -> n copies of our placeholder id (what our processor emits)."""
    rows, masks = [], []
    for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
        r, m = [], []
        for t, a in zip(ids, mask):
            if t == SENTINEL:
                r += [token_id] * n
                m += [1] * n
            else:
                r.append(t)
                m.append(a)
        rows.append(r)
        masks.append(m)
    return torch.tensor(rows), torch.tensor(masks)


def _greedy(model, **batch):
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False, use_cache=True)
        out_nc = model.generate(**batch, max_new_tokens=5, min_new_tokens=5, do_sample=False, use_cache=False)
    assert torch.equal(out, out_nc)
    return out[:, batch["input_ids"].shape[1] :]


def test_llava_v1_5_merged_release(tmp_path):
    case_dir = fixture_case("llava_v1_5", "single_image")
    case = load_case(case_dir)
    model, processor, report, _ = _convert(
        case_dir, tmp_path, source_format="original", vision_tower=str(case_dir / "original" / "vision_tower")
    )
    # The frozen CLIP copy inside the LLM shards is consumed on purpose (dropped with a reason), never silently.
    assert any("vision_tower" in k for k in report.to_dict()["dropped"])
    inputs, expected = load_tensors(case_dir / "inputs.safetensors"), load_tensors(case_dir / "expected.safetensors")
    n = model.config.image_seq_length
    assert n == expected["visual_tokens"].shape[1]
    ids, mask = _expand_sentinels(inputs["input_ids"], inputs["attention_mask"], model.config.image_token_id, n)
    with torch.no_grad():
        feats = model.get_vision_features(inputs["pixel_values"])
        tokens = model.get_image_features(inputs["pixel_values"])
        out = model(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"])
    torch.testing.assert_close(feats, expected["vision_features"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(tokens, expected["visual_tokens"], atol=ATOL, rtol=RTOL)
    valid = expected["merged_attention_mask"][0].bool()
    L = ids.shape[1]
    assert valid.sum() == L
    torch.testing.assert_close(out.logits[0], expected["logits"][0, valid], atol=ATOL, rtol=RTOL)
    new = _greedy(model, input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"])
    assert torch.equal(new, expected["greedy_new_tokens"])

    # The converted processor tokenizes the original prompt to the original ids (sentinel expanded).
    prompt = case["prompt"]["texts"][0]
    batch = processor(text=[prompt], images=[torch.zeros(3, 56, 56, dtype=torch.uint8)])
    assert batch["input_ids"].tolist() == ids.tolist()
    assert processor.pad_to_square and processor.pad_fill == [122, 116, 104]


def test_llava_v1_delta_release(tmp_path):
    case_dir = fixture_case("llava_v1", "single_image_delta")
    case = load_case(case_dir)
    orig = case_dir / "original"
    model, processor, report, _ = _convert(
        case_dir, tmp_path, subdir="llava_delta", source_format="original",
        vision_tower=str(orig / "vision_tower"), base=str(orig / "base_llama"),
    )
    inputs, expected = load_tensors(case_dir / "inputs.safetensors"), load_tensors(case_dir / "expected.safetensors")
    assert model.config.image_token_id == case["original"]["added_tokens"]["<im_patch>"]
    assert model.config.projector_type == "linear"
    with torch.no_grad():
        feats = model.get_vision_features(inputs["pixel_values"])
        tokens = model.get_image_features(inputs["pixel_values"])
        out = model(**inputs)
    torch.testing.assert_close(feats, expected["vision_features"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(tokens, expected["visual_tokens"], atol=ATOL, rtol=RTOL)
    valid = inputs["attention_mask"][0].bool()
    torch.testing.assert_close(out.logits[0, valid], expected["logits"][0, valid], atol=ATOL, rtol=RTOL)
    assert torch.equal(_greedy(model, **inputs), expected["greedy_new_tokens"])

    # <image> in a prompt expands to <im_start> <im_patch> x 16 <im_end>, as the v1 code writes it.
    batch = processor(text=["<image>"], images=[torch.zeros(3, 56, 56, dtype=torch.uint8)], add_special_tokens=False)
    start, patch, end = 513, 512, 514
    assert batch["input_ids"][0].tolist() == [start] + [patch] * 16 + [end]


def test_llava_delta_without_base_fails_clearly(tmp_path):
    case_dir = fixture_case("llava_v1", "single_image_delta")
    with pytest.raises(ConversionError, match="--base"):
        convert("llava", case_dir / "original" / "llava_delta", tmp_path / "o", progress=False,
                vision_tower=str(case_dir / "original" / "vision_tower"))
    assert not (tmp_path / "o").exists()


def test_llava_hf_transformers_layout(tmp_path):
    case_dir = fixture_case("hf_llava", "single")
    case = load_case(case_dir)
    model, processor, _, _ = _convert(case_dir, tmp_path, source_format="transformers")
    inputs, expected = load_tensors(case_dir / "inputs.safetensors"), load_tensors(case_dir / "expected.safetensors")
    with torch.no_grad():
        feats = model.get_vision_features(inputs["pixel_values"])
        tokens = model.get_image_features(inputs["pixel_values"])
        out = model(**inputs)
    torch.testing.assert_close(feats, expected["vision_features"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(tokens.flatten(0, 1), expected["visual_tokens"], atol=ATOL, rtol=RTOL)
    valid = inputs["attention_mask"][0].bool()
    torch.testing.assert_close(out.logits[0, valid], expected["logits"][0, valid], atol=ATOL, rtol=RTOL)
    assert torch.equal(_greedy(model, **inputs), expected["greedy_generate_output"])
    batch = processor(text=case["prompts"], images=[torch.zeros(3, 56, 56, dtype=torch.uint8)])
    assert batch["input_ids"].tolist() == inputs["input_ids"].tolist()


def test_conversion_rejects_wrong_tower(tmp_path):
    """A vision tower of another size is caught before anything is written, with the mismatching keys listed."""
    v15 = fixture_case("llava_v1_5", "single_image")
    hf = fixture_case("hf_llava", "single")
    # hf_llava's LLM is 48 wide, llava_v1_5's projector expects 64: the tower is fine but the LLM shards mismatch.
    with pytest.raises(ConversionError) as e:
        convert("llava", v15 / "original", tmp_path / "o", progress=False, vision_tower=str(hf / "original"))
    assert "vision_tower" in str(e.value) or "unexpected" in str(e.value)
    assert not (tmp_path / "o").exists()


def test_llava_hf_layout_records_dtype_and_origin(tmp_path):
    """Like the original-release path, the llava-hf path writes the cast dtype into config.json and names its source
    in the safetensors metadata (``dtype="auto"`` then loads the weights in the dtype they were saved in)."""
    import json

    from safetensors import safe_open

    case_dir = fixture_case("hf_llava", "single")
    out = tmp_path / "converted"
    convert("llava", case_dir / "original", out, progress=False, source_format="transformers", dtype=torch.float16)
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.metadata()["converted_from"] == str(case_dir / "original")
    model = VideoLLMLlavaForConditionalGeneration.from_pretrained(out, dtype="auto")
    assert model.language_model.lm_head.weight.dtype == torch.float16
