"""Prototype (issue 14 item 6): decode-only time of the 60 s 720p bench video (GOP 250) with PyAV frame threads,
one thread, and two keyframe ranges decoded by one single-threaded decoder each (two containers, two Python
threads: PyAV releases the GIL while decoding). Every 15th frame is converted to RGB, as 2 fps sampling does.
Alternating, medians of 3. Run after bench/bench_qwen2vl.py has generated the video:

    python bench/proto_gop_parallel_decode.py
"""

from __future__ import annotations

import os
import statistics
import threading
import time

import av

PATH = "/tmp/hf_videollm_bench/bench_60s_1280x720_30fps_gop250_ultrafast.mp4"
FPS = 30


def decode(lo: int, hi: int, thread_type: str, thread_count: int) -> None:
    """Decode frames [lo, hi) (lo on a keyframe), converting every 15th to RGB."""
    with av.open(PATH) as c:
        s = c.streams.video[0]
        s.codec_context.thread_type = thread_type
        if thread_count:
            s.codec_context.thread_count = thread_count
        if lo:
            c.seek(int(lo / FPS / s.time_base), stream=s)
        for f in c.decode(s):
            i = round(f.pts * s.time_base * FPS)
            if i >= hi:
                break
            if i % 15 == 7:
                f.to_ndarray(format="rgb24")


def two_ranges() -> None:
    other = threading.Thread(target=decode, args=(0, 1000, "SLICE", 1))
    other.start()
    decode(1000, 1800, "SLICE", 1)
    other.join()


def main() -> None:
    variants = {
        "frame threads (auto)": lambda: decode(0, 1800, "AUTO", 0),
        "frame threads (2)": lambda: decode(0, 1800, "FRAME", 2),
        "one thread": lambda: decode(0, 1800, "SLICE", 1),
        "2 GOP ranges x 1 thread": two_ranges,
    }
    res: dict[str, list[tuple[float, float, float]]] = {}
    for _ in range(3):
        for name, fn in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            res.setdefault(name, []).append((time.perf_counter() - t0, time.process_time() - c0, os.getloadavg()[0]))
    for name, runs in res.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        each = " ".join(f"{w:.2f}/{c:.2f}@{load:.1f}" for w, c, load in runs)
        print(f"{name:24s} median wall {wall:.2f} s, CPU {cpu:.2f} s | wall/CPU@load: {each}")


if __name__ == "__main__":
    main()
