"""Qwen2-VL on a tiny random model: M-RoPE positions against transformers' own model (same weights), the bugs of
transformers 5.24's version that ours avoids, the processor (fps sampling with timing, budget, aspect ratios) and
the grounding helpers. The common suite (tests/test_common.py) runs the rest through the registry entry."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from hf_videollm.grounding import Box, format_box, format_grounding, parse_boxes
from hf_videollm.modeling.qwen2vl import mrope_positions
from hf_videollm.processors.base import ProcessorInputError
from hf_videollm.tiny import build_tiny, tiny_media


@pytest.fixture(scope="module")
def tiny():
    from hf_videollm.tiny import QWEN2VL_SPECIAL_TOKENS, tiny_tokenizer

    tok = tiny_tokenizer()
    tok.add_tokens(list(QWEN2VL_SPECIAL_TOKENS), special_tokens=True)
    # placeholder ids inside the vocabulary, so transformers' twin (which embeds them) can run the same ids
    model, processor = build_tiny("qwen2_vl", seed=0, tokenizer=tok, text_config={"vocab_size": len(tok) + 2})
    return model.eval(), processor


def _hf_twin(model):
    """transformers' Qwen2VLForConditionalGeneration with our tiny model's weights."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    c = model.config
    cfg = Qwen2VLConfig(vision_config=c.vision_config.to_dict(), text_config=c.text_config.to_dict(),
                        image_token_id=c.image_token_id, video_token_id=c.video_token_id,
                        vision_start_token_id=c.vision_start_token_id, vision_end_token_id=c.vision_end_token_id)
    hf = Qwen2VLForConditionalGeneration(cfg).eval()
    sd = {}
    for k, v in model.state_dict().items():
        k = k.replace("vision_tower.", "model.visual.", 1) if k.startswith("vision_tower.") else k
        k = k.replace("language_model.model.", "model.language_model.", 1)
        k = k.replace("language_model.lm_head.", "lm_head.", 1)
        sd[k] = v
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and all("inv_freq" in k for k in missing)
    return hf


def _type_ids(model, ids):
    return (ids == model.config.image_token_id).long() + 2 * (ids == model.config.video_token_id).long()


def _batch(processor, n=2, seed=0):
    texts = ["<|vision_start|><|image_pad|><|vision_end|> what is shown <|vision_start|><|video_pad|><|vision_end|>",
             "describe <|vision_start|><|video_pad|><|vision_end|> the video and <|vision_start|><|image_pad|><|vision_end|> image please"][:n]
    images = [tiny_media("image", seed, height=40 + 16 * i, width=52 - 8 * i) for i in range(n)]
    videos = [tiny_media("video", seed + i, frames=4 + 2 * i) for i in range(n)]
    return processor(text=texts, images=images, videos=videos, padding_side="left")


# --------------------------------------------------------------------------------------------------- positions
def test_positions_and_logits_match_transformers_on_a_left_padded_batch(tiny):
    model, processor = tiny
    hf = _hf_twin(model)
    batch = _batch(processor)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert (mask == 0).any()
    ours = model.compute_position_ids(ids, mask, batch["image_grid_thw"], batch["video_grid_thw"])
    ref, ref_deltas = hf.model.get_rope_index(ids, _type_ids(model, ids), batch["image_grid_thw"], batch["video_grid_thw"], mask)
    real = mask.bool()
    assert torch.equal(ours[:, real], ref[:, real])
    assert torch.equal(model.get_rope_index(ids, mask, batch["image_grid_thw"], batch["video_grid_thw"])[1], ref_deltas)
    inputs = {k: v for k, v in batch.items() if k != "video_second_per_grid"}
    with torch.no_grad():
        a = model(**batch).logits
        b = hf(**inputs, mm_token_type_ids=_type_ids(model, ids)).logits
    assert torch.allclose(a[real], b[real], atol=1e-5)


