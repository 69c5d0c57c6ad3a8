"""LongVLM model and processor behaviour on tiny models (faithfulness to the original: test_longvlm_fixtures.py)."""

from __future__ import annotations

import pytest
import torch

import hf_videollm.modeling.longvlm as longvlm_mod
from hf_videollm.modeling.longvlm import LONGVLM_VARIANTS, VideoLLMLongVLMConfig, longvlm_num_tokens
from hf_videollm.tiny import build_tiny, tiny_media


@pytest.fixture(scope="module")
def tiny():
    model, processor = build_tiny("longvlm", seed=0)
    return model.eval(), processor


def _video(frames=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(frames, 3, 28, 28, generator=g)


def test_chunked_tower_and_grouped_merging_do_not_change_the_tokens(tiny, monkeypatch):
    model, _ = tiny
    video = _video()
    with torch.no_grad():
        ref_local, ref_glob = model.get_video_visual_features(video)
        model.config.vision_chunk_frames = 1  # one CLIP call per frame
        monkeypatch.setattr(longvlm_mod, "MERGE_SCORE_BUDGET", 1)  # one merge call per segment
        local, glob = model.get_video_visual_features(video)
    model.config.vision_chunk_frames = 8
    torch.testing.assert_close(local, ref_local)
    torch.testing.assert_close(glob, ref_glob)
    assert local.shape == (2 * 3, 32) and glob.shape == (2, 32)


def test_local_tokens_are_segment_ordered_and_global_tokens_are_time_averaged_cls(tiny):
    model, _ = tiny
    video = _video()
    with torch.no_grad():
        local, glob = model.get_video_visual_features(video)
        hidden = model.vision_tower(pixel_values=video, output_hidden_states=True).hidden_states
        # frames 2-3 merged as a segment of their own give the last 3 local tokens: segments never mix
        seg1 = model.merge_local_tokens(hidden[-2][[2, 3, 2, 3], 1:])
    torch.testing.assert_close(local[3:], seg1[3:])
    torch.testing.assert_close(glob, torch.stack([h[:, 0] for h in hidden[-2:]], 1).mean(0))


def test_batch_of_videos_of_different_lengths_equals_each_alone(tiny):
    model, _ = tiny
    a, b, c = _video(4, 1), _video(6, 2), _video(4, 3)
    with torch.no_grad():
        together = model.get_video_features(pixel_values_videos=[a, b, c])
        alone = [model.get_video_features(pixel_values_videos=[v])[0] for v in (a, b, c)]
    for x, y in zip(together, alone):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    assert [t.shape[0] for t in together] == [8, 8, 8]  # E + S*M whatever T (a multiple of S)


def test_frames_not_a_multiple_of_the_segments_fail_clearly(tiny):
    model, _ = tiny
    with pytest.raises(ValueError, match="multiple of 2"):
        model.get_video_features(pixel_values_videos=[_video(3)])


def test_released_script_variant_and_token_formula():
    cfg = VideoLLMLongVLMConfig(variant="released_script")
    assert cfg.video_seq_length() == 200 and cfg.num_global_tokens == 0
    assert VideoLLMLongVLMConfig().video_seq_length() == 305  # paper (default)
    assert VideoLLMLongVLMConfig().video_seq_length(400) == 305  # longer videos: same token count, longer segments
    assert longvlm_num_tokens(100, 256, 10, 20, 0, LONGVLM_VARIANTS["released_script"]["merge_schedule"]) == 200
    with pytest.raises(ValueError, match="tokens_per_segment"):
        VideoLLMLongVLMConfig(merge_schedule=[2880, 1440, 720, 360, 180, 90, 40])  # leaves 20, not 30
    with pytest.raises(ValueError, match="num_global_tokens"):
        VideoLLMLongVLMConfig(num_global_tokens=40)


def test_released_script_variant_model_has_no_global_tokens():
    model, processor = build_tiny("longvlm", seed=0, num_global_tokens=0)
    assert processor.video_tokens(4) == 6
    with torch.no_grad():
        out = model.get_video_features(pixel_values_videos=[_video()])
    assert out[0].shape == (6, 64)
    # the global-token layers are then unused (the last CLIP layer only feeds CLS tokens)
    assert "vision_tower.encoder.layers.1." in model.unused_parameter_prefixes()
    tiny_model, _ = build_tiny("longvlm", seed=0)
    assert "vision_tower.encoder.layers.1." not in tiny_model.unused_parameter_prefixes()


def test_processor_wraps_the_run_and_resamples_given_frames(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    tok.add_tokens(["<vid_start>", "<vid_end>"], special_tokens=True)
    try:
        processor.video_start_token, processor.video_end_token = "<vid_start>", "<vid_end>"
        batch = processor(text=["<video> what is shown"], videos=[tiny_media("video", 0, frames=7)])
        ids = batch["input_ids"][0].tolist()
        start = ids.index(tok.convert_tokens_to_ids("<vid_start>"))
        assert ids[start + 1 : start + 9] == [processor.video_token_id] * 8
        assert ids[start + 9] == tok.convert_tokens_to_ids("<vid_end>")
        assert batch["pixel_values_videos"].shape[:2] == (1, 4)  # 7 given frames -> T = 4
    finally:
        processor.video_start_token = processor.video_end_token = None


def test_stage1_recipe_trains_the_projector_only_on_videos(tmp_path):
    """``hf-videollm train`` machinery with LongVLM's stage1: video files sampled by timestamp, only the projector
    changes (CLIP and the LLM frozen), at the recipe's learning rate."""
    import json

    import numpy as np

    from hf_videollm.media import write_video
    from hf_videollm.training import TrainConfig, train
    from hf_videollm.training.trainer import unwrap_videollm

    rows = []
    for i in range(4):
        frames = np.random.default_rng(i).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
        write_video(tmp_path / f"{i}.mp4", frames, fps=5)
        rows.append({"messages": [
            {"role": "user", "content": [{"type": "video", "video": f"{i}.mp4"}, {"type": "text", "text": "what is shown"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "a red circle"}]}]})
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    before = build_tiny("longvlm", seed=42)[0].state_dict()
    trainer = train(TrainConfig(model="tiny:longvlm", data=[str(data)], output_dir=str(tmp_path / "out"),
                                stage="stage1", max_steps=2, per_device_train_batch_size=2))
    core = unwrap_videollm(trainer.model)
    assert {core.part_of_parameter(n) for n, p in core.named_parameters() if p.requires_grad} == {"connector"}
    assert trainer.args.learning_rate == 2e-5
    after = core.state_dict()
    assert {core.part_of_parameter(k) for k in after if not torch.equal(after[k], before[k])} == {"connector"}


def test_dummy_video_is_the_smallest_valid_one(tiny):
    model, _ = tiny
    dummy = model.dummy_media_inputs("video")["pixel_values_videos"]
    assert dummy.shape[:2] == (1, 2)  # one frame per segment (4 patches >= 3 tokens per segment)
    with torch.no_grad():
        assert model.get_video_features(**model.dummy_media_inputs("video"))[0].shape == (8, 64)
