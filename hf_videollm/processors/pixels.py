"""Processor glue for models that see every frame as an image: media -> transform -> tensors + token counts."""

from __future__ import annotations

from typing import Any

import torch

from ..media.frames import load_frames, load_images
from ..media.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

__all__ = ["FramePixelsMixin"]


class FramePixelsMixin:
    """The image / video pixel path shared by processors whose model sees every frame as an image.

    Declares the pixel settings once (image size and resampling, pad-to-square, normalisation, frame sampling, size
    limits); the processor provides ``image_tokens()`` and ``video_tokens(num_frames)`` (the model's own formula).
    Frames are sampled by timestamp from files (``num_frames`` or ``video_fps``, ``frame_sampling``: see
    :func:`~hf_videollm.media.video_read.load_video`); frames given directly are used as they are.
    """

    settings = {
        "image_size": 336,
        "patch_size": 14,
        "resize_mode": "shortest_edge",  # CLIP: shortest edge + centre crop; "exact": resize to the square (SigLIP)
        "pad_to_square": False,
        "pad_fill": None,  # None: the mean colour, as the originals' expand2square
        "resample": "bicubic",
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
        "rescale_factor": 1 / 255,
        "num_frames": 8,
        "video_fps": None,
        "max_frames": 64,
        "frame_sampling": "uniform",
        "max_image_pixels": 178_956_970,
        "max_aspect_ratio": 200.0,
    }

    def _check_settings(self) -> None:
        super()._check_settings()
        if self.resize_mode not in ("shortest_edge", "exact"):
            raise ValueError(f"resize_mode must be 'shortest_edge' (CLIP) or 'exact' (SigLIP), got {self.resize_mode!r}")
        self.image_mean, self.image_std = list(self.image_mean), list(self.image_std)
        if self.pad_fill is None:
            self.pad_fill = [int(255 * m) for m in self.image_mean]
        self.pad_fill = list(self.pad_fill)

    @property
    def transform(self):
        from ..media.transforms import ImageTransform

        square = (self.image_size, self.image_size)
        shortest = self.resize_mode == "shortest_edge"
        return ImageTransform(
            size=self.image_size if shortest else square,
            resize_mode=self.resize_mode,
            crop_size=square if shortest else None,
            pad_to_square=self.pad_to_square,
            fill=tuple(self.pad_fill),
            resample=self.resample,
            mean=tuple(self.image_mean),
            std=tuple(self.image_std),
            rescale_factor=self.rescale_factor,
        )

    def _process_images(self, images: list) -> tuple[dict[str, Any], list[int]]:
        tf = self.transform
        pixels = [tf(img) for img in load_images(images, self.max_image_pixels, self.max_aspect_ratio)]
        return {"pixel_values": torch.stack(pixels)}, [self.image_tokens()] * len(pixels)

    def sample_frames(self, video: Any, index: int = 0) -> torch.Tensor:
        """The frames this processor feeds the model for ``video``: uint8 ``(T, 3, H, W)``, before the transform.

        Files are sampled with the processor's own ``num_frames`` / ``video_fps`` / ``max_frames`` and
        ``frame_sampling``; frames given directly come back as they are. Everything that must see the frames the
        model sees (training, evaluation, a single-frame baseline) gets them here.
        """
        return load_frames(
            video, index=index, num_frames=self.num_frames, fps=self.video_fps, max_frames=self.max_frames,
            max_aspect_ratio=self.max_aspect_ratio, sampling=self.frame_sampling,
        )

    def _process_videos(self, videos: list) -> tuple[dict[str, Any], list[int]]:
        tf = self.transform
        clips = [tf(self.sample_frames(video, index=i)) for i, video in enumerate(videos)]
        counts = [self.video_tokens(c.shape[0]) for c in clips]
        if len({c.shape[0] for c in clips}) == 1:
            return {"pixel_values_videos": torch.stack(clips)}, counts
        return {"pixel_values_videos": clips}, counts

    def estimate_media_tokens(self, media: dict[str, list]) -> int:
        """Media tokens a sample will take, without decoding (videos: ``num_frames`` or ``max_frames``)."""
        frames = self.num_frames or self.max_frames
        return len(media.get("image", [])) * self.image_tokens() + len(media.get("video", [])) * self.video_tokens(frames)
