"""load_video(decode_threads=): decoding the sampled frames in several threads gives exactly the serial result.

Synthetic videos with short GOPs (so that one request spans many keyframe intervals = seeks); every frame encodes its
index in 8 vertical stripes (as tests/test_video_io.py). Each case decodes with ``decode_threads=1`` (serial) and
with 2-3 threads, checks that the threads really ran (no silent fall back), and compares frames (bytes), metadata and
``on_frame`` calls.
"""

from __future__ import annotations

import io
import threading
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from media_helpers import STRIPES_H as H
from media_helpers import STRIPES_W as W
from media_helpers import stripes as _stripes

from hf_videollm.media import VideoDecodeError, load_video, video_read, write_video


def stripes(i: int) -> np.ndarray:
    return _stripes(i, marker=True)  # the red corner shows rotation


def ident(video: torch.Tensor) -> list[int]:
    cols = video.float().mean(dim=(1, 3))
    return [sum(1 << b for b in range(8) if col[b * 8 : (b + 1) * 8].mean() > 128) for col in cols]


def make(tmp: Path, name: str, n: int = 120, fps: float = 10, gop: int = 6, **kw) -> Path:
    return write_video(tmp / name, np.stack([stripes(i) for i in range(n)]), fps, gop_size=gop, **kw)


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("video_parallel")


@pytest.fixture(scope="module")
def videos(tmp) -> dict[str, Path]:
    vfr = [0.5 + 0.1 * i + (0.05 if i % 7 == 3 else 0.0) for i in range(90)]  # start offset, uneven gaps
    return {
        "mp4": make(tmp, "cfr.mp4", crf=0),  # complete MP4 index: frame indices from FFmpeg's index
        "mp4_bframes": make(tmp, "bframes.mp4", crf=18, options={"bf": "2"}),  # lossy, reordered frames
        "mkv": make(tmp, "cfr.mkv", crf=0),  # no frame count: a packet scan gives every pts
        "webm": make(tmp, "cfr.webm", n=60, gop=5),  # VP9
        "vfr_mkv": make(tmp, "vfr.mkv", n=90, crf=0, timestamps=vfr),
        "rot90": make(tmp, "rot90.mp4", crf=0, rotation=90),
    }


class Spy:
    """Counts decode threads started and parallel attempts that fell back to the serial path."""

    def __init__(self, monkeypatch):
        self.groups = 0
        self.fallbacks = 0
        group, parallel = video_read._decode_group, video_read._decode_parallel

        def spy_group(*args):
            self.groups += 1
            return group(*args)

        def spy_parallel(*args, **kw):
            result, emitted = parallel(*args, **kw)
            self.fallbacks += result is None
            return result, emitted

        monkeypatch.setattr(video_read, "_decode_group", spy_group)
        monkeypatch.setattr(video_read, "_decode_parallel", spy_parallel)


def both(source, threads=3, **kw):
    """(serial, parallel) results, each ``(frames, meta, on_frame calls)``."""
    out = []
    for n in (1, threads):
        calls: list = []

        def record(i, f, c, calls=calls):
            calls.append((i, f.copy(), c, threading.get_ident()))

        video, meta = load_video(source, decode_threads=n, on_frame=record, **kw)
        out.append((video, meta, calls))
    return out


def assert_identical(serial, parallel):
    (v1, m1, c1), (v2, m2, c2) = serial, parallel
    assert v1.dtype == v2.dtype and v1.shape == v2.shape and torch.equal(v1, v2)
    assert asdict(m1) == asdict(m2)
    assert [(i, n) for i, _, n, _ in c1] == [(i, n) for i, _, n, _ in c2]  # same rows, same (time) order
    assert all(np.array_equal(a, b) for (_, a, _, _), (_, b, _, _) in zip(c1, c2, strict=True))
    assert {t for *_, t in c2} == {threading.get_ident()}  # on_frame runs on the caller's thread


@pytest.mark.parametrize("name", ["mp4", "mp4_bframes", "mkv", "webm", "vfr_mkv", "rot90"])
@pytest.mark.parametrize(
    "kw",
    [
        {"num_frames": 16},
        {"num_frames": 9, "sampling": "index_midpoints", "start": 1.3, "end": 8.1},
        {"fps": 2.0, "sampling": "linspace"},
        {"num_frames": 40, "start": 0.0, "end": 3.0},  # more targets than frames: duplicates in every interval
    ],
    ids=["uniform16", "window", "fps_linspace", "duplicates"],
)
def test_threads_give_the_serial_result(videos, name, kw, monkeypatch):
    spy = Spy(monkeypatch)
    serial, parallel = both(videos[name], **kw)
    assert spy.groups >= 2 and spy.fallbacks == 0  # the threads really decoded
    assert_identical(serial, parallel)
    frames, meta, _ = parallel
    assert ident(video_read._apply_rotation(frames, -meta.rotation % 360))[: len(meta.frame_indices)] == [
        f % 256 for f in meta.frame_indices
    ]
    if name == "rot90":
        assert meta.rotation == 90 and frames.shape[1:3] == (W, H)


