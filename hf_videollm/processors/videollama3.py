"""VideoLLaMA 3 processor: any-resolution images, fps-sampled video with its timestamps in the text, DiffFP.

As the original hub processor (``Videollama3Qwen2Processor`` + ``Videollama3ImageProcessor``):

* Each sample is one conversation of the original: its images and videos are resized (bicubic, bit-exact Pillow)
  to multiples of ``patch_size * merge_size`` together -- ``simple_batched_resize`` when all share one merge size
  (:func:`~hf_videollm.media.transforms.smart_resize` with ``rule="videollama3"``: ``max_tokens`` shared by every
  image and every video frame, each at least ``min_tokens``), ``batched_resize`` when images (merge 1) and videos
  (merge 2) are mixed (one scale for all when over ``max_tokens``) -- then rescaled, normalised and cut into
  ``(t*h*w, 3*14*14)`` rows in merge-window order (:func:`~hf_videollm.media.transforms.merge_window_patches`).
* Videos from files: ffmpeg's ``fps`` filter with ``round=down`` (what the original ``load_video`` runs) emits, for
  each ``1/fps`` slot, the last frame whose time falls in the slot; here frames are decoded by timestamp at the end
  of each slot (``slot end - 1 ms``), labelled ``k / fps`` as the original does; more than ``max_frames`` frames are
  cut down by ``np.linspace(0, n - 1, max_frames)`` (truncated). Frames given as arrays are taken as sampled at
  ``video_fps``.
* Text: each video frame becomes ``"Time {t:.1f}s:"`` + its tokens, frames separated by ``","`` (the chat template
  puts ``"\\n"`` after the video); each image ``<image>\\n``. The timestamp text is tokenized together with the text
  around it, as in the original's prompt.
* DiffFP (``use_token_compression``): the keep-mask is computed from the very pixel rows returned
  (:func:`~hf_videollm.modeling.videollama3.difffp_keep_mask`) and returned as ``video_compression_mask``; each frame
  gets one placeholder per kept token. The model drops the other tokens.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..media.frames import _is_video_source, load_frames, load_images
from ..media.image_io import ImageLoadError
from ..media.transforms import ImageTransform, merge_window_patches, smart_resize
from ..media.video_read import load_video
from ..modeling.videollama3 import VIDEOLLAMA3_INPUTS, difffp_keep_mask, videollama3_num_tokens
from .base import VideoLLMProcessor
from .chat_templates import videollama3_template

__all__ = ["VideoLLMVideoLlama3Processor"]


class VideoLLMVideoLlama3Processor(VideoLLMProcessor):
    """Turns text + images/videos into VideoLLaMA 3 inputs (``pixel_values`` + ``image_grid_thw`` +
    ``image_merge_sizes``; ``pixel_values_videos`` + ``video_grid_thw`` + ``video_merge_sizes`` +
    ``video_compression_mask``)."""

    input_spec = VIDEOLLAMA3_INPUTS
    settings = {
        "patch_size": 14,
        "image_merge_size": 1,
        "video_merge_size": 2,
        "min_tokens": 16,
        "max_tokens": 16384,
        "resample": "bicubic",
        "image_mean": [0.5, 0.5, 0.5],  # the released preprocessor_config.json (the class default is CLIP's)
        "image_std": [0.5, 0.5, 0.5],
        "rescale_factor": 1 / 255,
        "video_fps": 1.0,
        "max_frames": 180,  # README / training scripts (the processor class default is 128)
        "use_token_compression": True,
        "difffp_threshold": 0.1,
        "difffp_min_tokens": 1,
        # precision of the DiffFP differences: the processor's float32 pixels; "bfloat16" reproduces the original's
        # inference example, which casts pixel_values to bfloat16 before the model computes the mask
        "difffp_dtype": "float32",
        # the hub processor's PIL (W, H) read as (H, W) for images from files / PIL (a non-square image is resized to a
        # transposed aspect); on by default as in the original inference, off = the training repo's code
        "hub_pil_size_quirk": True,
        "max_image_pixels": 178_956_970,
        "max_aspect_ratio": 200.0,  # not in the original (no check); transformers' port refuses > 200 too
        "image_token": "<image>",
        "video_token": "<video>",
        "image_token_id": 151665,
        "video_token_id": 151668,
    }

    def default_chat_template(self) -> str:
        return videollama3_template(image_token=self.image_token, video_token=self.video_token)

    def _check_settings(self) -> None:
        super()._check_settings()
        if self.image_merge_size < 1 or self.video_merge_size < 1:
            raise ValueError("image_merge_size and video_merge_size must be >= 1")
        if self.min_tokens < 1 or self.max_tokens < self.min_tokens:
            raise ValueError(f"need 1 <= min_tokens <= max_tokens, got {self.min_tokens}, {self.max_tokens}")
        if self.difffp_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"difffp_dtype must be 'float32', 'bfloat16' or 'float16', got {self.difffp_dtype!r}")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        self.image_mean, self.image_std = list(self.image_mean), list(self.image_std)

    # ---------------------------------------------------------------------------------------------- pixels
    @property
    def token_budget(self) -> int:
        """Visual tokens one sample is resized to fit: ``max_tokens``, or ``max_visual_tokens`` when lower (the
        original's training sets ``max_tokens = mm_max_length``; ``hf-videollm train --max-visual-tokens`` sets it)."""
        return min(self.max_tokens, self.max_visual_tokens or self.max_tokens)

    def target_size(self, height: int, width: int, merge_size: int, num_images: int = 1) -> tuple[int, int]:
        """Resized ``(h, w)`` of an image / of every frame of a video (``num_images``: images, or video frames, of
        the call sharing ``max_tokens``)."""
        f = self.patch_size * merge_size
        return smart_resize(height, width, f, self.min_tokens * f * f, self.token_budget * f * f // max(1, num_images),
                            rule="videollama3")

    def _patches(self, frames: torch.Tensor, size: tuple[int, int], merge_size: int) -> tuple[torch.Tensor, list[int]]:
        tf = ImageTransform(size, "exact", resample=self.resample, mean=tuple(self.image_mean),
                            std=tuple(self.image_std), rescale_factor=self.rescale_factor)
        rows, grid = merge_window_patches(tf(frames), self.patch_size, merge_size)
        return rows, list(grid)

    # The original processes one conversation per call: its images and videos are resized together (one budget);
    # here each sample of the batch is such a conversation, so a batch equals its samples one by one.
    def _scan(self, text, given):
        samples = super()._scan(text, given)
        self.__dict__["_samples"] = samples  # read by _process_media of the same call
        return samples

    def sample_sizes(self, items: list[tuple[int, int, int, int]]) -> list[tuple[int, int]]:
        """Resized ``(h, w)`` of each item of one conversation, given as ``(frames, height, width, merge_size)``.

        As the original image processor: one merge size for all items -> ``simple_batched_resize`` (``max_tokens``
        shared by every image and every video frame, each at least ``min_tokens``); images and videos with different
        merge sizes -> ``batched_resize`` (all scaled by one factor when their tokens, counted with ``ceil``, exceed
        ``max_tokens``; no minimum), as the original does for a conversation with an image and a video."""
        if len({m for *_, m in items}) <= 1:
            n = sum(t for t, *_ in items)
            return [self.target_size(h, w, m, n) for _, h, w, m in items]
        p = self.patch_size
        total = sum(t * math.ceil(h / (p * m)) * math.ceil(w / (p * m)) for t, h, w, m in items)
        if total > self.token_budget:
            beta = math.sqrt(total / self.token_budget)
            return [(max(1, math.floor(h / beta / (p * m))) * p * m, max(1, math.floor(w / beta / (p * m))) * p * m)
                    for _, h, w, m in items]
        # (an item rounding to 0 -- which the original would fail on -- is given one merge window)
        return [(max(1, round(h / (p * m))) * p * m, max(1, round(w / (p * m))) * p * m) for _, h, w, m in items]

    def _process_media(self, given: dict[str, list]) -> tuple[dict[str, Any], dict[str, list]]:
        samples = self.__dict__.pop("_samples", None)
        images = load_images(given.get("image", []), self.max_image_pixels, self.max_aspect_ratio)
        videos = [self.load_video_frames(v, i) for i, v in enumerate(given.get("video", []))]
        members = [s.items for s in samples] if samples is not None else [
            {"image": list(range(len(images))), "video": list(range(len(videos)))}]
        sizes: dict[str, dict[int, tuple[int, int]]] = {"image": {}, "video": {}}
        for s in members:
            keys = [("image", i) for i in s.get("image", [])] + [("video", i) for i in s.get("video", [])]
            items = [(1, *self._image_dims(given["image"][i], images[i]), self.image_merge_size) if m == "image" else
                     (videos[i][0].shape[0], *videos[i][0].shape[-2:], self.video_merge_size) for m, i in keys]
            for (m, i), size in zip(keys, self.sample_sizes(items)):
                sizes[m][i] = size
        features, tokens = {}, {}
        if images:
            data, tokens["image"] = self._images(images, [sizes["image"][i] for i in range(len(images))])
            features.update(data)
        if videos:
            data, tokens["video"] = self._videos(videos, [sizes["video"][i] for i in range(len(videos))])
            features.update(data)
        return features, tokens

    def _process_images(self, images: list) -> tuple[dict[str, Any], list[int]]:
        """Images processed as one conversation."""
        loaded = load_images(images, self.max_image_pixels, self.max_aspect_ratio)
        sizes = self.sample_sizes([(1, *self._image_dims(src, img), self.image_merge_size)
                                   for src, img in zip(images, loaded)])
        return self._images(loaded, sizes)

    def _image_dims(self, source: Any, image: torch.Tensor) -> tuple[int, int]:
        """``(height, width)`` the resize rule reads for an image: the hub processor reads a PIL image's ``.size``
        (W, H) as (H, W), so images it opens with PIL (files, bytes) or is given as PIL get a transposed target
        (``hub_pil_size_quirk``; the training repo's copy reads it correctly); arrays and tensors are read right."""
        h, w = image.shape[-2:]
        if self.hub_pil_size_quirk and not isinstance(source, (np.ndarray, torch.Tensor)):
            return w, h
        return h, w

    def _process_videos(self, videos: list) -> tuple[dict[str, Any], list]:
        """Videos processed as one conversation."""
        loaded = [self.load_video_frames(v, i) for i, v in enumerate(videos)]
        sizes = self.sample_sizes([(f.shape[0], *f.shape[-2:], self.video_merge_size) for f, _ in loaded])
        return self._videos(loaded, sizes)

    def _images(self, loaded: list[torch.Tensor], sizes: list[tuple[int, int]]) -> tuple[dict[str, Any], list[int]]:
        m = self.image_merge_size
        rows, grids, counts = [], [], []
        for img, size in zip(loaded, sizes):
            r, g = self._patches(img[None], size, m)
            rows.append(r)
            grids.append(g)
            counts.append(videollama3_num_tokens(g, m))
        return {
            "pixel_values": torch.cat(rows),
            "image_grid_thw": torch.tensor(grids, dtype=torch.long),
            "image_merge_sizes": torch.full((len(grids),), m, dtype=torch.long),
        }, counts

    def load_video_frames(self, video: Any, index: int = 0) -> tuple[torch.Tensor, list[float]]:
        """uint8 ``(T, 3, H, W)`` frames of ``video`` as the original ``load_video`` picks them, and their labels in
        seconds (``k / fps``)."""
        fps = float(self.video_fps)
        if not _is_video_source(video):
            frames = load_frames(video, index=index, num_frames=None, fps=None, max_frames=None,
                                 max_aspect_ratio=self.max_aspect_ratio)
        else:
            try:
                # ffmpeg fps filter (round=down): the last frame of each 1/fps slot -> decode at each slot's end
                out, _ = load_video(video, fps=fps, start=max(0.0, 1.0 / fps - 1e-3), sampling="linspace")
            except (ValueError, ImageLoadError) as e:
                raise type(e)(f"video {index}: {e}") from e
            frames = out.permute(0, 3, 1, 2)
        stamps = [k / fps for k in range(frames.shape[0])]
        if frames.shape[0] > self.max_frames:
            keep = np.linspace(0, frames.shape[0] - 1, self.max_frames, dtype=int).tolist()
            frames, stamps = frames[keep], [stamps[i] for i in keep]
        return frames.contiguous(), stamps

    def sample_frames(self, video: Any, index: int = 0) -> torch.Tensor:
        """The frames this processor feeds the model for ``video``: uint8 ``(T, 3, H, W)``, before resizing."""
        return self.load_video_frames(video, index)[0]

    def _videos(self, loaded: list, sizes: list[tuple[int, int]]) -> tuple[dict[str, Any], list]:
        m = self.video_merge_size
        rows, grids, masks, layouts = [], [], [], []
        for (frames, stamps), size in zip(loaded, sizes):
            r, g = self._patches(frames, size, m)
            per_frame = (g[1] // m) * (g[2] // m)
            if self.use_token_compression and g[0] > 1:
                mask = difffp_keep_mask(r, g, m, self.difffp_threshold, self.difffp_min_tokens,
                                        getattr(torch, self.difffp_dtype))
            else:
                mask = torch.ones(g[0] * per_frame, dtype=torch.bool)
            rows.append(r)
            grids.append(g)
            masks.append(mask)
            layouts.append((stamps, mask.view(g[0], per_frame).sum(-1).tolist()))
        out = {
            "pixel_values_videos": torch.cat(rows),
            "video_grid_thw": torch.tensor(grids, dtype=torch.long),
            "video_merge_sizes": torch.full((len(grids),), m, dtype=torch.long),
        }
        if self.use_token_compression:
            same = len({mk.numel() for mk in masks}) == 1
            out["video_compression_mask"] = torch.stack(masks).long() if same else [mk.long() for mk in masks]
        return out, layouts

    # ---------------------------------------------------------------------------------------------- text
    def _build_row(self, sample, tokens, cursor, **kwargs):
        """A video's slot becomes, per frame, ``"Time {t:.1f}s:"`` + the frame's kept tokens, ``","`` between frames
        (the original template's text). The timestamp text joins the text around it before tokenization, so the text
        is cut exactly where the original's prompt is cut (at its special ``<image>`` tokens): ``"...: Time"`` or
        ``",Time"`` tokenize as in the original."""
        if not any(kind == "video" for kind, _ in sample.segments):
            return super()._build_row(sample, tokens, cursor, **kwargs)
        segments: list[tuple[str, str]] = []
        frames: list[int] = []  # kept tokens of each frame of this sample's videos, in order

        def text(piece: str) -> None:
            if segments and segments[-1][0] == "text":
                segments[-1] = ("text", segments[-1][1] + piece)
            else:
                segments.append(("text", piece))

        for kind, piece in sample.segments:
            if kind == "text":
                text(piece)
                continue
            if kind != "video":
                segments.append((kind, piece))
                continue
            stamps, per_frame = tokens["video"][cursor["video"]]
            cursor["video"] += 1
            for k, (t, n) in enumerate(zip(stamps, per_frame)):
                text(f"{',' if k else ''}Time {t:.1f}s:")
                segments.append(("video", ""))
                frames.append(n)
        local = {**cursor, "video": 0}
        row = super()._build_row(replace(sample, segments=segments), {**tokens, "video": frames}, local, **kwargs)
        cursor.update({m: v for m, v in local.items() if m != "video"})
        return row

    def estimate_media_tokens(self, media: dict[str, list]) -> int:
        """Media tokens a sample will take, without decoding: its media share ``token_budget`` (long videos and large
        images fill it; DiffFP and small inputs take less), for length-grouped sampling."""
        return self.token_budget if any(media.get(m) for m in ("image", "video")) else 0

    def video_tokens(self, num_frames: int, height: int, width: int) -> int:
        """Visual tokens of a video before DiffFP (an upper bound of what it becomes)."""
        m = self.video_merge_size
        h, w = self.target_size(height, width, m, num_frames)
        return videollama3_num_tokens((num_frames, h // self.patch_size, w // self.patch_size), m)
