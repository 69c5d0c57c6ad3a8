"""Qwen2-VL faithfulness: ``hf-videollm convert qwen2_vl --from transformers`` + our model reproduce what
transformers 5.24's ``Qwen2VLForConditionalGeneration`` computed (``hf_qwen2_vl/image`` and ``hf_qwen2_vl/video``;
see ../shared/fixtures/README.md), and our processor builds the same prompt ids from the case's chat."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import fixture_case, load_case, load_tensors

from hf_videollm.conversion import ConversionError, convert
from hf_videollm.modeling.qwen2vl import VideoLLMQwen2VLForConditionalGeneration
from hf_videollm.processors.qwen2vl import VideoLLMQwen2VLProcessor

ATOL = RTOL = 1e-4


@pytest.fixture(scope="module", params=["image", "video"])
def converted(request, tmp_path_factory):
    case_dir = fixture_case("hf_qwen2_vl", request.param)
    out = tmp_path_factory.mktemp(f"qwen2vl_{request.param}")
    report = convert("qwen2_vl", case_dir / "original", out, source_format="transformers", progress=False)
    model = VideoLLMQwen2VLForConditionalGeneration.from_pretrained(out).eval()
    processor = VideoLLMQwen2VLProcessor.from_pretrained(out)
    return request.param, case_dir, model, processor, report


def _inputs(case_dir):
    inputs = load_tensors(case_dir / "inputs.safetensors")
    inputs.pop("mm_token_type_ids")  # transformers needs it for M-RoPE; ours reads the placeholder ids
    return inputs


def test_conversion_uses_every_key(converted):
    kind, case_dir, model, processor, report = converted
    assert model.config.image_token_id == load_case(case_dir)["original"]["config"]["image_token_id"]
    source = load_tensors(case_dir / "original" / "model.safetensors")
    assert report.counts["Rename"] == len(source) == report.num_tensors and not report.dropped


def test_visual_tokens_logits_and_greedy_match_transformers(converted):
    kind, case_dir, model, processor, report = converted
    inputs, expected = _inputs(case_dir), load_tensors(case_dir / "expected.safetensors")
    with torch.no_grad():
        out = model(**inputs)
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(out.logits[mask], expected["logits"][mask], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(torch.cat(out.media_features[kind]), expected[f"{kind}_visual_tokens"], atol=ATOL, rtol=RTOL)
    gen = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    with torch.no_grad():
        cached = model.generate(**inputs, **gen)[:, inputs["input_ids"].shape[1]:]
        uncached = model.generate(**inputs, use_cache=False, **gen)[:, inputs["input_ids"].shape[1]:]
    assert torch.equal(cached, expected["greedy_generate_output"])
    assert torch.equal(uncached, cached)


def test_processor_builds_the_cases_prompt_ids(converted):
    """Our chat template + placeholder expansion give the ids transformers' tokenizer gave for the case's chat
    (the grid comes from the media size: a 100x75 image, 4 frames of 6x4 patches)."""
    kind, case_dir, model, processor, report = converted
    case, inputs = load_case(case_dir), _inputs(case_dir)
    parts = case["media"]["samples"][0]
    text = next(p["text"] for p in parts if p["type"] == "text")
    msgs = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": text}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True)
    assert prompt.replace(processor.media_token(kind), "") == case["prompts"][0].replace(processor.media_token(kind), "")
    if kind == "image":
        media = torch.zeros(3, parts[0]["image"]["h"], parts[0]["image"]["w"], dtype=torch.uint8)
        batch = processor(text=[prompt], images=[media])
        assert batch["image_grid_thw"].tolist() == inputs["image_grid_thw"].tolist()
    else:
        v = parts[0]
        p = processor.patch_size
        media = torch.zeros(v["frames"], v["h"] * p, v["w"] * p, 3, dtype=torch.uint8)
        # the case's patches were made by hand at 4x6 patches per frame, below the default per-frame minimum
        small = copy.copy(processor)
        small.video_min_pixels = (2 * p) ** 2
        batch = small(text=[prompt], videos=[media])
        assert batch["video_grid_thw"].tolist() == inputs["video_grid_thw"].tolist()
    assert batch["input_ids"].tolist() == inputs["input_ids"].tolist()


def test_qwen2_5_vl_is_refused_clearly(tmp_path):
    import json
    import shutil

    case_dir = fixture_case("hf_qwen2_vl", "image")
    src = tmp_path / "src"
    shutil.copytree(case_dir / "original", src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "qwen2_5_vl"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match="Qwen2.5-VL"):
        convert("qwen2_vl", src, tmp_path / "out", source_format="transformers", progress=False)


def test_cli_convert_then_auto_classes_load_it(tmp_path):
    """``hf-videollm convert qwen2_vl SRC OUT --from transformers``; the result loads with the Auto classes."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import hf_videollm  # noqa: F401 -- registers the Auto classes
    from hf_videollm.cli import main

    case_dir = fixture_case("hf_qwen2_vl", "video")
    out = tmp_path / "cli"
    assert main(["convert", "qwen2_vl", str(case_dir / "original"), str(out), "--from", "transformers", "--quiet"]) == 0
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert type(model) is VideoLLMQwen2VLForConditionalGeneration
    assert type(AutoProcessor.from_pretrained(out)) is VideoLLMQwen2VLProcessor
    inputs, expected = _inputs(case_dir), load_tensors(case_dir / "expected.safetensors")
    with torch.no_grad():
        logits = model(**inputs).logits
    torch.testing.assert_close(logits, expected["logits"], atol=ATOL, rtol=RTOL)
    assert main(["convert", "qwen2_vl", str(case_dir / "original"), str(tmp_path / "x"), "--from", "original"]) == 2
