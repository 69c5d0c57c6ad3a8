"""Video-LLaMA (DAMO-NLP-SG/Video-LLaMA, the first one) faithfulness: converter + model + processor reproduce the
original on ``video_llama/{vl_vicuna,av_vicuna,preprocess}`` (see ../shared/fixtures/README.md).

The release folder (EVA ``eva_vit_g.pth``, BLIP-2 ``blip2_pretrained_flant5xxl.pth``, the VL / AL branch ``.pth``,
``imagebind_huge.pth``, ``vicuna-7b/``, ``bert-base-uncased/``) is converted by ``read_video_llama``; every
intermediate the original recorded is compared at 1e-4, the 5 greedy ids exactly.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import fixture_case, load_case, load_tensors

from hf_videollm.conversion import ConversionError, write_converted
from hf_videollm.conversion.video_llama import read_video_llama
from hf_videollm.registry import get_entry

ATOL = RTOL = 1e-4
CASES = ["vl_vicuna", "av_vicuna"]


def _heads(case: dict) -> dict:
    audio = (case["original_config"].get("audio_branch") or {}).get("imagebind_model_kwargs", {})
    return {"vision_num_heads": case["original_config"]["eva_vit"]["num_heads"],
            "audio_num_heads": audio.get("audio_num_heads")}


def _convert(case_dir, out):
    case = load_case(case_dir)
    report = write_converted(read_video_llama(case_dir / "original", **_heads(case)), out, dtype=torch.float32,
                             progress=False)
    entry = get_entry("video_llama")
    model = entry.model_class.from_pretrained(out, attn_implementation="eager", dtype=torch.float32).eval()
    return case, report, model, entry.processor_class.from_pretrained(out)


def _close(ours, expected, name):
    torch.testing.assert_close(ours, expected[name], atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("case_name", CASES)
def test_original_release(case_name, tmp_path):
    case_dir = fixture_case("video_llama", case_name)
    case, report, model, processor = _convert(case_dir, tmp_path / "out")
    # the original Chat stops at "###" (StoppingCriteriaSub) as well as at </s>
    assert model.generation_config.eos_token_id == [2, processor.tokenizer.convert_tokens_to_ids("###")]
    assert processor.modalities == model.input_spec.modality_names
    stop = processor.tokenizer("a b###Human", add_special_tokens=False)["input_ids"]
    assert processor.decode(stop, skip_special_tokens=True) == processor.decode(stop).split("###")[0]
    assert processor.batch_decode([stop], skip_special_tokens=True)[0].endswith("b")
    dropped = report.to_dict()["dropped"]
    assert any(k.startswith("blocks.2.") for k in dropped)  # eva_vit_g.pth's extra block, never built
    assert any(k.startswith("t5_proj.") for k in dropped)  # BLIP-2's own projection, unused
    inputs, expected = load_tensors(case_dir / "inputs.safetensors"), load_tensors(case_dir / "expected.safetensors")
    video = inputs["pixel_values_videos"].permute(0, 2, 1, 3, 4)  # the original's (B, 3, T, S, S) -> ours
    batch = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], pixel_values_videos=video)
    with torch.no_grad():
        embeds, vit = model.get_vision_features(video[0], output_hidden_states=True)
        _close(vit, expected, "vision_hidden_states")
        _close(embeds, expected, "image_embeds")
        queries = model.get_frame_queries(video[0])
        _close(queries, expected, "qformer_last_hidden_state")
        enc = model.video_qformer_inputs(queries[None])
        _close(enc, expected, "video_qformer_encoder_hidden_states")
        _close(model.video_qformer.query_output(enc), expected, "video_qformer_last_hidden_state")
        _close(model.get_video_features(video)[0][None], expected, "video_tokens")
        if "audio_features" in inputs:
            assert model.config.has_audio
            cls, emb = model.get_audio_embeds(inputs["audio_features"])
            _close(cls, expected, "audio_encoder_features")
            _close(emb, expected, "audio_imagebind_embeds")
            _close(model.audio_qformer_inputs(emb), expected, "audio_qformer_encoder_hidden_states")
            _close(model.get_audio_features(inputs["audio_features"]), expected, "audio_tokens")
            batch["input_features"] = inputs["audio_features"]
        else:
            assert not model.config.has_audio and "input_features" not in model.input_spec.names
        media = model.encode_media(**{k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")})
        _close(model.build_inputs_embeds(batch["input_ids"], media, batch["attention_mask"]), expected,
               "llm_inputs_embeds")
        out = model(**batch)
    vocab = case["logits_vocab_to_compare"]
    valid = expected["logits_mask"][0].bool()
    torch.testing.assert_close(out.logits[0, valid, :vocab], expected["logits"][0, valid, :vocab], atol=ATOL, rtol=RTOL)
    with torch.no_grad():
        seq = model.generate(**batch, max_new_tokens=expected["generated_ids"].shape[1], do_sample=False)
    assert torch.equal(seq[:, batch["input_ids"].shape[1]:], expected["generated_ids"])


@pytest.mark.parametrize("case_name", CASES)
def test_processor_reproduces_prompt_ids(case_name):
    """The converted processor tokenizes the original prompt (its ``<ImageHere>`` for audio written as our
    ``<AudioHere>``) to the original's ids: chunks around the placeholders, BOS only on the first."""
    case_dir = fixture_case("video_llama", case_name)
    case = load_case(case_dir)
    processor = read_video_llama(case_dir / "original", **_heads(case)).processor
    prompt = case["prompt"].replace("<Video><ImageHere>", "<Video>\0")
    media = {"videos": [torch.zeros(8, 3, 56, 56, dtype=torch.uint8)]}
    if case["placeholders"]["audio_token_positions"]:
        prompt = prompt.replace("<ImageHere>", "<AudioHere>", 1)
        media["audio"] = [torch.zeros(3 * 16000)]
    out = processor(text=prompt.replace("\0", "<ImageHere>"), **media)
    ids = load_tensors(case_dir / "inputs.safetensors")["input_ids"]
    assert out["input_ids"].tolist() == ids.tolist()
    if "audio" in media:
        assert tuple(out["input_features"].shape) == (1, 8, 1, 128, 204)


