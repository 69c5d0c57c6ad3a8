"""Tests for video and audio I/O: hf_videollm.media.video_read, .audio and .video_write (decoding and the writer).

Every test video is tiny (64x48) and encodes the frame index in its pixels: 8 vertical stripes of 8 px, stripe ``b``
white when bit ``b`` of the index is set. Decoding the stripes recovers the index robustly (also for lossy codecs).
"""

from __future__ import annotations

import io
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from media_helpers import STRIPES_H as H
from media_helpers import STRIPES_W as W
from media_helpers import stripes

from hf_videollm.media import (
    AudioDecodeError,
    VideoDecodeError,
    load_audio,
    load_video,
    track_decoding,
    video_read,
    write_video,
)


def ident(video: torch.Tensor) -> list[int]:
    """Frame indices encoded by :func:`stripes` (works on (T, H, W, 3) and on rotated-back frames)."""
    cols = video.float().mean(dim=(1, 3))  # (T, W)
    out = []
    for col in cols:
        out.append(sum(1 << b for b in range(8) if col[b * 8 : (b + 1) * 8].mean() > 128))
    return out


def make(tmp: Path, name: str, n: int = 120, fps: float = 10, gop: int = 24, crf: int = 0, **kw) -> Path:
    return write_video(tmp / name, np.stack([stripes(i) for i in range(n)]), fps, gop_size=gop, crf=crf, **kw)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("video_io")


@pytest.fixture(scope="module")
def mp4(tmp) -> Path:
    return make(tmp, "cfr.mp4")  # 120 frames, 10 fps, 12 s, keyframes every 24 frames, lossless


def expected_uniform(n: int, total: int = 120, fps: float = 10.0, start: float = 0.0, end: float | None = None):
    end = total / fps if end is None else end
    return [math.floor((start + (i + 0.5) * (end - start) / n) * fps + 1e-9) for i in range(n)]


# ----------------------------------------------------------------------------------------------------------------------
# exact sampling
# ----------------------------------------------------------------------------------------------------------------------


def test_exact_num_frames(mp4):
    video, meta = load_video(mp4, num_frames=8)
    exp = expected_uniform(8)
    assert video.dtype == torch.uint8 and video.shape == (8, H, W, 3)
    assert ident(video) == exp
    assert meta.frame_indices == exp
    assert meta.timestamps == pytest.approx([i / 10 for i in exp])
    assert meta.requested_timestamps == pytest.approx([(i + 0.5) * 12 / 8 for i in range(8)])
    assert (meta.fps, meta.duration, meta.total_frames) == (pytest.approx(10.0), pytest.approx(12.0), 120)
    assert (meta.width, meta.height, meta.rotation, meta.backend) == (W, H, 0, "pyav")


def test_exact_fps_and_window(mp4):
    video, meta = load_video(mp4, fps=2, start=2.0, end=5.0)
    assert meta.requested_timestamps == pytest.approx([2.25, 2.75, 3.25, 3.75, 4.25, 4.75])
    assert ident(video) == [22, 27, 32, 37, 42, 47] == meta.frame_indices
    # linspace: start + i / fps, first frame of the window included
    video, meta = load_video(mp4, fps=2, start=2.0, end=5.0, sampling="linspace")
    assert ident(video) == [20, 25, 30, 35, 40, 45]


def test_linspace_includes_first_and_last_frame(mp4):
    video, meta = load_video(mp4, num_frames=5, sampling="linspace")
    assert ident(video) == [0, 29, 59, 89, 119]
    assert meta.timestamps[0] == 0.0 and meta.timestamps[-1] == pytest.approx(11.9)


def test_targets_on_frame_boundaries_and_duplicates(mp4):
    # 24 targets on a 2.4 s window of 10 fps -> several targets per frame; every frame is the one containing it
    video, meta = load_video(mp4, num_frames=48, start=1.0, end=3.4)
    exp = [math.floor(t * 10 + 1e-9) for t in meta.requested_timestamps]
    assert ident(video) == exp == meta.frame_indices
    assert len(set(exp)) == 24