def test_all_frames_and_bytes_source(videos, monkeypatch):
    spy = Spy(monkeypatch)
    serial, parallel = both(videos["mkv"])  # every frame of the window
    assert spy.groups >= 2 and spy.fallbacks == 0
    assert_identical(serial, parallel)
    assert ident(parallel[0]) == list(range(120))
    data = videos["mp4"].read_bytes()
    serial, parallel = both(data, threads=2, num_frames=20)
    assert_identical(serial, parallel)
    for other in (bytearray(data), memoryview(data)):
        assert_identical(serial, both(other, threads=2, num_frames=20)[1])
    assert spy.fallbacks == 0


def test_when_threads_are_used(videos, monkeypatch):
    """Too few keyframe intervals per thread, keyframe mode and file objects stay serial (same result)."""
    spy = Spy(monkeypatch)
    path = videos["mp4"]
    # 3 targets in 3 intervals: fewer than MIN_SEEKS_PER_THREAD intervals per thread
    assert torch.equal(
        load_video(path, num_frames=3, decode_threads=4)[0], load_video(path, num_frames=3, decode_threads=1)[0]
    )
    # 16 targets, all inside the first keyframe interval
    load_video(path, num_frames=16, end=0.6, decode_threads=4)
    load_video(path, num_frames=16, mode="keyframe", decode_threads=4)
    with open(path, "rb") as f:
        v_file, m_file = load_video(f, num_frames=16, decode_threads=4)
    assert spy.groups == 0
    v_path, m_path = load_video(path, num_frames=16, decode_threads=4)
    assert spy.groups == 4  # 20 intervals: 4 threads of 5
    assert torch.equal(v_file, v_path) and asdict(m_file) == asdict(m_path)
    load_video(path, num_frames=16, decode_threads=2)
    assert spy.groups == 6
    # the default follows torch's thread count (capped)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    load_video(path, num_frames=16)
    assert spy.groups == 6 + video_read.MAX_DECODE_THREADS
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    load_video(path, num_frames=16)
    assert spy.groups == 6 + video_read.MAX_DECODE_THREADS


def test_groups_cut_between_keyframe_intervals(videos):
    """Each thread gets whole keyframe intervals (a frame is never decoded by two threads), rows in time order."""
    import av

    with av.open(str(videos["mp4"])) as c:
        reader = video_read._PyAVReader(c, c.streams.video[0], "x")
        info = reader.probe("exact", need_scan=True)
        targets = [reader.sec_to_pts(t) for t in np.linspace(0.05, 11.95, 37)][::-1]  # rows in reverse time order
        order = sorted(range(len(targets)), key=lambda i: targets[i])
        groups = video_read._plan_groups(info, targets, order, 3)
        assert [i for g in groups for i in g] == order and len(groups) == 3
        keys = [{info.keys.key_at_or_before(targets[i]) for i in g} for g in groups]
        assert all(not (a & b) for a in keys for b in keys if a is not b)
        assert [len(k) for k in keys] in ([7, 6, 7], [6, 7, 7], [7, 7, 6])
        assert video_read._plan_groups(info, targets, order, 1) is None


def fail_in_thread(monkeypatch, thread: int, at_frame: int) -> None:
    """Decode thread ``thread`` raises (a forced failure) at its ``at_frame``-th frame."""
    frame_at = video_read._PyAVReader.frame_at
    seen = {"n": 0}

    def flaky(self, target):
        if threading.current_thread().name == f"load_video-decode-{thread}":
            seen["n"] += 1
            if seen["n"] == at_frame:
                raise RuntimeError("forced failure")
        return frame_at(self, target)

    monkeypatch.setattr(video_read._PyAVReader, "frame_at", flaky)


def test_a_failing_thread_falls_back_to_serial(videos, monkeypatch):
    """A thread that fails (here: forced) makes load_video decode serially: same result, each row reported to
    on_frame exactly once and in time order, also when some rows were reported before the failure."""
    spy = Spy(monkeypatch)
    fail_in_thread(monkeypatch, 1, at_frame=3)
    path = videos["mkv"]
    calls = []
    video, meta = load_video(
        path, num_frames=30, decode_threads=3, on_frame=lambda i, f, n: calls.append((i, f.copy()))
    )
    assert spy.groups == 3 and spy.fallbacks == 1
    ref, ref_meta = load_video(path, num_frames=30, decode_threads=1)
    assert torch.equal(video, ref) and asdict(meta) == asdict(ref_meta)
    assert [i for i, _ in calls] == list(range(30))
    assert all(np.array_equal(f, ref[i].numpy()) for i, f in calls)