def test_text_after_a_long_video_starts_past_its_last_temporal_position(tiny):
    """transformers 5.24 advances the text after an item by max(h, w) / merge only, so a video with more temporal
    steps than that gets text positions that repeat its own temporal positions (the original Qwen2-VL code, and
    ours, continue from the largest position + 1)."""
    model, _ = tiny
    hf = _hf_twin(model)
    vid = model.config.video_token_id
    grid = torch.tensor([[8, 2, 2]])  # 8 temporal steps of one merged token
    ids = torch.tensor([[5, 6] + [vid] * 8 + [7, 8]])
    ours = model.compute_position_ids(ids, None, video_grid_thw=grid)
    assert ours[:, 0, 10:].min() > ours[:, 0, 2:10].max()  # text after the video: past every video position
    assert ours[0, 0, 2:10].tolist() == list(range(2, 10))
    ref, _ = hf.model.get_rope_index(ids, _type_ids(model, ids), video_grid_thw=grid)
    assert ref[:, 0, 10:].min() <= ref[:, 0, 2:10].max()  # the overlap ours avoids


def test_no_state_between_calls_where_transformers_rope_deltas_shift_positions(tiny):
    """Two requests served alternately (prefill A, prefill B, decode A): transformers decodes A with B's
    ``rope_deltas`` kept on the module; ours computes every step's positions from the call's own sequence."""
    model, processor = tiny
    hf = _hf_twin(model)
    a = _batch(processor, n=2)
    b = processor(text=["<|vision_start|><|image_pad|><|vision_end|> hi"], images=[tiny_media("image", 5, height=64, width=24)])
    nxt = torch.tensor([[9], [10]])
    full_ids = torch.cat([a["input_ids"], nxt], 1)
    full_mask = torch.cat([a["attention_mask"], torch.ones_like(nxt)], 1)
    grids = {"image_grid_thw": a["image_grid_thw"], "video_grid_thw": a["video_grid_thw"]}
    with torch.no_grad():
        want = model(input_ids=full_ids, attention_mask=full_mask, pixel_values=a["pixel_values"],
                     pixel_values_videos=a["pixel_values_videos"], **grids).logits[:, -1]
        hf_a = {k: v for k, v in a.items() if k != "video_second_per_grid"}
        out = hf(**hf_a, mm_token_type_ids=_type_ids(model, a["input_ids"]), use_cache=True)
        hf(**b, mm_token_type_ids=_type_ids(model, b["input_ids"]), use_cache=True)  # another request, batch 1
        try:
            step = hf(input_ids=nxt, attention_mask=full_mask, cache=out.cache, use_cache=True).logits[:, -1]
            assert not torch.allclose(step, want, atol=1e-4)  # shifted positions
        except (RuntimeError, ValueError):
            pass  # or a crash, depending on the batch sizes
        # ours: the same interleaving; the decode step's positions come from the request's own sequence
        ours = model(**a, use_cache=True)
        model(**b, use_cache=True)
        pos = model.compute_position_ids(full_ids, full_mask, **grids)[..., -1:]
        step = model(input_ids=nxt, attention_mask=full_mask, cache=ours.cache, position_ids=pos, **grids).logits[:, -1]
    assert torch.allclose(step, want, atol=1e-5)
    assert not any(isinstance(v, torch.Tensor) for v in vars(model).values())
    gen = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    first = model.generate(**a, **gen)
    model.generate(**b, **gen)  # another batch size in between
    assert torch.equal(model.generate(**a, **gen), first)


def test_generate_matches_transformers_on_a_left_padded_batch(tiny):
    model, processor = tiny
    hf = _hf_twin(model)
    hf.generation_config.pad_token_id = model.generation_config.pad_token_id
    batch = _batch(processor)
    gen = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    ours = model.generate(**batch, **gen)
    inputs = {k: v for k, v in batch.items() if k != "video_second_per_grid"}
    ref = hf.generate(**inputs, mm_token_type_ids=_type_ids(model, batch["input_ids"]), **gen)
    assert torch.equal(ours, ref)


