"""``hf-videollm bench``: media encoding, prefill and decoding throughput of a model on synthetic video."""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_bench(args: argparse.Namespace) -> int:
    from .registry import MODELS
    from .tiny import build_tiny

    dtype = getattr(torch, args.dtype)
    if args.model in MODELS:
        model, processor = build_tiny(args.model)
        label = f"tiny {args.model} (random)"
    elif Path(args.model).exists() or "/" in args.model:
        from .chat import load_for_inference

        model, processor = load_for_inference(args.model, dtype=args.dtype, attn=args.attn)
        label = args.model
    else:
        raise ValueError(f"--model must be a registered name {sorted(MODELS)} or a model directory")
    model = model.to(device=args.device, dtype=dtype).eval()
    model.set_attn_implementation(args.attn)
    size = getattr(processor, "image_size", 224)
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (args.frames, size, size, 3), dtype=np.uint8)
    processor.num_frames = args.frames
    batch = processor(text=[f"{processor.video_token} describe the video"], videos=[video])
    batch = {k: (v.to(args.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    media = model.input_spec.media_inputs(batch)

    with torch.no_grad():
        enc = _median_time(lambda: model.encode_media(**media), args.repeats)
        prefill = _median_time(lambda: model(**batch), args.repeats)
        gen = _median_time(
            lambda: model.generate(**batch, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False),
            args.repeats,
        )
    prompt_len = batch["input_ids"].shape[1]
    decode = max(gen - prefill, 1e-9)
    print(f"model: {label} | device {args.device} | dtype {args.dtype} | attn {args.attn} | frames {args.frames}")
    print(f"{'stage':<24}{'seconds':>10}{'rate':>24}")
    print(f"{'encode video':<24}{enc:>10.4f}{args.frames / enc:>18.1f} fr/s")
    print(f"{f'prefill ({prompt_len} tok)':<24}{prefill:>10.4f}{prompt_len / prefill:>18.1f} tok/s")
    print(f"{f'generate ({args.new_tokens} new)':<24}{gen:>10.4f}{args.new_tokens / decode:>18.1f} tok/s")
    return 0


#: ``hf-videollm bench --suite``: part name -> script in the checkout's bench/ directory (each records itself).
BENCH_SUITE = {
    "preprocess": "bench_preprocess.py",
    "model": "bench_model.py",
    "convert": "bench_convert.py",
    "load_video": "bench_load_video.py",
    "e2e": "bench_e2e.py",
}


def run_bench_suite(parts: str, *, record: bool = True) -> int:
    """Run the named bench/ scripts (``"all"`` or comma-separated :data:`BENCH_SUITE` names) one after the other."""
    import subprocess
    import sys

    names = list(BENCH_SUITE) if parts.strip() == "all" else [p.strip() for p in parts.split(",") if p.strip()]
    unknown = [n for n in names if n not in BENCH_SUITE]
    if unknown or not names:
        raise ValueError(f"unknown bench part(s) {unknown or parts!r}; choose 'all' or from {sorted(BENCH_SUITE)}")
    bench_dir = Path(__file__).resolve().parents[1] / "bench"
    missing = [BENCH_SUITE[n] for n in names if not (bench_dir / BENCH_SUITE[n]).is_file()]
    if missing:
        raise FileNotFoundError(f"{bench_dir} lacks {missing}: the suite runs from a source checkout of hf_videollm")
    status = 0
    for name in names:
        cmd = [sys.executable, str(bench_dir / BENCH_SUITE[name])]
        if not record and name != "load_video":
            cmd.append("--no-record")
        print(f"== bench {name}: {' '.join(cmd[1:])}", flush=True)
        status = max(status, subprocess.run(cmd, check=False).returncode)
    return status
