"""LongVLM faithfulness: converter + model + processor reproduce what the original (ziplab/LongVLM) computed.

Fixtures: ``longvlm/video100_inference`` (paper configuration: 100 frames, 10 x 30 merged + 5 global = 305 tokens)
and ``longvlm/preprocess`` (frame sampling and preparation). See ../shared/fixtures/README.md.
"""

from __future__ import annotations

import pytest
import torch
from conftest import fixture_case, load_case, load_tensors

from hf_videollm.conversion import ConversionError, convert
from hf_videollm.media.video_read import segment_index_midpoints
from hf_videollm.modeling.longvlm import VideoLLMLongVLMForConditionalGeneration
from hf_videollm.processors.longvlm import VideoLLMLongVLMProcessor

ATOL = RTOL = 1e-4


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    case_dir = fixture_case("longvlm", "video100_inference")
    orig = case_dir / "original"
    out = tmp_path_factory.mktemp("longvlm") / "converted"
    report = convert(
        "longvlm", orig / "mm_projector.bin", out, progress=False,
        base=str(orig / "LLaVA-7B"), vision_tower=str(orig / "clip-vit-large-patch14"),
    )
    model = VideoLLMLongVLMForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    processor = VideoLLMLongVLMProcessor.from_pretrained(out)
    return case_dir, model, processor, report


def test_conversion_report_and_config(converted):
    case_dir, model, processor, report = converted
    case = load_case(case_dir)
    dropped = report.to_dict()["dropped"]
    # LLaVA's own projector and embeddings are superseded on purpose, never silently
    assert any("mm_projector" in k for k in dropped) and any("embed_tokens" in k for k in dropped)
    tokens = case["original"]["runtime_tokens"]
    assert model.config.video_token_id == tokens["vid_patch_token"]
    assert model.config.text_config.vocab_size == tokens["vocab_after_resize"]
    assert model.config.video_seq_length() == case["configuration"]["visual_tokens"] == 305
    assert processor.video_tokens(100) == 305


def test_features_tokens_logits_and_greedy(converted):
    case_dir, model, _, _ = converted
    inputs, expected = load_tensors(case_dir / "inputs.safetensors"), load_tensors(case_dir / "expected.safetensors")
    pixels = inputs["pixel_values"]
    base_vocab = expected["lm_head_rows_of_added_tokens"].shape[0]
    base_vocab = model.config.text_config.vocab_size - base_vocab
    with torch.no_grad():
        local, glob = model.get_video_visual_features(pixels)
        torch.testing.assert_close(local, expected["local_features"], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(glob, expected["memory_features"], atol=ATOL, rtol=RTOL)
        tokens = model.get_video_features(pixel_values_videos=pixels[None])
        torch.testing.assert_close(tokens[0], expected["visual_tokens"][0], atol=ATOL, rtol=RTOL)
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values_videos=pixels[None])
    # the 3 lm_head rows of the added tokens are random in the original (created at load time): compare the rest
    torch.testing.assert_close(out.logits[..., :base_vocab], expected["logits"][..., :base_vocab], atol=ATOL, rtol=RTOL)
    # with the original's rows loaded, every column matches
    with torch.no_grad():
        model.language_model.lm_head.weight[base_vocab:] = expected["lm_head_rows_of_added_tokens"]
        out = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                    mm_encoder_outputs={"video": tokens})
    torch.testing.assert_close(out.logits, expected["logits"], atol=ATOL, rtol=RTOL)
    with torch.no_grad():
        gen = model.generate(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values_videos=pixels[None],
            max_new_tokens=5, min_new_tokens=5, do_sample=False,
        )
    assert torch.equal(gen[:, inputs["input_ids"].shape[1]:], expected["greedy_new_tokens"])