def test_on_frame_any_order_reports_later_groups_while_earlier_ones_decode(videos, monkeypatch):
    """on_frame_order="any": a row is reported as soon as it is decoded -- here group 0 is slowed down, so rows of
    groups 1-2 are reported before group 0's last row (with "time" they wait for it); every row exactly once, the
    result's bytes, on the caller's thread; the result itself is the serial one."""
    import time

    spy = Spy(monkeypatch)
    frame_at = video_read._PyAVReader.frame_at

    def slow_group0(self, target):
        if threading.current_thread().name == "load_video-decode-0":
            time.sleep(0.02)
        return frame_at(self, target)

    monkeypatch.setattr(video_read._PyAVReader, "frame_at", slow_group0)
    for name in ("mkv", "rot90"):
        path = videos[name]
        ref, ref_meta = load_video(path, num_frames=30, decode_threads=1)
        order = sorted(range(30), key=lambda i: ref_meta.timestamps[i])
        for how in ("any", "time"):
            calls = []
            video, meta = load_video(path, num_frames=30, decode_threads=3, on_frame_order=how,
                                     on_frame=lambda i, f, n, calls=calls: calls.append((i, f.copy(), n, threading.get_ident())))
            assert torch.equal(video, ref) and asdict(meta) == asdict(ref_meta)
            rows = [i for i, *_ in calls]
            assert sorted(rows) == list(range(30)) and {n for _, _, n, _ in calls} == {30}
            assert all(np.array_equal(f, ref[i].numpy()) for i, f, *_ in calls)
            assert {t for *_, t in calls} == {threading.get_ident()}
            if how == "time":
                assert rows == order
            else:
                assert rows.index(order[-1]) < rows.index(order[5])  # group 2 was reported before group 0 finished
    assert spy.groups == 12 and spy.fallbacks == 0


@pytest.mark.parametrize("cpus", [1, 64])
def test_on_frame_any_order_waits_for_a_free_cpu(videos, monkeypatch, cpus):
    """on_frame_order="any" while the decode threads take every available CPU: rows are handed over only once the
    first decode thread is done (the consumer would slow the decoders down before); with spare CPUs, at once."""
    import time

    done: list[float] = []
    group = video_read._decode_group

    class Events:  # the threads' event queue, noting when a thread reports that it is done
        def __init__(self, q):
            self.q = q

        def put(self, event):
            if event[0] == "done":
                done.append(time.perf_counter())
            self.q.put(event)

    def spy_group(*args):
        return group(*args[:9], Events(args[9]), *args[10:])

    frame_at = video_read._PyAVReader.frame_at

    def slow(self, target):  # every thread is slow after its first row: each takes >= 0.1 s
        if self.prev is not None:
            time.sleep(0.02)
        return frame_at(self, target)

    monkeypatch.setattr(video_read, "_decode_group", spy_group)
    monkeypatch.setattr(video_read._PyAVReader, "frame_at", slow)
    monkeypatch.setattr(video_read, "_available_cpus", lambda: cpus)
    calls: list[float] = []
    video, _ = load_video(videos["mkv"], num_frames=30, decode_threads=3, on_frame_order="any",
                          on_frame=lambda i, f, n: calls.append(time.perf_counter()))
    assert len(calls) == 30 and len(done) == 3
    if cpus == 1:
        assert min(calls) > min(done)  # held until a thread was done
    else:
        assert min(calls) < min(done)  # group 0's first row at once
    assert torch.equal(video, load_video(videos["mkv"], num_frames=30, decode_threads=1)[0])


def test_on_frame_any_order_and_a_failing_thread(videos, monkeypatch):
    """A thread fails after rows of several groups were reported out of time order: the serial redo reports only
    the other rows, so every row is reported exactly once, with the serial bytes."""
    spy = Spy(monkeypatch)
    fail_in_thread(monkeypatch, 2, at_frame=4)
    path = videos["mkv"]
    calls = []
    video, meta = load_video(path, num_frames=30, decode_threads=3, on_frame_order="any",
                             on_frame=lambda i, f, n: calls.append((i, f.copy())))
    assert spy.groups == 3 and spy.fallbacks == 1
    ref, ref_meta = load_video(path, num_frames=30, decode_threads=1)
    assert torch.equal(video, ref) and asdict(meta) == asdict(ref_meta)
    assert sorted(i for i, _ in calls) == list(range(30))
    assert all(np.array_equal(f, ref[i].numpy()) for i, f in calls)