def test_max_frames_resamples_instead_of_truncating(mp4):
    video, meta = load_video(mp4, fps=10, max_frames=6)
    assert video.shape[0] == 6
    idx = ident(video)
    assert idx == sorted(idx) and idx[0] < 20 and idx[-1] > 100  # covers the whole video, tail included


def test_all_frames_and_cap(mp4):
    video, meta = load_video(mp4)
    assert ident(video) == list(range(120)) == meta.frame_indices
    video, meta = load_video(mp4, start=3.0, end=4.0)
    assert ident(video) == list(range(30, 40))
    video, meta = load_video(mp4, max_frames=10)
    assert ident(video) == [6, 18, 30, 42, 54, 66, 78, 90, 102, 114]


def test_bframes_lossy(tmp):
    path = make(tmp, "bframes.mp4", crf=18, options={"bf": "3"})
    with av.open(str(path)) as c:
        packets = [p for p in c.demux(c.streams.video[0]) if p.size]
        assert any(p.pts != p.dts for p in packets), "expected reordered (B-)frames"
    video, meta = load_video(path, num_frames=9)
    assert ident(video) == expected_uniform(9) == meta.frame_indices
    video, meta = load_video(path, num_frames=4, mode="keyframe")
    assert all(i % 24 == 0 for i in ident(video))
    assert meta.frame_indices == ident(video)


@pytest.mark.parametrize("ext", [".mkv", ".webm"])
def test_matroska_webm_without_frame_count(tmp, ext):
    path = make(tmp, "cfr" + ext)
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0  # header has no frame count
    video, meta = load_video(path, num_frames=8)
    assert ident(video) == expected_uniform(8) == meta.frame_indices
    assert meta.total_frames == 120 and meta.duration == pytest.approx(12.0) and meta.fps == pytest.approx(10.0)
    video, meta = load_video(path, num_frames=5, mode="keyframe")
    assert all(i % 24 == 0 for i in ident(video))


VFR_TS = [0.5 + x for x in np.cumsum([0.0] + [0.05, 0.15, 0.1, 0.3, 0.07] * 12)[:60]]


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".webm"])
def test_variable_frame_rate_and_start_offset(tmp, ext):
    path = make(tmp, "vfr" + ext, n=60, gop=12, timestamps=VFR_TS)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.start_time and s.start_time > 0  # first pts is 0.5 s
    rel = np.asarray(VFR_TS) - VFR_TS[0]
    video, meta = load_video(path, num_frames=10)
    exp = [int(np.searchsorted(rel, t + 1e-9, side="right") - 1) for t in meta.requested_timestamps]
    assert ident(video) == exp == meta.frame_indices
    assert meta.timestamps == pytest.approx(rel[exp].tolist(), abs=2e-3)
    assert meta.total_frames == 60
    # duration = last frame start + its duration (the writer gives the last frame a 1/fps = 0.1 s duration or so)
    assert rel[-1] < meta.duration < rel[-1] + 0.2
    assert meta.fps == pytest.approx(60 / meta.duration, rel=1e-6)
    video, meta = load_video(path, fps=1.0)
    exp = [int(np.searchsorted(rel, t + 1e-9, side="right") - 1) for t in meta.requested_timestamps]
    assert ident(video) == exp