def test_precomputed_features_replace_frames(converted):
    """The original's offline features (local (300, C), global (5, C)) give the same tokens as the frames."""
    case_dir, model, _, _ = converted
    inputs, expected = load_tensors(case_dir / "inputs.safetensors"), load_tensors(case_dir / "expected.safetensors")
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, video_local_features=expected["local_features"][None],
                    video_global_features=expected["memory_features"][None])
        ref = model(input_ids=ids, attention_mask=mask, pixel_values_videos=inputs["pixel_values"][None])
    torch.testing.assert_close(out.logits, ref.logits, atol=ATOL, rtol=RTOL)
    with pytest.raises(ValueError, match="both given"):
        model(input_ids=ids, attention_mask=mask, pixel_values_videos=inputs["pixel_values"][None],
              video_local_features=expected["local_features"][None])
    with pytest.raises(ValueError, match="global tokens"):
        model.get_video_features(video_local_features=expected["local_features"][None])
    with pytest.raises(ValueError, match="features\\[-E:\\]"):
        model.get_video_features(video_local_features=expected["local_features"][None],
                                 video_global_features=expected["global_features_all_layers"][None])


def test_processor_builds_the_original_prompt(converted):
    case_dir, _, processor, _ = converted
    case = load_case(case_dir)
    inputs = load_tensors(case_dir / "inputs.safetensors")
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe the video in detail."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text.startswith(case["prompt"]["text"].split("USER:")[0])
    frames = torch.zeros(100, 3, 16, 16, dtype=torch.uint8)
    batch = processor(text=[text], videos=[frames])
    assert batch["input_ids"].tolist() == inputs["input_ids"].tolist()
    assert batch["pixel_values_videos"].shape == (1, 100, 3, 16, 16)


def test_frame_indices_match_get_seq_frames():
    case_dir = fixture_case("longvlm", "preprocess")
    expected = load_tensors(case_dir / "expected.safetensors")
    assert segment_index_midpoints(1000, 100) == expected["get_seq_frames_100_of_1000"].tolist()
    assert segment_index_midpoints(250, 100) == expected["get_seq_frames_100_of_250"].tolist()
    assert segment_index_midpoints(40, 40) == expected["sampled_indices"].tolist()
    assert segment_index_midpoints(110, 100) == load_case(fixture_case("longvlm", "video100_inference"))["media"]["sampled_indices"]
    # fewer frames than T: the k = n indices repeated by nearest-neighbour resampling to T
    assert segment_index_midpoints(40, 100) == [expected["sampled_indices"].tolist()[i * 40 // 100] for i in range(100)]


def test_processor_samples_and_prepares_frames_like_the_original():
    """On the real video: frames found by timestamp are the original's indices; the nearest square resize gives the
    original's 224 x 224 frames (eval loader: no temporal resampling, so T = the 40 frames of the video)."""
    from hf_videollm.media import load_video

    case_dir = fixture_case("longvlm", "preprocess")
    expected = load_tensors(case_dir / "expected.safetensors")
    frames, meta = load_video(case_dir / "video.mp4", num_frames=40, sampling="segment_index_midpoints")
    assert meta.frame_indices == expected["sampled_indices"].tolist()
    _, meta100 = load_video(case_dir / "video.mp4", num_frames=100, sampling="segment_index_midpoints")
    assert meta100.frame_indices == segment_index_midpoints(40, 100)
    processor = VideoLLMLongVLMProcessor(_tokenizer(), num_frames=40, num_segments=10, tokens_per_segment=2)
    square = processor.prepare_frames(frames.permute(0, 3, 1, 2))
    torch.testing.assert_close(square[[0, -1]].permute(0, 2, 3, 1), expected["eval_loader_frames_first_last_uint8"], atol=0, rtol=0)
    torch.testing.assert_close(square.float().mean((2, 3)), expected["eval_loader_checksums_mean_per_frame_channel"], atol=1e-5, rtol=1e-5)
    batch = processor(text=["<video>"], videos=[str(case_dir / "video.mp4")])
    assert batch["pixel_values_videos"].shape == (1, 40, 3, 224, 224)


def _tokenizer():
    from hf_videollm.tiny import tiny_tokenizer

    return tiny_tokenizer()


def test_missing_base_fails_clearly(tmp_path):
    case_dir = fixture_case("longvlm", "video100_inference")
    with pytest.raises(ConversionError, match="--base"):
        convert("longvlm", case_dir / "original", tmp_path / "o", progress=False,
                vision_tower=str(case_dir / "original" / "clip-vit-large-patch14"))
    assert not (tmp_path / "o").exists()
