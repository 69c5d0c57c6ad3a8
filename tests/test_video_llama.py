"""Video-LLaMA behaviour on the tiny model: how images / videos / audio become tokens, what the model refuses and
why, the VL-only variant, the prompt formats (Vicuna "###" and Llama-2-Chat), training labels, freezing per stage."""

from __future__ import annotations

import pytest
import torch

from hf_videollm.processors.base import ProcessorInputError
from hf_videollm.tiny import build_tiny, tiny_media, tiny_tokenizer, tiny_video_llama


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny("video_llama")
    return model.eval(), processor


def _pixels(model, frames: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    size = model.config.vision_config.image_size
    return torch.randn(frames, 3, size, size, generator=g)


def test_image_is_a_one_frame_video_and_videos_of_any_length_batch(tiny):
    model, _ = tiny
    image = _pixels(model, 1)[0]
    a, b = _pixels(model, 3, 1), _pixels(model, 5, 2)
    with torch.no_grad():
        as_image = model.get_image_features(image[None])
        as_video = model.get_video_features(image[None, None])[0]
        both = model.get_video_features([a, b])
        alone = [model.get_video_features(v[None])[0] for v in (a, b)]
    q, d = model.config.num_video_query_tokens, model.config.text_config.hidden_size
    assert as_image.shape == (1, q, d)
    torch.testing.assert_close(as_image[0], as_video)
    for x, y in zip(both, alone):  # 32 (here 4) tokens per video whatever its length; batching changes nothing
        assert x.shape == (q, d)
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_frame_position_embedding_is_added_per_frame(tiny):
    model, _ = tiny
    v = _pixels(model, 3)
    with torch.no_grad():
        queries = model.get_frame_queries(v)  # (T, Q, H)
        enc = model.video_qformer_inputs(queries[None])[0]  # (T * Q, H)
    q = model.config.num_query_tokens
    pos = model.video_frame_position_embedding.weight
    for t in range(3):  # frame t's queries + position t, frames in time order
        torch.testing.assert_close(enc[t * q:(t + 1) * q] - queries[t], pos[t].expand(q, -1), atol=1e-6, rtol=0)


def test_bad_inputs_are_named(tiny):
    model, _ = tiny
    too_long = _pixels(model, model.config.max_frame_pos + 1)
    with pytest.raises(ValueError, match="max_frame_pos"):
        model.get_video_features(too_long[None])
    with pytest.raises(ValueError, match=r"pixel_values_videos must be \(num_videos, frames, 3, H, W\)"):
        model.get_video_features(_pixels(model, 2))
    with pytest.raises(ValueError, match="pass videos as pixel_values_videos"):
        model.get_image_features(_pixels(model, 2)[None])
    with pytest.raises(ValueError, match="fbanks"):
        model.get_audio_features(torch.zeros(1, 8, 1, 128, 100))
    with pytest.raises(ValueError, match="num_audio_clips"):
        model.get_audio_features(torch.zeros(1, model.config.num_audio_clips + 1, 1, 128, 204))


def test_audio_tokens_and_clip_positions(tiny):
    model, processor = tiny
    feats = processor(text="<audio> hi", audio=[tiny_media("audio", 0)])["input_features"]
    assert feats.shape == (1, 8, 1, 128, 204)
    with torch.no_grad():
        tokens = model.get_audio_features(feats)
        _, emb = model.get_audio_embeds(feats)
    assert tokens.shape == (1, model.config.num_audio_query_tokens, model.config.text_config.hidden_size)
    # ImageBind's embedding: L2-normalised x 20 per clip
    torch.testing.assert_close(emb.norm(dim=-1), torch.full(emb.shape[:2], 20.0), atol=1e-4, rtol=0)


def test_vl_only_model_has_no_audio_branch():
    model, processor = tiny_video_llama(tiny_tokenizer(), audio=False)
    assert not hasattr(model, "audio_tower") and "input_features" not in model.input_spec.names
    assert processor.modalities == ("image", "video")
    with pytest.raises(ProcessorInputError, match="does not take audio"):
        processor(text="<video> hi", videos=[tiny_media("video")], audio=[tiny_media("audio")])
    with pytest.raises(ValueError, match="no audio branch"):
        model.get_audio_features(torch.zeros(1, 8, 1, 128, 204))
    with pytest.raises(ProcessorInputError, match="no audio branch"):
        processor(text="<video> hi", videos=[{"video": "clip.mp4", "with_audio": True}])
    with pytest.raises(ProcessorInputError, match="no audio branch"):
        processor(text="<video> hi", videos=[{"video": "clip.mp4", "audio": "a.wav"}])
    with pytest.raises(ProcessorInputError, match="takes 'video'"):
        processor(text="<video> hi", videos=[{"video": "clip.mp4", "sound": "a.wav"}])


def test_config_checks_widths():
    from hf_videollm.modeling.video_llama import VideoLLMVideoLlamaConfig

    with pytest.raises(ValueError, match="video_qformer_config.encoder_hidden_size"):
        VideoLLMVideoLlamaConfig(video_qformer_config={"encoder_hidden_size": 100, "use_qformer_text_input": False})
    with pytest.raises(ValueError, match="needs audio_config"):
        VideoLLMVideoLlamaConfig(audio_qformer_config={"use_qformer_text_input": False})
    av = VideoLLMVideoLlamaConfig(audio_config={})  # the released AV model's sizes
    assert (av.audio_qformer_config.encoder_hidden_size, av.audio_qformer_config.num_hidden_layers) == (1024, 2)
    assert av.audio_qformer_config.cross_attention_frequency == 1


def test_vicuna_prompt_and_training_labels(tiny):
    _, processor = tiny
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]},
    ]
    text = processor.apply_chat_template(messages)
    assert text == "###Human: <Image><image></Image>  What is it?###Assistant: a red circle###"
    batch = processor.apply_chat_template(messages, tokenize=False, mark_generation=True)
    out = processor(text=batch, images=[tiny_media("image")], return_labels=True)
    labels = out["labels"][0]
    answer = processor.tokenizer("a red circle###", add_special_tokens=False)["input_ids"]
    assert labels[labels != -100].tolist() == answer  # the answer and its "###" separator, nothing else