def test_chat_template_and_video_file_give_the_original_sequence():
    """Chat template + the preprocess case's mp4 (30 frames at 10 fps, as vl_vicuna's source): the frames the
    original's ``load_video`` picks, its "The video contains ..." message inserted after ``</Video> ``, and exactly
    vl_vicuna's input ids."""
    case_dir = fixture_case("video_llama", "vl_vicuna")
    pre = fixture_case("video_llama", "preprocess")
    processor = read_video_llama(case_dir / "original", **_heads(load_case(case_dir))).processor
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What is happening in this video?"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "###Human: <Video><ImageHere></Video>  What is happening in this video?###Assistant:"
    out = processor(text=text, videos=[str(pre / "video.mp4")])
    assert out["input_ids"].tolist() == load_tensors(case_dir / "inputs.safetensors")["input_ids"].tolist()
    assert tuple(out["pixel_values_videos"].shape) == (1, 8, 3, 56, 56)


def test_av_chat_template_gives_the_original_av_sequence():
    """A user message with an audio and a video part renders the AV demo's upload_video message (audio slot first,
    no frame-time message) and tokenizes, with the mp4's own track as the audio, to exactly av_vicuna's ids."""
    case_dir = fixture_case("video_llama", "av_vicuna")
    mp4 = str(fixture_case("video_llama", "preprocess") / "video.mp4")
    processor = read_video_llama(case_dir / "original", **_heads(load_case(case_dir))).processor
    question = load_case(case_dir)["case_spec"]["questions"][0]
    messages = [{"role": "user", "content": [{"type": "audio", "path": mp4}, {"type": "video", "path": mp4},
                                             {"type": "text", "text": question}]}]
    out = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert out["input_ids"].tolist() == load_tensors(case_dir / "inputs.safetensors")["input_ids"].tolist()
    assert tuple(out["input_features"].shape) == (1, 8, 1, 128, 204)