def test_constant_rate_with_start_offset(tmp):
    path = make(tmp, "offset.mp4", n=50, timestamps=[2.0 + i / 10 for i in range(50)])
    video, meta = load_video(path, num_frames=5)
    assert ident(video) == [5, 15, 25, 35, 45] == meta.frame_indices
    assert meta.timestamps == pytest.approx([0.5, 1.5, 2.5, 3.5, 4.5], abs=1e-3)
    assert meta.duration == pytest.approx(5.0, abs=0.02)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_is_applied(tmp, rotation):
    img = np.zeros((H, W, 3), np.uint8)
    img[:8, :8] = (255, 0, 0)  # red marker in the top-left corner of the stored frame
    path = write_video(tmp / f"rot{rotation}.mp4", np.stack([img] * 5), 5, crf=0, rotation=rotation)
    video, meta = load_video(path, num_frames=1)
    assert meta.rotation == rotation
    expect_hw = (W, H) if rotation in (90, 270) else (H, W)
    assert video.shape[1:3] == expect_hw and (meta.height, meta.width) == expect_hw
    red = (video[0, ..., 0] > 200) & (video[0, ..., 1] < 80)
    ys, xs = torch.nonzero(red, as_tuple=True)
    top = ys.float().mean() < expect_hw[0] / 2
    left = xs.float().mean() < expect_hw[1] / 2
    # clockwise rotation moves the top-left corner to: 90 -> top-right, 180 -> bottom-right, 270 -> bottom-left
    assert (bool(top), bool(left)) == {90: (True, False), 180: (False, False), 270: (False, True)}[rotation]



def test_on_frame_reports_every_row_while_decoding(mp4, tmp):
    """load_video(on_frame=): each output row (upright, the bytes returned) as soon as it is decoded, in time order,
    a frame shared by several targets once per row; rotated videos report the upright frame."""
    seen = []
    with track_decoding() as stats:
        video, _ = load_video(mp4, num_frames=48, start=1.0, end=3.4,  # several targets per frame
                              on_frame=lambda i, f, n: seen.append((i, f.copy(), n, stats.frames_decoded)))
    assert [i for i, *_ in seen] == list(range(48)) and {n for _, _, n, _ in seen} == {48}
    assert all(np.array_equal(f, video[i].numpy()) for i, f, _, _ in seen)
    assert seen[0][3] < stats.frames_decoded  # the first row came before the decoder had reached the last one
    img = np.zeros((H, W, 3), np.uint8)
    img[:8, :8] = 255
    path = write_video(tmp / "rot90_on_frame.mp4", np.stack([img] * 5), 5, crf=0, rotation=90)
    rows = []
    video, meta = load_video(path, num_frames=3, on_frame=lambda i, f, n: rows.append(f.copy()))
    assert meta.rotation == 90 and rows[0].shape == (W, H, 3)
    assert all(np.array_equal(f, v) for f, v in zip(rows, video.numpy(), strict=True))

# ----------------------------------------------------------------------------------------------------------------------
# keyframe mode and seeking
# ----------------------------------------------------------------------------------------------------------------------


def test_keyframe_mode_true_timestamps(mp4):
    with track_decoding() as stats:
        video, meta = load_video(mp4, num_frames=5, mode="keyframe", start=0.0, end=10.0)
    idx = ident(video)
    # targets 1, 3, 5, 7, 9 s -> frames 10, 30, 50, 70, 90 -> nearest keyframes (every 24 frames)
    assert idx == [0, 24, 48, 72, 96] == meta.frame_indices
    assert meta.timestamps == pytest.approx([i / 10 for i in idx])
    assert stats.frames_decoded == 5  # one decoded frame per keyframe


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".webm"])
def test_exact_mode_seeks_instead_of_decoding_everything(tmp, ext):
    path = make(tmp, "long_gop" + ext, n=600, fps=30, gop=100)  # 20 s, 6 keyframes
    with track_decoding() as stats:
        video, meta = load_video(path, num_frames=3)
    assert ident(video) == [f % 256 for f in meta.frame_indices] and meta.frame_indices == [100, 300, 500]
    # targets 10/3, 10, 50/3 s lie exactly on frames 100, 300, 500 (keyframes); Matroska stores 1 ms timestamps
    # (frame 500 at 16.667 s), the target rounds to the nearest tick so every container returns the same frames.
    # Each target needs its keyframe + decoder look-ahead only; the whole video is 600 frames.
    assert stats.seeks == 3
    assert stats.frames_decoded < 30
    # two targets inside the same GOP: one seek, decoding continues forward
    with track_decoding() as stats:
        video, meta = load_video(path, num_frames=2, start=3.4, end=6.4)
    assert meta.frame_indices == [124, 169] and stats.seeks == 1


