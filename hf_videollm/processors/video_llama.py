"""Video-LLaMA processor: the original's frame sampling, pixels, ImageBind audio fbanks and prompt format.

* Video (``load_video`` + ``AlproVideoEvalProcessor``): ``num_frames`` = 8 frames, the first of each of 8 equal
  segments (``np.arange(0, vlen, vlen / n).astype(int)``: ``frame_sampling="segment_starts"``), resized to
  ``image_size`` x ``image_size`` (decord resizes while decoding, aspect not kept: ``resize_mode="exact"``, bicubic
  here), ``/255``, CLIP mean / std. 32 tokens per video whatever its length.
* The original tells the LLM when the frames were taken: ``"The video contains 8 frames sampled at 0.0, 0.3, ...
  seconds. "`` (``round(index / fps, 1)``) right after ``"</Video> "``. With ``video_message=True`` (default) the
  processor inserts it there for every video read from a file (frames given directly carry no timestamps).
* Image (``Blip2ImageEvalProcessor``): bicubic resize to the square, CLIP mean / std; a 1-frame video to the model.
* Audio (ImageBind ``load_and_transform_audio_data``, ``clips_per_video=8``): the first channel at 16 kHz (a file
  is resampled by FFmpeg while decoding, an array by FFT; the original uses ``torchaudio.functional.resample``:
  equal at 16 kHz sources, close otherwise), 8 clips of 2 s spread
  over the track (``ConstantClipsPerVideoSampler``), per clip: mean removed, Kaldi fbank (Hann window, 128 bins,
  25 / 10 ms, no dither), ``(128, frames)`` zero-padded / cropped to 204, ``(x + 4.268) / 9.138`` -> ``(8, 1, 128,
  204)`` per audio, 8 tokens. The original's AV demo gives the audio its own slot before the video's: a chat
  message with one ``audio`` and one ``video`` part renders exactly that prompt (the audio part may name the video
  file: its track is read). ``{"video": path, "with_audio": True}`` (or ``{"video": frames, "audio": source}``) also
  works: the audio's tokens then follow the video's inside the video's slot (not the demo's layout).
* Placeholders: ``<ImageHere>`` (video; the original's token), ``<AudioHere>`` (audio), ``<image>`` (image: the
  original writes ``<ImageHere>`` for images too, ours needs its own id). The text around them is tokenized chunk
  by chunk, BOS on the first, as ``Chat.get_context_emb``.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..media.audio import clip_bounds, crop_or_pad, kaldi_fbank, load_audio, resample_fft
from ..media.container import AudioDecodeError
from ..media.frames import _is_video_source
from ..media.video_read import load_video
from ..modeling.video_llama import video_llama_input_spec
from .base import ProcessorInputError, VideoLLMProcessor
from .chat_templates import video_llama_template
from .pixels import FramePixelsMixin

__all__ = ["VideoLLMVideoLlamaProcessor", "video_message"]

#: ImageBind's audio normalisation (``load_and_transform_audio_data``).
IMAGEBIND_FBANK_MEAN, IMAGEBIND_FBANK_STD = -4.268, 9.138
#: per-thread state of one ``__call__``: each video's message, from decoding (stage 2) to the rows (stage 3)
_CALL = threading.local()


def video_message(frame_indices, fps: float) -> str:
    """The original ``load_video(return_msg=True)`` message for frames at these indices of a ``fps`` video."""
    times = ", ".join(str(round(i / fps, 1)) for i in frame_indices)
    return f"The video contains {len(frame_indices)} frames sampled at {times} seconds. "


class VideoLLMVideoLlamaProcessor(FramePixelsMixin, VideoLLMProcessor):
    """Text + images / videos / audio -> Video-LLaMA inputs (see the module docstring)."""

    input_spec = video_llama_input_spec(True)  # class default; each instance takes the one of ``audio_branch``
    settings = {
        "image_size": 224,
        "resize_mode": "exact",
        "num_frames": 8,
        "max_frames": 32,  # the model's frame positions (max_frame_pos)
        "frame_sampling": "segment_starts",
        "num_video_query_tokens": 32,
        "num_audio_query_tokens": 8,
        "audio_branch": True,  # False: a vision-language model (no audio inputs)
        "video_message": True,
        "conversation": "vicuna",  # "vicuna" (default_conversation) | "llama_2" (conv_llava_llama_2)
        "image_token": "<image>",
        "video_token": "<ImageHere>",
        "audio_token": "<AudioHere>",
        "image_token_id": 32002,
        "video_token_id": 32000,
        "audio_token_id": 32001,
        "audio_sampling_rate": 16000,
        "audio_clips": 8,
        "audio_clip_seconds": 2.0,
        "num_mel_bins": 128,
        "audio_target_length": 204,
    }

    def _check_settings(self) -> None:
        super()._check_settings()
        if self.conversation not in ("vicuna", "llama_2"):
            raise ValueError(f"conversation must be 'vicuna' or 'llama_2', got {self.conversation!r}")
        if self.audio_clips < 1 or self.audio_clip_seconds <= 0:
            raise ValueError("audio_clips and audio_clip_seconds must be positive")
        self.input_spec = video_llama_input_spec(bool(self.audio_branch))

    def default_chat_template(self) -> str:
        return video_llama_template(self.conversation, image_token=self.image_token, video_token=self.video_token,
                                    audio_token=self.audio_token)

    def image_tokens(self) -> int:
        return self.num_video_query_tokens

    def video_tokens(self, num_frames: int) -> int:
        return self.num_video_query_tokens

    # ------------------------------------------------------------------------------------------------ video
    def _process_videos(self, videos: list) -> tuple[dict[str, Any], list[int]]:
        tf = self.transform
        clips, messages = [], []
        for i, video in enumerate(videos):
            msg = None
            if _is_video_source(video):
                frames, meta = load_video(video, num_frames=self.num_frames, fps=self.video_fps,
                                          max_frames=self.max_frames, sampling=self.frame_sampling)
                frames = frames.permute(0, 3, 1, 2)
                msg = video_message(meta.frame_indices, meta.fps)
            else:
                frames = self.sample_frames(video, index=i)
            clips.append(tf(frames))
            messages.append(msg)
        _CALL.messages = messages
        counts = [self.video_tokens(c.shape[0]) for c in clips]
        if len({c.shape[0] for c in clips}) == 1:
            return {"pixel_values_videos": torch.stack(clips)}, counts
        return {"pixel_values_videos": clips}, counts

    def _build_row(self, sample, tokens, cursor, **kwargs):
        messages = getattr(_CALL, "messages", None)
        if self.video_message and messages:
            k = cursor.get("video", 0)
            segments = list(sample.segments)
            for j, (kind, _) in enumerate(segments):
                if kind != "video":
                    continue
                msg = messages[k] if k < len(messages) else None
                k += 1
                if msg and j + 1 < len(segments) and segments[j + 1][0] == "text":
                    text = segments[j + 1][1]
                    if text.startswith("</Video> "):
                        segments[j + 1] = ("text", "</Video> " + msg + text[len("</Video> "):])
            sample = replace(sample, segments=segments)
        return super()._build_row(sample, tokens, cursor, **kwargs)

    def __call__(self, *args, **kwargs):
        _CALL.messages = None
        try:
            return super().__call__(*args, **kwargs)
        finally:
            _CALL.messages = None

    # ------------------------------------------------------------------------------------------------ decoding
    def decode(self, *args, **kwargs):
        """As the tokenizer's; with ``skip_special_tokens=True`` a Vicuna-format answer ends at its ``"###"`` turn
        separator (the original Chat's ``output_text.split('###')[0]``: generation stops on it)."""
        text = super().decode(*args, **kwargs)
        if kwargs.get("skip_special_tokens") and self.conversation == "vicuna":
            text = text.split("###")[0]
        return text

    def batch_decode(self, *args, **kwargs):
        texts = super().batch_decode(*args, **kwargs)
        if kwargs.get("skip_special_tokens") and self.conversation == "vicuna":
            texts = [t.split("###")[0] for t in texts]
        return texts

    # ------------------------------------------------------------------------------------------------ audio
    def _split_item(self, modality: str, item: Any):
        if modality != "video" or not isinstance(item, dict):
            return item, []
        src = item.get("video", item.get("path"))
        if src is None or set(item) - {"video", "path", "with_audio", "audio"}:
            raise ProcessorInputError(
                f"a video given as a dict takes 'video' (or 'path'), 'with_audio' and 'audio'; got keys {sorted(item)} "
                "(for the AV demo's layout give the audio as its own audio part / item)"
            )
        audio = item.get("audio")
        if audio is None and item.get("with_audio"):
            audio = src  # the video file's own track
        if audio is not None and not self.audio_branch:
            raise ProcessorInputError("a video with its audio needs an audio-visual Video-LLaMA; this one has no audio "
                                      "branch")
        return src, ([("audio", audio)] if audio is not None else [])

    def waveform(self, item: Any, index: int = 0) -> torch.Tensor:
        """One audio item -> ``(channels, samples)`` at ``audio_sampling_rate`` (float32, [-1, 1]), as
        ``torchaudio.load`` gives it (channels first)."""
        rate = self.audio_sampling_rate
        if type(item).__name__ == "VideoAudioTrack":  # a video file's own track (the demo's marker): read the file
            item = item.source
        if isinstance(item, dict):
            if "array" not in item or "sampling_rate" not in item:
                raise ProcessorInputError(
                    f"audio {index}: a dict must be {{'array': waveform, 'sampling_rate': Hz}}; got keys {sorted(item)}"
                )
            wave, source_rate = torch.as_tensor(np.asarray(item["array"]), dtype=torch.float32), int(item["sampling_rate"])
        elif isinstance(item, (np.ndarray, torch.Tensor)):
            wave, source_rate = torch.as_tensor(np.asarray(item), dtype=torch.float32), rate
        else:
            try:
                wave, source_rate = load_audio(item, sampling_rate=rate, mono=False)
            except AudioDecodeError as e:
                raise ProcessorInputError(f"audio {index}: {e}") from e
        if wave.ndim == 1:
            wave = wave[None]
        elif wave.ndim == 2 and wave.shape[0] > wave.shape[1]:  # channels last
            wave = wave.T
        if wave.ndim != 2 or wave.numel() == 0:
            raise ProcessorInputError(f"audio {index}: expected a non-empty waveform, got shape {tuple(wave.shape)}")
        if source_rate != rate:
            wave = resample_fft(wave, source_rate, rate)
        return wave.to(torch.float32).contiguous()

    def audio_features(self, wave: torch.Tensor) -> torch.Tensor:
        """A 16 kHz waveform ``(samples,)`` or ``(channels, samples)`` -> ``(audio_clips, 1, num_mel_bins,
        audio_target_length)`` normalised fbanks, as ImageBind's ``load_and_transform_audio_data``: the clips are
        views of one waveform and ``waveform2melspec`` removes each clip's mean (over every channel) *in place*, so
        a clip overlapping an earlier one sees the earlier subtraction (reproduced); the fbank reads channel 0."""
        rate = self.audio_sampling_rate
        buf = torch.as_tensor(wave, dtype=torch.float32).clone()
        if buf.ndim == 1:
            buf = buf[None]
        out = []
        for lo, hi in clip_bounds(buf.shape[-1], rate, self.audio_clips, self.audio_clip_seconds):
            view = buf[:, lo:hi]
            view -= view.mean()
            # a track shorter than a clip gives a shorter slice (fewer fbank frames, then padded to 204), as the
            # original; one shorter than a 25 ms window (where Kaldi fails) is padded to one window
            clip = crop_or_pad(view[0], max(view.shape[-1], int(0.025 * rate)), "start")
            fb = kaldi_fbank(clip, sample_frequency=rate, num_mel_bins=self.num_mel_bins, window_type="hanning").T
            fb = crop_or_pad(fb, self.audio_target_length, "start")
            out.append(((fb - IMAGEBIND_FBANK_MEAN) / IMAGEBIND_FBANK_STD)[None])
        return torch.stack(out).to(torch.float32)

    def _process_audios(self, audios: list) -> tuple[dict[str, Any], list[int]]:
        if not self.audio_branch:
            raise ProcessorInputError("this Video-LLaMA has no audio branch (a vision-language release); pass no audio")
        feats = [self.audio_features(self.waveform(a, i)) for i, a in enumerate(audios)]
        counts = [self.num_audio_query_tokens] * len(feats)
        if len({f.shape[0] for f in feats}) == 1:
            return {"input_features": torch.stack(feats)}, counts
        return {"input_features": feats}, counts

    def estimate_media_tokens(self, media: dict[str, list]) -> int:
        n = len(media.get("image", [])) + len(media.get("video", []))
        return n * self.num_video_query_tokens + len(media.get("audio", [])) * self.num_audio_query_tokens
