"""VideoLLaMA 2 faithfulness: converter + model + processor reproduce what the original code computed.

Fixtures: ``videollama2/clip_stc_mistral_video8`` (VideoLLaMA2-7B layout: CLIP + ``stc_connector`` + Mistral, 8
frames) and ``videollama2/siglip_stc_v35_qwen2_video16`` (VideoLLaMA2.1 layout: SigLIP + ``stc_connector_v35`` +
Qwen2, 16 frames), plus the ``preprocess`` case's frame indices. See ../shared/fixtures/README.md.
"""

from __future__ import annotations

import pytest
import torch
from conftest import fixture_case, load_case, load_tensors

from hf_videollm.conversion import ConversionError, convert
from hf_videollm.media import load_video
from hf_videollm.modeling.videollama2 import VideoLLMVideoLlama2ForConditionalGeneration
from hf_videollm.processors.videollama2 import VideoLLMVideoLlama2Processor

ATOL = RTOL = 1e-4
VIDEO_SENTINEL = -201
CASES = {
    "clip_stc_mistral_video8": ("stc_connector", "default", 8),
    "siglip_stc_v35_qwen2_video16": ("stc_connector_v35", "full", 16),
}


def _convert(case_dir, tmp_path):
    out = tmp_path / "converted"
    report = convert(
        "videollama2", case_dir / "original", out, progress=False, vision_tower=str(case_dir / "original" / "vision_tower")
    )
    model = VideoLLMVideoLlama2ForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    return model, VideoLLMVideoLlama2Processor.from_pretrained(out), report


def _expand_sentinel(input_ids, token_id, n):
    """Original -201 sentinel -> n copies of our placeholder id (what our processor emits)."""
    rows = [[u for t in row for u in ([token_id] * n if t == VIDEO_SENTINEL else [t])] for row in input_ids.tolist()]
    return torch.tensor(rows)


@pytest.mark.parametrize("case_name", sorted(CASES))
def test_videollama2_release(case_name, tmp_path):
    case_dir = fixture_case("videollama2", case_name)
    case = load_case(case_dir)
    projector, strategy, frames = CASES[case_name]
    model, processor, report = _convert(case_dir, tmp_path)
    assert model.config.projector_type == projector and model.config.num_frames == frames
    assert model.config.vision_feature_select_strategy == strategy  # SigLIP has no CLS to drop
    if strategy == "full":  # SigLIP's pooling head is consumed on purpose, with a reason
        assert any("head" in k for k in report.to_dict()["dropped"])

    inputs, expected = load_tensors(case_dir / "inputs.safetensors"), load_tensors(case_dir / "expected.safetensors")
    pixels = inputs["pixel_values_0"][None]
    with torch.no_grad():
        feats = model.get_vision_features(pixels[0])
        tokens = model.get_video_features(pixels)[0]
    torch.testing.assert_close(feats, expected["frame_features"], atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(tokens, expected["visual_tokens"][0], atol=ATOL, rtol=RTOL)
    assert tokens.shape[0] == case["visual_token_count"] == model.config.video_seq_length(frames)
    assert processor.video_tokens(frames) == tokens.shape[0]

    ids = _expand_sentinel(inputs["input_ids"], model.config.video_token_id, tokens.shape[0])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels)
        greedy = [
            model.generate(
                input_ids=ids, attention_mask=mask, pixel_values_videos=pixels, max_new_tokens=5, min_new_tokens=5,
                do_sample=False, use_cache=cache,
            )[:, ids.shape[1]:]
            for cache in (True, False)
        ]
    valid = expected["merged_attention_mask"][0].bool()
    assert valid.sum() == ids.shape[1]
    torch.testing.assert_close(out.logits[0], expected["logits"][0, valid], atol=ATOL, rtol=RTOL)
    assert torch.equal(greedy[0], expected["greedy_new_tokens"]) and torch.equal(greedy[1], greedy[0])

    # The converted processor renders the release's chat format and tokenizes it to the original ids.
    prompt = case["prompt"]["texts"][0]
    question = prompt.split("<video>\n", 1)[1].split(" [/INST]")[0].split("<|im_end|>")[0]
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    rendered = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert rendered == prompt.removeprefix("<s>")  # the processor adds BOS itself
    blank = torch.zeros(frames, 20, 20, 3, dtype=torch.uint8).numpy()
    assert processor(text=[rendered], videos=[blank])["input_ids"].tolist() == ids.tolist()


def test_videollama2_image_is_a_still_video(tmp_path):
    """An image = ``num_frames`` identical frames (the original ``expand``s it); the tower runs once per image."""
    case_dir = fixture_case("videollama2", "clip_stc_mistral_video8")
    model, _, _ = _convert(case_dir, tmp_path)
    frame = load_tensors(case_dir / "inputs.safetensors")["pixel_values_0"][3]
    with torch.no_grad():
        as_image = model.get_image_features(frame[None])[0]
        as_video = model.get_video_features(frame[None, None].expand(1, model.config.num_frames, -1, -1, -1))[0]
    torch.testing.assert_close(as_image, as_video, atol=1e-6, rtol=1e-6)
    assert as_image.shape[0] == model.config.image_seq_length