def test_all_frames_refuses_huge_results(mp4, monkeypatch):
    monkeypatch.setattr(video_read, "ALL_FRAMES_MAX_BYTES", 100 * W * H * 3)
    with pytest.raises(VideoDecodeError, match="max_frames"):
        load_video(mp4)
    assert load_video(mp4, max_frames=100)[0].shape[0] == 100


def test_sources_path_bytes_filelike_identical(mp4):
    ref_v, ref_m = load_video(mp4, num_frames=7)
    data = mp4.read_bytes()

    class NonSeekable(io.RawIOBase):
        def __init__(self, payload):
            self._b = io.BytesIO(payload)

        def readable(self):
            return True

        def readinto(self, b):
            return self._b.readinto(b)

    with open(mp4, "rb") as fh:
        fh.read(10)  # a non-zero position must not matter and is restored
        v_fh, m_fh = load_video(fh, num_frames=7)
        assert fh.tell() == 10
    for v, m in [
        load_video(str(mp4), num_frames=7),
        load_video(data, num_frames=7),
        (v_fh, m_fh),
        load_video(io.BytesIO(data), num_frames=7),
        load_video(NonSeekable(data), num_frames=7),
    ]:
        assert torch.equal(v, ref_v) and m == ref_m


def test_matches_transformers_load_video(mp4):
    from transformers.video_utils import load_video as hf_load_video

    # transformers samples indices arange(n) * total // n (segment starts, decoding from frame 0);
    # sampling="linspace" with fps=2 gives targets i / 2 s -> frames 0, 5, 10, ... = transformers with n = 24.
    hf_video, hf_meta = hf_load_video(str(mp4), num_frames=24, backend="pyav")
    ours, meta = load_video(mp4, fps=2, sampling="linspace")
    assert list(map(int, hf_meta.frames_indices)) == meta.frame_indices == list(range(0, 120, 5))
    assert torch.equal(ours, torch.from_numpy(hf_video))
    # our default uniform rule takes segment midpoints: shifted by total / (2n) frames
    ours, meta = load_video(mp4, num_frames=12)
    hf_video, hf_meta = hf_load_video(str(mp4), num_frames=12, backend="pyav")
    assert meta.frame_indices == [int(i) + 5 for i in hf_meta.frames_indices]


