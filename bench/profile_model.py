"""Per-op profile of bench_model's pairs: ours vs the reference, same inputs, runs alternating (A B A B ...).

    OMP_NUM_THREADS=2 python bench/profile_model.py --model llava --stage forward --repeats 4
    OMP_NUM_THREADS=2 python bench/profile_model.py --model videollama2 --stage parts --repeats 7
    OMP_NUM_THREADS=2 python bench/profile_model.py --model llava --stage cache --new-tokens 32 --repeats 7

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


def setup(model: str):
    """``(ours, reference, processor, batch, ins, ref_args)``: the bench_model pair with the same weights and its
    inputs (LLaVA: 2 x 720p images; VideoLLaMA 2: a 16-frame 720p video; ``ref_args``: what the VideoLLaMA 2
    reference takes, ``(ids, pixels)``)."""
    rng = np.random.default_rng(0)
    if model == "llava":
        ours, theirs, processor = bm.build_pair()
        pics = [rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8) for _ in range(2)]
        batch = processor(text=[" ".join([processor.image_token] * 2) + " describe the picture"], images=pics)
        ins = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
        return ours, theirs, processor, batch, ins, None
    ours, theirs, processor = bm.build_videollama2_pair(16)
    video = rng.integers(0, 256, (16, 720, 1280, 3), dtype=np.uint8)
    batch = processor(text=[processor.video_token + " describe the video"], videos=[video])
    ins = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values_videos")}
    ref_args = (bm.collapse_runs(ins["input_ids"], ours.config.video_token_id), ins["pixel_values_videos"])
    return ours, theirs, processor, batch, ins, ref_args


def cases(model: str, new_tokens: int):
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    ours, theirs, _, _, ins, ref_args = setup(model)
    if model == "llava":
        return {
            "forward": (lambda: ours(**ins), lambda: theirs(**ins)),
            "generate": (lambda: ours.generate(**ins, **gen), lambda: theirs.generate(**ins, **gen)),
            "encode": (lambda: ours.encode_media(pixel_values=ins["pixel_values"]),
                       lambda: theirs.model.get_image_features(pixel_values=ins["pixel_values"])),
        }
    ids, px = ref_args
    return {
        "forward": (lambda: ours(**ins), lambda: theirs(ids, px)),
        "generate": (lambda: ours.generate(**ins, **gen), lambda: theirs.generate(ids, px, **gen)),
        "encode": (lambda: ours.encode_media(pixel_values_videos=px), lambda: theirs.encode(px)),
    }


def parts(model: str, repeats: int) -> None:
    """Fastest of ``repeats`` alternating runs of each part: tower (ours: up to the selected layer; reference: every
    layer with all hidden states), connector, language model on the merged embeddings (full logits), and the
    whole-forward ratio those parts imply if nothing else differed."""
    ours, theirs, _, batch, _, _ = setup(model)
    if model == "llava":
        px, key = batch["pixel_values"], "pixel_values"
        tower_ref = theirs.model.vision_tower
    else:
        px, key = batch["pixel_values_videos"].flatten(0, 1), "pixel_values_videos"
        tower_ref = theirs.vision_tower
    with torch.no_grad():
        feats = ours.get_vision_features(px)
        conn_in = feats if model == "llava" else feats[None]
        emb = ours.build_inputs_embeds(batch["input_ids"], ours.encode_media(**{key: batch[key]}), batch["attention_mask"])
        fns = {
            "tower ours": lambda: ours.get_vision_features(px),
            "tower ref": lambda: tower_ref(px, output_hidden_states=True),
            "connector": lambda: ours.multi_modal_projector(conn_in),
            "language model": lambda: ours.language_model(inputs_embeds=emb, attention_mask=batch["attention_mask"]),
            "forward ours": lambda: ours(**{k: batch[k] for k in ("input_ids", "attention_mask", key)}),
        }
        for f in fns.values():
            f()
        best = {k: float("inf") for k in fns}
        for _ in range(repeats):
            for k, f in fns.items():
                t = time.perf_counter()
                f()
                best[k] = min(best[k], time.perf_counter() - t)
    print(f"{model}: fastest of {repeats} alternating runs per part")
    print("| part | s |\n|---|---:|")
    for k, v in best.items():
        print(f"| {k} | {v:.3f} |")
    shared = best["connector"] + best["language model"]
    print(f"| implied forward ratio (tower ours + shared) / (tower ref + shared) | "
          f"{(best['tower ours'] + shared) / (best['tower ref'] + shared):.3f} |")
    print(f"| overhead of ours beyond its parts (forward ours - tower - connector - LM) | "
          f"{best['forward ours'] - best['tower ours'] - shared:.3f} |")


def cache_ab(model: str, new_tokens: int, repeats: int) -> None:
    """``generate`` A/B/C alternating: ours (default: in-place KV cache), ours with transformers' ``DynamicCache``
    passed explicitly (``torch.cat`` per token), the reference; the outputs of the first two must be identical."""
    from transformers import DynamicCache

    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    ours, theirs, _, _, ins, ref_args = setup(model)
    if model == "llava":
        ref = lambda: theirs.generate(**ins, **gen)  # noqa: E731
    else:
        ref = lambda: theirs.generate(*ref_args, **gen)  # noqa: E731
    fns = {
        "ours (in-place cache)": lambda: ours.generate(**ins, **gen),
        "ours with DynamicCache": lambda: ours.generate(**ins, **gen, cache=DynamicCache(config=ours.language_model.config)),
        "reference": ref,
    }
    with torch.no_grad():
        outs = [f() for f in fns.values()]
        if not torch.equal(outs[0], outs[1]):
            raise SystemExit("the in-place cache changed the generated tokens")
        times = {k: [] for k in fns}
        for _ in range(repeats):
            for k, f in fns.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    names = list(fns)
    print(f"{model}, generate {new_tokens} tokens, {repeats} alternating runs (same tokens: True)")
    print("| run | median s | fastest s |\n|---|---:|---:|")
    for k in names:
        print(f"| {k} | {np.median(times[k]):.3f} | {min(times[k]):.3f} |")
    for a, b in ((0, 1), (0, 2), (1, 2)):
        pair = np.median([x / y for x, y in zip(times[names[a]], times[names[b]])])
        print(f"| {names[a]} / {names[b]} (median of pair ratios) | {pair:.3f} | |")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=["llava", "videollama2"], default="llava")
    p.add_argument("--stage", choices=["forward", "generate", "encode", "parts", "cache"], default="forward")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--rows", type=int, default=18)
    args = p.parse_args()
    torch.set_num_threads(2)
    if args.stage == "parts":
        parts(args.model, args.repeats)
        return 0
    if args.stage == "cache":
        cache_ab(args.model, args.new_tokens, args.repeats)
        return 0
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
    print("| op | ours ms | calls | ref ms | calls |\n|---|---:|---:|---:|---:|")
    for k in names[: args.rows]:
        print(f"| {k} | {ops['ours'][k] / n * 1e3:.1f} | {calls['ours'][k] // n} | {ops['ref'][k] / n * 1e3:.1f} | {calls['ref'][k] // n} |")
    tot = {s: sum(ops[s].values()) / n for s in ops}
    print(f"| all ops | {tot['ours'] * 1e3:.1f} | | {tot['ref'] * 1e3:.1f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