@pytest.mark.parametrize("frames", [8, 16])
def test_videollama2_frame_sampling_matches_frame_sample(frames):
    """``frame_sample(n, 'uniform', N)``: round((i + 0.5) * (n - 1) / N) -- our ``index_midpoints`` rule."""
    case_dir = fixture_case("videollama2", "preprocess")
    expected = load_tensors(case_dir / "expected.safetensors")
    _, meta = load_video(case_dir / "video.mp4", num_frames=frames, sampling="index_midpoints")
    assert list(meta.frame_indices) == expected[f"video_frame_indices_{frames}"].tolist()
    _, meta = load_video(case_dir / "video.mp4", fps=1, sampling="index_midpoints")  # the original's fps mode
    assert list(meta.frame_indices) == expected["video_frame_indices_fps_mode"].tolist()


def test_videollama2_processor_pixels_match_process_video():
    """Processor end to end on the mp4 (decode, sample, CLIP-336 transform) = the original ``process_video``."""
    case_dir = fixture_case("videollama2", "preprocess")
    expected = load_tensors(case_dir / "expected.safetensors")
    proc = VideoLLMVideoLlama2Processor(tokenizer=_word_tokenizer(), num_frames=8)
    video = proc(text=["<video>"], videos=[str(case_dir / "video.mp4")])["pixel_values_videos"][0]
    assert list(video.shape) == expected["video8_clip336_shape"].tolist()
    torch.testing.assert_close(video.mean((2, 3)), expected["video8_clip336_mean_per_frame_channel"], atol=1e-5, rtol=0)
    torch.testing.assert_close(video.std((2, 3)), expected["video8_clip336_std_per_frame_channel"], atol=1e-5, rtol=0)


def _word_tokenizer():
    from hf_videollm.tiny import tiny_tokenizer

    return tiny_tokenizer()


def test_videollama2_wrong_tower_fails_before_writing(tmp_path):
    """A tower of another width than the release's mm_hidden_size is refused, and nothing is written."""
    clip_case = fixture_case("videollama2", "clip_stc_mistral_video8")
    siglip_case = fixture_case("videollama2", "siglip_stc_v35_qwen2_video16")
    with pytest.raises(ConversionError, match="mm_hidden_size|shape"):
        convert("videollama2", clip_case / "original", tmp_path / "o", progress=False,
                vision_tower=str(siglip_case / "original" / "vision_tower"))
    assert not (tmp_path / "o").exists()