# ----------------------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp, mp4) -> dict:
    data = mp4.read_bytes()
    files = {}
    files["empty"] = tmp / "empty.mp4"
    files["empty"].write_bytes(b"")
    files["random"] = tmp / "random.mp4"
    files["random"].write_bytes(np.random.default_rng(0).bytes(20000))
    files["text"] = tmp / "notes.mp4"
    files["text"].write_text("this is not a video\n" * 50)
    files["trunc_mp4"] = tmp / "trunc.mp4"
    files["trunc_mp4"].write_bytes(data[: len(data) // 2])
    mkv = make(tmp, "trunc_src.mkv")
    files["trunc_mkv"] = tmp / "trunc.mkv"
    files["trunc_mkv"].write_bytes(mkv.read_bytes()[: mkv.stat().st_size // 2])
    # a WAV file (audio only)
    files["wav"] = tmp / "tone.wav"
    with av.open(str(files["wav"]), "w") as c:
        s = c.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1600), np.int16), format="s16", layout="mono")
        frame.sample_rate = 16000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    # intact container, but every video packet payload zeroed: no decodable frame
    with av.open(str(mp4)) as c:
        ie = c.streams.video[0].index_entries
        ranges = [(ie[i].pos, ie[i].size) for i in range(len(ie))]
    payload = bytearray(data)
    for pos, size in ranges:
        payload[pos : pos + size] = bytes(size)
    files["no_frames"] = tmp / "no_frames.mp4"
    files["no_frames"].write_bytes(bytes(payload))
    return files


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("empty", "empty"),
        ("empty_bytes", "empty"),
        ("random", "could not be opened"),
        ("random_bytes", "could not be opened"),
        ("text", "could not be opened"),
        ("trunc_mp4", "could not be opened"),
        ("trunc_mkv", "truncated"),
        ("wav", "no video stream"),
        ("no_frames", "no decodable frames"),
    ],
)
@pytest.mark.parametrize("mode", ["exact", "keyframe"])
def test_bad_inputs_raise(bad_files, tmp, case, message, mode):
    if case == "missing":
        source = tmp / "does_not_exist.mp4"
    elif case == "empty_bytes":
        source = b""
    elif case == "random_bytes":
        source = bad_files["random"].read_bytes()
    else:
        source = bad_files[case]
    with pytest.raises(VideoDecodeError, match=message) as info:
        load_video(source, num_frames=4, mode=mode)
    if isinstance(source, Path):
        assert source.name in str(info.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_frames": 0}, "num_frames must be a positive integer"),
        ({"num_frames": -3}, "num_frames must be a positive integer"),
        ({"fps": 0}, "fps must be a positive"),
        ({"fps": -1.5}, "fps must be a positive"),
        ({"num_frames": 4, "fps": 1}, "either num_frames or fps"),
        ({"num_frames": 4, "start": 5, "end": 5}, "must be smaller than end"),
        ({"num_frames": 4, "start": 30}, "beyond the end"),
        ({"num_frames": 4, "start": -1}, "start must be"),
        ({"num_frames": 4, "mode": "fast"}, "mode must be"),
        ({"num_frames": 4, "sampling": "random"}, "sampling must be"),
        ({"num_frames": 4, "max_frames": 0}, "max_frames must be"),
        ({"num_frames": 4, "backend": "decord"}, "backend must be"),
    ],
)
def test_bad_arguments_raise(mp4, kwargs, message):
    with pytest.raises(VideoDecodeError, match=message):
        load_video(mp4, **kwargs)


def test_torchcodec_backend_missing_is_clear(mp4):
    if video_read._torchcodec_available():
        pytest.skip("torchcodec is installed")
    with pytest.raises(VideoDecodeError, match="torchcodec") as info:
        load_video(mp4, num_frames=2, backend="torchcodec")
    assert isinstance(info.value, ImportError) and "pip install torchcodec" in str(info.value)
    _, meta = load_video(mp4, num_frames=2, backend="auto")  # falls back to PyAV
    assert meta.backend == "pyav"