def test_on_frame_order_must_be_known(videos):
    with pytest.raises(VideoDecodeError, match="on_frame_order must be 'time' or 'any'"):
        load_video(videos["mp4"], num_frames=4, on_frame_order="random")


def test_damaged_data_gives_the_serial_error(tmp):
    """A truncated file: the threads' attempt is dropped, the error is the serial one."""
    src = make(tmp, "long.mkv", n=240, crf=0)
    cut = tmp / "cut.mkv"
    data = src.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    errors = []
    for n in (1, 3):
        with pytest.raises(VideoDecodeError) as exc:
            load_video(cut, num_frames=16, decode_threads=n)
        errors.append(str(exc.value))
    assert errors[0] == errors[1] and "truncated" in errors[0]


def test_damaged_packets_are_redone_serially(tmp, monkeypatch, caplog):
    """Undecodable packets in the middle: the threads' attempt is dropped, the result, the count of damaged packets
    and the warning (logged once) are the serial ones."""
    import av

    src = make(tmp, "damaged_src.mp4", crf=0)
    data = bytearray(src.read_bytes())
    with av.open(str(src)) as c:
        ie = c.streams.video[0].index_entries
        for k in (60, 61, 62):  # a keyframe and the frames after it
            data[ie[k].pos + 4 : ie[k].pos + ie[k].size] = b"\xff" * (ie[k].size - 4)
    path = tmp / "damaged.mp4"
    path.write_bytes(bytes(data))
    spy = Spy(monkeypatch)
    results = []
    for n in (1, 3):
        caplog.clear()
        results.append(load_video(path, num_frames=16, decode_threads=n))
        assert len([r for r in caplog.records if "could not be decoded" in r.getMessage()]) == 1
    assert spy.groups == 3 and spy.fallbacks == 1
    (v1, m1), (v2, m2) = results
    assert torch.equal(v1, v2) and asdict(m1) == asdict(m2) and m1.corrupt_packets > 0


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_decode_threads_must_be_a_positive_int(videos, bad):
    with pytest.raises(VideoDecodeError, match="decode_threads must be a positive integer"):
        load_video(videos["mp4"], num_frames=4, decode_threads=bad)


def test_file_object_position_is_kept(videos):
    data = videos["mp4"].read_bytes()
    f = io.BytesIO(data)
    f.seek(5)
    load_video(f, num_frames=16, decode_threads=3)
    assert f.tell() == 5


def test_qwen2vl_rows_made_while_decoding_in_threads(tmp, monkeypatch):
    """The Qwen2-VL processor's decode-time pipeline (load_video on_frame) on threads-decoded frames gives the bytes
    of the serial decoder followed by the usual pass."""
    from hf_videollm.processors import qwen2vl
    from hf_videollm.tiny import QWEN2VL_SPECIAL_TOKENS, build_tiny, tiny_tokenizer

    tok = tiny_tokenizer()
    tok.add_tokens(list(QWEN2VL_SPECIAL_TOKENS), special_tokens=True)
    _, processor = build_tiny("qwen2_vl", seed=0, tokenizer=tok, text_config={"vocab_size": len(tok) + 2})
    rng = np.random.default_rng(3)
    frames = np.clip(rng.integers(0, 256, (1, 96, 160, 3)) + np.arange(80)[:, None, None, None] * 3, 0, 255)
    path = str(write_video(tmp / "qwen_ramp.mp4", frames.astype(np.uint8), fps=10, crf=0, gop_size=4))
    settings = {k: getattr(processor, k) for k in type(processor)._all_settings}
    proc = type(processor)(
        processor.tokenizer, **{**settings, "video_max_pixels": 64 * 28 * 28, "min_frames": 2, "max_visual_tokens": 60}
    )
    text = ["<|video_pad|> a", "<|video_pad|> b"]
    spy = Spy(monkeypatch)
    used = []
    result = qwen2vl._FramePipeline.result
    monkeypatch.setattr(qwen2vl._FramePipeline, "result", lambda self, *a: used.append(result(self, *a)) or used[-1])
    threads_before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        fast = proc(text=text, videos=[path, path])
        assert spy.groups >= 4 and spy.fallbacks == 0  # both videos decoded in threads
        assert len(used) == 2 and all(u is not None for u in used)  # ... and their rows made while decoding
        torch.set_num_threads(1)
        monkeypatch.setattr(qwen2vl, "_FramePipeline", lambda *a: None)
        usual = proc(text=text, videos=[path, path])
    finally:
        torch.set_num_threads(threads_before)
    for key in ("pixel_values_videos", "video_grid_thw", "video_second_per_grid", "input_ids"):
        assert torch.equal(fast[key], usual[key]), key
