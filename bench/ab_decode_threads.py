"""A/B in one process: ``load_video(path, num_frames=16)`` with ``decode_threads=1`` (serial) vs the default (threads),
alternating, the order flipped every repeat; prints medians, the median per-pair ratio and the load average.

    python3 bench/ab_decode_threads.py 12        # the bench_e2e video (made by bench_e2e.py / bench_load_video.py)
    python3 bench/ab_decode_threads.py 12 --video other.mp4 --frames 32 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hf_videollm.media import load_video  # noqa: E402

DEFAULT_VIDEO = "/tmp/speed_e2e/bench_600s_1280x720_30fps_gop250_ultrafast.mp4"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("repeats", type=int)
    p.add_argument("--video", default=DEFAULT_VIDEO)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the default decode_threads follows them)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    arms = [1, None]
    res: dict = {a: [] for a in arms}
    print("load before", os.getloadavg())
    for r in range(args.repeats):
        for a in arms if r % 2 == 0 else arms[::-1]:
            t0 = time.perf_counter()
            load_video(args.video, num_frames=args.frames, decode_threads=a)
            res[a].append(time.perf_counter() - t0)
    pairs = [b / a for a, b in zip(res[1], res[None], strict=True)]
    print("load after", os.getloadavg())
    print("decode_threads=1", round(statistics.median(res[1]), 2), [round(x, 2) for x in res[1]])
    print("default", round(statistics.median(res[None]), 2), [round(x, 2) for x in res[None]])
    print("median per-pair ratio", round(statistics.median(pairs), 2),
          "ratio of medians", round(statistics.median(res[None]) / statistics.median(res[1]), 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
