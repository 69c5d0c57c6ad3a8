"""User media (paths, bytes, PIL, arrays, tensors, frame lists) -> uint8 tensors, with errors that name the item.

:func:`load_images` turns a list of images into ``(3, H, W)`` tensors, :func:`load_frames` one video into
``(T, 3, H, W)``; model processors (``hf_videollm.processors.pixels``) transform them further.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .container import VideoDecodeError
from .image_io import DEFAULT_MAX_PIXELS, ImageLoadError, _check_pixels, check_aspect_ratio, load_image
from .video_read import load_video

__all__ = ["load_images", "load_frames"]


def load_images(images: list, max_pixels: int | None, max_aspect_ratio: float | None) -> list[torch.Tensor]:
    """Each image -> uint8 ``(3, H, W)``; errors name the image's index."""
    out = []
    for i, img in enumerate(images):
        try:
            t = load_image(img, max_pixels=max_pixels)
            if max_aspect_ratio:
                check_aspect_ratio(t.shape[-2], t.shape[-1], max_aspect_ratio)
        except ImageLoadError as e:
            raise ImageLoadError(f"image {i}: {e}") from e
        out.append(t)
    return out


def _is_video_source(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike, bytes, bytearray, Path)) or isinstance(x, io.IOBase) or hasattr(x, "read")


def _load_frame(frame: Any, t: int) -> torch.Tensor:
    try:
        return load_image(frame)
    except ImageLoadError as e:
        raise ImageLoadError(f"frame {t}: {e}") from e


def _refuse_grey_video_as_one_frame(frames: list | tuple) -> None:
    """A video given as a list holding ONE 3-D array that is not ``(H, W, C)``: a whole grey video ``(T, H, W)``
    wrapped in a list (``videos=[x]``) would otherwise be read as a single ``(C, H, W)`` frame of T channels, or
    fail with a frame-layout error that does not say why."""
    if len(frames) != 1 or isinstance(frames[0], (list, tuple)) or getattr(frames[0], "ndim", None) != 3:
        return
    shape = tuple(frames[0].shape)
    if shape[-1] in (1, 3, 4):
        return  # (H, W, C): one frame, unambiguous
    raise VideoDecodeError(
        f"a video given as a list holding one array of shape {shape} is ambiguous: one (C, H, W) frame, or a whole "
        f"grey video (T, H, W)? Pass a grey video as x[..., None] (T, H, W, 1) without the list, and a one-frame "
        f"video as a (1, C, H, W) array or a list of one (H, W, C) frame / PIL image"
    )


def _stack_frames(frames: list[torch.Tensor]) -> torch.Tensor:
    if not frames:
        raise VideoDecodeError("the video has no frames (an empty list or array); pass at least one frame")
    sizes = [tuple(f.shape[-2:]) for f in frames]
    if len(set(sizes)) > 1:
        odd = next(t for t, s in enumerate(sizes) if s != sizes[0])
        raise VideoDecodeError(
            f"frames have different sizes: frame 0 is {sizes[0][0]}x{sizes[0][1]} (HxW), frame {odd} is "
            f"{sizes[odd][0]}x{sizes[odd][1]}; resize them to one size first"
        )
    return torch.stack(frames)


def _uint8_video_view(arr: torch.Tensor) -> torch.Tensor | None:
    """An unambiguous uint8 RGB ``(T, H, W, 3)`` / ``(T, 3, H, W)`` tensor as ``(T, 3, H, W)`` without copying it
    (what decoded frames are); ``None`` for anything else (per-frame :func:`load_image` checks and converts it)."""
    if arr.dtype != torch.uint8 or arr.device.type != "cpu":
        return None
    if arr.shape[1] in (1, 3, 4) and arr.shape[-1] in (1, 2, 3, 4):
        return None  # ambiguous frame layout: :func:`load_image` refuses it with a message per frame
    if arr.shape[-1] == 3 and arr.shape[1] != 3 and arr.shape[1] > 0 and arr.shape[2] > 0:
        frames = arr.permute(0, 3, 1, 2)
    elif arr.shape[1] == 3 and arr.shape[-1] != 3 and arr.shape[2] > 0 and arr.shape[3] > 0:
        frames = arr
    else:
        return None
    _check_pixels(f"video frame of shape {tuple(arr.shape[1:])}", frames.shape[2], frames.shape[3], DEFAULT_MAX_PIXELS)
    return frames


def load_frames(
    video: Any,
    *,
    index: int,
    num_frames: int | None,
    fps: float | None,
    max_frames: int | None,
    max_aspect_ratio: float | None = None,
    sampling: str = "uniform",
) -> torch.Tensor:
    """A video (file source, ``(T, H, W, C)``/``(T, C, H, W)`` array or tensor, or list of frames) -> uint8 ``(T, 3, H, W)``
    (possibly a view of channels-last memory: call ``.contiguous()`` where a layout matters).

    File sources are sampled by timestamp with :func:`load_video` (``num_frames`` or ``fps``); frames given
    directly are used as they are (the caller sampled them), but more than ``max_frames`` is an error rather
    than a silent cut.
    """
    try:
        if _is_video_source(video):
            frames, _ = load_video(video, num_frames=num_frames, fps=fps, max_frames=max_frames, sampling=sampling)
            frames = frames.permute(0, 3, 1, 2)
        else:
            if isinstance(video, (list, tuple)):
                _refuse_grey_video_as_one_frame(video)
                frames = _stack_frames([_load_frame(f, t) for t, f in enumerate(video)])
            else:
                arr = video
                if not isinstance(video, torch.Tensor):
                    arr = np.asarray(video)
                    if arr.dtype in (np.uint16, np.uint32, np.uint64):
                        arr = arr.astype(np.int64)  # range-checked as 0..255 by load_image
                    arr = torch.from_numpy(np.ascontiguousarray(arr))
                if arr.ndim != 4:
                    hint = (
                        " (a grey video (T, H, W)? add a channel axis: x[..., None])" if arr.ndim == 3 else ""
                    )
                    raise VideoDecodeError(
                        f"a video array must be (T, H, W, C) or (T, C, H, W), got shape {tuple(arr.shape)}{hint}"
                    )
                frames = _uint8_video_view(arr)
                if frames is None:
                    frames = _stack_frames([_load_frame(f, t) for t, f in enumerate(arr)])
            if max_frames is not None and frames.shape[0] > max_frames:
                raise VideoDecodeError(
                    f"{frames.shape[0]} frames given, more than max_frames={max_frames}; sample fewer frames or raise "
                    f"the processor's max_frames"
                )
        if frames.shape[0] == 0:
            raise VideoDecodeError("the video has no frames")
        if max_aspect_ratio:
            check_aspect_ratio(frames.shape[-2], frames.shape[-1], max_aspect_ratio)
    except (VideoDecodeError, ImageLoadError) as e:
        raise type(e)(f"video {index}: {e}") from e
    # Decoded frames stay a channels-last view (no copy): the transforms take any strides, and the Pillow fast path
    # resizes (T, H, W, C) memory as one RGB image per frame.
    return frames
