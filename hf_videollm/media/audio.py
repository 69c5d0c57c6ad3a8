"""Reading audio: :func:`load_audio` decodes the first audio stream of a video or audio file, resampled with FFmpeg.

The audio front end of the audio-visual models, in torch (no torchaudio / librosa / ffmpeg CLI):
:func:`kaldi_fbank` (Kaldi's log-mel filterbank with ``torchaudio.compliance.kaldi.fbank``'s defaults),
:func:`resample_fft` (``scipy.signal.resample`` = librosa's ``res_type="fft"``), :func:`crop_or_pad` and
:func:`clip_sample_waveform` (pytorchvideo's ``ConstantClipsPerVideoSampler`` over a waveform).

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

__all__ = [
    "audio_duration",
    "clip_bounds",
    "clip_sample_waveform",
    "crop_or_pad",
    "kaldi_fbank",
    "load_audio",
    "resample_fft",
]

# load_audio decodes from the beginning (sample exact) unless start is further than this (seconds): then it seeks.
_AUDIO_SEEK_MIN_S = 10.0


def _first_audio_stream(container, name: str):
    if not container.streams.audio:
        raise AudioDecodeError(
            f"{name}: contains no audio stream (streams found: {streams_summary(container)}); pass a file with "
            "an audio track."
        )
    return container.streams.audio[0]


def load_audio(
    source: str | os.PathLike | bytes | Any,
    sampling_rate: int | None = 16000,
    mono: bool = True,
    start: float | None = None,
    end: float | None = None,
) -> tuple[torch.Tensor, int]:
    """Decode the first audio stream of ``source`` (a video or audio file), resampled to ``sampling_rate``.

    ``sampling_rate=None`` keeps the stream's own rate. ``start``/``end`` are seconds relative to the first audio sample. Returns ``(waveform, sampling_rate)`` with a
    float32 waveform of shape ``(num_samples,)`` when ``mono`` else ``(channels, num_samples)`` (source layout).
    Raises :class:`AudioDecodeError` when there is no audio stream or nothing can be decoded.
    """
    name = describe_source(source)
    if sampling_rate is not None and (
        isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, np.integer)) or sampling_rate <= 0
    ):
        raise AudioDecodeError(f"{name}: sampling_rate must be a positive integer, got {sampling_rate!r}.")
    for label, value in (("start", start), ("end", end)):
        if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0):
            raise AudioDecodeError(f"{name}: {label} must be a finite number of seconds >= 0, got {value!r}.")
    if start is not None and end is not None and start >= end:
        raise AudioDecodeError(f"{name}: start ({start}) must be smaller than end ({end}).")

    with open_container(source, AudioDecodeError) as (container, name):
        stream = _first_audio_stream(container, name)
        if sampling_rate is None:
            sampling_rate = int(stream.rate or stream.codec_context.sample_rate or 0)
            if sampling_rate <= 0:
                raise AudioDecodeError(f"{name}: the audio stream declares no sample rate; pass sampling_rate.")
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


# ---------------------------------------------------------------------------------------------------------------------
# the audio front end: waveform -> Kaldi log-mel fbank
# ---------------------------------------------------------------------------------------------------------------------


def _mel(freq: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(freq / 700.0)


def _mel_banks(num_bins: int, padded: int, sample_frequency: float, low_freq: float, high_freq: float) -> torch.Tensor:
    """Kaldi's triangular mel filters, ``(num_bins, padded // 2 + 1)`` (the Nyquist column is 0, as torchaudio)."""
    nyquist = 0.5 * sample_frequency
    if high_freq <= 0.0:
        high_freq += nyquist
    if not 0.0 <= low_freq < nyquist or not 0.0 < high_freq <= nyquist or low_freq >= high_freq:
        raise ValueError(f"bad mel range: low_freq={low_freq}, high_freq={high_freq}, nyquist={nyquist}")
    num_fft_bins = padded // 2
    mel_low, mel_high = _mel(torch.tensor(low_freq)), _mel(torch.tensor(high_freq))
    delta = (mel_high - mel_low) / (num_bins + 1)
    b = torch.arange(num_bins, dtype=torch.float32).unsqueeze(1)
    left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
    mel = _mel(sample_frequency / padded * torch.arange(num_fft_bins, dtype=torch.float32)).unsqueeze(0)
    up, down = (mel - left) / (center - left), (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1))


