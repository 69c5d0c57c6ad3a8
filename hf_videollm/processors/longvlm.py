"""LongVLM processor: T frames by timestamp, 224 px CLIP preprocessing, ``<vid_start> <vid_patch> x N <vid_end>``.

Frames as ``scripts/save_features.py`` prepares them: ``num_frames`` (T = 100) frame indices from
``get_seq_frames`` (midpoints of T equal segments of the frame range, rounded; a shorter video repeats frames by
nearest-neighbour resampling), each frame squashed to ``frame_size x frame_size`` (224) by nearest-neighbour
``F.interpolate`` (aspect ratio not kept, as the original), then CLIP's image processor (shortest edge 224, bicubic,
centre crop, normalisation). Frames are found by timestamp (seeking), through :func:`~hf_videollm.media.load_video`
with ``sampling="segment_index_midpoints"``.

A video becomes ``E + S * M`` tokens (305 in the paper configuration, 200 in the released-script variant): the same
formula as the model (:func:`~hf_videollm.modeling.longvlm.longvlm_num_tokens`).
"""

from __future__ import annotations

from typing import Any

import torch

from ..modeling.longvlm import LONGVLM_INPUTS, longvlm_num_tokens
from .base import ProcessorInputError, VideoLLMProcessor
from .chat_templates import vicuna_v1_template
from .pixels import FramePixelsMixin

__all__ = ["VideoLLMLongVLMProcessor", "LONGVLM_SYSTEM"]

#: ``long_vlm_v1`` inference system prompt (``video_conversation.py``; the missing space after "language." is the
#: original's). Training used ``conv_vicuna_v1_1`` (``VICUNA_V1_1_SYSTEM``).
LONGVLM_SYSTEM = (
    "You are LongVLM, a large vision-language assistant. You are able to understand the video content that the user "
    "provides, and assist the user with a variety of tasks using natural language.Follow the instructions carefully "
    "and explain your answers in detail based on the provided video."
)


class VideoLLMLongVLMProcessor(FramePixelsMixin, VideoLLMProcessor):
    """Turns text + videos into LongVLM inputs (``<video>`` in the text marks where each video goes)."""

    input_spec = LONGVLM_INPUTS
    #: settings that must equal the model config's fields of the same name (token count formula)
    model_settings = ("num_frames", "num_segments", "tokens_per_segment", "num_global_tokens", "merge_schedule")
    settings = {
        "image_size": 224,
        "patch_size": 14,
        "num_frames": 100,
        "max_frames": 100,
        "frame_sampling": "segment_index_midpoints",
        "frame_size": 224,  # nearest-neighbour square resize before CLIP's processor (None: off)
        "num_segments": 10,
        "tokens_per_segment": 30,
        "num_global_tokens": 5,
        "merge_schedule": None,
        "video_start_token": None,  # "<vid_start>" in converted checkpoints (mm_use_vid_start_end)
        "video_end_token": None,
        "video_token_id": 32003,
    }

    def default_chat_template(self) -> str:
        return vicuna_v1_template(LONGVLM_SYSTEM, video_token=self.video_token)

    def _check_settings(self) -> None:
        super()._check_settings()
        if self.num_frames is None:
            raise ValueError("LongVLM samples a fixed number of frames per video: set num_frames (default 100)")
        if self.max_frames is not None and self.max_frames < self.num_frames:
            self.max_frames = self.num_frames
        self.video_tokens(self.num_frames)  # frames / segments / schedule agree

    def video_tokens(self, num_frames: int) -> int:
        return longvlm_num_tokens(
            num_frames, (self.image_size // self.patch_size) ** 2, self.num_segments, self.tokens_per_segment,
            self.num_global_tokens, self.merge_schedule,
        )

    def image_tokens(self) -> int:
        raise ProcessorInputError("LongVLM takes videos only")

    def _process_images(self, images: list) -> tuple[dict[str, Any], list[int]]:
        raise ProcessorInputError("LongVLM takes videos only: pass a still image as a video of repeated frames")

    def prepare_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(T, 3, H, W)`` -> the original's square ``frame_size`` frames (nearest neighbour), uint8."""
        if self.frame_size is None or tuple(frames.shape[-2:]) == (self.frame_size, self.frame_size):
            return frames
        out = torch.nn.functional.interpolate(frames.float(), size=(self.frame_size, self.frame_size))
        return out.to(torch.uint8)

    def _process_videos(self, videos: list) -> tuple[dict[str, Any], list[int]]:
        from ..media.frames import load_frames
        from ..media.video_read import segment_index_midpoints

        tf = self.transform
        clips = []
        for i, video in enumerate(videos):
            frames = load_frames(
                video, index=i, num_frames=self.num_frames, fps=self.video_fps, max_frames=self.max_frames,
                max_aspect_ratio=self.max_aspect_ratio, sampling=self.frame_sampling,
            )
            if frames.shape[0] != self.num_frames:  # frames given directly: resample to T as the original does
                frames = frames[segment_index_midpoints(frames.shape[0], self.num_frames)]
            clips.append(tf(self.prepare_frames(frames)))
        counts = [self.video_tokens(c.shape[0]) for c in clips]
        if len({c.shape[0] for c in clips}) == 1:
            return {"pixel_values_videos": torch.stack(clips)}, counts
        return {"pixel_values_videos": clips}, counts

    def _expand(self, modality: str, tokens) -> list[int]:
        ids = super()._expand(modality, tokens)
        start = self._token_id(self.video_start_token) if self.video_start_token else []
        end = self._token_id(self.video_end_token) if self.video_end_token else []
        return start + ids + end

    def _token_id(self, token: str) -> list[int]:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id:
            raise ProcessorInputError(f"the tokenizer has no token {token!r}; add it or unset video_start/end_token")
        return [tid]