def test_preprocess():
    """Frame indices (``np.arange(0, vlen, vlen / n).astype(int)``), decoded frames, message, pixels (video at the
    decoded size, image through Blip2ImageEvalProcessor's 224 bicubic resize) against the original's functions."""
    from PIL import Image

    from hf_videollm.media.transforms import ImageTransform
    from hf_videollm.media.video_read import load_video
    from hf_videollm.processors.video_llama import video_message
    from hf_videollm.tiny import build_tiny

    case_dir = fixture_case("video_llama", "preprocess")
    case, expected = load_case(case_dir), load_tensors(case_dir / "expected.safetensors")
    _, processor = build_tiny("video_llama", processor={"image_size": 224, "num_frames": 8})
    frames, meta = load_video(case_dir / "video.mp4", num_frames=processor.num_frames, sampling=processor.frame_sampling)
    assert meta.frame_indices == expected["video_frame_indices"].tolist()
    assert torch.equal(frames, expected["video_frames_uint8"])
    assert video_message(meta.frame_indices, meta.fps) == case["video"]["message"]
    tf = ImageTransform(size=tuple(frames.shape[1:3]), resize_mode="exact", mean=tuple(processor.image_mean),
                        std=tuple(processor.image_std), resample=processor.resample)
    pixels = tf(frames.permute(0, 3, 1, 2))
    torch.testing.assert_close(pixels.permute(1, 0, 2, 3)[None], expected["video_pixel_values"], atol=1e-5, rtol=0)
    out = processor(text="<image> x", images=[Image.open(case_dir / "image.png")])
    torch.testing.assert_close(out["pixel_values"], expected["image_pixel_values"][:, :, 0], atol=1e-5, rtol=0)


def test_audio_front_end_matches_imagebind_recipe():
    """ImageBind's audio input from the preprocess case's waveform: 8 clips of 2 s (ConstantClipsPerVideoSampler),
    each a Hann-window Kaldi fbank of the mean-removed clip, zero-padded to 204 frames, (x + 4.268) / 9.138. (Later
    clips overlap earlier ones, whose in-place mean removal they see, as in the original: test_video_llama.py
    checks that against torchaudio.)"""
    from hf_videollm.media.audio import clip_bounds, kaldi_fbank
    from hf_videollm.tiny import build_tiny

    case_dir = fixture_case("video_llama", "preprocess")
    wave = load_tensors(case_dir / "expected.safetensors")["audio_waveform"][0]
    _, processor = build_tiny("video_llama")
    feats = processor.audio_features(wave)
    assert tuple(feats.shape) == (8, 1, 128, 204)
    lo, hi = clip_bounds(wave.shape[0], 16000, 8, 2.0)[0]  # the first clip (later ones overlap it, see below)
    clip = wave[lo:hi] - wave[lo:hi].mean()
    fb = kaldi_fbank(clip, num_mel_bins=128, window_type="hanning").T  # (128, 198): 2 s at 10 ms
    assert fb.shape[1] == 198
    torch.testing.assert_close(feats[0, 0, :, :198], (fb + 4.268) / 9.138, atol=1e-4, rtol=0)
    pad = feats[0, 0, :, 198:]  # zero padding, normalised
    torch.testing.assert_close(pad, torch.full_like(pad, 4.268 / 9.138), atol=1e-6, rtol=0)


def test_vl_only_conversion_of_an_av_folder(tmp_path):
    """``audio=False`` converts only the vision-language branch of an AV release; a folder missing a part names it."""
    case_dir = fixture_case("video_llama", "av_vicuna")
    heads = _heads(load_case(case_dir))
    release = read_video_llama(case_dir / "original", audio=False, **heads)
    assert release.config.audio_config is None
    src = tmp_path / "release"
    shutil.copytree(case_dir / "original", src, ignore=shutil.ignore_patterns("imagebind_huge.pth"))
    with pytest.raises(ConversionError, match="imagebind_huge.pth"):
        read_video_llama(src, **heads)
    (src / "eva_vit_g.pth").unlink()
    with pytest.raises(ConversionError, match="eva_vit_g.pth"):
        read_video_llama(src, audio=False, **heads)


