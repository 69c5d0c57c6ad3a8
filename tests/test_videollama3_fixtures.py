"""VideoLLaMA 3 faithfulness: ``hf-videollm convert videollama3`` + our model reproduce what the original code
(DAMO-NLP-SG/VideoLLaMA3 @ 05cee23, hub remote code, per-frame attention = flash-attention semantics) computed for
``videollama3/image_any_res`` and ``videollama3/video_difffp``, and what transformers 5.24's
``VideoLlama3ForConditionalGeneration`` computed for ``hf_video_llama_3/single`` (see ../shared/fixtures/README.md).
Our processor rebuilds the original's pixels, DiffFP mask and prompt ids from the case's video file."""

from __future__ import annotations

import pytest
import torch
from conftest import fixture_case, load_case, load_tensors

from hf_videollm.conversion import ConversionError, convert
from hf_videollm.modeling.videollama3 import VideoLLMVideoLlama3ForConditionalGeneration, difffp_keep_mask
from hf_videollm.processors.videollama3 import VideoLLMVideoLlama3Processor
from hf_videollm.tiny import tiny_tokenizer

ATOL = RTOL = 1e-4


@pytest.fixture(scope="module", params=["image_any_res", "video_difffp"])
def converted(request, tmp_path_factory):
    case_dir = fixture_case("videollama3", request.param)
    out = tmp_path_factory.mktemp(f"videollama3_{request.param}")
    report = convert("videollama3", case_dir / "original", out, source_format="original", progress=False)
    model = VideoLLMVideoLlama3ForConditionalGeneration.from_pretrained(out).eval()
    processor = VideoLLMVideoLlama3Processor.from_pretrained(out)
    return request.param, case_dir, model, processor, report


def _our_inputs(case_dir, model):
    """The case's inputs in our layout: video tokens under ``video_token_id``; with DiffFP, the dropped tokens'
    placeholder ids removed (the processor emits only the kept ones) and the mask passed as an input."""
    inputs = load_tensors(case_dir / "inputs.safetensors")
    image_id = model.config.image_token_id
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    if load_case(case_dir)["modals"] == ["image"]:
        return {"input_ids": ids, "attention_mask": mask, "pixel_values": inputs["pixel_values"],
                "image_grid_thw": inputs["grid_sizes"], "image_merge_sizes": inputs["merge_sizes"]}
    grid, merge = inputs["grid_sizes"], inputs["merge_sizes"]
    keep_tokens = difffp_keep_mask(inputs["pixel_values"], grid[0].tolist(), int(merge[0]))
    keep = torch.ones_like(ids, dtype=torch.bool)
    keep[ids == image_id] = keep_tokens
    ids = ids[keep].view(1, -1).masked_fill(ids[keep].view(1, -1) == image_id, model.config.video_token_id)
    return {"input_ids": ids, "attention_mask": mask[keep].view(1, -1), "pixel_values_videos": inputs["pixel_values"],
            "video_grid_thw": grid, "video_merge_sizes": merge, "video_compression_mask": keep_tokens[None].long()}


def test_conversion_uses_every_key(converted):
    kind, case_dir, model, processor, report = converted
    source = {}
    for shard in sorted((case_dir / "original").glob("model-*.safetensors")):
        source.update(load_tensors(shard))
    assert report.num_tensors == len(source) and not report.dropped
    assert model.config.image_token_id == load_case(case_dir)["original"]["config"]["image_token_index"]
    assert (processor.image_merge_size, processor.video_merge_size, processor.max_frames) == (1, 2, 180)
    assert processor.image_mean == [0.5, 0.5, 0.5]


