"""VideoLLaMA 2.1-AV processor: VideoLLaMA 2's pixels + the original's audio front end, ``<audio>`` placeholders and
audio tokens inside a video's slot.

Audio (the ``audio_visual`` branch's ``mm_utils``), in torch:

* an audio file / array (``process_audio_file``): first channel; cut to ``audio_seconds`` (30 s) at the source rate
  -- the original takes a *random* window (training augmentation); here the deterministic centre window by default
  (``audio_crop="center"``; ``"random"`` reproduces the original) --, zero-padded to 30 s; resampled to 16 kHz by
  FFT (librosa ``res_type="fft"``); Kaldi fbank of ``wave * 2**15`` (128 bins, 25 / 10 ms) -> ``(2998, 128)``;
* a video's own track (``process_audio_from_video``): decoded mono 16 kHz (PyAV's resampler, as the original's
  ``ffmpeg -ac 1 -ar 16000``), 8 clips of 2 s spread over the track (``ConstantClipsPerVideoSampler``) concatenated,
  then the same crop/pad and fbank;
* values rounded to bfloat16 as the original casts them (``fbank_bfloat16``), returned as float32.

Each clip becomes ``(frames // 16) * 8`` tokens (30 s -> 1496). How to ask for a video's audio:
``processor(text="<video> ...", videos=[{"video": "clip.mp4", "with_audio": True}])`` (its own track) or
``{"video": frames_or_path, "audio": audio_source}``; in chat messages ``{"type": "video", "path": "clip.mp4",
"with_audio": True}``. The slot then holds the video's tokens followed by the audio's. A video without an audio track
is an error when its audio is requested; silence is never invented. Audio alone: ``{"type": "audio", "path": ...}``
or ``processor(text="<audio> ...", audio=[...])``.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..media.audio import (
    audio_duration,
    clip_bounds,
    clip_sample_waveform,
    crop_or_pad,
    kaldi_fbank,
    load_audio,
    resample_fft,
)
from ..media.container import AudioDecodeError
from ..modeling.beats import NUM_MEL_BINS, beats_num_tokens
from ..modeling.videollama2_av import AV_INPUTS
from .base import ProcessorInputError
from .chat_templates import QWEN2_SYSTEM, chatml_template
from .videollama2 import VideoLLMVideoLlama2Processor

__all__ = ["VideoLLMVideoLlama2AVProcessor", "VideoAudioTrack"]

_VIDEO_KEYS = ("video", "path", "url")


@dataclass(frozen=True)
class VideoAudioTrack:
    """The audio track of a video file, requested with ``with_audio=True`` (decoded with the video's clip sampling)."""

    source: Any
    index: int | None = None


def _is_file_source(x) -> bool:
    return isinstance(x, (str, os.PathLike, bytes, bytearray, io.IOBase)) or hasattr(x, "read")


class VideoLLMVideoLlama2AVProcessor(VideoLLMVideoLlama2Processor):
    """Text + images / videos (optionally with their audio) / audio clips -> VideoLLaMA 2.1-AV inputs
    (``pixel_values``, ``pixel_values_videos``, ``input_features`` = one ``(frames, 128)`` fbank per clip)."""

    input_spec = AV_INPUTS
    settings = {
        "projector_type": "stc_connector_v35",
        "audio_token_id": 32002,
        "audio_sampling_rate": 16000,
        "audio_seconds": 30.0,  # every clip is cut / zero-padded to this (the original's 30 s)
        "audio_crop": "center",  # "center" (deterministic, inference) | "random" (the original's training crop) | "start"
        "audio_clips_per_video": 8,  # audio from a video: this many clips ...
        "audio_clip_seconds": 2.0,  # ... of this length, concatenated
        "audio_patch_size": 16,
        "fbank_bfloat16": True,  # round the fbank to bfloat16 as the original does (values stay float32)
        # opt-in speed-up for long videos: a file's track longer than this (seconds, from its metadata) is not
        # decoded whole, only its clips are, by seeking (10-minute track: 0.3 s instead of 5.5 s, bench/RESULTS.md);
        # clip positions then agree with the whole decode up to the codec's seek precision (measured <= 10 ms).
        # None (default): decode the whole track, exactly as the original
        "audio_seek_min_seconds": None,
    }

    def default_chat_template(self) -> str:
        return chatml_template(QWEN2_SYSTEM, self.image_token, self.video_token, self.audio_token)

    def _check_settings(self) -> None:
        super()._check_settings()
        if self.audio_crop not in ("center", "random", "start"):
            raise ValueError(f"audio_crop must be 'center', 'random' or 'start', got {self.audio_crop!r}")
        if self.audio_seconds <= 0 or self.audio_clips_per_video < 1 or self.audio_clip_seconds <= 0:
            raise ValueError("audio_seconds, audio_clips_per_video and audio_clip_seconds must be positive")

    # ------------------------------------------------------------------------------------------------ items
    def _split_item(self, modality: str, item: Any):
        if modality != "video" or not isinstance(item, dict):
            return item, []
        unknown = sorted(set(item) - {*_VIDEO_KEYS, "with_audio", "audio"})
        src = next((item[k] for k in _VIDEO_KEYS if item.get(k) is not None), None)
        if unknown or src is None:
            raise ProcessorInputError(
                f"a video given as a dict takes 'video' (or 'path' / 'url'), 'with_audio' and 'audio'; got keys "
                f"{sorted(item)}"
            )
        if item.get("audio") is not None:
            if item.get("with_audio") is False:
                raise ProcessorInputError("a video with an 'audio' source cannot also have with_audio=False")
            return src, [("audio", item["audio"])]
        if item.get("with_audio"):
            if not _is_file_source(src):
                raise ProcessorInputError(
                    "with_audio=True needs the video file (path, bytes or file object) to read its audio track; "
                    "frames carry no audio -- pass the file, or the audio separately as {'video': frames, 'audio': ...}"
                )
            return src, [("audio", VideoAudioTrack(src))]
        return src, []

    # ------------------------------------------------------------------------------------------------ audio
    @property
    def audio_samples(self) -> int:
        return int(round(self.audio_seconds * self.audio_sampling_rate))

    def audio_tokens(self, fbank_frames: int | None = None) -> int:
        """Tokens of one clip (default: a full ``audio_seconds`` clip; 30 s -> 1496)."""
        if fbank_frames is None:
            fbank_frames = 1 + (self.audio_samples - int(0.025 * self.audio_sampling_rate)) // int(0.010 * self.audio_sampling_rate)
        return beats_num_tokens(fbank_frames, self.audio_patch_size)

    def waveform(self, item: Any, index: int = 0) -> torch.Tensor:
        """One audio item -> the 16 kHz, ``audio_seconds`` long mono waveform in [-1, 1] the fbank is taken of."""
        rate = self.audio_sampling_rate
        if isinstance(item, VideoAudioTrack):
            try:
                wave = self._video_track_clips(item.source)
            except AudioDecodeError as e:
                raise ProcessorInputError(
                    f"video with_audio=True (audio item {index}): {e} Silence is never substituted; pass "
                    "with_audio=False for a silent video."
                ) from e
            return crop_or_pad(wave, self.audio_samples, self.audio_crop)
        if isinstance(item, dict):
            if "array" not in item or "sampling_rate" not in item:
                raise ProcessorInputError(
                    f"audio {index}: a dict must be {{'array': waveform, 'sampling_rate': Hz}} (the datasets Audio "
                    f"convention); got keys {sorted(item)}"
                )
            wave, source_rate = torch.as_tensor(np.asarray(item["array"]), dtype=torch.float32), int(item["sampling_rate"])
        elif _is_file_source(item):
            try:
                wave, source_rate = load_audio(item, sampling_rate=None, mono=False)
            except AudioDecodeError as e:
                raise ProcessorInputError(f"audio {index}: {e}") from e
        elif isinstance(item, (np.ndarray, torch.Tensor)):
            wave, source_rate = torch.as_tensor(np.asarray(item), dtype=torch.float32), rate
        else:
            raise ProcessorInputError(
                f"audio {index}: expected a path, bytes, a file object, a waveform at {rate} Hz or "
                f"{{'array': ..., 'sampling_rate': ...}}, got {type(item).__name__}"
            )
        if wave.ndim == 2:  # the first channel, as the original (channels first or last)
            wave = wave[0] if wave.shape[0] <= wave.shape[1] else wave[:, 0]
        if wave.ndim != 1 or wave.numel() == 0:
            raise ProcessorInputError(f"audio {index}: expected a non-empty mono or multi-channel waveform, got shape {tuple(wave.shape)}")
        wave = crop_or_pad(wave, int(round(self.audio_seconds * source_rate)), self.audio_crop)
        return resample_fft(wave, source_rate, rate).to(torch.float32)

    def _video_track_clips(self, source) -> torch.Tensor:
        """The video's track, mono at 16 kHz, as ``audio_clips_per_video`` clips of ``audio_clip_seconds``."""
        rate, clips, seconds = self.audio_sampling_rate, self.audio_clips_per_video, self.audio_clip_seconds
        duration = None
        if self.audio_seek_min_seconds is not None and isinstance(source, (str, os.PathLike)):
            duration = audio_duration(source)
        if duration is None or duration <= self.audio_seek_min_seconds:
            wave, _ = load_audio(source, sampling_rate=rate, mono=True)
            return clip_sample_waveform(wave, rate, clips, seconds)
        pieces = []  # long track: decode only the clips
        for lo, hi in clip_bounds(int(round(duration * rate)), rate, clips, seconds):
            piece, _ = load_audio(source, sampling_rate=rate, mono=True, start=lo / rate, end=hi / rate)
            pieces.append(crop_or_pad(piece, hi - lo, "start"))
        return torch.cat(pieces)

    def fbank(self, wave: torch.Tensor) -> torch.Tensor:
        fb = kaldi_fbank(wave * 2**15, sample_frequency=self.audio_sampling_rate, num_mel_bins=NUM_MEL_BINS)
        return fb.to(torch.bfloat16).to(torch.float32) if self.fbank_bfloat16 else fb

    def _process_audios(self, audios: list) -> tuple[dict[str, Any], list[int]]:
        feats = [self.fbank(self.waveform(a, i)) for i, a in enumerate(audios)]
        counts = [beats_num_tokens(f.shape[0], self.audio_patch_size) for f in feats]
        if len({f.shape[0] for f in feats}) == 1:
            return {"input_features": torch.stack(feats)}, counts
        return {"input_features": feats}, counts

    def estimate_media_tokens(self, media: dict[str, list]) -> int:
        audio = len(media.get("audio", [])) + sum(
            1 for v in media.get("video", []) if isinstance(v, dict) and (v.get("with_audio") or v.get("audio") is not None)
        )
        return super().estimate_media_tokens(media) + audio * self.audio_tokens()
