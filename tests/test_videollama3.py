"""VideoLLaMA 3 behaviour beyond the common suite: DiffFP pruning end to end (processor mask = model mask, one
placeholder per kept token, batches of videos with different masks, beam search), timestamps in the text, the
original's resize budget, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_videollm.modeling.merge import MediaMismatchError
from hf_videollm.modeling.videollama3 import difffp_keep_mask
from hf_videollm.tiny import tiny_tokenizer, tiny_videollama3


@pytest.fixture(scope="module")
def tiny():
    model, processor = tiny_videollama3(tiny_tokenizer(["time", "0s", "5s"]), seed=0)
    return model.eval(), processor


def _static_video(frames=4, h=32, w=40, moving=True, seed=0):
    """A still background; with ``moving`` a bright square moves along the top rows (the rest is static)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    video = np.repeat(base[None], frames, axis=0).copy()
    if moving:
        for f in range(frames):
            video[f, 0:8, 8 * f : 8 * f + 8] = 255
    return video


def _prompt(processor, kinds=("video",)):
    msgs = [{"role": "user", "content": [{"type": k} for k in kinds] + [{"type": "text", "text": "what is it"}]}]
    return processor.apply_chat_template(msgs, add_generation_prompt=True)


def test_difffp_keep_mask_rules():
    # 3 frames, 2x2 merged tokens of one 1-value patch row each (merge 1, grid 2x2)
    x = torch.zeros(3 * 4, 3)
    x[4:12] = 0.01  # frame 1: every token changed by 0.01 * 255 = 2.55 > 0.1
    x[8 + 2] += 0.05 / 255  # frame 2: only token 2 changed, by 0.05 <= threshold
    mask = difffp_keep_mask(x, (3, 2, 2), 1, threshold=0.1, min_tokens=1)
    assert mask.view(3, 4).tolist() == [[True] * 4, [True] * 4, [True, False, False, False]]  # frame 2 keeps its first
    with pytest.raises(ValueError, match="patch rows"):
        difffp_keep_mask(x[:5], (3, 2, 2), 1)


def test_processor_prunes_static_tokens_and_the_model_uses_the_same_mask(tiny):
    model, processor = tiny
    batch = processor(text=[_prompt(processor)], videos=[_static_video()])
    mask = batch["video_compression_mask"]
    grid = batch["video_grid_thw"][0].tolist()
    assert torch.equal(mask[0].bool(), difffp_keep_mask(batch["pixel_values_videos"], grid, 2))
    kept = int(mask.sum())
    assert kept < mask.numel()  # static background dropped after frame 0
    assert int((batch["input_ids"] == processor.video_token_id).sum()) == kept
    with torch.no_grad():
        out = model(**batch)
    assert out.media_features["video"][0].shape[0] == kept
    # without compression: every token, and the model keeps them all
    processor.use_token_compression = False
    try:
        full = processor(text=[_prompt(processor)], videos=[_static_video()])
    finally:
        processor.use_token_compression = True
    assert "video_compression_mask" not in full
    assert int((full["input_ids"] == processor.video_token_id).sum()) == mask.numel()


def test_video_text_has_a_timestamp_per_frame(tiny):
    model, processor = tiny
    batch = processor(text=[_prompt(processor)], videos=[_static_video(frames=3)])
    ids = batch["input_ids"][0]
    text = processor.tokenizer.decode(ids[ids != processor.video_token_id])
    # video_fps 2 in the tiny processor: frames labelled k / 2
    assert "user time 0 . 0s :" in text and ", time 0 . 5s :" in text and ", time 1 . 0s :" in text
    assert "time 1 . 5" not in text


def test_batch_of_videos_with_different_masks_generates_like_each_alone(tiny):
    model, processor = tiny
    videos = [_static_video(seed=1), _static_video(frames=3, h=24, w=48, seed=2)]
    prompts = [_prompt(processor), _prompt(processor)]
    batch = processor(text=prompts, videos=videos, padding_side="left")
    assert isinstance(batch["video_compression_mask"], list)  # different token counts: one mask per video
    kw = dict(max_new_tokens=3, min_new_tokens=3, do_sample=False, num_beams=2, num_return_sequences=2)
    with torch.no_grad():
        together = model.generate(**batch, **kw)[:, batch["input_ids"].shape[1]:]
        for b in range(2):
            one = processor(text=[prompts[b]], videos=[videos[b]])
            alone = model.generate(**one, **kw)[:, one["input_ids"].shape[1]:]
            assert torch.equal(together[2 * b : 2 * b + 2], alone)


