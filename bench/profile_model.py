"""Per-op profile of bench_model's pairs: ours vs the reference, same inputs, runs alternating (A B A B ...).

    OMP_NUM_THREADS=2 python bench/profile_model.py --model llava --stage forward --repeats 4

Prints, per aten op, the summed self CPU time of each side over ``--repeats`` profiled runs (after one warm-up each),
and the wall time of each side; the ops are those of ``torch.profiler`` (Python overhead shows as the difference
between wall and the sum of op times).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_model as bm  # noqa: E402


def cases(model: str, new_tokens: int):
    rng = np.random.default_rng(0)
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    if model == "llava":
        ours, theirs, processor = bm.build_pair()
        pics = [rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8) for _ in range(2)]
        batch = processor(text=[" ".join([processor.image_token] * 2) + " describe the picture"], images=pics)
        ins = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
        return {
            "forward": (lambda: ours(**ins), lambda: theirs(**ins)),
            "generate": (lambda: ours.generate(**ins, **gen), lambda: theirs.generate(**ins, **gen)),
            "encode": (lambda: ours.encode_media(pixel_values=ins["pixel_values"]),
                       lambda: theirs.model.get_image_features(pixel_values=ins["pixel_values"])),
        }
    ours, theirs, processor = bm.build_videollama2_pair(16)
    video = rng.integers(0, 256, (16, 720, 1280, 3), dtype=np.uint8)
    batch = processor(text=[processor.video_token + " describe the video"], videos=[video])
    ins = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values_videos")}
    ids, px = bm.collapse_runs(ins["input_ids"], ours.config.video_token_id), ins["pixel_values_videos"]
    return {
        "forward": (lambda: ours(**ins), lambda: theirs(ids, px)),
        "generate": (lambda: ours.generate(**ins, **gen), lambda: theirs.generate(ids, px, **gen)),
        "encode": (lambda: ours.encode_media(pixel_values_videos=px), lambda: theirs.encode(px)),
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=["llava", "videollama2"], default="llava")
    p.add_argument("--stage", choices=["forward", "generate", "encode"], default="forward")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--rows", type=int, default=18)
    args = p.parse_args()
    torch.set_num_threads(2)
    fa, fb = cases(args.model, args.new_tokens)[args.stage]
    ops = {"ours": defaultdict(float), "ref": defaultdict(float)}
    calls = {"ours": defaultdict(int), "ref": defaultdict(int)}
    wall = {"ours": [], "ref": []}
    with torch.no_grad():
        fa(), fb()
        for _ in range(args.repeats):
            for side, f in (("ours", fa), ("ref", fb)):
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    t = time.perf_counter()
                    f()
                    wall[side].append(time.perf_counter() - t)
                for e in prof.key_averages():
                    ops[side][e.key] += e.self_cpu_time_total / 1e6
                    calls[side][e.key] += e.count
    names = sorted(set(ops["ours"]) | set(ops["ref"]), key=lambda k: -max(ops["ours"][k], ops["ref"][k]))
    n = args.repeats
    print(f"{args.model} {args.stage}: wall median ours {np.median(wall['ours']):.3f} s, ref {np.median(wall['ref']):.3f} s "
          f"(ratio {np.median(wall['ours']) / np.median(wall['ref']):.2f}); op self-CPU per run:")
    print(f"| op | ours ms | calls | ref ms | calls |\n|---|---:|---:|---:|---:|")
    for k in names[: args.rows]:
        print(f"| {k} | {ops['ours'][k] / n * 1e3:.1f} | {calls['ours'][k] // n} | {ops['ref'][k] / n * 1e3:.1f} | {calls['ref'][k] // n} |")
    tot = {s: sum(ops[s].values()) / n for s in ops}
    print(f"| all ops | {tot['ours'] * 1e3:.1f} | | {tot['ref'] * 1e3:.1f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
