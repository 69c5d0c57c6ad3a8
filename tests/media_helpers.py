"""Synthetic grey-ramp videos whose frames encode their own index, shared by the reliability tests."""

from __future__ import annotations

import numpy as np


def grey_ramp(n: int, step: int) -> np.ndarray:
    """``n`` flat grey 16x16 RGB frames, frame ``i`` of value ``i * step``."""
    frames = np.zeros((n, 16, 16, 3), np.uint8)
    for i in range(n):
        frames[i] = i * step
    return frames


def decoded_indices(video, step: int) -> list[int]:
    """Frame numbers read back from the pixel values (each frame is flat grey ``index * step``)."""
    return (video.float().mean(dim=(1, 2, 3)) / step).round().int().tolist()


def videollama2_frame_sample(total: int, n: int) -> list[int]:
    """VideoLLaMA 2's ``frame_sample(..., mode="uniform")``: rounded midpoints of n segments of [0, total - 1] (an
    oracle written from the spec, independent of ``hf_videollm.media.video_read.index_midpoints``)."""
    seg = (total - 1) / n
    return [int(np.round((i + 0.5) * seg + 1e-6)) for i in range(n)]