def kaldi_fbank(
    waveform: torch.Tensor,
    sample_frequency: float = 16000.0,
    num_mel_bins: int = 128,
    frame_length: float = 25.0,
    frame_shift: float = 10.0,
    preemphasis_coefficient: float = 0.97,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    window_type: str = "povey",
) -> torch.Tensor:
    """Kaldi log-mel filterbank of a mono waveform, ``(frames, num_mel_bins)`` float32.

    Equals ``torchaudio.compliance.kaldi.fbank(waveform[None], num_mel_bins=..., sample_frequency=...,
    frame_length=..., frame_shift=...)`` with its other defaults: dither 0, DC offset removed per frame,
    pre-emphasis 0.97 (first sample against itself), povey window (Hann^0.85), FFT size rounded up to a power of two,
    power spectrum, mel filters from 20 Hz to Nyquist, ``log(max(energy, float32 eps))``, ``snip_edges`` (frames
    fully inside the signal: ``1 + (N - window) // shift``). Kaldi's scale: pass int16-range samples (the originals
    multiply a [-1, 1] waveform by 2**15 first). Checked against ``kaldi-native-fbank`` in the tests.
    ``window_type``: ``"povey"`` (torchaudio's default) or ``"hanning"`` (symmetric Hann; ImageBind's audio input).
    """
    if window_type not in ("povey", "hanning"):
        raise ValueError(f"window_type must be 'povey' or 'hanning', got {window_type!r}")
    wave = torch.as_tensor(waveform)
    if wave.ndim == 2 and wave.shape[0] == 1:
        wave = wave[0]
    if wave.ndim != 1:
        raise ValueError(f"kaldi_fbank takes a mono waveform (N,) or (1, N), got shape {tuple(wave.shape)}")
    wave = wave.to(torch.float64)  # float64 inside (float32 out): agrees with Kaldi to ~1e-4 in the log domain
    size = int(sample_frequency * frame_length * 0.001)
    shift = int(sample_frequency * frame_shift * 0.001)
    if wave.shape[0] < size:
        raise ValueError(
            f"the waveform has {wave.shape[0]} samples, fewer than one {frame_length} ms window ({size} samples at "
            f"{sample_frequency} Hz); pad it (the AV processors pad every clip to 30 s)"
        )
    padded = 1 << (size - 1).bit_length()
    frames = wave.unfold(0, size, shift)  # (F, size), snip_edges
    frames = frames - frames.mean(dim=1, keepdim=True)
    if preemphasis_coefficient != 0.0:
        prev = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
        frames = frames - preemphasis_coefficient * prev
    window = torch.hann_window(size, periodic=False, dtype=torch.float64)
    if window_type == "povey":
        window = window.pow(0.85)
    frames = torch.nn.functional.pad(frames * window, (0, padded - size))
    power = torch.fft.rfft(frames).abs().pow(2)
    banks = _mel_banks(num_mel_bins, padded, float(sample_frequency), low_freq, high_freq).to(torch.float64)
    energies = power @ banks.T
    return torch.clamp(energies, min=torch.finfo(torch.float32).eps).log().to(torch.float32)


