"""End to end, as a user runs it: a question about a long 720p video -> the first generated token.

* ours: ``hf_videollm.media.load_video(path, num_frames=16)`` -> our LLaVA processor (video path) -> our model;
* transformers: ``transformers.video_utils.load_video(path, num_frames=16, backend="pyav")`` -> ``LlavaProcessor``
  (``LlavaImageProcessorPil`` with LLaVA-1.5's pad, the 16 frames as 16 images) -> ``LlavaForConditionalGeneration``.

Same weights on both sides (``bench_model.build_pair``: CLIP 6 x 256 at 336 px, LLaMA 4 x 256). The video is made
(and cached under ``--workdir``) by ``bench_load_video.ensure_video``. Medians of ``--repeats`` alternating runs in one
process; per-stage times too. Only the ratio is meaningful on a shared machine.

    python3 bench/bench_e2e.py --workdir /tmp/hf_videollm_bench     # 10 min 1280x720 (generated once, ~0.9 GB)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_load_video import ensure_video  # noqa: E402
from bench_model import build_pair  # noqa: E402
from bench_preprocess import record  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, default=Path("./.bench_cache"))
    p.add_argument("--duration", type=float, default=600.0)
    p.add_argument("--preset", default="ultrafast")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--serial-decode", action="store_true",
                   help="also time ours with load_video(decode_threads=1) (the serial decoder), alternating")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import LlavaProcessor
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
    from transformers.video_utils import load_video as hf_load_video

    from hf_videollm.media import load_video

    path = ensure_video(args.workdir, args.duration, 30.0, (1280, 720), 250, args.preset)
    ours, theirs, processor = build_pair()
    processor.num_frames = args.frames
    question = "what happens in the video?"
    tok = copy.deepcopy(processor.tokenizer)
    tok.add_tokens(["<image>"], special_tokens=True)
    assert tok.convert_tokens_to_ids("<image>") == theirs.config.image_token_id
    hf_proc = LlavaProcessor(
        image_processor=LlavaImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                               do_pad=True),
        tokenizer=tok, patch_size=14, vision_feature_select_strategy="default", image_token="<image>",
        num_additional_image_tokens=1,
    )
    gen = dict(max_new_tokens=1, do_sample=False)

    def run_ours(decode_threads=None):
        t0 = time.perf_counter()
        frames, _ = load_video(path, num_frames=args.frames, decode_threads=decode_threads)
        t1 = time.perf_counter()
        batch = processor(text=[f"{processor.video_token} {question}"], videos=[frames])
        t2 = time.perf_counter()
        ours.generate(**batch, **gen)
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, batch["input_ids"].shape[1]

    def run_theirs():
        t0 = time.perf_counter()
        video, _ = hf_load_video(str(path), num_frames=args.frames, backend="pyav")
        t1 = time.perf_counter()
        batch = hf_proc(text=["<image>" * len(video) + " " + question], images=list(video), return_tensors="pt")
        t2 = time.perf_counter()
        theirs.generate(**batch, **gen)
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, batch["input_ids"].shape[1]

    res = {"ours": [], "theirs": []}
    if args.serial_decode:
        res["serial"] = []
    with torch.no_grad():
        for _ in range(args.repeats):
            if args.serial_decode:
                res["serial"].append(run_ours(decode_threads=1))
            res["ours"].append(run_ours())
            res["theirs"].append(run_theirs())
    table = [f"{path.name}, {args.frames} frames; prompt tokens: ours {res['ours'][0][3]} (LLaVA video path), "
             f"transformers {res['theirs'][0][3]} (frames as images).", "",
             "| side | decode s | processor s | model to first token s | total s |", "|---|---:|---:|---:|---:|"]
    med = {}
    sides = [("ours", "hf_videollm"), ("theirs", "transformers")]
    if args.serial_decode:
        sides.insert(0, ("serial", "hf_videollm, decode_threads=1"))
    for side, label in sides:
        cols = [statistics.median(r[i] for r in res[side]) for i in range(3)]
        med[side] = statistics.median(sum(r[:3]) for r in res[side])
        table.append(f"| {label} | {cols[0]:.2f} | {cols[1]:.2f} | {cols[2]:.2f} | {med[side]:.2f} |")
    table.append(f"| **ratio** | | | | **{med['ours'] / med['theirs']:.2f}** |")
    if args.serial_decode:
        table.append(f"| ratio with decode_threads=1 | | | | {med['serial'] / med['theirs']:.2f} |")
    print("\n".join(table))
    if not args.no_record:
        cmd = "python3 bench/bench_e2e.py " + " ".join(argv if argv is not None else sys.argv[1:])
        record("End to end: long 720p video question -> first token", cmd.strip(), table,
               f"Median of {args.repeats} alternating runs in one process ({args.threads} threads); shared machine, "
               "only the ratio is meaningful.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
