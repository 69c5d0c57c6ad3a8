"""Writing video: :func:`write_video` encodes RGB frames (and optionally a waveform) with PyAV.

Frames are streamed, so very long videos need not fit in memory; a failed write removes the partial file.
"""

from __future__ import annotations

import contextlib
import numbers
import os
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

__all__ = ["write_video"]

_DEFAULT_CODECS = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".m4v": "libx264", ".webm": "libvpx-vp9"}
_DEFAULT_AUDIO_CODECS = {".webm": "libopus", ".ogg": "libopus"}
_SUBSAMPLED = ("yuv420p", "yuvj420p", "nv12", "yuv422p", "yuvj422p", "yuv420p10le", "yuv422p10le")


def _as_frame_array(frame: Any) -> np.ndarray:
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    arr = np.asarray(frame)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"write_video: frames must be uint8 (H, W, 3) RGB, got dtype {arr.dtype} shape {arr.shape}.")
    return np.ascontiguousarray(arr)


def _iter_frames(frames: Any) -> Iterator[np.ndarray]:
    if isinstance(frames, (torch.Tensor, np.ndarray)):
        if frames.ndim != 4:
            raise ValueError(f"write_video: frames must have shape (T, H, W, 3), got {tuple(frames.shape)}.")
        for i in range(frames.shape[0]):
            yield _as_frame_array(frames[i])
        return
    for frame in frames:
        yield _as_frame_array(frame)


