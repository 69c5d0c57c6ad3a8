"""LongVLM vision path on CPU: token-merging time vs CLIP ViT-L/14-224 time for one video, and peak memory.

* ratio: the 100 frames go through the tower in the model's chunks (16 frames); after each chunk the merging of a
  whole 100-frame video (10 segments x 2560 tokens -> 10 x 30) is timed, so tower and merge runs alternate and load
  drift hits both alike. merge / tower = median merge time / summed tower time.
* peak RSS (``VmHWM``): a fresh process per case runs ``get_video_features`` (tower in chunks + merging + projector) on T frames
  of 224 px pixels (the pixel tensor is included) and reports ``ru_maxrss``, and the RSS after building the model.

Weights are random (timing and memory do not depend on them); the LLM is a 1-layer stand-in (not used here).

    python bench/bench_longvlm.py --frames 100 --rss-frames 100,400 --rss-layers 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch


def build(layers: int, chunk: int):
    from hf_videollm.modeling.longvlm import CLIP_L14_224, VideoLLMLongVLMConfig, VideoLLMLongVLMModel

    cfg = VideoLLMLongVLMConfig(
        vision_config={**CLIP_L14_224, "num_hidden_layers": layers},
        text_config=dict(model_type="llama", hidden_size=4096, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=32, num_key_value_heads=1, vocab_size=64),
        num_global_tokens=min(5, layers + 1), vision_chunk_frames=chunk,
    )
    return VideoLLMLongVLMModel(cfg).eval()


def ratio(frames: int, layers: int, chunk: int) -> dict:
    model = build(layers, chunk)
    pixels = torch.randn(frames, 3, 224, 224)
    feats = torch.randn(frames, 256, 1024)
    tower, merge = [], []
    with torch.no_grad():
        model.merge_local_tokens(feats)  # warm-up
        for start in range(0, frames, chunk):
            t = time.perf_counter()
            model.vision_tower(pixel_values=pixels[start : start + chunk], output_hidden_states=True)
            tower.append(time.perf_counter() - t)
            t = time.perf_counter()
            model.merge_local_tokens(feats)
            merge.append(time.perf_counter() - t)
    total = sum(tower)
    return {"frames": frames, "tower_layers": layers, "chunk_frames": chunk, "tower_s": round(total, 3),
            "tower_chunks_s": [round(x, 3) for x in tower], "merge_runs_s": [round(x, 4) for x in merge],
            "merge_median_s": round(statistics.median(merge), 4),
            "merge_over_tower_percent": round(100 * statistics.median(merge) / total, 3)}


def rss_case(frames: int, layers: int, chunk: int) -> dict:
    model = build(layers, chunk)
    after_build = _rss_mb()
    pixels = torch.randn(frames, 3, 224, 224)
    t = time.perf_counter()
    with torch.no_grad():
        out = model.get_video_features(pixel_values_videos=pixels[None])
    return {"frames": frames, "tower_layers": layers, "chunk_frames": chunk, "tokens": out[0].shape[0],
            "rss_after_build_mb": after_build, "peak_rss_mb": _rss_mb("VmHWM"), "seconds": round(time.perf_counter() - t, 1)}


def _rss_mb(field: str = "VmRSS") -> int:
    """Current (``VmRSS``) or peak (``VmHWM``) resident memory of this process. Not ``ru_maxrss``: Linux keeps it
    across ``execve``, so a case started by a process that had grown larger would report the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024)
    return -1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=100, help="frames of the ratio run (0: skip)")
    p.add_argument("--layers", type=int, default=24, help="CLIP layers of the ratio run (24 = ViT-L)")
    p.add_argument("--chunk", type=int, default=16, help="frames per CLIP call")
    p.add_argument("--rss-frames", default="100,400", help="comma-separated frame counts for peak RSS ('' = skip)")
    p.add_argument("--rss-layers", type=int, default=24, help="CLIP layers of the RSS runs")
    p.add_argument("--rss-chunks", default="16", help="comma-separated chunk sizes for the RSS runs (0 = all frames)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one RSS case in this process
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        frames, layers, chunk = (int(x) for x in args.case.split(","))
        print(json.dumps(rss_case(frames, layers, chunk)))
        return
    results = {"threads": args.threads, "torch": torch.__version__}
    results["rss"] = []
    for frames in [int(x) for x in args.rss_frames.split(",") if x]:
        for chunk in [int(x) for x in args.rss_chunks.split(",") if x]:
            case = f"{frames},{args.rss_layers},{chunk or frames}"
            out = subprocess.run([sys.executable, __file__, "--case", case, "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True)
            results["rss"].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(results["rss"][-1]), flush=True)
    if args.frames:
        results["ratio"] = ratio(args.frames, args.layers, args.chunk)
        print(json.dumps(results["ratio"]), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