# ----------------------------------------------------------------------------------------------------------------------
# audio
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tone():
    sr = 16000
    t = np.arange(3 * sr) / sr
    return (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def dominant_hz(wave: torch.Tensor, sr: int) -> float:
    spec = torch.fft.rfft(wave * torch.hann_window(len(wave)))
    return spec.abs().argmax().item() * sr / len(wave)


@pytest.mark.parametrize("ext", [".mp4", ".webm"])
def test_load_audio_tone(tmp, tone, ext):
    frames = np.stack([stripes(i) for i in range(30)])
    path = write_video(tmp / f"tone{ext}", frames, 10, audio=tone, audio_rate=16000)
    wave, sr = load_audio(path)
    assert sr == 16000 and wave.dtype == torch.float32 and wave.ndim == 1
    assert abs(len(wave) - 48000) <= (0 if ext == ".mp4" else 160)
    assert dominant_hz(wave, sr) == pytest.approx(440.0, abs=2.0)
    assert 0.4 < wave.abs().max() < 0.6
    wave8k, sr8k = load_audio(path, sampling_rate=8000, start=1.0, end=2.5)
    assert sr8k == 8000 and abs(len(wave8k) - 12000) <= 1
    assert dominant_hz(wave8k, sr8k) == pytest.approx(440.0, abs=3.0)
    multi, _ = load_audio(path.read_bytes(), mono=False)
    assert multi.ndim == 2 and multi.shape[0] == 1
    video, meta = load_video(path, num_frames=3)  # the audio track does not disturb video decoding
    assert ident(video) == [5, 15, 25] and meta.duration == pytest.approx(3.0)


def test_load_audio_stereo(tmp):
    sr = 16000
    t = np.arange(2 * sr) / sr
    stereo = np.stack([0.4 * np.sin(2 * np.pi * 300.0 * t), 0.4 * np.sin(2 * np.pi * 1000.0 * t)]).astype(np.float32)
    path = write_video(tmp / "stereo.mkv", np.stack([stripes(i) for i in range(20)]), 10, audio=stereo)
    wave, sr_out = load_audio(path, mono=False)
    assert wave.shape == (2, 2 * sr) or abs(wave.shape[1] - 2 * sr) <= 1024
    assert dominant_hz(wave[0], sr_out) == pytest.approx(300.0, abs=2.0)
    assert dominant_hz(wave[1], sr_out) == pytest.approx(1000.0, abs=2.0)
    mono, _ = load_audio(path)
    assert mono.ndim == 1 and mono.shape[0] == wave.shape[1]


def test_load_audio_errors(mp4, tmp):
    with pytest.raises(AudioDecodeError, match="no audio stream"):
        load_audio(mp4)
    with pytest.raises(AudioDecodeError, match="does not exist"):
        load_audio(tmp / "nope.wav")
    with pytest.raises(VideoDecodeError, match="could not be opened"):
        load_audio(b"\x00\x01garbage" * 100)
    with pytest.raises(AudioDecodeError, match="sampling_rate"):
        load_audio(mp4, sampling_rate=0)


# ----------------------------------------------------------------------------------------------------------------------
# writer
# ----------------------------------------------------------------------------------------------------------------------


def test_write_video_iterable_and_errors(tmp):
    path = write_video(tmp / "gen.mp4", (stripes(i) for i in range(20)), 10, crf=0)
    video, meta = load_video(path)
    assert ident(video) == list(range(20))
    with pytest.raises(ValueError, match="even"):
        write_video(tmp / "odd.mp4", np.zeros((2, 47, 63, 3), np.uint8), 10)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp / "float.mp4", np.zeros((2, 48, 64, 3), np.float32), 10)
    assert not (tmp / "float.mp4").exists()
    odd = write_video(tmp / "odd444.mp4", np.zeros((2, 47, 63, 3), np.uint8), 10, pix_fmt="yuv444p")
    assert load_video(odd)[0].shape == (2, 47, 63, 3)


@pytest.mark.parametrize("fps", [np.float32(12.0), Fraction(24000, 1001), "source"])
def test_write_video_takes_any_real_fps(tmp_path, mp4, fps):
    """A rate read back from PyAV (a Fraction; PyAV 19 never gives None) or a NumPy scalar writes a video at that rate."""
    if fps == "source":
        with av.open(str(mp4)) as c:
            fps = c.streams.video[0].average_rate
    frames = np.zeros((6, 16, 16, 3), dtype=np.uint8)
    out = write_video(tmp_path / "out.mp4", frames, fps)
    with av.open(str(out)) as c:
        assert c.streams.video[0].average_rate == Fraction(float(fps)).limit_denominator(100_000)
    _, meta = load_video(out, num_frames=6)
    assert meta.total_frames == 6 and meta.fps == pytest.approx(float(fps), rel=1e-3)


@pytest.mark.parametrize("fps", [True, "24", None, float("nan"), float("inf")])
def test_write_video_refuses_a_non_number_fps(tmp_path, fps):
    with pytest.raises(ValueError, match="fps must be a positive number"):
        write_video(tmp_path / "out.mp4", np.zeros((2, 16, 16, 3), dtype=np.uint8), fps)
