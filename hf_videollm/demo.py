"""``hf-videollm demo``: the whole path on a tiny model, offline.

Builds a tiny random video model, writes a generated video file with PyAV, asks a question about it through the
processor's chat template and ``generate``, saves the model and processor, reloads them with the Auto classes and
checks that the reloaded model answers the same.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def moving_square_video(num_frames: int = 16, size: int = 64, seed: int = 0) -> np.ndarray:
    """A coloured square sliding left to right over a dark background, ``(T, H, W, 3)`` uint8."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(128, 256, size=3, dtype=np.uint8)
    frames = np.full((num_frames, size, size, 3), 24, dtype=np.uint8)
    side = size // 4
    for t in range(num_frames):
        x = int((size - side) * t / max(1, num_frames - 1))
        frames[t, size // 2 - side // 2 : size // 2 + side // 2, x : x + side] = colour
    return frames


def run_demo(args: argparse.Namespace) -> int:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from .chat import answer
    from .processors import write_video
    from .tiny import TINY_BUILDERS, build_tiny

    t0 = time.perf_counter()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hf_videollm_demo_"))
    workdir.mkdir(parents=True, exist_ok=True)
    if "video" not in TINY_BUILDERS[args.model].modalities:
        raise ValueError(f"model {args.model!r} takes no video; pick a video model")
    model, processor = build_tiny(args.model, seed=args.seed)
    model.eval()
    video_path = write_video(workdir / "demo.mp4", moving_square_video(seed=args.seed), fps=8)
    messages = [
        {"role": "user", "content": [{"type": "video", "video": str(video_path)},
                                     {"type": "text", "text": "which direction does the square move?"}]}
    ]
    reply = answer(model, processor, messages, max_new_tokens=8)

    model_dir = workdir / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    reloaded = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    reprocessor = AutoProcessor.from_pretrained(model_dir)
    reply_reloaded = answer(reloaded, reprocessor, messages, max_new_tokens=8)
    if reply_reloaded != reply:
        raise RuntimeError(f"reloaded model answered differently: {reply!r} vs {reply_reloaded!r}")

    report = {
        "model": args.model,
        "video": str(video_path),
        "question": messages[0]["content"][1]["text"],
        "answer": reply,
        "saved_to": str(model_dir),
        "reload_matches": True,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": round(time.perf_counter() - t0, 2),
        "note": "random tiny weights: the answer is not meaningful until the model is trained",
    }
    print(f"model: tiny {args.model} ({report['parameters']:,} parameters, random weights)")
    print(f"video: {video_path}")
    print(f"question: {report['question']}")
    print(f"answer: {reply!r}")
    print(f"saved + reloaded with AutoModelForImageTextToText / AutoProcessor: same answer ({report['seconds']} s)")
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2))
    return 0
