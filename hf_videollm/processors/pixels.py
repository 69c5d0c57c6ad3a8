"""Processor glue for models that see every frame as an image: media -> transform -> tensors + token counts."""

from __future__ import annotations

from typing import Any

import torch

from ..media.frames import load_frames, load_images

__all__ = ["FramePixelsMixin"]


class FramePixelsMixin:
    """The image / video pixel path shared by processors whose model sees every frame as an image.

    The processor provides ``transform`` (an :class:`~hf_videollm.media.transforms.ImageTransform`),
    ``image_tokens()`` and ``video_tokens(num_frames)`` (computed with the model's own formula), and the settings
    ``num_frames``, ``video_fps``, ``max_frames``, ``max_image_pixels``, ``max_aspect_ratio`` (``frame_sampling``:
    optional, default ``"uniform"``, see :func:`~hf_videollm.media.video_read.load_video`).
    """

    def _process_images(self, images: list) -> tuple[dict[str, Any], list[int]]:
        tf = self.transform
        pixels = [tf(img) for img in load_images(images, self.max_image_pixels, self.max_aspect_ratio)]
        return {"pixel_values": torch.stack(pixels)}, [self.image_tokens()] * len(pixels)

    def _process_videos(self, videos: list) -> tuple[dict[str, Any], list[int]]:
        tf = self.transform
        clips = []
        for i, video in enumerate(videos):
            frames = load_frames(
                video, index=i, num_frames=self.num_frames, fps=self.video_fps, max_frames=self.max_frames,
                max_aspect_ratio=self.max_aspect_ratio, sampling=getattr(self, "frame_sampling", "uniform"),
            )
            clips.append(tf(frames))
        counts = [self.video_tokens(c.shape[0]) for c in clips]
        if len({c.shape[0] for c in clips}) == 1:
            return {"pixel_values_videos": torch.stack(clips)}, counts
        return {"pixel_values_videos": clips}, counts

    def estimate_media_tokens(self, media: dict[str, list]) -> int:
        """Media tokens a sample will take, without decoding (videos: ``num_frames`` or ``max_frames``)."""
        frames = self.num_frames or self.max_frames
        return len(media.get("image", [])) * self.image_tokens() + len(media.get("video", [])) * self.video_tokens(frames)