def write_video(
    path: str | os.PathLike,
    frames: torch.Tensor | np.ndarray | Iterable[Any],
    fps: float,
    *,
    codec: str | None = None,
    gop_size: int | None = None,
    pix_fmt: str = "yuv420p",
    audio: torch.Tensor | np.ndarray | None = None,
    audio_rate: int = 16000,
    crf: int | None = None,
    options: dict | None = None,
    rotation: int | None = None,
    timestamps: Iterable[float] | None = None,
) -> Path:
    """Encode RGB frames to a video file.

    Args:
        path: output file; its extension selects the container and, when ``codec`` is ``None``, the codec
            (``.mp4``/``.mkv``/``.mov`` -> libx264, ``.webm`` -> libvpx-vp9).
        frames: uint8 ``(T, H, W, 3)`` tensor/array, or any iterable of ``(H, W, 3)`` frames (streamed, so very long
            videos need not fit in memory). With chroma-subsampled ``pix_fmt`` (e.g. yuv420p) H and W must be even.
        fps: nominal frame rate (frame ``i`` gets pts ``i / fps`` unless ``timestamps`` is given).
        gop_size: fixed keyframe interval in frames (sets ``g``/``keyint_min`` and disables x264 scene-cut keyframes;
            values in ``options`` take precedence).
        audio: optional waveform (float in [-1, 1] or int16), shape ``(num_samples,)`` or ``(channels, num_samples)``,
            sampled at ``audio_rate``; encoded as AAC (Opus for WebM).
        crf: constant rate factor (``0`` = lossless for libx264/libx265/libvpx-vp9).
        options: extra encoder options (strings), e.g. ``{"preset": "ultrafast"}``.
        rotation: clockwise display rotation in degrees (0/90/180/270) stored as display-matrix side data; readers
            must rotate the decoded frames by it (``load_video`` does and reports it in ``metadata.rotation``).
        timestamps: optional presentation time (seconds, strictly increasing) of every frame, for variable frame rate
            or a non-zero start time.

    Returns:
        the output path.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if codec is None:
        codec = _DEFAULT_CODECS.get(ext)
        if codec is None:
            raise ValueError(f"write_video: cannot choose a codec for extension {ext!r}; pass codec=.")
    if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not 0 < fps < float("inf"):
        raise ValueError(f"write_video: fps must be a positive number, got {fps!r}.")
    rate = (Fraction(fps) if isinstance(fps, numbers.Rational) else Fraction(float(fps))).limit_denominator(100_000)
    if rotation is not None and rotation % 90 != 0:
        raise ValueError(f"write_video: rotation must be a multiple of 90 degrees, got {rotation!r}.")
    it = _iter_frames(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("write_video: no frames given.")
    height, width = first.shape[:2]
    if pix_fmt in _SUBSAMPLED and (height % 2 or width % 2):
        raise ValueError(
            f"write_video: pix_fmt={pix_fmt} needs even width and height, got {width}x{height}; crop or pad the "
            "frames to even sizes, or use pix_fmt='yuv444p'."
        )
    stamps = list(timestamps) if timestamps is not None else None
    if stamps is not None and any(b <= a for a, b in zip(stamps[:-1], stamps[1:], strict=True)):
        raise ValueError("write_video: timestamps must be strictly increasing.")

    opts: dict[str, str] = {}
    is_vpx = codec.startswith("libvpx")
    if crf is not None:
        if is_vpx and crf == 0:
            opts["lossless"] = "1"
        else:
            opts["crf"] = str(crf)
            if is_vpx:
                opts["b"] = "0"
    if gop_size is not None:
        opts["g"] = str(gop_size)
        opts["keyint_min"] = str(gop_size)
        if codec in ("libx264", "libx265"):
            opts["sc_threshold"] = "0"
    if options:
        opts.update({str(k): str(v) for k, v in options.items()})

    path.parent.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), mode="w")
    try:
        vstream = container.add_stream(codec, rate=rate)
        vstream.width = width
        vstream.height = height
        vstream.pix_fmt = pix_fmt
        if gop_size is not None:
            vstream.codec_context.gop_size = int(gop_size)
        if stamps is not None:
            tb = Fraction(1, 90_000)
            vstream.codec_context.time_base = tb
            vstream.time_base = tb
        else:
            tb = 1 / rate
        vstream.options = opts
        if rotation:
            if hasattr(vstream, "set_display_rotation"):
                vstream.set_display_rotation(-int(rotation))  # PyAV takes counter-clockwise degrees
            else:  # old PyAV: legacy tag (honoured by the mov/mp4 muxer)
                vstream.metadata["rotate"] = str(int(rotation) % 360)

        astream = None
        wave = None
        if audio is not None:
            wave = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
            if wave.ndim == 1:
                wave = wave[None, :]
            if wave.ndim != 2 or wave.shape[0] not in (1, 2):
                raise ValueError(f"write_video: audio must be (num_samples,) or (1|2, num_samples), got {wave.shape}.")
            if wave.dtype == np.int16:
                wave = wave.astype(np.float32) / 32768.0
            wave = np.ascontiguousarray(wave, dtype=np.float32)
            acodec = _DEFAULT_AUDIO_CODECS.get(ext, "aac")
            layout = "mono" if wave.shape[0] == 1 else "stereo"
            astream = container.add_stream(acodec, rate=int(audio_rate), layout=layout)
        audio_done = 0

        def push_audio(until_s: float | None) -> None:
            nonlocal audio_done
            if astream is None or wave is None:
                return
            stop = wave.shape[1] if until_s is None else min(wave.shape[1], int(until_s * audio_rate))
            if stop <= audio_done:
                return
            chunk = wave[:, audio_done:stop]
            aframe = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=astream.layout.name)
            aframe.sample_rate = int(audio_rate)
            aframe.pts = audio_done
            aframe.time_base = Fraction(1, int(audio_rate))
            audio_done = stop
            for packet in astream.encode(aframe):
                container.mux(packet)

        def frames_all() -> Iterator[np.ndarray]:
            yield first
            yield from it

        count = 0
        for i, arr in enumerate(frames_all()):
            if arr.shape[:2] != (height, width):
                raise ValueError(f"write_video: frame {i} has size {arr.shape[:2]}, expected {(height, width)}.")
            vframe = av.VideoFrame.from_ndarray(arr, format="rgb24")
            if stamps is not None:
                if i >= len(stamps):
                    raise ValueError(f"write_video: more frames than timestamps ({len(stamps)}).")
                vframe.pts = round(stamps[i] / tb)
                t_now = stamps[i]
            else:
                vframe.pts = i
                t_now = float(i / rate)
            vframe.time_base = tb
            for packet in vstream.encode(vframe):
                container.mux(packet)
            push_audio(t_now + 1.0)
            count += 1
        if stamps is not None and count != len(stamps):
            raise ValueError(f"write_video: got {count} frames but {len(stamps)} timestamps.")
        for packet in vstream.encode(None):
            container.mux(packet)
        if astream is not None:
            push_audio(None)
            for packet in astream.encode(None):
                container.mux(packet)
    except BaseException:
        with contextlib.suppress(Exception):
            container.close()
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    container.close()
    return path