def test_videollama2_mixtral_release_round_trip(tmp_path):
    """VideoLLaMA2-8x7B layout: per-expert ``block_sparse_moe.experts.E.w{1,2,3}`` -> transformers' stacked experts.

    No fixture holds a Mixtral release: one is written here from a tiny model in the original key layout (4.x tower
    nesting, per-expert weights) and converted back; every tensor must come back unchanged.
    """
    import json

    from safetensors.torch import save_file

    from hf_videollm.tiny import build_tiny, tiny_tokenizer

    tok = tiny_tokenizer()
    text = dict(model_type="mixtral", hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, num_local_experts=3, num_experts_per_tok=2, tie_word_embeddings=False)
    model, _ = build_tiny("videollama2", tokenizer=tok, text_config=text)
    sd = model.state_dict()
    release: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k.startswith("vision_tower."):
            release["model.vision_tower.vision_tower.vision_model." + k[len("vision_tower."):]] = v
        elif k.startswith("multi_modal_projector."):
            release["model.mm_projector." + k[len("multi_modal_projector."):]] = v
        elif k == "language_model.lm_head.weight":
            release["lm_head.weight"] = v
        elif ".mlp.experts.gate_up_proj" in k:
            layer = k.split(".")[3]
            for e, fused in enumerate(v):
                w1, w3 = fused.chunk(2)
                release[f"model.layers.{layer}.block_sparse_moe.experts.{e}.w1.weight"] = w1.clone()
                release[f"model.layers.{layer}.block_sparse_moe.experts.{e}.w3.weight"] = w3.clone()
        elif ".mlp.experts.down_proj" in k:
            layer = k.split(".")[3]
            for e, w2 in enumerate(v):
                release[f"model.layers.{layer}.block_sparse_moe.experts.{e}.w2.weight"] = w2.clone()
        else:
            release["model." + k[len("language_model.model."):].replace(".mlp.gate.", ".block_sparse_moe.gate.")] = v
    src = tmp_path / "release"
    (src / "tower").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in release.items()}, src / "model.safetensors")
    tc = model.config.text_config.to_dict()
    llm = {k: tc[k] for k in (*text, "vocab_size", "bos_token_id", "eos_token_id", "pad_token_id") if k != "model_type"}
    cfg = dict(llm, model_type="videollama2_mixtral", architectures=["Videollama2MixtralForCausalLM"],
               mm_projector_type="stc_connector", mm_hidden_size=32, mm_vision_select_layer=-2,
               mm_vision_select_feature="patch", mm_vision_tower=str(src / "tower"), num_frames=4)
    (src / "config.json").write_text(json.dumps(cfg))
    tok.save_pretrained(src)
    model.config.vision_config.save_pretrained(src / "tower")
    (src / "tower" / "preprocessor_config.json").write_text(json.dumps({"crop_size": 28, "size": 28}))

    convert("videollama2", src, tmp_path / "out", progress=False)
    back = VideoLLMVideoLlama2ForConditionalGeneration.from_pretrained(tmp_path / "out")
    assert back.config.text_config.model_type == "mixtral" and back.config.num_frames == 4
    for k, v in back.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_videollama2_release_without_tower_weights_takes_them_from_the_tower_repo(tmp_path):
    """A release saved without ``model.vision_tower.*`` (as the "-Base" repos) gets the tower from the tower repo."""
    import shutil

    from safetensors.torch import load_file, save_file

    case_dir = fixture_case("videollama2", "clip_stc_mistral_video8")
    orig = case_dir / "original"
    release, tower = tmp_path / "release", tmp_path / "tower"
    shutil.copytree(orig, release, ignore=shutil.ignore_patterns("model-*.safetensors", "model.safetensors.index.json"))
    shutil.copytree(orig / "vision_tower", tower, dirs_exist_ok=True)
    sd = {}
    for shard in sorted(orig.glob("model-*.safetensors")):
        sd.update(load_file(shard))
    prefix = "model.vision_tower.vision_tower."
    save_file({k: v for k, v in sd.items() if not k.startswith(prefix)}, release / "model.safetensors")
    save_file({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, tower / "model.safetensors")

    convert("videollama2", release, tmp_path / "out", progress=False, vision_tower=str(tower))
    model = VideoLLMVideoLlama2ForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    expected = load_tensors(case_dir / "expected.safetensors")
    with torch.no_grad():
        tokens = model.get_video_features(load_tensors(case_dir / "inputs.safetensors")["pixel_values_0"][None])[0]
    torch.testing.assert_close(tokens, expected["visual_tokens"][0], atol=ATOL, rtol=RTOL)


def test_videollama2_token_counts_of_the_releases_and_config_errors():
    """Token counts of the released layouts (spec: 845 / 1521 / 1352) and clear errors for bad settings."""
    from hf_videollm.modeling.videollama2 import VideoLLMVideoLlama2Config, videollama2_num_tokens

    assert VideoLLMVideoLlama2Config().image_seq_length == 845  # CLIP-336, 8 frames, stc_connector
    assert videollama2_num_tokens("stc_connector", 16, 336, 14) == 1521  # VideoLLaMA2-7B-16F
    assert videollama2_num_tokens("stc_connector_v35", 16, 384, 14) == 1352  # VideoLLaMA2.1 (SigLIP-384)
    siglip = VideoLLMVideoLlama2Config(
        vision_config=dict(model_type="siglip_vision_model", image_size=384, patch_size=14),
        projector_type="stc_connector_v35", num_frames=16,
    )
    assert siglip.vision_feature_select_strategy == "full"  # SigLIP has no CLS token
    with pytest.raises(ValueError, match="projector_type must be one of"):
        VideoLLMVideoLlama2Config(projector_type="mlp2x_gelu")
    with pytest.raises(ValueError, match="needs at least 2 frame"):
        videollama2_num_tokens("stc_connector_v35", 1, 384, 14)


def test_videollama2_connector_depth():
    """``connector_depth`` sizes both RegNet stages (default: the original's 4); bad values are named."""
    from hf_videollm.modeling.videollama2 import VideoLLMVideoLlama2Config, VideoLLMVideoLlama2ForConditionalGeneration

    tiny = dict(
        vision_config=dict(model_type="clip_vision_model", hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                           num_attention_heads=2, image_size=16, patch_size=4),
        text_config=dict(model_type="mistral", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, vocab_size=40),
        projector_type="stc_connector_v35", num_frames=4, image_token_id=38, video_token_id=39,
    )
    for depth, blocks in ((None, 4), (1, 1), (2, 2)):
        model = VideoLLMVideoLlama2ForConditionalGeneration(VideoLLMVideoLlama2Config(**tiny, connector_depth=depth))
        connector = model.multi_modal_projector
        assert connector.s1.depth == connector.s2.depth == blocks
        keys = {k.split(".")[2] for k in model.state_dict() if k.startswith("multi_modal_projector.s1.")}
        assert keys == {f"b{i + 1}" for i in range(blocks)}  # the original's key names, b1 .. b<depth>
        out = model.get_video_features(torch.rand(1, 4, 3, 16, 16))[0]
        assert out.shape == (2 * 2 * 2, 16)
    with pytest.raises(ValueError, match="connector_depth must be >= 1"):
        VideoLLMVideoLlama2Config(**tiny, connector_depth=0)
    with pytest.raises(ValueError, match="spatial_pool must have RegNet stages"):
        VideoLLMVideoLlama2Config(**{**tiny, "projector_type": "spatial_pool"}, connector_depth=2)
