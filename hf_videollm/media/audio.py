"""Reading audio: :func:`load_audio` decodes the first audio stream of a video or audio file, resampled with FFmpeg.

Time origin is the first audio sample; a ``start`` further than :data:`_AUDIO_SEEK_MIN_S` into the stream seeks,
closer ones decode from the beginning (sample exact).
"""

from __future__ import annotations

import logging
import math
import os
from fractions import Fraction
from typing import Any

import av
import numpy as np
import torch

from .container import AV_TIME_BASE, AudioDecodeError, describe_source, open_container, streams_summary

logger = logging.getLogger(__name__)

__all__ = ["load_audio"]

# load_audio decodes from the beginning (sample exact) unless start is further than this (seconds): then it seeks.
_AUDIO_SEEK_MIN_S = 10.0


def load_audio(
    source: str | os.PathLike | bytes | Any,
    sampling_rate: int = 16000,
    mono: bool = True,
    start: float | None = None,
    end: float | None = None,
) -> tuple[torch.Tensor, int]:
    """Decode the first audio stream of ``source`` (a video or audio file), resampled to ``sampling_rate``.

    ``start``/``end`` are seconds relative to the first audio sample. Returns ``(waveform, sampling_rate)`` with a
    float32 waveform of shape ``(num_samples,)`` when ``mono`` else ``(channels, num_samples)`` (source layout).
    Raises :class:`AudioDecodeError` when there is no audio stream or nothing can be decoded.
    """
    name = describe_source(source)
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer)) or sampling_rate <= 0:
        raise AudioDecodeError(f"{name}: sampling_rate must be a positive integer, got {sampling_rate!r}.")
    for label, value in (("start", start), ("end", end)):
        if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0):
            raise AudioDecodeError(f"{name}: {label} must be a finite number of seconds >= 0, got {value!r}.")
    if start is not None and end is not None and start >= end:
        raise AudioDecodeError(f"{name}: start ({start}) must be smaller than end ({end}).")

    with open_container(source, AudioDecodeError) as (container, name):
        if not container.streams.audio:
            raise AudioDecodeError(
                f"{name}: contains no audio stream (streams found: {streams_summary(container)}); pass a file with "
                "an audio track."
            )
        stream = container.streams.audio[0]
        tb = stream.time_base or Fraction(1, stream.rate or AV_TIME_BASE)
        origin = stream.start_time if stream.start_time is not None else None
        if mono:
            layout = "mono"
        else:
            layout = stream.layout.name if stream.layout is not None else "stereo"
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=int(sampling_rate))
        seeked = False
        if start is not None and start > _AUDIO_SEEK_MIN_S:
            # Far into the stream: seek (time origin = the stream start time; exact up to the codec delay, a few ms).
            try:
                container.seek((origin or 0) + math.floor(start / tb), backward=True, any_frame=False, stream=stream)
                seeked = True
            except av.error.FFmpegError:
                pass
        if not seeked:
            origin = None  # decoding from the beginning: time origin = the first decoded sample
        chunks: list[np.ndarray] = []
        first_time: float | None = None
        decode_errors = 0
        first_error: Exception | None = None
        produced = 0
        demux = container.demux(stream)
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:
                first_error = first_error or exc
                break
            try:
                frames = stream.decode(packet)
            except av.error.FFmpegError as exc:
                decode_errors += 1
                first_error = first_error or exc
                continue
            for frame in frames:
                if first_time is None:
                    if frame.pts is not None:
                        if origin is None:
                            origin = frame.pts
                        first_time = float((frame.pts - origin) * tb)
                    else:
                        first_time = 0.0
                for out in resampler.resample(frame):
                    arr = out.to_ndarray()
                    chunks.append(arr)
                    produced += arr.shape[1]
            if end is not None and first_time is not None and first_time + produced / sampling_rate > end + 0.5:
                break
        for out in resampler.resample(None):
            arr = out.to_ndarray()
            chunks.append(arr)
        if not chunks:
            detail = f" (first error: {first_error})" if first_error is not None else ""
            raise AudioDecodeError(
                f"{name}: the audio stream has no decodable samples{detail}; the file is corrupt or truncated."
            )
        wave = np.concatenate(chunks, axis=1).astype(np.float32, copy=False)
        t0 = first_time or 0.0
        lo = 0
        if start is not None:
            lo = max(0, round((start - t0) * sampling_rate))
        hi = wave.shape[1]
        if stream.duration:  # drop encoder padding past the declared end (e.g. the last AAC frame in MP4)
            declared_end = float(stream.duration * tb) + float(((stream.start_time or 0) - (origin or 0)) * tb)
            hi = min(hi, max(lo, round((declared_end - t0) * sampling_rate)))
        if end is not None:
            hi = min(hi, max(lo, round((end - t0) * sampling_rate)))
        wave = wave[:, lo:hi]
        if decode_errors:
            logger.warning(
                "%s: %d audio packet(s) could not be decoded (first error: %s)", name, decode_errors, first_error
            )
        out_t = torch.from_numpy(np.ascontiguousarray(wave))
        return (out_t[0] if mono else out_t), int(sampling_rate)
