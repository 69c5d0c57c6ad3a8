"""Videos batched as one ``(V, T, 3, H, W)`` tensor (frames taken as a view, one connector call) give exactly the
tokens of each video encoded alone, and of the list form (videos of different lengths) -- LLaVA and VideoLLaMA 2."""

from __future__ import annotations

import pytest
import torch

from hf_videollm.tiny import build_tiny


@pytest.mark.parametrize("name", ["llava", "videollama2"])
def test_batched_videos_equal_each_video_alone(name):
    model, _ = build_tiny(name)
    model.eval()
    size = model.config.vision_config.image_size
    torch.manual_seed(0)
    videos = torch.randn(3, 4, 3, size, size)
    longer = torch.randn(6, 3, size, size)
    with torch.no_grad():
        batched = model.get_video_features(videos)
        alone = [model.get_video_features(v[None])[0] for v in videos]
        mixed = model.get_video_features([videos[0], longer, videos[2]])
        longer_alone = model.get_video_features([longer])[0]
    assert len(batched) == 3
    for b, a in zip(batched, alone):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[0], alone[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[2], alone[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[1], longer_alone, rtol=1e-5, atol=1e-6)
    assert mixed[1].shape[0] > mixed[0].shape[0]  # the longer video has more tokens (LLaVA: per frame; STC: time)


def test_five_dim_videos_are_not_copied():
    model, _ = build_tiny("llava")
    videos = torch.randn(2, 3, 3, 28, 28)
    frames, lengths = model._video_frames(videos)
    assert lengths == [3, 3] and frames.shape == (6, 3, 28, 28)
    assert frames.data_ptr() == videos.data_ptr()  # a view: the pixels are not copied
    with pytest.raises(ValueError, match="num_videos, frames, 3, H, W"):
        model._video_frames(torch.randn(3, 3, 28, 28))