def test_cli_convert_with_eva_elsewhere_and_audio_heads(tmp_path):
    """``hf-videollm convert video_llama``: --vision-tower gives eva_vit_g.pth kept outside the folder, --audio-config
    ImageBind's head count (not in the weights); the converted AV model reproduces av_vicuna's logits."""
    from hf_videollm.conversion import convert

    case_dir = fixture_case("video_llama", "av_vicuna")
    case = load_case(case_dir)
    src = tmp_path / "release"
    shutil.copytree(case_dir / "original", src, ignore=shutil.ignore_patterns("eva_vit_g.pth"))
    heads = _heads(case)
    with pytest.raises(ConversionError, match="vision-tower"):
        read_video_llama(src, **heads)
    release = read_video_llama(src, vision_tower=str(case_dir / "original" / "eva_vit_g.pth"),
                               audio_config={"num_heads": heads["audio_num_heads"]},
                               vision_num_heads=heads["vision_num_heads"])
    assert release.config.audio_config.num_heads == heads["audio_num_heads"]
    with pytest.raises(ConversionError, match="audio-config"):
        read_video_llama(case_dir / "original", audio=False, audio_config={"num_heads": 4}, **heads)
    # through the public entry point (what `hf-videollm convert video_llama SRC OUT --audio-config ...` calls)
    out = tmp_path / "out"
    convert("video_llama", case_dir / "original", out, dtype="float32", progress=False,
            audio_config=json.dumps({"num_heads": heads["audio_num_heads"]}))
    config = get_entry("video_llama").config_class.from_pretrained(out)
    assert config.audio_config.num_heads == heads["audio_num_heads"] and config.num_audio_query_tokens == 8


def test_bfloat16_and_sdpa(tmp_path):
    """The converted AV model in bfloat16 (every part: the dtype reaches the EVA ViT, ImageBind and the Q-Formers
    through ``_cast_for``) and with SDPA attention: same logits as the original's float32 run, within bfloat16
    precision (measured 0.074) and exactly within float32 precision for SDPA."""
    case_dir = fixture_case("video_llama", "av_vicuna")
    case = load_case(case_dir)
    write_converted(read_video_llama(case_dir / "original", **_heads(case)), tmp_path / "out", dtype=torch.float32,
                    progress=False)
    model_class = get_entry("video_llama").model_class
    inputs, expected = load_tensors(case_dir / "inputs.safetensors"), load_tensors(case_dir / "expected.safetensors")
    batch = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                 pixel_values_videos=inputs["pixel_values_videos"].permute(0, 2, 1, 3, 4),
                 input_features=inputs["audio_features"])
    vocab = case["logits_vocab_to_compare"]
    for dtype, attn, atol in ((torch.bfloat16, "eager", 0.25), (torch.float32, "sdpa", ATOL)):
        model = model_class.from_pretrained(tmp_path / "out", dtype=dtype, attn_implementation=attn).eval()
        with torch.no_grad():
            logits = model(**batch).logits
        assert logits.dtype == dtype
        torch.testing.assert_close(logits.float()[..., :vocab], expected["logits"], atol=atol, rtol=0)


def test_llama2_chat_release_gets_its_prompt_format(tmp_path):
    """A release whose LLM folder is Llama-2-Chat (the "Video-LLaMA-2" models: llama-2-7b-chat-hf/) is converted with
    the conv_llava_llama_2 format and stops at </s> only."""
    case_dir = fixture_case("video_llama", "vl_vicuna")
    src = tmp_path / "release"
    shutil.copytree(case_dir / "original", src)
    (src / "vicuna-7b").rename(src / "llama-2-7b-chat-hf")
    release = read_video_llama(src, **_heads(load_case(case_dir)))
    assert release.processor.conversation == "llama_2"
    text = release.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Hi?"}]}], add_generation_prompt=True)
    assert text.startswith("[INST] <<SYS>>\nYou are a helpful language and vision assistant.") and text.endswith(
        "<Video><ImageHere></Video>  Hi? [/INST]")
    from transformers import GenerationConfig

    assert GenerationConfig.from_pretrained(release.generation_config_from).eos_token_id == 2
    with pytest.raises(ConversionError, match="conversation"):
        read_video_llama(src, conversation="chatml", **_heads(load_case(case_dir)))
