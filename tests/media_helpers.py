"""Synthetic frames that encode their own index (grey ramps, binary stripes), shared by the media tests."""

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


STRIPES_W, STRIPES_H = 64, 48


def stripes(i: int, marker: bool = False) -> np.ndarray:
    """A 64x48 RGB frame showing ``i`` in binary as 8 white/black vertical stripes (robust to lossy codecs);
    ``marker`` adds a red top-left corner so that a rotation is visible."""
    a = np.zeros((STRIPES_H, STRIPES_W, 3), np.uint8)
    for b in range(8):
        if (i >> b) & 1:
            a[:, b * 8 : (b + 1) * 8] = 255
    if marker:
        a[:4, :4] = (255, 0, 0)
    return a