def resample_fft(waveform: torch.Tensor, orig_rate: int, new_rate: int) -> torch.Tensor:
    """Band-limited resampling along the last axis by FFT: ``scipy.signal.resample(x, ceil(N * new / orig))``,
    which is what ``librosa.resample(res_type="fft")`` calls (the originals' ``process_audio_file``)."""
    x = torch.as_tensor(waveform)
    if orig_rate == new_rate:
        return x
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sampling rates must be positive, got {orig_rate} -> {new_rate}")
    n = x.shape[-1]
    num = int(math.ceil(n * new_rate / orig_rate))
    dtype = x.dtype if x.is_floating_point() else torch.float32
    spec = torch.fft.rfft(x.to(torch.float64))
    out = torch.zeros((*spec.shape[:-1], num // 2 + 1), dtype=spec.dtype)
    keep = min(num, n)
    nyq = keep // 2 + 1
    out[..., :nyq] = spec[..., :nyq]
    if keep % 2 == 0:  # the Nyquist component of the shorter length, as scipy splits/joins it
        if num < n:
            out[..., keep // 2] *= 2.0
        elif n < num:
            out[..., keep // 2] *= 0.5
    y = torch.fft.irfft(out, num) * (num / n)
    return y.to(dtype)


def crop_or_pad(waveform: torch.Tensor, length: int, crop: str = "center", generator: torch.Generator | None = None):
    """Cut ``waveform`` (last axis) to ``length`` samples, zero-padding at the end when shorter.

    The originals take a *random* window when longer (training augmentation): ``crop="random"`` reproduces it
    (``torch.randint(0, N - length)``); at inference we default to the deterministic centre window (``"center"``);
    ``"start"`` keeps the first ``length`` samples."""
    x = torch.as_tensor(waveform)
    n = x.shape[-1]
    if n > length:
        if crop == "random":
            start = int(torch.randint(0, n - length, (1,), generator=generator))
        elif crop == "center":
            start = (n - length) // 2
        elif crop == "start":
            start = 0
        else:
            raise ValueError(f"crop must be 'center', 'random' or 'start', got {crop!r}")
        x = x[..., start : start + length]
    elif n < length:
        x = torch.nn.functional.pad(x, (0, length - n))
    return x


def clip_bounds(num_samples: int, sampling_rate: int, clips: int = 8, clip_seconds: float = 2.0) -> list[tuple[int, int]]:
    """Sample ranges of pytorchvideo's ``ConstantClipsPerVideoSampler(clip_seconds, clips)`` over a track of
    ``num_samples`` samples: clip ``i`` starts at ``i * max(D - clip_seconds, 0) / (clips - 1)`` seconds (exact
    fractions, ``D`` the duration) and spans ``[int(start * sr), int((start + clip_seconds) * sr))``; the sampler
    stops early only when a start would pass the last possible one."""
    from fractions import Fraction

    if clips < 1 or clip_seconds <= 0:
        raise ValueError(f"clips must be >= 1 and clip_seconds > 0, got {clips}, {clip_seconds}")
    duration = Fraction(int(num_samples), int(sampling_rate))
    clip = Fraction(clip_seconds).limit_denominator(10**6)
    last_start = max(duration - clip, Fraction(0))
    step = last_start / max(clips - 1, 1)
    bounds = []
    for i in range(clips):
        start = step * i
        if start > last_start:
            break
        bounds.append((int(start * sampling_rate), int((start + clip) * sampling_rate)))
    return bounds


def clip_sample_waveform(
    waveform: torch.Tensor, sampling_rate: int, clips: int = 8, clip_seconds: float = 2.0
) -> torch.Tensor:
    """The clips of :func:`clip_bounds` cut from ``waveform`` (last axis) and concatenated, as the original's
    ``process_audio_from_video``: a waveform shorter than one clip is therefore repeated ``clips`` times."""
    x = torch.as_tensor(waveform)
    bounds = clip_bounds(x.shape[-1], sampling_rate, clips, clip_seconds)
    return torch.cat([x[..., lo:hi] for lo, hi in bounds], dim=-1)


def audio_duration(source: str | os.PathLike) -> float | None:
    """Seconds of the first audio stream of a file, from its metadata (no decoding); ``None`` when unknown."""
    with open_container(source, AudioDecodeError) as (container, name):
        stream = _first_audio_stream(container, name)
        if stream.duration and stream.time_base:
            return float(stream.duration * stream.time_base)
        if container.duration:
            return container.duration / AV_TIME_BASE
        return None
