"""VideoLLaMA 2.1-AV processor + model on tiny random weights: audio alone, a video with its own audio track inside
the video slot, images and silent videos mixed in one batch; clear errors; the original's audio preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_videollm.media import write_video
from hf_videollm.media.audio import clip_sample_waveform, crop_or_pad, kaldi_fbank, load_audio
from hf_videollm.processors.base import ProcessorInputError
from hf_videollm.processors.videollama2_av import VideoAudioTrack
from hf_videollm.tiny import build_tiny, tiny_media


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny("videollama2_av", seed=0)
    return model.eval(), processor


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("av")
    frames = np.random.default_rng(0).integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    t = np.arange(int(1.2 * 16000)) / 16000
    tone = (0.4 * np.sin(2 * np.pi * 660 * t)).astype(np.float32)
    return {
        "with_audio": write_video(d / "tone.mp4", frames, fps=10, audio=tone),
        "silent": write_video(d / "silent.mp4", frames, fps=10),
    }


def _conversation(parts, answer=None):
    msgs = [{"role": "user", "content": [*parts, {"type": "text", "text": "what do you hear"}]}]
    if answer:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return msgs


def test_video_with_audio_fills_one_slot_video_then_audio(tiny, clips):
    model, processor = tiny
    msgs = _conversation([{"type": "video", "path": str(clips["with_audio"]), "with_audio": True}])
    batch = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    ids = batch["input_ids"][0].tolist()
    vid, aud = processor.video_token_id, processor.audio_token_id
    first_v, first_a = ids.index(vid), ids.index(aud)
    n_v, n_a = ids.count(vid), ids.count(aud)
    assert n_a == processor.audio_tokens() == model.config.audio_seq_length(batch["input_features"].shape[1])
    assert first_a == first_v + n_v and ids[first_v:first_a + n_a] == [vid] * n_v + [aud] * n_a  # one contiguous slot
    assert processor.apply_chat_template(msgs, add_generation_prompt=True).count(processor.video_token) == 1
    # the audio is the video's own track with the original's clip sampling, crop/pad and fbank (bf16-rounded)
    wave, _ = load_audio(clips["with_audio"])
    expected = kaldi_fbank(crop_or_pad(clip_sample_waveform(wave, 16000), processor.audio_samples) * 2**15)
    torch.testing.assert_close(batch["input_features"][0], expected.to(torch.bfloat16).float())
    with torch.no_grad():
        out = model(**batch)
    assert [f.shape[0] for f in out.media_features["audio"]] == [n_a]


def test_mixed_batch_equals_single_samples(tiny, clips):
    """image / silent video / audio alone / video with audio in one left-padded batch = each sample alone."""
    model, processor = tiny
    samples = [
        ([{"type": "image", "image": tiny_media("image", 1)}], None),
        ([{"type": "video", "video": tiny_media("video", 2)}], None),
        ([{"type": "audio", "audio": tiny_media("audio", 3)}], None),
        ([{"type": "video", "path": str(clips["with_audio"]), "with_audio": True},
          {"type": "audio", "audio": tiny_media("audio", 4)}], None),
    ]
    convs = [_conversation(parts) for parts, _ in samples]
    batch = processor.apply_chat_template(convs, add_generation_prompt=True, tokenize=True)
    assert batch["input_features"].shape[0] == 3  # audio alone, the video's track, then the sample's own clip
    kw = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    together = model.generate(**batch, **kw)[:, batch["input_ids"].shape[1]:]
    with torch.no_grad():
        logits = model(**batch).logits
    for b, conv in enumerate(convs):
        one = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=True)
        alone = model.generate(**one, **kw)[:, one["input_ids"].shape[1]:]
        assert torch.equal(alone[0], together[b]), f"sample {b} differs when batched"
        with torch.no_grad():
            ref = model(**one).logits[0, -1]
        torch.testing.assert_close(logits[b, -1], ref, atol=1e-4, rtol=1e-4)


def test_audio_changes_the_answer_logits(tiny, clips):
    """The audio tokens reach the LLM: the same video with / without its audio gives other logits."""
    model, processor = tiny
    path = str(clips["with_audio"])
    a = processor.apply_chat_template(_conversation([{"type": "video", "path": path, "with_audio": True}]),
                                      add_generation_prompt=True, tokenize=True)
    v = processor.apply_chat_template(_conversation([{"type": "video", "path": path}]), add_generation_prompt=True,
                                      tokenize=True)
    assert "input_features" not in v
    with torch.no_grad():
        assert not torch.allclose(model(**a).logits[0, -1], model(**v).logits[0, -1], atol=1e-4)


def test_audio_requested_from_a_video_without_track_is_an_error(tiny, clips):
    _, processor = tiny
    msgs = _conversation([{"type": "video", "path": str(clips["silent"]), "with_audio": True}])
    with pytest.raises(ProcessorInputError, match="no audio stream.*[Ss]ilence is never"):
        processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    with pytest.raises(ProcessorInputError, match="frames carry no audio"):
        processor(text=["<video> hi"], videos=[{"video": tiny_media("video"), "with_audio": True}])
    with pytest.raises(ProcessorInputError, match="keys"):
        processor(text=["<video> hi"], videos=[{"video": tiny_media("video"), "with_sound": True}])
    with pytest.raises(ProcessorInputError, match="sampling_rate"):
        processor(text=["<audio> hi"], audio=[{"array": np.zeros(100)}])
    with pytest.raises(ProcessorInputError, match="need the video in the part"):
        processor.apply_chat_template(_conversation([{"type": "video", "with_audio": True}]), tokenize=True)


def test_audio_file_first_channel_crop_pad_resample(tiny, tmp_path):
    """``process_audio_file``: first channel, cut/pad to audio_seconds at the source rate, FFT-resampled to 16 kHz."""
    _, processor = tiny
    rate = 22050
    t = np.arange(int(2.5 * rate)) / rate
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), np.zeros_like(t)]).astype(np.float32) * 0.5
    item = {"array": stereo, "sampling_rate": rate}
    wave = processor.waveform(item)
    assert wave.shape == (processor.audio_samples,)  # 1 s in the tiny processor
    assert wave.abs().max() > 0.4  # the first (non-silent) channel
    start = (len(t) - rate) // 2 / rate  # the centre second
    reference = np.sin(2 * np.pi * 300 * (np.arange(16000) / 16000 + start))
    assert np.abs(wave.numpy() - 0.5 * reference)[50:-50].max() < 1e-3
    feats, counts = processor._process_audios([item, tiny_media("audio")])
    assert feats["input_features"].shape == (2, 98, 128) and counts == [48, 48]


def test_thirty_seconds_is_1496_tokens():
    _, processor = build_tiny("videollama2_av", processor={"audio_seconds": 30.0})
    assert processor.audio_tokens() == 1496
    model, _ = build_tiny("videollama2_av")
    assert model.config.audio_seq_length(2998) == 1496
    assert isinstance(processor._split_item("video", {"path": "x.mp4", "with_audio": True})[1][0][1], VideoAudioTrack)


def test_seeking_clip_decode_matches_whole_decode_in_length_and_content(tiny, tmp_path):
    """The opt-in seek path for long tracks returns the same clips (positions within the codec's seek precision)."""
    _, processor = tiny
    t = np.arange(12 * 16000) / 16000
    track = (0.4 * np.sin(2 * np.pi * 3 * t) * np.sin(2 * np.pi * 500 * t)).astype(np.float32)  # slow envelope
    path = write_video(tmp_path / "long.mp4", np.zeros((12, 16, 16, 3), np.uint8), fps=1, audio=track)
    whole = processor._video_track_clips(str(path))
    processor.audio_seek_min_seconds = 5.0
    try:
        seeked = processor._video_track_clips(str(path))
    finally:
        processor.audio_seek_min_seconds = None
    assert seeked.shape == whole.shape == (8 * 32000,)
    env = lambda w: w.abs().unfold(0, 800, 800).mean(1)  # noqa: E731  50 ms envelope
    assert torch.corrcoef(torch.stack([env(seeked), env(whole)]))[0, 1] > 0.95


def test_4bit_keeps_beats_and_projectors_in_compute_dtype(tiny, tmp_path):
    pytest.importorskip("bitsandbytes")
    model, processor = tiny
    model.save_pretrained(tmp_path)
    qc = type(model).default_quantization_config(compute_dtype=torch.bfloat16)
    assert {"audio_tower", "audio_projector"} <= set(qc.llm_int8_skip_modules)
    q = type(model).from_pretrained(tmp_path, quantization_config=qc, dtype=torch.bfloat16).eval()
    quantized = [n for n, m in q.named_modules() if type(m).__name__ == "Linear4bit"]
    assert quantized and all(n.startswith("language_model.") for n in quantized)
    assert {p.dtype for p in q.audio_tower.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in q.audio_projector.parameters()} == {torch.bfloat16}
    batch = processor(text=["<audio> what"], audio=[tiny_media("audio")])
    assert batch["input_features"].dtype == torch.float32  # cast to the tower's dtype by the model
    with torch.no_grad():
        out = q(**batch)
    assert torch.isfinite(out.logits).all()


def test_cli_converts_the_av_release(tmp_path):
    from conftest import fixture_case

    from hf_videollm.cli import main

    case_dir = fixture_case("videollama2", "av_beats_qwen2")
    rc = main(["convert", "videollama2", str(case_dir / "original"), str(tmp_path / "out"), "--vision-tower",
               str(case_dir / "original" / "vision_tower"), "--audio-config", '{"max_distance": 64}', "--quiet"])
    assert rc == 0
    import json

    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "videollm_videollama2_av" and cfg["audio_config"]["max_distance"] == 64
    assert cfg["architectures"] == ["VideoLLMVideoLlama2AVForConditionalGeneration"]
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import hf_videollm  # noqa: F401  registers the Auto classes

    assert type(AutoProcessor.from_pretrained(tmp_path / "out")).__name__ == "VideoLLMVideoLlama2AVProcessor"
    assert type(AutoModelForImageTextToText.from_pretrained(tmp_path / "out")).__name__ == cfg["architectures"][0]


def test_chat_command_hears_audio(tiny, clips, tmp_path, capsys):
    from hf_videollm.cli import main

    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    rc = main(["chat", str(tmp_path), "--video", str(clips["with_audio"]), "--with-audio", "--audio",
               str(clips["with_audio"]), "--prompt", "what do you hear", "--max-new-tokens", "2"])
    assert rc == 0, capsys.readouterr().err
    rc = main(["chat", str(tmp_path), "--video", str(clips["silent"]), "--with-audio", "--prompt", "hi",
               "--max-new-tokens", "2"])
    assert rc == 2 and "no audio stream" in capsys.readouterr().err