def test_max_tokens_is_shared_by_the_samples_images_and_frames(tiny):
    model, processor = tiny  # max_tokens 64, patch 4
    one = processor(text=[_prompt(processor, ("image",))], images=[torch.zeros(3, 64, 64, dtype=torch.uint8)])
    two = processor(text=[_prompt(processor, ("image", "image"))], images=[torch.zeros(3, 64, 64, dtype=torch.uint8)] * 2)
    assert one["image_grid_thw"].tolist() == [[1, 8, 8]]  # 64 tokens
    assert two["image_grid_thw"].tolist() == [[1, 5, 5]] * 2  # max_tokens // 2 each: floor(64 / sqrt(32*16)/4)*4
    # a batch of two one-image samples: each sample has the whole budget
    batch = processor(text=[_prompt(processor, ("image",))] * 2, images=[torch.zeros(3, 64, 64, dtype=torch.uint8)] * 2)
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]] * 2


def test_bad_masks_and_merge_sizes_are_named(tiny):
    model, processor = tiny
    batch = processor(text=[_prompt(processor)], videos=[_static_video()])
    n = batch["video_compression_mask"].numel()
    with pytest.raises(ValueError, match="video_compression_mask"):
        model(**{**batch, "video_compression_mask": torch.ones(1, n + 1, dtype=torch.long)})
    with pytest.raises(MediaMismatchError):  # mask keeping every token: more features than placeholders
        model(**{**batch, "video_compression_mask": torch.ones(1, n, dtype=torch.long)})
    with pytest.raises(ValueError, match="merge size"):
        model(**{**batch, "video_merge_sizes": torch.tensor([3])})
    with pytest.raises(ValueError, match="packed patch rows"):
        model(**{**batch, "pixel_values_videos": batch["pixel_values_videos"][:-1]})


def test_labels_end_at_im_end_as_the_original(tiny):
    """The original supervises an assistant turn's tokens after "<|im_start|>assistant\\n" up to and including
    <|im_end|>, not the "\\n" after it."""
    model, processor = tiny
    msgs = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what is it"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]}]
    text = processor.apply_chat_template(msgs, mark_generation=True)
    batch = processor(text=[text], videos=[_static_video()], return_labels=True)
    labels = batch["labels"][0][batch["labels"][0] != -100].tolist()
    answer = processor.tokenizer("a red circle", add_special_tokens=False)["input_ids"]
    assert labels == answer + [processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    assert processor.apply_chat_template(msgs).startswith("<|im_start|>user\n<video>\nwhat is it<|im_end|>\n")


def test_image_and_video_in_one_sample_share_one_scale_as_batched_resize(tiny):
    """Different merge sizes in one conversation: the original's ``batched_resize`` -- tokens counted with ceil
    (image 16x16 at factor 4, video 4 x 4x5 at factor 8: 336 > max_tokens 64) -> every item scaled by
    sqrt(336 / 64) with floor."""
    model, processor = tiny
    batch = processor(text=[_prompt(processor, ("image", "video"))], images=[torch.zeros(3, 64, 64, dtype=torch.uint8)],
                      videos=[_static_video(frames=4, h=32, w=40)])
    assert batch["image_grid_thw"].tolist() == [[1, 6, 6]]  # floor(64 / 2.29 / 4) = 6 patches
    assert batch["video_grid_thw"].tolist() == [[4, 2, 4]]  # floor(32 / 2.29 / 8) * 2, floor(40 / 2.29 / 8) * 2
    with torch.no_grad():
        model(**batch)


def test_max_visual_tokens_lowers_the_resize_budget(tiny):
    """As the original's training (max_tokens = mm_max_length): a lower max_visual_tokens resizes instead of
    refusing the sample."""
    model, processor = tiny  # max_tokens 64
    processor.max_visual_tokens = 16
    try:
        batch = processor(text=[_prompt(processor, ("image",))], images=[torch.zeros(3, 64, 64, dtype=torch.uint8)])
    finally:
        processor.max_visual_tokens = None
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]]  # 16 tokens


def test_difffp_in_bfloat16_as_the_original_inference_example(tiny):
    model, processor = tiny
    video = _static_video()
    processor.difffp_dtype = "bfloat16"
    try:
        batch = processor(text=[_prompt(processor)], videos=[video])
    finally:
        processor.difffp_dtype = "float32"
    pixels, grid = batch["pixel_values_videos"], batch["video_grid_thw"][0].tolist()
    want = difffp_keep_mask(pixels.to(torch.bfloat16), grid, 2)
    assert torch.equal(batch["video_compression_mask"][0].bool(), want)
    with pytest.raises(ValueError, match="difffp_dtype"):
        type(processor)(processor.tokenizer, difffp_dtype="int8")
