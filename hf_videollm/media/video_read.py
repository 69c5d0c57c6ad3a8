"""Reading video: :func:`load_video` samples frames by timestamp, seeking to the keyframe before each target.

Decoding uses PyAV (always available); ``torchcodec`` is an optional backend used only when importable.

Frame sampling works on *timestamps*, never on frame counts from the container header:

* Sampling targets are computed in seconds relative to the first frame of the stream (first frame = 0.0) inside the
  window ``[start, end)``.
* For every target the returned frame is the one whose display interval contains the target, i.e. the last frame
  with ``pts <= target`` (targets before the first frame return the first frame).
* ``mode="exact"`` seeks to the keyframe at or before each target and decodes forward to it. When the next target
  lies before the next keyframe after the current decode position, decoding simply continues instead of seeking.
* ``mode="keyframe"`` snaps every target to the nearest keyframe (when the container has a keyframe index, else the
  keyframe at or before the target), decodes only that keyframe and reports its true timestamp. Use it for very long
  videos where approximate sampling is acceptable.

Container header quirks handled here: a frame count of 0 or a wrong one (Matroska/WebM written by PyAV/FFmpeg store
none), variable frame rate, non-zero stream start time, and display-matrix rotation (applied to the returned frames).

How the stream is probed (``_PyAVReader.probe``):

* MP4/MOV (complete sample index: ``len(stream.index_entries) == stream.frames``): frame count, keyframes and frame
  indices come from FFmpeg's index, for free. Its timestamps are DTS; keyframe pts are taken as
  ``dts + (first pts - first dts)`` (only used to decide between seeking and decoding on; FFmpeg's MP4 seek itself
  is pts-aware).
* Anything else in exact mode (Matroska/WebM, MPEG-TS, fragmented MP4, ...): one demux-only pass over the packets
  (no decoding; costs about one read of the file) gives the exact frame count, every frame pts, keyframes and the
  duration. Matroska's ``avg_frame_rate`` is the nominal default duration, not the average of a VFR stream, so
  ``fps`` is ``frames / duration`` there.
* Keyframe mode never scans: keyframes come from the index (Matroska cues are loaded by FFmpeg on the first seek),
  the end of the stream from demuxing the packets after a seek close to the end; frame count / indices are then
  estimates (``duration * fps``, ``round(t * fps)``) when the container has no complete index.

Decoding in threads (``decode_threads``, exact mode, pyav): PyAV releases the GIL while FFmpeg decodes, so when the
targets span several keyframe intervals (one seek each) the intervals are split into contiguous runs, one per thread,
each thread with its own container opened from the same path / bytes (file objects stay serial: one shared read
position). A thread decodes exactly what the serial loop would from the same keyframes, so rows, frames and metadata
are identical; anything unusual (corrupt packets, decode errors, a frame size change, a failing thread) discards the
threads' work and decodes serially, which then reports it as always. ``on_frame`` stays on the caller's thread, rows in
time order (each as soon as it and every earlier row are decoded), or with ``on_frame_order="any"`` each row as soon as
it is decoded (a consumer then works on a later group's frames while an earlier group still decodes: the groups are
cut at keyframes, so their decoding work differs and the consumer's work fills the gap).

Other PyAV / FFmpeg behaviour worth knowing:

* Matroska/WebM have no per-stream duration; the per-track ``DURATION`` tag (and ``container.duration``) is the
  absolute end time, i.e. it includes the start offset, while MP4's ``stream.duration`` is relative to the first
  frame. ``metadata.duration`` is always first-frame start to last-frame end.
* Timestamps are stored rounded (Matroska / WebM: 1 ms; the duration too), so a target converts to the *nearest*
  tick. Where every frame's timestamp is known (a scanned stream), the index rules (``index_midpoints``,
  ``segment_index_midpoints``; ``uniform`` / ``linspace`` at a constant frame rate) pick frames by index, so an exact
  tie between two frames selects the same frame in every container.
* PyAV exposes the display matrix only on decoded frames (``frame.rotation``, counter-clockwise degrees); the legacy
  ``rotate`` stream tag is used as fallback. Mirroring (flips) in the display matrix is not applied.
* Corrupt packets are skipped (counted and logged); a stream with no decodable frame, or data that ends well before
  the duration declared by its header (truncated download), raises :class:`VideoDecodeError`. All loops are bounded
  by the number of packets, seeks are retried a bounded number of times, so broken files cannot hang the loader.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import numbers
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

from .container import (
    AV_TIME_BASE,
    BackendUnavailableError,
    VideoDecodeError,
    describe_source,
    open_container,
    streams_summary,
)

logger = logging.getLogger(__name__)

__all__ = [
    "ALL_FRAMES_MAX_BYTES",
    "SAMPLING_RULES",
    "DecodeStats",
    "VideoMetadata",
    "load_video",
    "track_decoding",
]

#: ``load_video`` without ``num_frames``/``fps`` returns every frame of the window; refuse when the result would exceed
#: this many bytes (pass ``num_frames``, ``fps`` or ``max_frames`` instead).
ALL_FRAMES_MAX_BYTES = 4 * 1024**3
#: Sampling more targets than the window has frames repeats frames (fine for a fixed ``num_frames`` on a short
#: clip); beyond this many targets such a request is refused before anything is allocated.
MAX_REPEATED_TARGETS = 1024

# Re-seek back-off (seconds) used when a seek lands after the target (broken or unusual indexes).
_SEEK_BACKOFF_S = (1.0, 4.0, 16.0, 64.0)
# Without a keyframe index, keep decoding forward (instead of seeking) when the next target is this close (seconds).
_DEFAULT_FORWARD_WINDOW_S = 2.0
# Upper bound for packets read while probing the tail of a stream (safety net against pathological files).
_MAX_TAIL_PACKETS = 200_000


# ----------------------------------------------------------------------------------------------------------------------
# Metadata, instrumentation
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class VideoMetadata:
    """Metadata of a :func:`load_video` result.

    Attributes:
        timestamps: presentation time in seconds of each returned frame, relative to the first frame of the stream
            (first frame = 0.0). Always the true decoded pts, also in keyframe mode.
        frame_indices: index of each returned frame in the decoder output order of the stream (0 = first frame).
            Exact when it can be derived from a complete sample index (MP4/MOV), from a packet scan (Matroska/WebM and
            other containers in exact mode), or when decoding started at the first frame; otherwise (keyframe mode on
            containers without a complete index, torchcodec backend) estimated as ``round(timestamp * fps)``, which is
            exact for constant frame rate.
        fps: average frame rate of the source (``total_frames / duration`` when derived from a scan).
        duration: duration of the video stream in seconds (first frame start to last frame end).
        total_frames: number of frames of the stream (never blindly taken from a 0 or inconsistent header).
        width, height: size of the returned frames (after rotation).
        rotation: clockwise rotation in degrees (0/90/180/270) that was applied to the returned frames so they are
            upright; this is the legacy ``rotate`` tag convention, i.e. ``-display_matrix_rotation % 360``.
        backend: ``"pyav"`` or ``"torchcodec"``.
        requested_timestamps: the sampling targets (seconds, same time origin as ``timestamps``).
        corrupt_packets: packets FFmpeg flagged corrupt (truncated or damaged data, e.g. a cut-off fragmented MP4) or
            could not decode; when > 0 a warning was logged: ``duration`` / ``total_frames`` describe the part that
            could be read, not the original video.
    """

    timestamps: list[float]
    frame_indices: list[int]
    fps: float
    duration: float
    total_frames: int
    width: int
    height: int
    rotation: int
    backend: str
    requested_timestamps: list[float] = field(default_factory=list)
    corrupt_packets: int = 0


@dataclass
class DecodeStats:
    """Counters filled by :func:`track_decoding` (frames produced by the video decoder, seeks, packet scans)."""

    frames_decoded: int = 0
    seeks: int = 0
    packets_scanned: int = 0


_ACTIVE_STATS: list[DecodeStats] = []
_STATS_LOCK = threading.Lock()  # decode threads count too (``load_video(decode_threads=)``)


@contextlib.contextmanager
def track_decoding() -> Iterator[DecodeStats]:
    """Count the work done by :func:`load_video` inside the ``with`` block (used by tests and benchmarks)."""
    stats = DecodeStats()
    _ACTIVE_STATS.append(stats)
    try:
        yield stats
    finally:
        _ACTIVE_STATS.remove(stats)


def _count(attr: str, n: int = 1) -> None:
    if not _ACTIVE_STATS:
        return
    with _STATS_LOCK:
        for stats in _ACTIVE_STATS:
            setattr(stats, attr, getattr(stats, attr) + n)


def _pick_video_stream(container, name: str):
    streams = list(container.streams.video)
    if not streams:
        raise VideoDecodeError(
            f"{name}: contains no video stream (streams found: {streams_summary(container)}). Is it an audio, "
            "image or text file? Pass a video file (for audio use load_audio)."
        )
    for s in streams:  # skip cover art ("attached pictures")
        with contextlib.suppress(Exception):
            if s.disposition & av.stream.Disposition.attached_pic:
                continue
        return s
    return streams[0]


# ----------------------------------------------------------------------------------------------------------------------
# Argument validation and sampling targets
# ----------------------------------------------------------------------------------------------------------------------


#: Frame sampling rules of :func:`load_video`.
SAMPLING_RULES = ("uniform", "linspace", "index_midpoints", "segment_index_midpoints", "segment_starts")


def segment_index_midpoints(total: int, num_frames: int) -> list[int]:
    """Frame indices of the ``"segment_index_midpoints"`` rule (Video-ChatGPT / LongVLM ``get_seq_frames``):
    ``k = min(total, num_frames)`` segments of ``seg = (total - 1) / k`` frames, index
    ``(round(seg * i) + round(seg * (i + 1))) // 2`` (Python rounding, half to even); when the video has fewer frames
    than ``num_frames`` the ``k`` indices are repeated by nearest-neighbour resampling to ``num_frames``
    (``F.interpolate(size=num_frames)``, what LongVLM's ``save_features.py`` intends)."""
    k = min(total, num_frames)
    seg = (total - 1) / k
    idx = [(round(seg * i) + round(seg * (i + 1))) // 2 for i in range(k)]
    if k == num_frames:
        return idx
    return [idx[(i * k) // num_frames] for i in range(num_frames)]


def index_midpoints(total: int, num_frames: int) -> list[int]:
    """Frame indices of the ``"index_midpoints"`` rule (VideoLLaMA 2's ``frame_sample``): rounded midpoints of
    ``num_frames`` equal segments of ``[0, total - 1]``, ``round((i + 0.5) * (total - 1) / num_frames)`` (half up)."""
    seg = (total - 1) / num_frames
    return [int(math.floor((i + 0.5) * seg + 0.5 + 1e-6)) for i in range(num_frames)]


def segment_starts(total: int, num_frames: int) -> list[int]:
    """Frame indices of the ``"segment_starts"`` rule (Video-LLaMA's ``load_video``, ``sampling="uniform"``):
    ``np.arange(0, total, total / k).astype(int)`` with ``k = min(total, num_frames)`` -- the first frame of each of
    ``k`` equal segments (a video shorter than ``num_frames`` gives all its frames)."""
    k = min(total, num_frames)
    return [int(math.floor(i * total / k + 1e-9)) for i in range(k)]


def _uniform_indices(total: int, num_frames: int) -> list[int]:
    """``"uniform"`` at a constant frame rate: the frame shown at the middle of each of ``num_frames`` equal time
    segments (a midpoint on a frame boundary selects the later frame, as the time rule does)."""
    return [int(math.floor((i + 0.5) * total / num_frames + 1e-9)) for i in range(num_frames)]


def _linspace_indices(total: int, num_frames: int) -> list[int]:
    """``"linspace"`` at a constant frame rate: ``np.linspace(0, total - 1, num_frames).astype(int)``."""
    if num_frames == 1:
        return [0]
    return [int(math.floor(i * (total - 1) / (num_frames - 1) + 1e-9)) for i in range(num_frames)]


#: rules defined on frame indices (any frame rate) / on time, equal to these index rules at a constant frame rate
_INDEX_RULES = {"index_midpoints": index_midpoints, "segment_index_midpoints": segment_index_midpoints,
                "segment_starts": segment_starts}
_CFR_INDEX_RULES = {"uniform": _uniform_indices, "linspace": _linspace_indices}


def _index_rule(sampling: str, frame_pts: list[int]):
    """The index rule that selects the frames of ``sampling`` from these (scanned) frame timestamps, or ``None``
    when the rule is defined on time and the frame rate is not constant (within one tick of rounding)."""
    if sampling in _INDEX_RULES:
        return _INDEX_RULES[sampling]
    if sampling in _CFR_INDEX_RULES and len(frame_pts) > 1:
        gaps = np.diff(np.asarray(frame_pts, dtype=np.int64))
        if int(gaps.max()) - int(gaps.min()) <= 1:
            return _CFR_INDEX_RULES[sampling]
    return None


def _check_positive_int(value: Any, what: str, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise VideoDecodeError(f"{name}: {what} must be a positive integer, got {value!r}.")


def _validate_args(name, num_frames, fps, start, end, mode, max_frames, sampling, backend) -> None:
    if num_frames is not None and fps is not None:
        raise VideoDecodeError(
            f"{name}: pass either num_frames or fps, not both (got num_frames={num_frames!r}, fps={fps!r})."
        )
    if num_frames is not None:
        _check_positive_int(num_frames, "num_frames", name)
    if fps is not None:
        if isinstance(fps, bool) or not isinstance(fps, numbers.Real) or not math.isfinite(fps) or fps <= 0:
            raise VideoDecodeError(f"{name}: fps must be a positive finite number, got {fps!r}.")
    if max_frames is not None:
        _check_positive_int(max_frames, "max_frames", name)
    for label, value in (("start", start), ("end", end)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0
        ):
            raise VideoDecodeError(f"{name}: {label} must be a finite number of seconds >= 0, got {value!r}.")
    if start is not None and end is not None and start >= end:
        raise VideoDecodeError(f"{name}: start ({start}) must be smaller than end ({end}).")
    if mode not in ("exact", "keyframe"):
        raise VideoDecodeError(f"{name}: mode must be 'exact' or 'keyframe', got {mode!r}.")
    if sampling not in SAMPLING_RULES:
        raise VideoDecodeError(f"{name}: sampling must be one of {SAMPLING_RULES}, got {sampling!r}.")
    if backend not in ("pyav", "torchcodec", "auto"):
        raise VideoDecodeError(f"{name}: backend must be 'pyav', 'torchcodec' or 'auto', got {backend!r}.")


def _resolve_window(name: str, duration: float, start: float | None, end: float | None) -> tuple[float, float]:
    lo = float(start or 0.0)
    if lo >= duration:
        raise VideoDecodeError(
            f"{name}: start={lo:.3f}s is beyond the end of the video (duration {duration:.3f}s); pass a smaller start."
        )
    hi = duration if end is None else min(float(end), duration)
    return lo, hi


def _downsample(targets: list, max_frames: int, sampling: str) -> list:
    n = len(targets)
    if n <= max_frames:
        return targets
    if sampling == "linspace":
        picks = np.round(np.linspace(0, n - 1, max_frames)).astype(int)
    else:
        picks = np.floor((np.arange(max_frames) + 0.5) * n / max_frames).astype(int)
    return [targets[int(i)] for i in picks]  # ``targets`` may be a range (indices)


def _target_count(lo: float, hi: float, num_frames: int | None, fps: float | None, sampling: str) -> int:
    """How many targets :func:`_sampling_targets` makes (computed without building them)."""
    if num_frames is not None:
        return int(num_frames)
    span = hi - lo
    if sampling == "linspace":
        return max(1, math.ceil(span * fps - 1e-9))
    return max(1, math.ceil(span * fps - 0.5 - 1e-9))


def _sampling_targets(
    lo: float, hi: float, num_frames: int | None, fps: float | None, sampling: str, last: float | None = None,
    max_frames: int | None = None,
) -> list[float]:
    """Targets (seconds) inside ``[lo, hi)``; ``last`` is the start time of the last frame of the window (for
    ``linspace``). See :func:`load_video` for the rules. With ``max_frames`` the target list is uniformly re-sampled
    down to ``max_frames`` (as :func:`_downsample`), computing only the kept targets."""
    span = hi - lo
    last = lo if last is None else min(max(lo, last), hi)
    n = _target_count(lo, hi, num_frames, fps, sampling)
    keep = range(n) if max_frames is None or n <= max_frames else _downsample(range(n), max_frames, sampling)
    if num_frames is not None:
        if sampling == "linspace":
            if num_frames == 1:
                return [lo]
            step = (last - lo) / (n - 1)  # as np.linspace: start + i * step, the last one exactly ``last``
            return [last if i == n - 1 else lo + i * step for i in keep]
        if sampling == "segment_index_midpoints":
            # frame indices from the frame count, then the middle of each chosen frame (constant frame rate)
            step = hi - last
            if step <= 0:
                return [lo] * len(keep)
            picks = segment_index_midpoints(round((last - lo) / step) + 1, n)
            return [lo + (picks[i] + 0.5) * step for i in keep]
        if sampling == "segment_starts":
            # frame indices from the frame count (at most one target per frame), then the middle of each chosen
            # frame (constant frame rate)
            step = hi - last
            if step <= 0:
                return [lo]
            picks = segment_starts(round((last - lo) / step) + 1, n)
            return [lo + (picks[i] + 0.5) * step for i in (keep if len(picks) == n else range(len(picks)))]
        if sampling == "index_midpoints":
            # midpoints of n equal segments of [first frame, last frame] rounded to the nearest frame: half a frame
            # later, the frame displayed there is the rounded one
            half = (hi - last) / 2
            return [lo + (i + 0.5) * (last - lo) / n + half for i in keep]
        return [lo + (i + 0.5) * span / n for i in keep]
    assert fps is not None
    if sampling == "linspace":
        return [lo + i / fps for i in keep]
    if math.ceil(span * fps - 0.5 - 1e-9) < 1:
        return [lo + span / 2]
    return [lo + (i + 0.5) / fps for i in keep]


def _check_target_budget(
    name: str, n_targets: int, window_frames: int, width: int, height: int, num_frames, fps
) -> None:
    """Refuse, before anything is allocated, a request whose output would repeat frames on a massive scale or not
    fit in memory."""
    asked = f"num_frames={num_frames!r}" if num_frames is not None else f"fps={fps!r}"
    if n_targets > max(window_frames, MAX_REPEATED_TARGETS):
        raise VideoDecodeError(
            f"{name}: {asked} asks for {n_targets} frames but the window holds about {window_frames}; pass "
            f"num_frames <= {max(window_frames, 1)} (or a lower fps), or cap the output with max_frames=."
        )
    nbytes = n_targets * width * height * 3
    if nbytes > ALL_FRAMES_MAX_BYTES:
        raise VideoDecodeError(
            f"{name}: {asked} would return {n_targets} frames of {width}x{height} ({nbytes / 1024**3:.1f} GiB); pass "
            f"fewer frames or max_frames= (or a shorter start/end window)."
        )


# ----------------------------------------------------------------------------------------------------------------------
# PyAV decoding machinery
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class _Frame:
    pts: int
    index: int | None
    frame: Any  # av.VideoFrame (dropped once converted to RGB)
    key: bool


class _KeyIndex:
    """Keyframe positions (pts domain) from a packet scan or from FFmpeg's per-stream index."""

    def __init__(self, stream, shift: int, complete: bool, scan_keys: list[int] | None = None):
        self.stream = stream
        self.shift = shift  # index timestamp + shift ~= pts (MP4 index timestamps are dts)
        self.complete = complete
        self.scan_keys = scan_keys

    def _entries(self):
        return self.stream.index_entries

    def _key_ts(self, pos: int) -> int | None:
        entry = self._entries()[pos]
        return entry.timestamp + self.shift

    def covers(self, pts: int) -> bool:
        if self.complete:
            return True
        ie = self._entries()
        n = len(ie)
        if n < 2:
            return False
        return ie[n - 1].timestamp + self.shift >= pts

    def next_key_after(self, pts: int) -> int | None:
        """First keyframe with pts strictly greater than ``pts`` (``None``: none known)."""
        if self.scan_keys is not None:
            i = bisect.bisect_right(self.scan_keys, pts)
            return self.scan_keys[i] if i < len(self.scan_keys) else None
        ie = self._entries()
        if len(ie) == 0:
            return None
        pos = ie.search_timestamp(pts - self.shift + 1, backward=False, any_frame=False)
        return None if pos < 0 else self._key_ts(pos)

    def key_at_or_before(self, pts: int) -> int | None:
        if self.scan_keys is not None:
            i = bisect.bisect_right(self.scan_keys, pts)
            return self.scan_keys[i - 1] if i > 0 else None
        ie = self._entries()
        if len(ie) == 0:
            return None
        pos = ie.search_timestamp(pts - self.shift, backward=True, any_frame=False)
        return None if pos < 0 else self._key_ts(pos)

    def key_at_or_after(self, pts: int) -> int | None:
        return self.next_key_after(pts - 1)


@dataclass
class _StreamInfo:
    first_pts: int
    duration_pts: int
    fps: float
    total_frames: int
    keys: _KeyIndex
    all_pts: list[int] | None = None  # every frame pts (sorted), from a scan
    dts_indexed: bool = False  # frame index = position in FFmpeg's (complete) index


class _PyAVReader:
    """Seek/decode state machine over one video stream."""

    def __init__(self, container, stream, name: str):
        self.c = container
        self.s = stream
        self.name = name
        self.tb: Fraction = stream.time_base or Fraction(1, AV_TIME_BASE)
        if stream.codec_context is None:  # FFmpeg found no decoder: damaged sample description / index, odd codec
            raise VideoDecodeError(
                f"{name}: FFmpeg has no decoder for its video stream; the file's header or index "
                f"is damaged or the codec is not supported. Re-encode or remux it (e.g. ffmpeg -i in.mp4 -c:v libx264 "
                f"out.mp4)."
            )
        self.s.codec_context.thread_type = "AUTO"
        self.info: _StreamInfo | None = None
        self._gen: Iterator[_Frame] | None = None
        self.prev: _Frame | None = None
        self.peek: _Frame | None = None
        self.eof = False
        self.demux_error: Exception | None = None
        self.decode_errors = 0
        self.first_decode_error: Exception | None = None
        self.corrupt: set[tuple] = set()  # (pts, dts, pos) of packets FFmpeg flagged AV_PKT_FLAG_CORRUPT
        self.seek_origin: int | None = None
        self._out_count = 0
        self._first_dts: int | None = None
        self._base_index: int | None = None
        self._last_pts: int | None = None
        self.max_key_gap = 0
        self._last_key: int | None = None
        self._key_cache: dict[int, _Frame] = {}

    # -- time conversion ---------------------------------------------------------------------------------------------
    def sec_to_pts(self, seconds: float) -> int:
        """Seconds (relative to the first frame) -> pts, rounded to the nearest tick.

        Containers store rounded timestamps (Matroska: 1 ms), so a target within half a tick of a frame's pts
        belongs to that frame; this keeps targets on exact frame boundaries consistent across containers.
        """
        assert self.info is not None
        ticks = seconds * self.tb.denominator / self.tb.numerator
        if self.info.fps and float(self.tb) * self.info.fps >= 0.5:
            # coarse time base (AVI / Y4M: one tick per frame): stored timestamps are exact frame numbers, so a
            # target belongs to the frame it falls in (floor); rounding would pick the next frame half the time
            return self.info.first_pts + math.floor(ticks + 1e-6)
        return self.info.first_pts + math.floor(ticks + 0.5)

    def pts_to_sec(self, pts: int) -> float:
        assert self.info is not None
        return float((pts - self.info.first_pts) * self.tb)

    def last_frame_before(self, end_s: float) -> float:
        """Start time (seconds) of the last frame before ``end_s``: exact after a scan, else ``end - 1 / fps``."""
        info = self.info
        assert info is not None
        if info.all_pts is not None:
            i = bisect.bisect_left(info.all_pts, self.sec_to_pts(end_s)) - 1
            return self.pts_to_sec(info.all_pts[max(i, 0)])
        return end_s - (1.0 / info.fps if info.fps else 0.0)

    def dur_to_pts(self, seconds: float) -> int:
        return max(1, math.floor(seconds * self.tb.denominator / self.tb.numerator))

    # -- probing -----------------------------------------------------------------------------------------------------
    def _read_header_rate(self) -> float:
        for rate in (self.s.average_rate, self.s.guessed_rate, self.s.base_rate):
            if rate:
                return float(rate)
        return 0.0

    def scan(self) -> _StreamInfo:
        """Demux (without decoding) the whole stream: exact frame count, frame pts, keyframes and duration."""
        pts_list: list[int] = []
        keys: list[int] = []
        last_end: int | None = None
        demux = self.c.demux(self.s)
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:  # truncated/corrupt: keep what was readable
                self.demux_error = exc
                break
            if packet.size == 0:
                continue
            pts = packet.pts if packet.pts is not None else packet.dts
            if pts is None:
                continue
            pts_list.append(pts)
            if packet.is_keyframe:
                keys.append(pts)
            end = pts + (packet.duration or 0)
            last_end = end if last_end is None else max(last_end, end)
        _count("packets_scanned", len(pts_list))
        if not pts_list:
            raise self._no_frames_error()
        pts_list.sort()
        keys.sort()
        first = pts_list[0]
        n = len(pts_list)
        if n > 1:
            deltas = np.diff(np.asarray(pts_list[-min(n, 16) :]))
            typical = int(np.median(deltas)) if len(deltas) else 0
        else:
            rate = self._read_header_rate()
            typical = self.dur_to_pts(1.0 / rate) if rate else self.dur_to_pts(0.04)
        if last_end is not None and last_end > pts_list[-1]:
            end_pts = last_end  # the last frame's own duration is known
        else:
            end_pts = pts_list[-1] + max(typical, 1)
        duration_pts = end_pts - first
        duration_s = float(duration_pts * self.tb)
        fps = n / duration_s if duration_s > 0 else self._read_header_rate()
        self._check_scan_truncation(end_pts, fps)
        if not keys:
            keys = [first]
        return _StreamInfo(
            first_pts=first,
            duration_pts=duration_pts,
            fps=fps,
            total_frames=n,
            keys=_KeyIndex(self.s, 0, True, scan_keys=keys),
            all_pts=pts_list,
        )

    def _declared_end_s(self) -> float | None:
        """End of the video stream (seconds) according to the container header, if it says so."""
        if self.s.duration:
            return float(self.s.duration * self.tb)  # relative to the stream start (MP4 and most demuxers)
        tag = (self.s.metadata or {}).get("DURATION")  # Matroska/WebM per-track tag: absolute end time
        if tag:
            with contextlib.suppress(ValueError):
                h, m, sec = tag.split(":")
                return int(h) * 3600 + int(m) * 60 + float(sec)
        if self.c.duration and len(self.c.streams) == 1:
            return self.c.duration / AV_TIME_BASE
        return None

    def _check_scan_truncation(self, end_pts: int, fps: float) -> None:
        """Raise when the readable data ends well before the end declared by the header."""
        declared = self._declared_end_s()
        absolute_end = float(end_pts * self.tb)
        if declared is None:
            if self.demux_error is not None:
                raise self._truncated_error(absolute_end, None)
            return
        # Containers disagree whether their duration includes the start offset: compare with the absolute end,
        # which is the larger reading, and allow a few frames of slack.
        slack = max(0.5, 3.0 / fps if fps else 0.0, 0.02 * declared)
        if absolute_end < declared - slack:
            raise self._truncated_error(absolute_end, declared)

    def probe(self, mode: str, need_scan: bool) -> _StreamInfo:
        header_frames = int(self.s.frames or 0)
        ie = self.s.index_entries
        n_entries = len(ie)
        complete_index = header_frames > 0 and n_entries == header_frames
        if need_scan or (mode == "exact" and not complete_index):
            self.info = self.scan()
            return self.info
        first_pts = self.s.start_time
        if first_pts is None:
            first_pts = self._first_frame_pts()
        shift = 0
        if complete_index:
            shift = first_pts - ie[0].timestamp
        keys = _KeyIndex(self.s, shift, complete_index)
        fps = self._read_header_rate()
        duration_pts = None
        if self.s.duration and self.s.duration > 0:
            duration_pts = int(self.s.duration)
        else:
            end = self._probe_end_pts(first_pts)
            if end is not None and end > first_pts:
                duration_pts = end - first_pts
                self._check_scan_truncation(end, fps)
            elif self.c.duration:
                duration_pts = self.dur_to_pts(self.c.duration / AV_TIME_BASE)
        if duration_pts is None:
            self.info = self.scan()
            return self.info
        duration_s = float(duration_pts * self.tb)
        if complete_index:
            total = header_frames
        else:
            estimate = round(duration_s * fps) if fps else 0
            if header_frames > 0 and abs(header_frames - estimate) <= max(2, 0.05 * estimate):
                total = header_frames
            else:
                total = max(1, estimate)
        if not fps and duration_s > 0:
            fps = total / duration_s
        self.info = _StreamInfo(
            first_pts=first_pts,
            duration_pts=duration_pts,
            fps=fps,
            total_frames=total,
            keys=keys,
            dts_indexed=complete_index,
        )
        self.reset()
        return self.info

    def _first_frame_pts(self) -> int:
        self._seek_raw(0, stream_level=False)
        gen = self._frames()
        for fr in gen:
            return fr.pts
        raise self._no_frames_error()

    def _probe_end_pts(self, first_pts: int) -> int | None:
        """End of the stream (pts) from its last packets: seek close to the end, demux the tail."""
        guess_s = (self.c.duration / AV_TIME_BASE) if self.c.duration else 1e7
        try:
            self.c.seek(first_pts + self.dur_to_pts(guess_s + 1.0), backward=True, any_frame=False, stream=self.s)
        except av.error.FFmpegError:
            return None
        end = None
        for i, packet in enumerate(self._safe_demux()):
            if i > _MAX_TAIL_PACKETS:
                break
            if packet.size == 0:
                continue
            pts = packet.pts if packet.pts is not None else packet.dts
            if pts is None:
                continue
            e = pts + (packet.duration or 0)
            end = e if end is None else max(end, e)
        self.demux_error = None
        self.reset()
        return end

    def _safe_demux(self):
        demux = self.c.demux(self.s)
        while True:
            try:
                packet = next(demux)
            except StopIteration:
                return
            except av.error.FFmpegError as exc:
                self.demux_error = exc
                return
            if getattr(packet, "is_corrupt", False):  # FFmpeg's corrupt flag: e.g. a packet cut short by truncation
                self.corrupt.add((packet.pts, packet.dts, packet.pos))
            yield packet

    # -- decoding ----------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        self._gen = None
        self.prev = None
        self.peek = None
        self.eof = False

    def _frames(self) -> Iterator[_Frame]:
        """Decoded frames from the current demuxer position (presentation order)."""
        info = self.info
        for packet in self._safe_demux():
            if packet.size and self._first_dts is None:
                self._first_dts = packet.dts if packet.dts is not None else packet.pts
            try:
                frames = self.s.decode(packet)
            except av.error.FFmpegError as exc:
                self.decode_errors += 1
                self.first_decode_error = self.first_decode_error or exc
                continue
            for frame in frames:
                _count("frames_decoded")
                yield self._wrap(frame, info)
        if self.demux_error is not None:  # drain what the decoder still holds
            with contextlib.suppress(av.error.FFmpegError):
                for frame in self.s.decode(None):
                    _count("frames_decoded")
                    yield self._wrap(frame, info)

    def _wrap(self, frame, info: _StreamInfo | None) -> _Frame:
        pts = frame.pts
        if pts is None:
            pts = frame.dts
        if pts is None:  # synthesize from the previous frame
            step = self.dur_to_pts(1.0 / info.fps) if info is not None and info.fps else 1
            pts = (self._last_pts + step) if self._last_pts is not None else (info.first_pts if info else 0)
        self._last_pts = pts
        index = None
        if info is not None:
            if info.all_pts is not None:
                index = bisect.bisect_left(info.all_pts, pts)
            else:
                if self._out_count == 0:
                    self._base_index = self._resolve_base_index(pts)
                if self._base_index is not None:
                    index = self._base_index + self._out_count
        self._out_count += 1
        key = bool(frame.key_frame)
        if key:
            if self._last_key is not None and pts > self._last_key:
                self.max_key_gap = max(self.max_key_gap, pts - self._last_key)
            self._last_key = pts
        return _Frame(pts=pts, index=index, frame=frame, key=key)

    def _resolve_base_index(self, first_pts: int) -> int | None:
        info = self.info
        assert info is not None
        if first_pts <= info.first_pts:
            return 0
        if info.dts_indexed and self._first_dts is not None:
            pos = self.s.index_entries.search_timestamp(self._first_dts, backward=True, any_frame=True)
            if pos >= 0:
                return pos
        return None

    def _seek_raw(self, pts: int, stream_level: bool = True) -> None:
        self.reset()
        self._out_count = 0
        self._first_dts = None
        self._base_index = None
        self._last_pts = None
        self._last_key = None
        self.demux_error = None
        _count("seeks")
        try:
            if stream_level:
                self.c.seek(pts, backward=True, any_frame=False, stream=self.s)
            else:
                self.c.seek(0)
        except av.error.FFmpegError as exc:
            try:
                self.c.seek(0)  # e.g. stream-level seeking unsupported: restart from the beginning
            except av.error.FFmpegError:
                raise VideoDecodeError(
                    f"{self.name}: the data cannot be seeked ({exc}); save it to a regular file or re-mux it."
                ) from exc
        self.seek_origin = pts
        self._gen = self._frames()

    def _next(self) -> _Frame | None:
        if self.eof or self._gen is None:
            return None
        fr = next(self._gen, None)
        if fr is None:
            self.eof = True
        return fr

    def _advance_to(self, target: int) -> None:
        """Decode until ``prev`` is the last frame with pts <= target (``peek`` holds the first frame after it)."""
        while True:
            if self.peek is not None:
                if self.peek.pts > target:
                    return
                self.prev, self.peek = self.peek, None
                continue
            fr = self._next()
            if fr is None:
                return
            self.peek = fr

    def _position(self) -> int | None:
        if self.peek is not None:
            return self.peek.pts
        return self.prev.pts if self.prev is not None else None

    def _can_continue(self, target: int) -> bool:
        if self._gen is None or self.prev is None:
            return False
        if target < self.prev.pts:
            return False
        if self.peek is not None and target < self.peek.pts:
            return True  # same frame as before
        if self.eof and self.peek is None:
            return True
        pos = self._position()
        assert pos is not None and self.info is not None
        keys = self.info.keys
        if keys.covers(target):
            nxt = keys.next_key_after(pos)
            return nxt is None or nxt > target
        window = max(self.max_key_gap, self.dur_to_pts(_DEFAULT_FORWARD_WINDOW_S))
        return target - pos <= window

    def frame_at(self, target: int) -> _Frame:
        """The last frame with pts <= target (exact mode)."""
        info = self.info
        assert info is not None
        if not self._can_continue(target):
            self._seek_raw(target)
        attempts = 0
        while True:
            self._advance_to(target)
            if self.prev is not None:
                if self.eof and self.peek is None:
                    self._check_truncated(target)
                return self.prev
            first = self.peek
            at_start = self.seek_origin is not None and self.seek_origin <= info.first_pts
            if first is not None and (first.pts <= info.first_pts or at_start or target < info.first_pts):
                return first  # the target precedes the first frame
            if at_start:
                raise self._no_frames_error()  # decoded from the very beginning and got nothing
            # The seek landed after the target (or on undecodable data): retry further back, finally from the start.
            attempts += 1
            if first is None or attempts >= len(_SEEK_BACKOFF_S):
                self._seek_raw(info.first_pts)
            else:
                self._seek_raw(max(info.first_pts, target - self.dur_to_pts(_SEEK_BACKOFF_S[attempts - 1])))

    def keyframe_near(self, target: int) -> _Frame:
        """Seek to the keyframe nearest to ``target`` and decode only that frame (keyframe mode)."""
        info = self.info
        assert info is not None
        seek_to = target
        keys = info.keys
        if keys.covers(target):
            before = keys.key_at_or_before(target)
            after = keys.key_at_or_after(target)
            cands = [k for k in (before, after) if k is not None and k <= info.first_pts + info.duration_pts]
            if cands:
                seek_to = min(cands, key=lambda k: (abs(k - target), k))
        cached = self._key_cache.get(seek_to)
        if cached is not None:
            return cached
        self._seek_raw(seek_to)
        fr = self._decode_one()
        if fr is None and seek_to != info.first_pts:
            # nothing decodable from a keyframe the index promises: the data there is missing (a truncated file).
            # Refuse as exact mode does, instead of silently returning the first frame for a later target.
            if not self._key_cache:
                self._seek_raw(info.first_pts)
                first = self._decode_one()
                if first is None:
                    raise self._no_frames_error()
                self._key_cache[info.first_pts] = first
            readable = max(self.pts_to_sec(f.pts) for f in self._key_cache.values())
            raise self._truncated_error(readable, float(info.duration_pts * self.tb))
        if fr is None:
            raise self._no_frames_error()
        self._key_cache[seek_to] = fr
        return fr

    def _decode_one(self) -> _Frame | None:
        """Send packets until the decoder outputs one frame; drain early so no extra frames are decoded."""
        info = self.info
        for packet in self._safe_demux():
            if packet.size == 0:
                continue
            if self._first_dts is None:
                self._first_dts = packet.dts if packet.dts is not None else packet.pts
            try:
                frames = self.s.decode(packet)
                if not frames:
                    frames = self.s.decode(None)  # drain instead of feeding more packets
                    if not frames:
                        self.s.codec_context.flush_buffers()  # leave the draining state, try the next packet
            except av.error.FFmpegError as exc:
                self.decode_errors += 1
                self.first_decode_error = self.first_decode_error or exc
                with contextlib.suppress(av.error.FFmpegError):
                    self.s.codec_context.flush_buffers()
                continue
            if frames:
                _count("frames_decoded", len(frames))
                return self._wrap(frames[0], info)
        return None

    # -- errors ------------------------------------------------------------------------------------------------------
    def _no_frames_error(self) -> VideoDecodeError:
        detail = ""
        if self.first_decode_error is not None:
            detail = f" ({self.decode_errors} packet(s) failed to decode, first error: {self.first_decode_error})"
        elif self.demux_error is not None:
            detail = f" (reading failed: {self.demux_error})"
        return VideoDecodeError(
            f"{self.name}: the video stream has no decodable frames{detail}. The file is corrupt, truncated or "
            "empty; re-encode or re-download it."
        )

    def _truncated_error(self, readable_end: float, declared: float | None) -> VideoDecodeError:
        decl = f" but its header declares {declared:.2f}s" if declared is not None else ""
        err = f" (error: {self.demux_error})" if self.demux_error is not None else ""
        return VideoDecodeError(
            f"{self.name}: the video data ends at {readable_end:.2f}s{decl}{err}; the file is truncated or corrupt. "
            "Re-download or re-encode it (or pass end= to read only the intact part)."
        )

    def _check_truncated(self, target: int) -> None:
        """At end of data: raise if frames that the index/header promise before ``target`` are missing."""
        info = self.info
        assert info is not None and self.prev is not None
        if info.all_pts is not None:
            return  # the scan only lists readable packets; checked in scan()
        expected_last = info.total_frames - 1
        idx = self.prev.index
        tol = max(2, int(0.02 * info.total_frames))
        missing = idx is not None and info.dts_indexed and idx < expected_last - tol
        if self.demux_error is not None or missing:
            declared = float(info.duration_pts * self.tb)
            readable = self.pts_to_sec(self.prev.pts)
            if missing or readable + max(1.0, 0.1 * declared) < declared:
                raise self._truncated_error(readable, declared)


# ----------------------------------------------------------------------------------------------------------------------
# Rotation / conversion helpers
# ----------------------------------------------------------------------------------------------------------------------


def _frame_rotation_cw(frame, stream) -> int:
    """Clockwise degrees (0/90/180/270) needed to display ``frame`` upright."""
    ccw = 0
    with contextlib.suppress(Exception):
        ccw = int(round(frame.rotation or 0))
    if ccw == 0:
        tag = (stream.metadata or {}).get("rotate")
        if tag is not None:
            with contextlib.suppress(ValueError):
                return int(round(float(tag) / 90.0)) * 90 % 360
    return int(round(-ccw / 90.0)) * 90 % 360


def _apply_rotation(frames: torch.Tensor, rotation_cw: int) -> torch.Tensor:
    """Rotate ``(T, H, W, C)`` frames clockwise by ``rotation_cw`` degrees."""
    k = (rotation_cw // 90) % 4
    if k == 0:
        return frames
    return torch.rot90(frames, -k, dims=(1, 2)).contiguous()


def _to_rgb(frame, size: tuple[int, int] | None, reformatter=None) -> np.ndarray:
    """Decoded frame -> RGB array. Reusing one ``VideoReformatter`` per video keeps FFmpeg's scaler context
    (``to_ndarray(format=...)`` builds a new one per frame: about 4x slower on small frames)."""
    kwargs = {"format": "rgb24"}
    if size is not None and (frame.width, frame.height) != size:
        kwargs.update(width=size[0], height=size[1])
    if reformatter is not None:
        return reformatter.reformat(frame, **kwargs).to_ndarray()
    return frame.to_ndarray(**kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Decoding the sampled rows: serially, or in several threads (``load_video(decode_threads=)``)
# ----------------------------------------------------------------------------------------------------------------------

#: ``decode_threads=None`` uses ``min(torch.get_num_threads(), MAX_DECODE_THREADS)`` threads.
MAX_DECODE_THREADS = 4
#: A decode thread is only started for at least this many keyframe intervals (= seeks) of work: fewer do not pay
#: for opening another container (short clips, few targets stay serial).
MIN_SEEKS_PER_THREAD = 2


def _decode_serial(reader, stream, targets_pts, order, mode, on_frame, skip=frozenset()):
    """Decode the targets in time order on ``reader``: ``(picked, out, rotation)``. ``on_frame`` is called for the
    rows not in ``skip`` -- those were reported by a parallel attempt that fell back."""
    picked: list[_Frame | None] = [None] * len(targets_pts)
    out: np.ndarray | None = None
    size: tuple[int, int] | None = None
    rotation = 0
    row_of: dict[int, int] = {}  # id(_Frame) -> first output row (the objects stay alive in `picked`)
    reformatter = VideoReformatter()
    for i in order:
        t = targets_pts[i]
        fr = reader.keyframe_near(t) if mode == "keyframe" else reader.frame_at(t)
        picked[i] = fr
        row = row_of.get(id(fr))
        if row is not None:  # several targets inside one frame
            out[i] = out[row]
        else:
            if out is None:
                size = (fr.frame.width, fr.frame.height)
                rotation = _frame_rotation_cw(fr.frame, stream)
                out = np.empty((len(targets_pts), size[1], size[0], 3), dtype=np.uint8)
            out[i] = _to_rgb(fr.frame, size, reformatter)  # convert right away, keep no decoded frame alive
            fr.frame = None
            row_of[id(fr)] = i
        if on_frame is not None and i not in skip:  # upright, as in the result (np.rot90: torch.rot90's turn, a view)
            on_frame(i, np.rot90(out[i], -(rotation // 90) % 4) if rotation else out[i], len(targets_pts))
    return picked, out, rotation


def _reopenable(source) -> bool:
    """Decode threads open their own container: paths and bytes can be opened again, file objects cannot (one
    shared read position; reading a possibly huge object into memory first is not worth it), so they stay serial."""
    return isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview))


def _decode_thread_count(decode_threads: int | None) -> int:
    if decode_threads is not None:
        return int(decode_threads)
    return max(1, min(torch.get_num_threads() or os.cpu_count() or 1, MAX_DECODE_THREADS))


def _plan_groups(info: _StreamInfo, targets_pts, order, threads: int) -> list[list[int]] | None:
    """Split the rows (in time order) into contiguous groups, one per decode thread, cutting only between keyframe
    intervals (a thread never decodes a frame another one needs). ``None``: decode serially (one thread, or fewer
    than ``MIN_SEEKS_PER_THREAD`` keyframe intervals per thread)."""
    if threads < 2 or len(order) < 2 * MIN_SEEKS_PER_THREAD:
        return None
    clusters: list[list[int]] = []
    last_key: object = object()
    for i in order:
        key = info.keys.key_at_or_before(targets_pts[i])  # None: before the first keyframe (first in time order)
        if clusters and key == last_key:
            clusters[-1].append(i)
        else:
            clusters.append([i])
            last_key = key
    n = min(threads, len(clusters) // MIN_SEEKS_PER_THREAD)
    if n < 2:
        return None
    bounds = [round(g * len(clusters) / n) for g in range(n + 1)]
    return [[i for c in clusters[bounds[g] : bounds[g + 1]] for i in c] for g in range(n)]


class _NotParallel(Exception):
    """A decode thread met something the serial path handles differently (corrupt data, a frame size change)."""


# the groups already share the cores out: FFmpeg frame threads inside each cost ~7 % more CPU and wall time
# (60 s 720p, 2 groups: 2.04 -> 1.93 s; bench/RESULTS.md); slice threads add no frame delay
_GROUP_THREAD_TYPE = "SLICE"


def _decode_group(source, name, stream_index, info, targets_pts, rows, out, rotations, g, events, stop):
    """One decode thread: its own container, the rows of group ``g`` (time order) written into ``out``."""
    try:
        with open_container(source) as (container, _):
            stream = container.streams[stream_index]
            reader = _PyAVReader(container, stream, name)
            stream.codec_context.thread_type = _GROUP_THREAD_TYPE
            k = info.keys
            reader.info = replace(info, keys=_KeyIndex(stream, k.shift, k.complete, k.scan_keys))
            size = (stream.width, stream.height)
            reformatter = VideoReformatter()
            picked: dict[int, _Frame] = {}
            row_of: dict[int, int] = {}
            for i in rows:
                if stop.is_set():
                    raise _NotParallel("stopped")
                fr = reader.frame_at(targets_pts[i])
                picked[i] = fr
                row = row_of.get(id(fr))
                if row is not None:
                    out[i] = out[row]
                else:
                    if (fr.frame.width, fr.frame.height) != size:
                        raise _NotParallel("frame size differs from the stream's")  # serial scales to the 1st frame
                    if rotations[g] is None:
                        rotations[g] = _frame_rotation_cw(fr.frame, stream)
                    out[i] = _to_rgb(fr.frame, size, reformatter)
                    fr.frame = None
                    row_of[id(fr)] = i
                events.put(("row", i))
            if reader.corrupt or reader.decode_errors:
                raise _NotParallel("damaged data")  # the serial path counts and reports it
            events.put(("done", g, picked))
    except BaseException as exc:  # noqa: BLE001 -- reported to the caller, which decodes serially instead
        events.put(("fail", g, exc))


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _decode_parallel(source, name, stream, info, targets_pts, order, groups, on_frame, in_order=True):
    """Decode ``groups`` in one thread each. Returns ``((picked, out, rotation), emitted)``; ``(None, emitted)``
    when a thread failed (the caller then decodes serially, and ``on_frame`` was already called for the rows in the
    set ``emitted``: the serial pass reports only the others). ``on_frame`` is called here, on the caller's thread:
    ``in_order``, as soon as the next row in time order is decoded; else as soon as each row is decoded (the rows of
    later groups need not wait for the earlier groups to finish) -- or, when the threads take every available CPU,
    from the moment the first thread is done."""
    n = len(targets_pts)
    if isinstance(source, (bytearray, memoryview)):
        source = bytes(source)  # one copy shared by the threads (their BytesIO share an immutable bytes object)
    out = np.empty((n, stream.height, stream.width, 3), dtype=np.uint8)
    rotations: list[int | None] = [None] * len(groups)
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_decode_group,
            args=(source, name, stream.index, info, targets_pts, rows, out, rotations, g, events, stop),
            name=f"load_video-decode-{g}",
            daemon=True,
        )
        for g, rows in enumerate(groups)
    ]
    for th in threads:
        th.start()
    # "any" order while the decode threads take every CPU this process may use: a consumer's work (resizing...)
    # would only slow them down, so rows are handed over once the first thread is done -- the groups are cut at
    # keyframes and differ in work, and the held rows then keep the CPU that thread leaves busy
    hold = not in_order and len(threads) >= _available_cpus()
    ready = [False] * n
    picked: list[_Frame | None] = [None] * n
    emitted: set[int] = set()
    decoded: list[int] = []  # rows decoded and not yet reported (any order)
    cursor = 0  # in time order: rows order[:cursor] reported
    failed = None

    def report(i: int) -> None:
        rot = rotations[0] or 0  # set by group 0's first row (every row is reported after it)
        on_frame(i, np.rot90(out[i], -(rot // 90) % 4) if rot else out[i], n)
        emitted.add(i)

    try:
        remaining = len(threads)
        while remaining:
            event = events.get()
            if event[0] == "row":
                ready[event[1]] = True
                decoded.append(event[1])
            elif event[0] == "done":
                remaining -= 1
                for i, fr in event[2].items():
                    picked[i] = fr
            else:
                remaining -= 1
                failed = failed or event[2]
                stop.set()
            if on_frame is not None and failed is None:
                if in_order:
                    while cursor < n and ready[order[cursor]]:
                        report(order[cursor])
                        cursor += 1
                elif ready[order[0]] and (remaining < len(threads) or not hold):  # group 0 has its rotation now
                    for i in decoded:
                        report(i)
                    decoded.clear()
    finally:
        stop.set()
        for th in threads:
            th.join()
    if failed is not None:
        logger.debug("%s: parallel decoding fell back to the serial path (%r)", name, failed)
        return None, emitted
    return (picked, out, rotations[0] or 0), emitted


# ----------------------------------------------------------------------------------------------------------------------
# load_video
# ----------------------------------------------------------------------------------------------------------------------


def _torchcodec_available() -> bool:
    try:
        import torchcodec.decoders  # noqa: F401
    except Exception:  # ImportError, or a broken install (missing FFmpeg libraries)
        return False
    return True


def load_video(
    source: str | os.PathLike | bytes | Any,
    num_frames: int | None = None,
    fps: float | None = None,
    *,
    start: float | None = None,
    end: float | None = None,
    mode: str = "exact",
    max_frames: int | None = None,
    sampling: str = "uniform",
    backend: str = "pyav",
    on_frame: Callable[[int, np.ndarray, int], Any] | None = None,
    decode_threads: int | None = None,
    on_frame_order: str = "time",
) -> tuple[torch.Tensor, VideoMetadata]:
    """Decode frames of a video sampled by timestamp.

    Args:
        source: path (str/Path), ``bytes``, or a binary file object (read from offset 0; a non-seekable one is read
            into memory).
        num_frames: number of frames to sample from ``[start, end)``.
        fps: sample one frame every ``1/fps`` seconds of ``[start, end)`` (mutually exclusive with ``num_frames``).
            If both are ``None`` every frame of the window is returned (capped by ``max_frames``); this is refused
            with :class:`VideoDecodeError` when the result would exceed :data:`ALL_FRAMES_MAX_BYTES`.
        start, end: window in seconds relative to the first frame; ``end`` is clamped to the duration, ``start``
            beyond the duration is an error.
        mode: ``"exact"`` (seek + decode forward to each target) or ``"keyframe"`` (nearest keyframe only).
        max_frames: cap on the number of returned frames; when more targets were requested the target list is
            uniformly re-sampled down to ``max_frames`` (covering the whole window, never truncating the tail).
        sampling: ``"uniform"``: targets are segment midpoints, ``start + (i + 0.5) * (end - start) / n`` (with
            ``fps``: ``start + (i + 0.5) / fps`` while ``< end``). ``"linspace"``: ``n`` targets evenly spaced from
            ``start`` to the start time of the last frame of the window, both included (for constant frame rate the
            same frames as ``np.linspace(first, last, n).astype(int)`` on indices; with ``fps``: ``start + i / fps``
            while ``< end``). The last frame time is exact after a packet scan, else estimated as ``end - 1 / fps``.
            ``"index_midpoints"``: midpoints of ``n`` equal segments from the first to the last frame of the window,
            rounded to the nearest frame: for constant frame rate ``round((i + 0.5) * (frames - 1) / n)`` on indices
            (VideoLLaMA 2's ``frame_sample``); with ``fps`` the same as ``"uniform"``. ``"segment_index_midpoints"``:
            Video-ChatGPT / LongVLM ``get_seq_frames`` on frame indices (:func:`segment_index_midpoints`), always
            ``n`` frames (a shorter video repeats frames); with ``fps`` the same as ``"uniform"``. ``"segment_starts"``:
            the first frame of each of ``n`` equal segments, ``floor(i * frames / n)`` on indices (Video-LLaMA's
            ``load_video``; at most ``frames`` of them).
        backend: ``"pyav"``, ``"torchcodec"`` (error if not installed) or ``"auto"`` (torchcodec when importable and
            ``mode="exact"``, else pyav).
        on_frame: ``on_frame(row, frame, count)`` is called for each of the ``count`` output rows as soon as that
            frame is decoded (pyav; torchcodec: after decoding), so a consumer (resize, patches) can work while the
            decoder continues: ``frame`` is the upright uint8 ``(H, W, 3)`` RGB array of the result (read-only use),
            rows come in time order, a frame shared by several targets is reported for each of its rows.
        decode_threads: pyav, ``mode="exact"``: decode in up to this many threads when the targets span several
            keyframe intervals (``None``: ``min(torch.get_num_threads(), MAX_DECODE_THREADS)``; ``1``: always
            serial). Each thread opens its own container (paths and bytes; file objects are always decoded
            serially) and decodes a contiguous run of keyframe intervals, at least ``MIN_SEEKS_PER_THREAD`` of them
            (fewer stay serial: it would not pay). The result is identical to the serial one (same frames, rows,
            metadata); ``on_frame`` is still called on the caller's thread, in time order, each row as soon as it
            and all earlier rows are decoded. Damaged data (corrupt packets, decode errors, a failing thread) and a
            frame size that changes mid-stream are redone serially, so warnings and errors are the serial ones.
        on_frame_order: ``"time"``: ``on_frame`` gets the rows in time order (with ``decode_threads``, a later
            group's rows wait until every earlier row is decoded); ``"any"``: each row as soon as it is decoded
            (with ``decode_threads``, the groups' rows interleave; still on the caller's thread, every row exactly
            once, also when a failed parallel attempt is redone serially), so a consumer that does not need time
            order (e.g. resizing each frame) keeps working while an earlier group is still decoding. When the
            decode threads already take every CPU this process may use (``os.sched_getaffinity``), rows are held
            until the first decode thread is done: the consumer's work would only slow the decoders down before,
            and the held rows then fill the CPU that thread leaves (the groups are cut at keyframes, so their work
            differs).

    Returns:
        ``(frames, metadata)``: uint8 tensor ``(T, H, W, 3)`` RGB (upright: display rotation applied) and
        :class:`VideoMetadata`. ``T`` equals the number of targets; targets falling into the same frame return that
        frame repeatedly.
    """
    name = describe_source(source)
    _validate_args(name, num_frames, fps, start, end, mode, max_frames, sampling, backend)
    if decode_threads is not None:
        _check_positive_int(decode_threads, "decode_threads", name)
    if on_frame_order not in ("time", "any"):
        raise VideoDecodeError(f"{name}: on_frame_order must be 'time' or 'any', got {on_frame_order!r}")
    # NumPy scalars (np.float32(2.0), np.int64(8)) are accepted where a number is; use plain Python numbers below
    num_frames = None if num_frames is None else int(num_frames)
    max_frames = None if max_frames is None else int(max_frames)
    fps = None if fps is None else float(fps)
    start = None if start is None else float(start)
    end = None if end is None else float(end)
    if backend == "auto":
        backend = "torchcodec" if (mode == "exact" and _torchcodec_available()) else "pyav"
    if backend == "torchcodec":
        video, meta = _load_video_torchcodec(source, name, num_frames, fps, start, end, mode, max_frames, sampling)
        if on_frame is not None:
            rows = video.numpy()
            for i in range(len(rows)):
                on_frame(i, rows[i], len(rows))
        return video, meta

    with open_container(source) as (container, name):
        stream = _pick_video_stream(container, name)
        reader = _PyAVReader(container, stream, name)
        all_frames = num_frames is None and fps is None
        info = reader.probe(mode, need_scan=all_frames)
        duration = float(info.duration_pts * reader.tb)
        lo, hi = _resolve_window(name, duration, start, end)

        if all_frames:
            assert info.all_pts is not None
            lo_pts, hi_pts = reader.sec_to_pts(lo), reader.sec_to_pts(hi)
            window = [p for p in info.all_pts if lo_pts <= p < hi_pts] or [info.all_pts[0]]
            if max_frames is not None and len(window) > max_frames:
                window = _downsample(window, max_frames, "uniform")
            nbytes = len(window) * stream.width * stream.height * 3
            if nbytes > ALL_FRAMES_MAX_BYTES:
                raise VideoDecodeError(
                    f"{name}: returning all {len(window)} frames would need {nbytes / 1024**3:.1f} GiB; pass "
                    "num_frames=, fps= or max_frames= (or a shorter start/end window)."
                )
            targets_pts = window
            requested = [reader.pts_to_sec(p) for p in window]
        else:
            n_targets = _target_count(lo, hi, num_frames, fps, sampling)
            window_frames = math.ceil((hi - lo) * info.fps - 1e-6) if info.fps else int(info.total_frames)
            _check_target_budget(name, min(n_targets, max_frames or n_targets), window_frames, stream.width,
                                 stream.height, num_frames, fps)
            window: list[int] = []
            rule = None
            if info.all_pts is not None and num_frames is not None:
                lo_pts, hi_pts = reader.sec_to_pts(lo), reader.sec_to_pts(hi)
                window = [p for p in info.all_pts if lo_pts <= p < hi_pts] or [info.all_pts[0]]
                rule = _index_rule(sampling, window)
            if rule is not None:
                # every frame's timestamp is known (scanned): pick by index, exactly as the rule says, so containers
                # that store rounded timestamps (Matroska / WebM: 1 ms) cannot flip a tie between two frames
                picks = rule(len(window), num_frames)
                if max_frames is not None and len(picks) > max_frames:
                    picks = _downsample(picks, max_frames, sampling)
                targets_pts = [window[k] for k in picks]
                requested = [reader.pts_to_sec(p) for p in targets_pts]
            else:
                requested = _sampling_targets(lo, hi, num_frames, fps, sampling, reader.last_frame_before(hi),
                                              max_frames)
                targets_pts = [reader.sec_to_pts(t) for t in requested]

        order = sorted(range(len(targets_pts)), key=lambda i: targets_pts[i])
        result = None
        emitted: set[int] = set()  # rows already reported to on_frame before a fall back to the serial path
        if mode == "exact" and _reopenable(source) and not reader.corrupt and not reader.decode_errors:
            groups = _plan_groups(info, targets_pts, order, _decode_thread_count(decode_threads))
            if groups is not None:
                result, emitted = _decode_parallel(source, name, stream, info, targets_pts, order, groups, on_frame,
                                                   in_order=on_frame_order == "time")
        if result is None:
            result = _decode_serial(reader, stream, targets_pts, order, mode, on_frame, skip=emitted)
        picked, out, rotation = result
        frames_out = [fr for fr in picked if fr is not None]
        video = _apply_rotation(torch.from_numpy(out), rotation)

        fps_src = info.fps
        indices = []
        for fr in frames_out:
            if fr.index is not None:
                indices.append(int(fr.index))
            else:
                indices.append(int(round(reader.pts_to_sec(fr.pts) * fps_src)) if fps_src else 0)
        if reader.corrupt:
            logger.warning(
                "%s: FFmpeg flagged %d packet(s) as corrupt: the file is damaged or truncated (e.g. a cut-off "
                "download); the %d frame(s) returned were sampled from the %.3f s (%d frames) that could be read",
                name, len(reader.corrupt), len(targets_pts), duration, int(info.total_frames),
            )
        if reader.decode_errors:
            logger.warning(
                "%s: %d packet(s) could not be decoded and were skipped (first error: %s)",
                name,
                reader.decode_errors,
                reader.first_decode_error,
            )
        meta = VideoMetadata(
            timestamps=[reader.pts_to_sec(fr.pts) for fr in frames_out],
            frame_indices=indices,
            fps=float(fps_src),
            duration=duration,
            total_frames=int(info.total_frames),
            width=int(video.shape[2]),
            height=int(video.shape[1]),
            rotation=rotation,
            backend="pyav",
            requested_timestamps=[float(t) for t in requested],
            corrupt_packets=len(reader.corrupt) + reader.decode_errors,
        )
        return video, meta


def _load_video_torchcodec(source, name, num_frames, fps, start, end, mode, max_frames, sampling):
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception as exc:
        raise BackendUnavailableError(
            f"{name}: backend='torchcodec' was requested but torchcodec cannot be imported ({exc}). Install it "
            "(`pip install torchcodec`, matching your torch version, FFmpeg libraries required) or use backend='pyav'."
        ) from exc
    if mode != "exact":
        raise VideoDecodeError(f"{name}: backend='torchcodec' supports mode='exact' only; use backend='pyav'.")
    if isinstance(source, (str, os.PathLike)):
        if not Path(source).is_file():
            raise VideoDecodeError(f"{name}: file does not exist; check the path.")
        src: Any = os.fspath(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        src = bytes(source)
    else:
        src = source.read()
    if isinstance(src, bytes) and not src:
        raise VideoDecodeError(f"{name}: the data is empty (0 bytes).")
    try:
        decoder = VideoDecoder(src, seek_mode="exact", dimension_order="NHWC", num_ffmpeg_threads=0)
        md = decoder.metadata
        begin = float(getattr(md, "begin_stream_seconds", None) or 0.0)
        end_s = getattr(md, "end_stream_seconds", None)
        duration = float(end_s) - begin if end_s is not None else float(md.duration_seconds or 0.0)
        src_fps = float(md.average_fps or 0.0)
        total = int(md.num_frames or round(duration * src_fps))
        lo, hi = _resolve_window(name, duration, start, end)
        if num_frames is None and fps is None:  # every frame of the window
            batch = decoder.get_frames_played_in_range(start_seconds=begin + lo, stop_seconds=begin + hi)
            requested = [float(p) - begin for p in batch.pts_seconds.tolist()]
            if max_frames is not None and len(requested) > max_frames:
                keep = _downsample(list(range(len(requested))), max_frames, "uniform")
                batch = decoder.get_frames_played_at(seconds=[begin + requested[i] for i in keep])
                requested = [requested[i] for i in keep]
        else:
            last = hi - (1.0 / src_fps if src_fps else 0.0)
            n_targets = _target_count(lo, hi, num_frames, fps, sampling)
            window_frames = math.ceil((hi - lo) * src_fps - 1e-6) if src_fps else total
            _check_target_budget(name, min(n_targets, max_frames or n_targets), window_frames, int(md.width or 0),
                                 int(md.height or 0), num_frames, fps)
            requested = _sampling_targets(lo, hi, num_frames, fps, sampling, last, max_frames)
            batch = decoder.get_frames_played_at(seconds=[begin + t for t in requested])
    except VideoDecodeError:
        raise
    except Exception as exc:
        raise VideoDecodeError(f"{name}: torchcodec could not decode the video ({exc}).") from exc
    video = batch.data
    if video.shape[-1] != 3:  # older versions ignore dimension_order
        video = video.permute(0, 2, 3, 1)
    # torchcodec >= 0.11 applies the display rotation itself and reports it (counter-clockwise degrees) as
    # metadata.rotation; older versions neither apply nor expose it (frames are returned as stored, rotation 0).
    rotation = int(round(-(getattr(md, "rotation", None) or 0) / 90.0)) * 90 % 360
    video = video.contiguous()
    stamps = [float(p) - begin for p in batch.pts_seconds.tolist()]
    meta = VideoMetadata(
        timestamps=stamps,
        frame_indices=[int(round(t * src_fps)) for t in stamps],
        fps=src_fps,
        duration=duration,
        total_frames=total,
        width=int(video.shape[2]),
        height=int(video.shape[1]),
        rotation=rotation,
        backend="torchcodec",
        requested_timestamps=[float(t) for t in requested],
    )
    return video, meta