def test_llama2_chat_prompt():
    _, processor = build_tiny("video_llama", processor={"conversation": "llama_2"})
    messages = [
        {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A dog."}]},
        {"role": "user", "content": [{"type": "text", "text": "More?"}]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text.startswith("[INST] <<SYS>>\nYou are a helpful language and vision assistant.")
    assert text.endswith("<</SYS>>\n\n<Video><video></Video>  Describe. [/INST] A dog. </s><s>[INST] More? [/INST]")


def test_video_message_only_for_files(tiny, tmp_path):
    """Frames given directly carry no timestamps: no "The video contains ..." message; a file gets it."""
    from hf_videollm.media.video_write import write_video

    _, processor = tiny
    text = "###Human: <Video><video></Video>  What?###Assistant:"
    direct = processor(text=text, videos=[tiny_media("video", frames=4)])
    path = tmp_path / "clip.mp4"
    write_video(path, torch.from_numpy(tiny_media("video", frames=10)), fps=5)
    from_file = processor(text=text, videos=[str(path)])
    ids = from_file["input_ids"][0][from_file["attention_mask"][0].bool()].tolist()
    tok = processor.tokenizer
    message = tok("The video contains 2 frames sampled at 0.0, 1.0 seconds.", add_special_tokens=False)["input_ids"]
    assert any(ids[i:i + len(message)] == message for i in range(len(ids)))
    assert from_file["input_ids"].shape[1] > direct["input_ids"].shape[1]


def test_stages_train_their_parts_only():
    from hf_videollm.training.recipes import get_stage

    model, _ = build_tiny("video_llama")
    for name, must in (("stage2", "video_qformer.query_tokens"), ("audio_stage2", "audio_qformer.query_tokens")):
        stage = get_stage("video_llama", name)
        model.set_trainable_parts(stage.trainable_parts)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert must in trainable
        assert not any(n.startswith(("vision_tower.", "qformer.", "language_model.", "audio_tower.")) for n in trainable)


@pytest.mark.parametrize("total,fps", [(30, 10), (7, 5), (100, 25), (64, 30)])
def test_segment_starts_sampling_is_the_originals_arange(total, fps, tmp_path):
    """``sampling="segment_starts"`` picks ``np.arange(0, vlen, vlen / n).astype(int)`` with ``n = min(8, vlen)`` (the
    original load_video), from a file as from the index rule."""
    import numpy as np

    from hf_videollm.media.video_read import load_video, segment_starts
    from hf_videollm.media.video_write import write_video

    n = min(8, total)
    expected = np.arange(0, total, total / n).astype(int).tolist()
    assert segment_starts(total, 8) == expected
    path = tmp_path / "v.mp4"
    write_video(path, torch.from_numpy(tiny_media("video", frames=total, height=16, width=16)), fps=fps)
    _, meta = load_video(path, num_frames=8, sampling="segment_starts")
    assert meta.frame_indices == expected


def test_short_track_gives_short_clips_padded_to_204(tiny):
    """A 1 s track: every clip is the whole second (ConstantClipsPerVideoSampler), 98 fbank frames, zero-padded (in
    the normalised domain: 4.268 / 9.138) to 204 -- the original slices the clip, it does not pad the waveform."""
    _, processor = tiny
    wave = torch.sin(torch.linspace(0, 3000, 16000)) * 0.5
    feats = processor.audio_features(wave)
    assert feats.shape == (8, 1, 128, 204)
    pad = feats[:, 0, :, 98:]
    torch.testing.assert_close(pad, torch.full_like(pad, 4.268 / 9.138), atol=1e-6, rtol=0)
    assert (feats[:, 0, :, :98] - 4.268 / 9.138).abs().amax() > 0.1
    # the same second eight times (the first clip's in-place mean removal leaves later ones a ~0 mean to remove)
    torch.testing.assert_close(feats[0], feats[7], atol=1e-3, rtol=0)


@pytest.mark.parametrize("seconds,channels", [(1.0, 1), (3.07, 1), (5.0, 2)])
def test_audio_features_equal_torchaudio_kaldi_imagebind_recipe(tiny, seconds, channels):
    """Against ImageBind's ``load_and_transform_audio_data`` / ``waveform2melspec`` written with torchaudio's own
    ``compliance.kaldi.fbank``, including its in-place mean removal on overlapping clip views (skipped where
    torchaudio is not installed; measured: <= 3.1e-4 in normalised units, float32 vs our float64 fbank)."""
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    from hf_videollm.media.audio import clip_bounds

    _, processor = tiny
    g = torch.Generator().manual_seed(int(seconds * 100))
    n = int(seconds * 16000)
    wave = 0.3 * torch.sin(torch.arange(n) * 0.07) + 0.05 * torch.randn(channels, n, generator=g) + 0.02
    original = wave.clone()
    ref = []
    for lo, hi in clip_bounds(n, 16000, 8, 2.0):
        w = original[:, lo:hi]  # a view, as the original slices it
        w -= w.mean()
        fb = kaldi.fbank(w, htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
                         num_mel_bins=128, dither=0.0, frame_length=25, frame_shift=10).T
        fb = torch.nn.functional.pad(fb, (0, 204 - fb.shape[1])) if fb.shape[1] < 204 else fb[:, :204]
        ref.append(((fb + 4.268) / 9.138)[None])
    torch.testing.assert_close(processor.audio_features(wave), torch.stack(ref), atol=1e-3, rtol=0)


def test_frozen_encoders_stay_in_eval_mode_while_training():
    """As LAVIS' disabled_train: the frozen EVA ViT and image Q-Former (dropout 0.1) never switch to training mode;
    a part the user unfreezes does."""
    from hf_videollm.training.recipes import get_stage

    model, _ = build_tiny("video_llama")
    model.set_trainable_parts(get_stage("video_llama", "stage2").trainable_parts)
    model.train()
    assert model.video_qformer.training and model.language_model.training
    assert not model.qformer.training and not model.vision_tower.training and not model.audio_tower.training
    model.set_trainable_parts(("qformer", "video_qformer", "connector"))
    model.train()
    assert model.qformer.training
    model.eval()
    assert not model.video_qformer.training


def test_video_with_its_audio_in_one_slot(tiny):
    """``{"video": frames, "audio": source}``: the audio's tokens right after the video's, in the video's slot."""
    _, processor = tiny
    out = processor(text="<video> what?", videos=[{"video": tiny_media("video"), "audio": tiny_media("audio")}])
    ids = out["input_ids"][0].tolist()
    v, a = processor.video_token_id, processor.audio_token_id
    start = ids.index(v)
    assert ids[start:start + 4 + 2] == [v] * 4 + [a] * 2
    assert out["input_features"].shape == (1, 8, 1, 128, 204)


def test_a_video_files_own_track(tiny, tmp_path):
    """``with_audio=True`` on a file (and the demo's ``VideoAudioTrack`` marker) read the video's own track: the
    same features as the track given as an array."""
    import numpy as np

    from hf_videollm.media.video_write import write_video
    from hf_videollm.processors.videollama2_av import VideoAudioTrack

    _, processor = tiny
    path = tmp_path / "clip.mp4"
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(32000) / 16000)).astype(np.float32)
    write_video(path, torch.from_numpy(tiny_media("video", frames=8)), fps=4, audio=tone, audio_rate=16000)
    text = "<video> what?"
    a = processor(text=text, videos=[{"video": str(path), "with_audio": True}])["input_features"]
    b = processor(text=text, videos=[{"video": tiny_media("video"), "audio": VideoAudioTrack(str(path))}])["input_features"]
    c = processor(text="<audio> what?", audio=[str(path)])["input_features"]
    assert a.shape == (1, 8, 1, 128, 204)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
