"""Preprocessing: ``hf_videollm`` pixel transforms against transformers' PIL image processors (same frames).

Measured in ONE process, A/B alternating, median of ``--repeats`` (the machine may be shared: only the ratios, taken
within this run, are meaningful). Every row also checks that both sides give the same pixels (max abs diff).

Cases (frames are random uint8 720p, 16 per video as the LLaVA / VideoLLaMA 2 processors sample):

* ``video clip``: 16 x 720p -> shortest edge 336 + centre crop 336 (CLIP; VideoLLaMA 2's default, no pad) vs
  ``CLIPImageProcessorPil``;
* ``video llava``: the same with LLaVA-1.5's pad-to-square (``expand2square``) vs ``LlavaImageProcessorPil(do_pad=True)``;
* ``images llava``: 8 separate 720p images through the same transforms, one call per image on both sides;
* ``processor llava`` / ``processor videollama2``: our whole processor call (text + 16 frames) vs the pixels-only
  transformers processor (upper bound on our overhead).

    python3 bench/bench_preprocess.py              # prints the table and appends it to bench/RESULTS.md
    python3 bench/bench_preprocess.py --repeats 3 --no-record   # quick look
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_videollm.media.transforms import ImageTransform  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def record(title: str, command: str, table: list[str], notes: str = "") -> None:
    """Append a section (title, command, machine, date, table) to bench/RESULTS.md."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()} {platform.system()}, {torch.get_num_threads()} torch threads, Python {platform.python_version()}"
    text = f"\n### {title} ({stamp})\n\n`{command}` -- {machine}\n\n" + "\n".join(table) + "\n"
    if notes:
        text += f"\n{notes}\n"
    with RESULTS.open("a") as f:
        f.write(text)


def alternate_stats(a, b, repeats: int) -> tuple[float, float, float, float]:
    """A B A B ... after one warm-up each: (median a, median b, median of the per-pair ratios a/b, min a / min b).

    The machine may be shared: a load spike slows both runs of a pair alike, so the per-pair ratio and the ratio of
    the fastest runs are steadier than the ratio of the medians."""
    a(), b()
    ta, tb = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t)
    pairs = statistics.median(x / y for x, y in zip(ta, tb))
    return statistics.median(ta), statistics.median(tb), pairs, min(ta) / min(tb)


def alternate(a, b, repeats: int) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b`` run alternately (A B A B ...) after one warm-up each."""
    return alternate_stats(a, b, repeats)[:2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.frames, 720, 1280, 3), dtype=np.uint8)
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)  # as decoded: (T, C, H, W) view of (T, H, W, C)
    images = [torch.from_numpy(f.copy()).permute(2, 0, 1).contiguous() for f in frames[:8]]  # as load_image returns
    sz = {"shortest_edge": 336}
    crop = {"height": 336, "width": 336}
    hf_clip = CLIPImageProcessorPil(size=sz, crop_size=crop)
    hf_llava = LlavaImageProcessorPil(size=sz, crop_size=crop, do_pad=True)
    ours_clip = ImageTransform(336, crop_size=336)
    ours_llava = ImageTransform(336, crop_size=336, pad_to_square=True)
    frame_list = list(frames)
    image_arrays = [f for f in frames[:8]]

    cases = [
        ("video clip (16 x 720p)", lambda: ours_clip(video), lambda: hf_clip(frame_list, return_tensors="pt")["pixel_values"]),
        ("video llava pad (16 x 720p)", lambda: ours_llava(video), lambda: hf_llava(frame_list, return_tensors="pt")["pixel_values"]),
        (
            "images llava pad (8 x 720p)",
            lambda: torch.stack([ours_llava(im) for im in images]),
            lambda: torch.cat([hf_llava(a, return_tensors="pt")["pixel_values"] for a in image_arrays]),
        ),
    ]
    try:
        from hf_videollm.tiny import build_tiny

        for name, hf in (("llava", hf_llava), ("videollama2", hf_clip)):
            _, proc = build_tiny(name)
            proc.image_size = 336
            proc.num_frames = args.frames
            prompt = f"{proc.video_token} what happens?"
            cases.append(
                (
                    f"processor {name} (text + 16 x 720p)",
                    (lambda proc=proc, prompt=prompt: proc(text=[prompt], videos=[video])),
                    (lambda hf=hf: hf(frame_list, return_tensors="pt")["pixel_values"]),
                )
            )
    except Exception as e:  # noqa: BLE001 - the processor rows are extra
        print(f"(processor rows skipped: {e})")

    table = ["| case | ours s | transformers s | ratio | max abs diff |", "|---|---:|---:|---:|---:|"]
    for name, ours, theirs in cases:
        a = ours()
        b = theirs()
        if hasattr(a, "keys"):
            a = next(v for k, v in a.items() if k.startswith("pixel_values"))
        diff = (a.reshape(b.shape).float() - b.float()).abs().max().item()
        t_ours, t_hf = alternate(ours, theirs, args.repeats)
        row = f"| {name} | {t_ours:.3f} | {t_hf:.3f} | **{t_ours / t_hf:.2f}** | {diff:g} |"
        print(row, flush=True)
        table.append(row)
    if not args.no_record:
        cmd = "python3 bench/bench_preprocess.py " + " ".join(argv if argv is not None else sys.argv[1:])
        record(
            "Preprocessing vs transformers' PIL processors",
            cmd.strip(),
            table,
            f"Median of {args.repeats} alternating runs per case in one process ({args.threads} threads); the machine "
            "was shared, so only the ratios are meaningful.",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