def test_mrope_positions_split_adjacent_items_by_their_grids():
    img = 50
    ids = torch.tensor([[1, img, img, img, img, 2]])
    grids = torch.tensor([[1, 2, 2], [1, 2, 6]])  # one token, then three tokens, back to back
    pos, deltas = mrope_positions(ids, None, image_token_id=img, video_token_id=None, image_grid_thw=grids)
    assert pos[:, 0].tolist() == [[0, 1, 2, 2, 2, 5], [0, 1, 2, 2, 2, 5], [0, 1, 2, 3, 4, 5]]
    assert deltas.tolist() == [[0]]
    with pytest.raises(Exception, match="placeholder"):
        mrope_positions(ids, None, image_token_id=img, video_token_id=None, image_grid_thw=grids[:1])


def test_video_timing_reaches_temporal_positions_when_tokens_per_second_is_set(tiny):
    model, processor = tiny
    timed, _ = build_tiny("qwen2_vl", seed=0, tokenizer=processor.tokenizer, tokens_per_second=2.0,
                          text_config={"vocab_size": model.config.text_config.vocab_size})
    batch = processor(text=["<|video_pad|> go"], videos=[tiny_media("video", 0, frames=8)])
    grid = batch["video_grid_thw"]
    spg = batch["video_second_per_grid"]  # frames given as arrays: taken as sampled at video_fps = 2
    assert spg.tolist() == [1.0]
    plain = model.compute_position_ids(batch["input_ids"], batch["attention_mask"], video_grid_thw=grid)
    scaled = timed.compute_position_ids(batch["input_ids"], batch["attention_mask"], video_grid_thw=grid,
                                        video_second_per_grid=spg * 1.5)
    vid = batch["input_ids"][0] == model.config.video_token_id
    t_plain, t_scaled = plain[0, 0, vid] - plain[0, 0, vid].min(), scaled[0, 0, vid] - scaled[0, 0, vid].min()
    assert t_plain.unique().tolist() == [0, 1, 2, 3]
    assert t_scaled.unique().tolist() == [0, 3, 6, 9]  # k * 1.5 s * 2 tokens/s
    with pytest.raises(ValueError, match="video_second_per_grid"):
        timed.compute_position_ids(batch["input_ids"], batch["attention_mask"], video_grid_thw=grid)


# --------------------------------------------------------------------------------------------------- processor
@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from hf_videollm.media import write_video

    path = tmp_path_factory.mktemp("qwen2vl") / "clip.mp4"
    frames = np.zeros((40, 32, 48, 3), dtype=np.uint8)
    for i in range(40):
        frames[i, :, i % 48] = 255
    write_video(path, frames, fps=10)  # 4 s
    return str(path)


# (video_fps, frames kept, seconds per temporal grid step): a 4 s clip at 10 fps; targets are segment midpoints
# (i + 0.5) / fps; 1.25 fps gives 5 frames, rounded down to 4 spread over the clip (0.4 .. 3.6 s: 2 x 3.2 / 3 s per
# step); 0.25 fps gives 1 frame, raised to min_frames = 4 (0.5 .. 3.5 s)
@pytest.mark.parametrize("fps, frames, spg", [(2.0, 8, 1.0), (1.0, 4, 2.0), (0.25, 4, 2.0), (1.25, 4, 2 * 3.2 / 3)])
def test_video_frames_sampled_by_fps_with_their_timing(tiny, clip, fps, frames, spg):
    _, processor = tiny
    proc = type(processor)(processor.tokenizer, **{**_settings(processor), "video_fps": fps, "min_frames": 4})
    out = proc(text=["<|video_pad|>"], videos=[clip])
    t = out["video_grid_thw"][0, 0].item()
    assert t * proc.temporal_patch_size == frames  # count in [min_frames, ...], a multiple of the temporal patch
    # seconds per grid step from the frames actually sampled: 2 frames x their mean spacing
    assert abs(out["video_second_per_grid"].item() - spg) < 0.03