def test_encoder_mask_tokens_embeds_logits_and_greedy_match_the_original(converted):
    kind, case_dir, model, processor, report = converted
    raw, expected = load_tensors(case_dir / "inputs.safetensors"), load_tensors(case_dir / "expected.safetensors")
    with torch.no_grad():
        enc = model.vision_tower(raw["pixel_values"], grid_thw=raw["grid_sizes"], merge_sizes=raw["merge_sizes"])
        torch.testing.assert_close(enc.last_hidden_state, expected["vision_encoder_output"], atol=ATOL, rtol=RTOL)
        tokens = model.encode_patches(raw["pixel_values"], raw["grid_sizes"], raw["merge_sizes"], "pixel_values")
        torch.testing.assert_close(torch.cat(tokens), expected["visual_tokens_before_pruning"], atol=ATOL, rtol=RTOL)
    if kind == "video_difffp":  # DiffFP is a threshold: the mask must match exactly
        mask = difffp_keep_mask(raw["pixel_values"], raw["grid_sizes"][0].tolist(), int(raw["merge_sizes"][0]))
        assert torch.equal(mask.long(), expected["compression_mask"])
        assert int(mask.sum()) < mask.numel()  # the case does prune
    inputs = _our_inputs(case_dir, model)
    pruned = inputs["input_ids"].masked_fill(inputs["input_ids"] == model.config.video_token_id, model.config.image_token_id)
    assert torch.equal(pruned, expected["input_ids_after_pruning"])
    with torch.no_grad():
        out = model(**inputs)
        embeds = model.build_inputs_embeds(inputs["input_ids"], out.media_features, inputs["attention_mask"])
    torch.testing.assert_close(torch.cat(next(iter(out.media_features.values()))), expected["visual_tokens"],
                               atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(embeds, expected["inputs_embeds"], atol=ATOL, rtol=RTOL)
    real = expected["merged_attention_mask"].bool()
    torch.testing.assert_close(out.logits[real], expected["logits"][real], atol=ATOL, rtol=RTOL)
    gen = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    with torch.no_grad():
        cached = model.generate(**inputs, **gen)[:, inputs["input_ids"].shape[1]:]
        uncached = model.generate(**inputs, use_cache=False, **gen)[:, inputs["input_ids"].shape[1]:]
    assert torch.equal(cached, expected["greedy_new_tokens"])
    assert torch.equal(uncached, cached)


def _case_messages(case: dict, kind: str) -> list[dict]:
    text = case["prompt"]["texts"][0]
    question = text.split("<|im_start|>user\n")[1].split("<|im_end|>")[0].split("\n")[-1]
    system = text.split("<|im_start|>system\n")[1].split("<|im_end|>")[0]
    return [
        {"role": "system", "content": [{"type": "text", "text": system}]},
        {"role": "user", "content": [{"type": kind}, {"type": "text", "text": question}]},
    ]


def test_processor_rebuilds_the_original_prompt_ids(converted):
    """Chat template + expansion give the original's ids; for the video, the case's file (the preprocess case's
    video.mp4, 4 s at 10 fps) goes through our loader (ffmpeg fps-filter frame choice), resize and patch layout to
    the original's pixels, the same DiffFP mask and the pruned ids."""
    kind, case_dir, model, processor, report = converted
    case, raw = load_case(case_dir), load_tensors(case_dir / "inputs.safetensors")
    expected = load_tensors(case_dir / "expected.safetensors")
    modality = case["modals"][0]
    prompt = processor.apply_chat_template(_case_messages(case, modality), add_generation_prompt=True)
    assert prompt.replace(f"{processor.video_token}\n", "") == case["prompt"]["texts"][0].replace(
        "Time 0.0s:<image>,Time 1.0s:<image>,Time 2.0s:<image>,Time 3.0s:<image>\n", "")
    if modality == "image":
        h, w = case["media"][0][0]["synthetic_image"]["h"], case["media"][0][0]["synthetic_image"]["w"]
        batch = processor(text=[prompt], images=[torch.zeros(3, h, w, dtype=torch.uint8)])
        assert batch["image_grid_thw"].tolist() == raw["grid_sizes"].tolist()
        assert torch.equal(batch["input_ids"], expected["input_ids_after_pruning"])
        return
    video = fixture_case("videollama3", "preprocess") / "video.mp4"
    batch = processor(text=[prompt], videos=[str(video)])
    assert batch["video_grid_thw"].tolist() == raw["grid_sizes"].tolist()
    torch.testing.assert_close(batch["pixel_values_videos"], raw["pixel_values"], atol=1e-6, rtol=0)
    assert torch.equal(batch["video_compression_mask"][0], expected["compression_mask"])
    ids = batch["input_ids"].masked_fill(batch["input_ids"] == processor.video_token_id, processor.image_token_id)
    assert torch.equal(ids, expected["input_ids_after_pruning"])
    with torch.no_grad():
        logits = model(**batch).logits
    real = expected["merged_attention_mask"].bool()
    torch.testing.assert_close(logits[real], expected["logits"][real], atol=ATOL, rtol=RTOL)


def test_video_frames_follow_the_ffmpeg_fps_filter():
    """The original's load_video (ffmpeg fps=1, round=down) picks frames 9, 19, 29, 39 of the 10 fps clip and labels
    them 0, 1, 2, 3 s; ours picks the same frames, byte for byte."""
    case_dir = fixture_case("videollama3", "preprocess")
    expected = load_tensors(case_dir / "expected.safetensors")
    frames, stamps = VideoLLMVideoLlama3Processor(tiny_tokenizer()).load_video_frames(str(case_dir / "video.mp4"))
    assert stamps == [0.0, 1.0, 2.0, 3.0]
    assert torch.equal(frames, expected["video_frames_uint8"])


def test_wrong_model_type_is_refused(tmp_path):
    import json
    import shutil

    src = tmp_path / "src"
    shutil.copytree(fixture_case("videollama3", "image_any_res") / "original", src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "qwen2"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match="videollama3_qwen2"):
        convert("videollama3", src, tmp_path / "out", source_format="original", progress=False)


# ------------------------------------------------------------------------------------------- transformers' format
def test_transformers_checkpoint_converts_and_matches(tmp_path):
    case_dir = fixture_case("hf_video_llama_3", "single")
    out = tmp_path / "hf"
    report = convert("videollama3", case_dir / "original", out, source_format="transformers", progress=False)
    assert report.num_tensors == len(load_tensors(case_dir / "original" / "model.safetensors"))
    model = VideoLLMVideoLlama3ForConditionalGeneration.from_pretrained(out).eval()
    inputs, expected = load_tensors(case_dir / "inputs.safetensors"), load_tensors(case_dir / "expected.safetensors")
    with torch.no_grad():
        out_ = model(**inputs)
        tokens = model.encode_patches(inputs["pixel_values_videos"], inputs["video_grid_thw"],
                                      inputs["video_merge_sizes"], "pixel_values_videos")
    mask = inputs["attention_mask"].bool()
    torch.testing.assert_close(out_.logits[mask], expected["logits"][mask], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(torch.cat(out_.media_features["image"]), expected["image_visual_tokens"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(torch.cat(tokens), expected["video_visual_tokens_before_compression"], atol=ATOL, rtol=RTOL)
    gen = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    with torch.no_grad():
        new = model.generate(**inputs, **gen)[:, inputs["input_ids"].shape[1]:]
    assert torch.equal(new, expected["greedy_generate_output"])


def test_cli_convert_then_auto_classes_load_it(tmp_path):
    """``hf-videollm convert videollama3 SRC OUT``: no remote-code prompt (the release's config has an auto_map), the
    result loads with the Auto classes and reproduces the original's logits."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import hf_videollm  # noqa: F401 -- registers the Auto classes
    from hf_videollm.cli import main

    case_dir = fixture_case("videollama3", "video_difffp")
    out = tmp_path / "cli"
    assert main(["convert", "videollama3", str(case_dir / "original"), str(out), "--quiet"]) == 0
    model = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert type(model) is VideoLLMVideoLlama3ForConditionalGeneration
    assert type(AutoProcessor.from_pretrained(out)) is VideoLLMVideoLlama3Processor
    inputs, expected = _our_inputs(case_dir, model), load_tensors(case_dir / "expected.safetensors")
    with torch.no_grad():
        logits = model(**inputs).logits
    torch.testing.assert_close(logits, expected["logits"], atol=ATOL, rtol=RTOL)
    # the transformers-format checkpoint is not the original release
    assert main(["convert", "videollama3", str(fixture_case("hf_video_llama_3", "single") / "original"),
                 str(tmp_path / "x")]) == 2


def test_timestamps_tokenize_with_the_text_around_them_as_in_the_original(tmp_path):
    """Text right before a video ("Look:Time 0.0s:") and after it: the ids equal the release tokenizer's ids of the
    original's expanded prompt (its special <image> tokens are the only cuts)."""
    case_dir = fixture_case("videollama3", "video_difffp")
    convert("videollama3", case_dir / "original", tmp_path, source_format="original", progress=False)
    processor = VideoLLMVideoLlama3Processor.from_pretrained(tmp_path)
    msgs = [{"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "video"},
                                         {"type": "text", "text": "what moves?"}]}]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True)
    batch = processor(text=[prompt], videos=[str(fixture_case("videollama3", "preprocess") / "video.mp4")])
    mask = batch["video_compression_mask"][0].view(4, -1)
    frames = ",".join(f"Time {k:.1f}s:" + "<image>" * int(n) for k, n in enumerate(mask.sum(-1)))
    original = f"<|im_start|>user\nLook:{frames}\nwhat moves?<|im_end|>\n<|im_start|>assistant\n"
    want = processor.tokenizer(original, add_special_tokens=False)["input_ids"]
    ids = batch["input_ids"][0].masked_fill(batch["input_ids"][0] == processor.video_token_id, processor.image_token_id)
    assert ids.tolist() == want


def test_processor_images_match_the_hub_processor_for_paths_and_arrays():
    """The hub processor opens image files with PIL and reads ``.size`` (W, H) as (H, W): a non-square file is
    resized to a transposed target (reproduced by default, ``hub_pil_size_quirk``); arrays are read right. Both
    against the original's pixels (preprocess case, 320x240 PNG)."""
    from hf_videollm.media import load_image

    case_dir = fixture_case("videollama3", "preprocess")
    expected = load_tensors(case_dir / "expected.safetensors")
    processor = VideoLLMVideoLlama3Processor(tiny_tokenizer())
    path = str(case_dir / "image.png")
    array = load_image(path).permute(1, 2, 0).numpy()  # (H, W, 3) as the original's numpy input
    for source, name in ((path, "path"), (array, "array")):
        data, _ = processor._process_images([source])
        assert data["image_grid_thw"].tolist() == expected[f"image_via_{name}_grid_sizes"].tolist()
        torch.testing.assert_close(data["pixel_values"], expected[f"image_via_{name}_pixel_values"], atol=1e-5, rtol=0)
    processor.hub_pil_size_quirk = False  # the training repo's reading: a file is treated as its array
    data, _ = processor._process_images([path])
    assert data["image_grid_thw"].tolist() == expected["image_via_array_grid_sizes"].tolist()
