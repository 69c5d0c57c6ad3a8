"""VideoLLaMA 2.1-AV end to end against the golden fixture ``videollama2/av_beats_qwen2`` (original ``audio_visual``
branch): the release converted by ``convert("videollama2", ...)``, BEATs + audio projector, the video's tokens then
the audio's tokens in the one ``<video>`` slot, logits and greedy tokens; plus the converter's checks."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import fixture_case, load_case, load_tensors

from hf_videollm.conversion import ConversionError, convert
from hf_videollm.modeling.videollama2_av import VideoLLMVideoLlama2AVForConditionalGeneration
from hf_videollm.processors.videollama2_av import VideoLLMVideoLlama2AVProcessor

CASE = ("videollama2", "av_beats_qwen2")
VIDEO_SENTINEL = -201


def _max_distance(case_dir) -> dict:
    """The fixture's tiny BEATs uses max_distance 64; shapes cannot tell it (the release's is 800)."""
    note = json.loads((case_dir / "original" / "config.json").read_text())["audio_tower_config_note"]
    return {"max_distance": json.loads(note[note.index("{"):])["max_distance"]}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    case_dir = fixture_case(*CASE)
    out = tmp_path_factory.mktemp("av") / "converted"
    report = convert("videollama2", case_dir / "original", out, progress=False,
                     vision_tower=str(case_dir / "original" / "vision_tower"), audio_config=_max_distance(case_dir))
    model = VideoLLMVideoLlama2AVForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    return case_dir, out, model, VideoLLMVideoLlama2AVProcessor.from_pretrained(out), report


def test_av_release_end_to_end(converted):
    case_dir, out, model, processor, report = converted
    case = load_case(case_dir)
    tol = case["tolerance"]
    atol, rtol = tol["recommended_atol"], tol["recommended_rtol"]
    inputs, expected = load_tensors(case_dir / "inputs.safetensors"), load_tensors(case_dir / "expected.safetensors")
    dropped = report.to_dict()["dropped"]
    assert any("predictor" in k for k in dropped)  # the unused classifier, with its reason
    assert model.config.audio_config.encoder_layers == 2 and model.config.audio_config.num_buckets == 32
    saved = json.loads((out / "config.json").read_text())
    assert saved["audio_config"]["model_type"] == "videollm_beats"  # a real sub-config in config.json

    pixels, fbank = inputs["pixel_values_0"][None], inputs["audio_fbank_0"]
    with torch.no_grad():
        video = model.get_video_features(pixels)[0]
        audio = model.get_audio_features(fbank)[0]
    torch.testing.assert_close(video, expected["visual_tokens"][0], atol=atol, rtol=rtol)
    torch.testing.assert_close(audio, expected["audio_tokens"][0], atol=atol, rtol=rtol)
    assert audio.shape[0] == model.config.audio_seq_length(fbank.shape[1])

    # the one <video> sentinel -> video placeholders then audio placeholders (what the processor emits)
    cfg = model.config
    rows = [[u for t in row for u in ([cfg.video_token_id] * video.shape[0] + [cfg.audio_token_id] * audio.shape[0]
                                      if t == VIDEO_SENTINEL else [t])] for row in inputs["input_ids"].tolist()]
    ids = torch.tensor(rows)
    mask = torch.ones_like(ids)
    kw = dict(pixel_values_videos=pixels, input_features=fbank)
    with torch.no_grad():
        out_ = model(input_ids=ids, attention_mask=mask, **kw)
        greedy = [model.generate(input_ids=ids, attention_mask=mask, **kw, max_new_tokens=5, min_new_tokens=5,
                                 do_sample=False, use_cache=c)[:, ids.shape[1]:] for c in (True, False)]
    valid = expected["merged_attention_mask"][0].bool()
    assert valid.sum() == ids.shape[1]
    torch.testing.assert_close(out_.logits[0], expected["logits"][0, valid], atol=atol, rtol=rtol)
    assert torch.equal(greedy[0], expected["greedy_new_tokens"]) and torch.equal(greedy[1], greedy[0])

    # the converted processor renders the release's chat format and expands the AV slot the same way
    prompt = case["prompt"]["texts"][0]
    question = prompt.split("<video>\n", 1)[1].split("<|im_end|>")[0]
    rendered = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}], add_generation_prompt=True
    )
    assert rendered == prompt
    frames = torch.zeros(8, 20, 20, 3, dtype=torch.uint8).numpy()
    # a 160-frame fbank = 1.63 s of audio at 16 kHz (160 frames: 1 + (N - 400) // 160 = 160)
    processor.audio_seconds = (400 + 159 * 160) / 16000
    wave = {"array": torch.zeros(400 + 159 * 160).numpy(), "sampling_rate": 16000}
    batch = processor(text=[rendered], videos=[{"video": frames, "audio": wave}])
    assert batch["input_ids"].tolist() == ids.tolist()
    assert batch["input_features"].shape == fbank.shape


def test_av_sdpa_matches_eager(converted):
    case_dir, out, model, _, _ = converted
    fbank = load_tensors(case_dir / "inputs.safetensors")["audio_fbank_0"]
    sdpa = VideoLLMVideoLlama2AVForConditionalGeneration.from_pretrained(out, attn_implementation="sdpa").eval()
    assert sdpa.config.audio_config._attn_implementation == "sdpa"
    with torch.no_grad():
        torch.testing.assert_close(sdpa.get_audio_features(fbank)[0], model.get_audio_features(fbank)[0],
                                   atol=1e-5, rtol=1e-5)


def test_av_converter_refuses_bad_options(tmp_path):
    case_dir = fixture_case(*CASE)
    with pytest.raises(ConversionError, match="not BEATs config fields"):
        convert("videollama2", case_dir / "original", tmp_path / "o", progress=False,
                vision_tower=str(case_dir / "original" / "vision_tower"), audio_config={"max_dist": 3})
    vision_only = fixture_case("videollama2", "siglip_stc_v35_qwen2_video16")
    with pytest.raises(ConversionError, match="audio-config applies"):
        convert("videollama2", vision_only / "original", tmp_path / "o", progress=False,
                vision_tower=str(vision_only / "original" / "vision_tower"), audio_config={"max_distance": 3})
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("tamper", [False, True])
def test_av_release_with_repeated_tied_tables(tmp_path, tamper):
    """A checkpoint that repeats the tied relative-position table per layer (as torch.save does) converts to the same
    model; a copy that differs from layer 0's is refused before anything is written."""
    import shutil

    from safetensors.torch import load_file, save_file

    case_dir = fixture_case(*CASE)
    src = tmp_path / "release"
    shutil.copytree(case_dir / "original", src)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    key0 = "model.audio_tower.encoder.layers.0.self_attn.relative_attention_bias.weight"
    shard = index["weight_map"][key0]
    weights = load_file(src / shard)
    copy = weights[key0].clone() + (1.0 if tamper else 0.0)
    weights["model.audio_tower.encoder.layers.1.self_attn.relative_attention_bias.weight"] = copy
    save_file(weights, src / shard, metadata={"format": "pt"})
    index["weight_map"]["model.audio_tower.encoder.layers.1.self_attn.relative_attention_bias.weight"] = shard
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    out = tmp_path / "out"
    kw = dict(progress=False, vision_tower=str(src / "vision_tower"), audio_config=_max_distance(case_dir))
    if tamper:
        with pytest.raises(ConversionError, match="differs from layer 0"):
            convert("videollama2", src, out, **kw)
        assert not out.exists()
        return
    convert("videollama2", src, out, **kw)
    model = VideoLLMVideoLlama2AVForConditionalGeneration.from_pretrained(out, attn_implementation="eager").eval()
    fbank = load_tensors(case_dir / "inputs.safetensors")["audio_fbank_0"]
    with torch.no_grad():
        audio = model.get_audio_features(fbank)[0]
    expected = load_tensors(case_dir / "expected.safetensors")["audio_tokens"][0]
    torch.testing.assert_close(audio, expected, atol=1e-4, rtol=1e-4)