def _settings(processor):
    return {k: getattr(processor, k) for k in type(processor)._all_settings}


def test_budget_lowers_resolution_then_frames_and_keeps_the_text(tiny, caplog):
    _, processor = tiny
    text = ["<|image_pad|> what is shown in this picture <|video_pad|>"]
    media = dict(images=[tiny_media("image", 0, height=64, width=64)], videos=[tiny_media("video", 0, frames=8, height=48, width=48)])
    free = type(processor)(processor.tokenizer, **{**_settings(processor), "max_visual_tokens": None})
    full = free(text=text, **media)
    n_full = int((full["input_ids"] >= processor.image_token_id).sum())
    with caplog.at_level(logging.INFO, logger="hf_videollm.processors.qwen2vl"):
        for budget in (n_full // 2, 3):
            proc = type(processor)(processor.tokenizer, **{**_settings(processor), "max_visual_tokens": budget})
            out = proc(text=text, **media)
            n = int((out["input_ids"] >= processor.image_token_id).sum())
            assert n <= budget
            text_ids = out["input_ids"][out["input_ids"] < processor.image_token_id]
            assert torch.equal(text_ids, full["input_ids"][full["input_ids"] < processor.image_token_id])
    assert "max_visual_tokens" in caplog.text
    squeezed = out["video_grid_thw"][0, 0].item()
    assert squeezed < full["video_grid_thw"][0, 0].item()  # the smallest budget also drops frames
    proc = type(processor)(processor.tokenizer, **{**_settings(processor), "max_visual_tokens": 1})
    with pytest.raises(ProcessorInputError, match="budget"):
        proc(text=text, **media)


def test_budget_is_per_sample(tiny):
    _, processor = tiny
    proc = type(processor)(processor.tokenizer, **{**_settings(processor), "max_visual_tokens": 16})
    texts = ["<|image_pad|> one", "<|image_pad|> two"]
    images = [tiny_media("image", i, height=64, width=64) for i in range(2)]
    both = proc(text=texts, images=images)
    alone = proc(text=texts[:1], images=images[:1])
    assert both["image_grid_thw"][0].tolist() == alone["image_grid_thw"][0].tolist()


def test_extreme_aspect_ratios_are_resized_or_refused(tiny):
    _, processor = tiny
    out = processor(text=["<|image_pad|>"], images=[tiny_media("image", 0, height=6, width=600)])  # 100:1
    t, h, w = out["image_grid_thw"][0].tolist()
    assert h >= 2 and w >= 2 and h % 2 == 0 and w % 2 == 0 and w / h > 10
    with pytest.raises(ValueError, match="aspect ratio"):
        processor(text=["<|image_pad|>"], images=[tiny_media("image", 0, height=2, width=600)])  # 300:1


def test_image_pixels_match_transformers_pil_image_processor():
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from hf_videollm.processors.qwen2vl import VideoLLMQwen2VLProcessor
    from hf_videollm.tiny import tiny_tokenizer

    ours = VideoLLMQwen2VLProcessor(tiny_tokenizer(), max_visual_tokens=None)
    ref = Qwen2VLImageProcessorPil()
    rng = np.random.default_rng(0)
    for h, w in [(75, 100), (333, 517), (20, 3000), (1080, 1920)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        r = ref(images=[Image.fromarray(img)], return_tensors="pt")
        data, tokens = ours._process_images([torch.from_numpy(img).permute(2, 0, 1)])
        assert data["image_grid_thw"].tolist() == r["image_grid_thw"].tolist()
        assert torch.equal(data["pixel_values"], r["pixel_values"])  # bit for bit: the reference's own arithmetic
        assert tokens == [int(r["image_grid_thw"].prod()) // 4]


@pytest.mark.parametrize("factor", [1 / 255, 1 / 127.5, 0.003])
def test_rescale_and_normalize_equal_transformers_numpy_arithmetic(factor):
    """Both ways the rows are normalized (torch in-place ops where float32 ``v / (1 / factor)`` is the reference's
    rescale -- 1/255 -- else a per-channel lookup) give transformers' numpy rescale + normalize bit for bit."""
    from transformers.image_transforms import normalize, rescale

    from hf_videollm.processors.qwen2vl import _Normalizer

    mean, std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    norm = _Normalizer.build(factor, mean, std)
    assert (norm.divisor is None) == (factor == 0.003)  # 0.003 takes the lookup
    src = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16).repeat(3, 1, 1)  # every uint8 value per channel
    src[1] = src[1].flip(0)
    out = torch.empty(src.shape, dtype=torch.float32)
    norm(src, out, channel_dim=0)
    ref = normalize(rescale(src.numpy(), factor, data_format="channels_first", input_data_format="channels_first"),
                    mean, std, data_format="channels_first", input_data_format="channels_first")
    assert torch.equal(out, torch.from_numpy(ref))


def test_video_pixels_match_transformers_pil_steps_on_worker_threads():
    """Video frames: resized per frame on worker threads, patch layout written straight as float32 -- the same rows
    as transformers' steps (Qwen2VLImageProcessorPil resize / rescale / normalize per frame, then the video
    processor's pair patchify)."""
    from transformers.image_processing_utils import SizeDict
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from hf_videollm.media.transforms import smart_resize
    from hf_videollm.processors.qwen2vl import VideoLLMQwen2VLProcessor
    from hf_videollm.tiny import tiny_tokenizer

    ours = VideoLLMQwen2VLProcessor(tiny_tokenizer(), max_visual_tokens=None, video_max_pixels=160 * 28 * 28)
    ref = Qwen2VLImageProcessorPil()
    rng = np.random.default_rng(1)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # the resize pool uses up to this many workers
    try:
        for T, H, W in [(6, 300, 500), (4, 56, 56), (2, 200, 90)]:
            video = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
            data, tokens = ours._process_videos([video])
            h, w = smart_resize(H, W, 28, ours.video_min_pixels, ours.video_max_pixels)
            size = SizeDict(shortest_edge=ours.video_min_pixels, longest_edge=ours.video_max_pixels)
            frames = []
            for f in video[: T // 2 * 2]:
                x = ref.resize(f.transpose(2, 0, 1), size=size, resample=3, factor=28)
                frames.append(ref.normalize(ref.rescale(x, 1 / 255), ours.image_mean, ours.image_std))
            v = np.stack(frames).astype(np.float32)
            assert v.shape[2:] == (h, w)
            t, gh, gw = v.shape[0] // 2, h // 14, w // 14
            v = v.reshape(t, 2, 3, gh // 2, 2, 14, gw // 2, 2, 14).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
            assert data["video_grid_thw"].tolist() == [[t, gh, gw]]
            assert torch.equal(data["pixel_values_videos"], torch.from_numpy(v.reshape(t * gh * gw, -1)))
            assert tokens == [t * gh * gw // 4]
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ramp_clip(tmp_path_factory):
    """A 3 s 10 fps 96x160 clip with texture (resizing it is not trivial)."""
    from hf_videollm.media import write_video

    rng = np.random.default_rng(3)
    frames = np.clip(rng.integers(0, 256, (1, 96, 160, 3)) + np.arange(30)[:, None, None, None] * 7, 0, 255)
    path = tmp_path_factory.mktemp("qwen2vl_pipe") / "ramp.mp4"
    write_video(path, frames.astype(np.uint8), fps=10, crf=0)
    return str(path)


# (settings, threads): no budget (no resize); budget scales the size; budget also drops frames; an odd frame count
# rounded to the temporal patch; one thread (the rows are made inline in the decode loop)
@pytest.mark.parametrize("settings, threads", [
    ({"max_visual_tokens": None}, 3),
    ({"max_visual_tokens": 60}, 3),
    ({"max_visual_tokens": 30, "video_min_pixels": 28 * 28}, 3),
    ({"video_fps": 2.5, "max_visual_tokens": 90}, 2),
    ({"max_visual_tokens": 60}, 1),
])
def test_file_video_rows_made_while_decoding_are_the_usual_pass(tiny, ramp_clip, monkeypatch, settings, threads):
    """A file video's frames are resized and patched during decoding (load_video's on_frame); the result is the
    bytes the pass after decoding gives, with an image and an earlier video in the same sample's budget."""
    from hf_videollm.processors import qwen2vl

    _, processor = tiny
    proc = type(processor)(processor.tokenizer, **{**_settings(processor), "video_max_pixels": 64 * 28 * 28,
                                                   "min_frames": 2, **settings})
    text = ["<|image_pad|> a <|video_pad|> b <|video_pad|>", "<|video_pad|> alone"]
    media = dict(images=[tiny_media("image", 0, height=64, width=64)], videos=[ramp_clip, ramp_clip, ramp_clip])
    used = []
    result = qwen2vl._FramePipeline.result
    monkeypatch.setattr(qwen2vl._FramePipeline, "result", lambda self, *a: used.append(result(self, *a)) or used[-1])
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = proc(text=text, **media)
        monkeypatch.setattr(qwen2vl, "_FramePipeline", lambda *a: None)
        usual = proc(text=text, **media)
    finally:
        torch.set_num_threads(threads_before)
    assert len(used) == 2 and all(u is not None for u in used)  # the last video of each sample
    for key in ("pixel_values", "pixel_values_videos", "video_grid_thw", "video_second_per_grid", "input_ids"):
        assert torch.equal(fast[key], usual[key]), key
    grid = usual["video_grid_thw"]
    if "video_min_pixels" in settings:  # this budget made the first sample's videos keep fewer frames
        assert grid[0, 0] < grid[2, 0]

def test_chat_template_wraps_media_in_vision_markers(tiny):
    _, processor = tiny
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]}]
    text = processor.apply_chat_template(msgs)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>what is it<|im_end|>\n<|im_start|>assistant\n"
                    "a red circle<|im_end|>\n")


# --------------------------------------------------------------------------------------------------- grounding
def test_grounding_boxes_round_trip_to_original_pixels():
    size = (640, 480)
    box = (64.0, 48.0, 320.0, 240.0)
    text = format_grounding("the red car", box, size)
    assert text == "<|object_ref_start|>the red car<|object_ref_end|><|box_start|>(100,100),(500,500)<|box_end|>"
    [parsed] = parse_boxes(f"Sure. {text} is there.", size)
    assert parsed == Box(64.0, 48.0, 320.0, 240.0, "the red car")
    assert format_box((0, 0, 640, 480), size) == "(0,0),(999,999)"  # [0, 1000)
    many = parse_boxes("(10,20),(30,40) and <|box_start|>(1000,0),(500,1200)<|box_end|>", (1000, 2000))
    assert [b.xyxy for b in many] == [(10.0, 40.0, 30.0, 80.0), (500.0, 0.0, 1000.0, 2000.0)]  # clamped, ordered
    assert many[0].label is None
    with pytest.raises(ValueError, match="inside"):
        format_box((0, 0, 700, 10), size)
    with pytest.raises(ValueError, match="width, height"):
        parse_boxes("(1,2),(3,4)", (0, 10))



def test_generate_positions_advance_from_the_prompt_or_are_recomputed_when_it_ends_in_media(tiny):
    """generate starts from the prompt's own M-RoPE positions (computed from the call's grids) and advances them by
    one per generated token; a prompt ending in a placeholder is recomputed per step (the next position jumps past
    the item). Both equal greedy decoding by full forward passes."""
    model, processor = tiny
    gen = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    for texts in (["<|image_pad|> what is shown", "the video <|video_pad|> and <|image_pad|> now"],
                  ["what is shown <|image_pad|>", "the video <|video_pad|> and <|image_pad|>"]):
        images = [tiny_media("image", i, height=40 + 16 * i) for i in range(2)]
        batch = processor(text=texts, images=images, videos=[tiny_media("video", 0, frames=8)], padding_side="left")
        out = model.generate(**batch, **gen)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        extra = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
        for _ in range(4):
            with torch.no_grad():
                nxt = model(input_ids=ids, attention_mask=mask, **extra).logits[:, -1].argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
        assert torch.equal(out, ids)


@pytest.mark.parametrize("stage", ["stage1", "stage3", "lora"])
def test_stage_recipes_from_the_report_train_the_declared_parts(tmp_path, stage):
    """Qwen2-VL report: stage 1 ViT + merger (LLM frozen), stage 3 LLM only (ViT + merger frozen); LoRA on the LLM's
    Linear layers only, by full module path (the vision blocks' attn.qkv / mlp.fc* are never adapted)."""
    from test_training import _dataset, _losses

    from hf_videollm.training import TrainConfig, train
    from hf_videollm.training.trainer import unwrap_videollm

    data = _dataset(tmp_path, n=4)
    mode = "lora" if stage == "lora" else "full"
    trainer = train(TrainConfig(model="tiny:qwen2_vl", data=[str(data)], output_dir=str(tmp_path / "out"),
                                stage=stage, mode=mode, max_steps=2, per_device_train_batch_size=2, logging_steps=1))
    core = unwrap_videollm(trainer.model)
    names = [n.replace("base_model.model.", "") for n, p in trainer.model.named_parameters() if p.requires_grad]
    parts = {core.part_of_parameter(n) for n in names}
    expected = {"stage1": {"vision_tower", "connector"}, "stage3": {"language_model"}, "lora": {"language_model"}}
    assert parts == expected[stage]
    if stage == "lora":
        assert names and all("lora_" in n and n.startswith("language_model.") for n in names)
    assert all(np.isfinite(loss) for loss in _losses(trainer))


def test_left_padded_forward_equals_each_sample_alone(tiny):
    model, processor = tiny
    batch = _batch(processor)
    texts = ["<|vision_start|><|image_pad|><|vision_end|> what is shown <|vision_start|><|video_pad|><|vision_end|>",
             "describe <|vision_start|><|video_pad|><|vision_end|> the video and <|vision_start|><|image_pad|><|vision_end|> image please"]
    with torch.no_grad():
        together = model(**batch).logits
        for b in range(2):
            one = processor(text=[texts[b]], images=[tiny_media("image", 0, height=40 + 16 * b, width=52 - 8 * b)],
                            videos=[tiny_media("video", b, frames=4 + 2 * b)])
            alone = model(**one).logits[0]
            real = batch["attention_mask"][b].bool()
            assert torch.allclose(together[b, real], alone, atol=1e-5)


def test_mm_token_type_ids_as_transformers_processor_makes_them(tiny):
    """return_mm_token_type_ids=True: ``mm_token_type_ids`` as transformers 5.24's Qwen2VLProcessor builds them
    (0 text / padding, 1 image, 2 video) on an image + video batch, left padded, with the same input_ids; off by
    default (the setting turns it on); our model accepts it and gives the same logits and tokens."""
    from transformers import BatchFeature, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from hf_videollm.processors.qwen2vl import VideoLLMQwen2VLProcessor
    from hf_videollm.tiny import QWEN2VL_SPECIAL_TOKENS, tiny_tokenizer

    tok = tiny_tokenizer()
    tok.add_tokens([*QWEN2VL_SPECIAL_TOKENS, "<|image_pad|>", "<|video_pad|>"], special_tokens=True)
    pixels = dict(patch_size=4, min_pixels=8 * 8, max_pixels=64 * 64, video_min_pixels=8 * 8, video_max_pixels=32 * 32)
    ours = VideoLLMQwen2VLProcessor(tok, tokenization="whole", image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
                                    video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"), **pixels)
    texts = ["<|vision_start|><|image_pad|><|vision_end|> what is shown <|vision_start|><|video_pad|><|vision_end|>",
             "describe <|vision_start|><|video_pad|><|vision_end|> the video and <|vision_start|><|image_pad|><|vision_end|> image"]
    images = [tiny_media("image", 0, height=40 + 16 * i, width=52 - 8 * i) for i in range(2)]
    videos = [tiny_media("video", i, frames=4 + 2 * i) for i in range(2)]
    ours_batch = ours(text=texts, images=images, videos=videos, return_mm_token_type_ids=True, padding_side="left")
    assert "mm_token_type_ids" not in ours(text=texts, images=images, videos=videos)

    class VideoTensors:  # stands in for Qwen2VLVideoProcessor (it needs torchvision): our video tensors
        merge_size = 2

        def __call__(self, videos, **kwargs):
            return BatchFeature({k: ours_batch[k] for k in ("pixel_values_videos", "video_grid_thw")})

    class Reference(Qwen2VLProcessor):
        def check_argument_for_proper_class(self, name, arg):
            return type(arg) if name == "video_processor" else super().check_argument_for_proper_class(name, arg)

    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": 8 * 8, "longest_edge": 64 * 64}, patch_size=4,
                                               merge_size=2, temporal_patch_size=2)
    tok.padding_side = "left"
    ref = Reference(image_processor=image_processor, tokenizer=tok, video_processor=VideoTensors())(
        text=texts, images=[im.permute(1, 2, 0).numpy() for im in images], videos=videos, return_tensors="pt",
        padding=True)
    for key in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw"):
        assert torch.equal(torch.as_tensor(ref[key]), ours_batch[key]), key
    types = ours_batch["mm_token_type_ids"]
    assert {1, 2} <= set(types.unique().tolist()) and (types[ours_batch["attention_mask"] == 0] == 0).all()
    listed = ours(text=texts, images=images, videos=videos, return_mm_token_type_ids=True, padding_side="left",
                  return_tensors=None)
    assert listed["mm_token_type_ids"] == types.tolist()
    ours.return_mm_token_type_ids = True  # the setting (saved with the processor) turns it on for every call
    assert torch.equal(ours(text=texts, images=images, videos=videos, padding_side="left")["mm_token_type_ids"], types)

    model, processor = tiny
    batch = _batch(processor)
    with_types = processor(text=["<|vision_start|><|image_pad|><|vision_end|> what is shown <|vision_start|><|video_pad|><|vision_end|>"],
                           images=[tiny_media("image", 0, height=40, width=52)], videos=[tiny_media("video", 0, frames=4)],
                           return_mm_token_type_ids=True)
    assert "mm_token_type_ids" in with_types and "mm_token_type_ids" not in batch
    plain = {k: v for k, v in with_types.items() if k != "mm_token_type_ids"}
    gen = dict(max_new_tokens=4, do_sample=False)
    with torch.no_grad():
        assert torch.equal(model(**with_types).logits, model(**plain).logits)
        assert torch.equal(model.generate(**with_types, **gen), model.generate(**plain, **gen))
    bad = with_types["mm_token_type_ids"].clone()
    bad[0, 0] = 1
    with pytest.raises(ValueError, match="mm_token_type_ids .* disagree with the placeholder ids"):
        model(**{**with_types, "mm_token_type_ids": bad})
    with pytest.raises(ValueError, match="disagree with the placeholder ids"):
        model.generate(**{**with_types, "mm_token_type_ids": bad}, **gen)
