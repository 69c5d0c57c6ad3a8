"""Qwen2-VL: our processor and model against transformers 5.24's, same inputs and weights, ratios from one run.

1. Processor, a 1-minute 1280x720 30 fps H.264 video (generated and cached under ``--workdir``), default settings
   (2 fps, per-frame 128..768 merged tokens, ``max_visual_tokens=16384`` per sample):
   * ours: ``VideoLLMQwen2VLProcessor(text, videos=[path])`` (PyAV seeks by timestamp, exact Pillow bicubic in torch,
     patches, placeholder expansion);
   * transformers: ``Qwen2VLVideoProcessor`` needs torchvision, which is not installed here, so its steps are run on
     the PIL backend: ``transformers.video_utils.load_video(path, fps=2, backend="pyav")``, then per frame
     ``Qwen2VLImageProcessorPil.resize`` (smart_resize + Pillow bicubic) / ``rescale`` / ``normalize`` with the
     per-frame pixel cap set to what our budget chose (same output size), then the video processor's patchify of
     frame pairs (numpy). transformers has no token budget: without our cap it would make the unbounded count.
   Also printed: the visual tokens of that video under the default budget, and without a budget.
2. Model, a CPU-sized config (vision 4 x 128, LLM 4 x 256), same weights in ``VideoLLMQwen2VLForConditionalGeneration``
   and ``Qwen2VLForConditionalGeneration``; one 224x224 image + one 4-frame 112x112 video + ~40 text tokens, batch 2
   left-padded: forward latency and greedy ``generate`` (32 new tokens), alternating ours / theirs, median of
   ``--repeats``.

    OMP_NUM_THREADS=2 python bench/bench_qwen2vl.py            # full
    OMP_NUM_THREADS=2 python bench/bench_qwen2vl.py --quick    # 10 s video, 2 repeats
    OMP_NUM_THREADS=2 python bench/bench_qwen2vl.py --skip-model --serial  # processor only; also ours without
                                                                            # the decode-time pipeline
    OMP_NUM_THREADS=2 python bench/bench_qwen2vl.py --skip-model --time-order  # also ours fed in time order
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_load_video import ensure_video  # noqa: E402

from hf_videollm.modeling.qwen2vl import VideoLLMQwen2VLConfig, VideoLLMQwen2VLForConditionalGeneration  # noqa: E402
from hf_videollm.processors.qwen2vl import VideoLLMQwen2VLProcessor  # noqa: E402
from hf_videollm.tiny import QWEN2VL_SPECIAL_TOKENS, tiny_tokenizer  # noqa: E402


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _video_size(path: Path) -> tuple[int, int]:
    import av

    with av.open(str(path)) as c:
        return c.streams.video[0].height, c.streams.video[0].width


def _without_pipeline(fn):
    """``fn`` run with the processor's decode-time pipeline off (frames resized + patched after decoding)."""
    from hf_videollm.processors import qwen2vl

    saved = qwen2vl._FramePipeline
    qwen2vl._FramePipeline = lambda *a: None
    try:
        return fn()
    finally:
        qwen2vl._FramePipeline = saved


def _time_order(fn):
    """``fn`` run with the decode-time pipeline fed in time order (``load_video(on_frame_order="time")``, as before
    2026-12-04 08:30 UTC) instead of each frame as soon as it is decoded."""
    from hf_videollm.processors import qwen2vl

    saved = qwen2vl.load_video

    def in_time_order(*args, **kwargs):
        return saved(*args, **{**kwargs, "on_frame_order": "time"} if "on_frame_order" in kwargs else kwargs)

    qwen2vl.load_video = in_time_order
    try:
        return fn()
    finally:
        qwen2vl.load_video = saved


def bench_processor(path: Path, repeats: int, serial: bool = False, time_order: bool = False) -> dict:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.video_utils import load_video as hf_load_video

    tok = tiny_tokenizer()
    ours = VideoLLMQwen2VLProcessor(tok, tokenization="chunks")
    unbounded = VideoLLMQwen2VLProcessor(tok, tokenization="chunks", max_visual_tokens=None)
    text = ["<|vision_start|><|video_pad|><|vision_end|> describe the video"]
    out = ours(text=text, videos=[str(path)])
    t, gh, gw = out["video_grid_thw"][0].tolist()
    tokens = int((out["input_ids"] == ours.video_token_id).sum())
    full = unbounded(text=text, videos=[str(path)])
    tokens_unbounded = int((full["input_ids"] == ours.video_token_id).sum())
    # the per-frame pixel cap our budget chose: the smallest cap with which smart_resize gives our grid
    from hf_videollm.media.transforms import smart_resize

    H, W = _video_size(path)
    p = ours.patch_size
    cap = next(c for c in range(gh * gw * p * p, ours.video_max_pixels + 1, 64)
               if smart_resize(H, W, p * ours.merge_size, ours.video_min_pixels, c) == (gh * p, gw * p))
    ref_proc = Qwen2VLImageProcessorPil(size={"shortest_edge": min(cap, ours.video_min_pixels), "longest_edge": cap})

    from transformers.image_processing_utils import SizeDict

    size = SizeDict(shortest_edge=min(cap, ours.video_min_pixels), longest_edge=cap)
    tp, m = ours.temporal_patch_size, ours.merge_size

    def theirs():
        # Qwen2VLVideoProcessor's steps on the PIL backend: frames sampled by fps, each resized (smart_resize +
        # Pillow bicubic), rescaled and normalized by Qwen2VLImageProcessorPil, then the video patchify (pairs)
        frames, _ = hf_load_video(str(path), fps=ours.video_fps, backend="pyav")
        frames = frames[: len(frames) // tp * tp]
        out = []
        for f in frames:
            x = ref_proc.resize(f.transpose(2, 0, 1), size=size, resample=3, factor=p * m)
            out.append(ref_proc.normalize(ref_proc.rescale(x, 1 / 255), ours.image_mean, ours.image_std))
        v = np.stack(out).astype(np.float32)
        T, C, H, W = v.shape
        v = v.reshape(T // tp, tp, C, H // p // m, m, p, W // p // m, m, p).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        return v.reshape(-1, C * tp * p * p), (T // tp, H // p, W // p)

    ref_rows, ref_grid = theirs()
    assert list(ref_grid[1:]) == [gh, gw], (ref_grid, (gh, gw))
    # the same pixels from the same frames: each side samples its own frames from the file (ours: the middle of each
    # 1/fps interval; transformers' load_video: the interval starts -- the same decoding work), so the check feeds ours
    # the frames transformers decoded (an array video: same count, so the same budgeted size)
    hf_frames, _ = hf_load_video(str(path), fps=ours.video_fps, backend="pyav")
    ours_rows = ours(text=text, videos=[torch.from_numpy(hf_frames[: len(hf_frames) // tp * tp])])["pixel_values_videos"]
    del hf_frames
    if tuple(ours_rows.shape) != ref_rows.shape:
        raise SystemExit(f"pixel rows differ in shape: ours {tuple(ours_rows.shape)}, transformers {ref_rows.shape}")
    max_diff = float((ours_rows - torch.from_numpy(ref_rows)).abs().max())
    times = {"ours": [], "transformers": []} | ({"ours_serial": []} if serial else {}) | (
        {"ours_time_order": []} if time_order else {})
    for _ in range(repeats):  # alternating
        times["ours"].append(_timed(lambda: ours(text=text, videos=[str(path)]))[0])
        times["transformers"].append(_timed(theirs)[0])
        if serial:
            times["ours_serial"].append(_timed(lambda: _without_pipeline(lambda: ours(text=text, videos=[str(path)])))[0])
        if time_order:
            times["ours_time_order"].append(_timed(lambda: _time_order(lambda: ours(text=text, videos=[str(path)])))[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "grid_thw": [t, gh, gw], "frames": t * ours.temporal_patch_size, "visual_tokens": tokens, "max_abs_diff": max_diff,
        "visual_tokens_without_budget": tokens_unbounded, "ref_grid": list(ref_grid),
        "seconds": med, "ratio": med["ours"] / med["transformers"],
        "ratio_serial": med["ours_serial"] / med["transformers"] if serial else None,
        "ratio_time_order": med["ours_time_order"] / med["transformers"] if time_order else None,
    }


def _models():
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok = tiny_tokenizer()
    tok.add_tokens(list(QWEN2VL_SPECIAL_TOKENS), special_tokens=True)
    vocab = len(tok) + 2
    text = dict(model_type="qwen2_vl_text", vocab_size=vocab, hidden_size=256, intermediate_size=688,
                num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    vision = dict(model_type="qwen2_vl_vision", depth=4, embed_dim=128, hidden_size=256, num_heads=4, mlp_ratio=4,
                  patch_size=14, temporal_patch_size=2, spatial_merge_size=2, in_channels=3)
    ids = dict(image_token_id=len(tok), video_token_id=len(tok) + 1,
               vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
               vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))
    torch.manual_seed(0)
    ours = VideoLLMQwen2VLForConditionalGeneration(VideoLLMQwen2VLConfig(vision_config=vision, text_config=text, **ids)).eval()
    hf = Qwen2VLForConditionalGeneration(Qwen2VLConfig(vision_config=vision, text_config=text, **ids)).eval()
    sd = {}
    for k, v in ours.state_dict().items():
        k = k.replace("vision_tower.", "model.visual.", 1) if k.startswith("vision_tower.") else k
        sd[k.replace("language_model.model.", "model.language_model.", 1).replace("language_model.lm_head.", "lm_head.", 1)] = v
    hf.load_state_dict(sd, strict=False)
    for m in (ours, hf):
        m.generation_config.pad_token_id = tok.pad_token_id
        m.generation_config.eos_token_id = None
    proc = VideoLLMQwen2VLProcessor(tok, tokenization="chunks", image_token_id=ids["image_token_id"],
                                    video_token_id=ids["video_token_id"], video_min_pixels=56 * 56)
    return ours, hf, proc


def bench_model(repeats: int, new_tokens: int) -> dict:
    ours, hf, proc = _models()
    rng = np.random.default_rng(0)
    words = "what is shown in this image and video describe the color shape and direction of every object".split()
    texts = [f"<|vision_start|><|image_pad|><|vision_end|> {' '.join(words)} <|vision_start|><|video_pad|><|vision_end|> answer",
             f"<|vision_start|><|video_pad|><|vision_end|> {' '.join(words[:8])} <|vision_start|><|image_pad|><|vision_end|>"]
    images = [torch.from_numpy(rng.integers(0, 256, (3, 224, 224), dtype=np.uint8)) for _ in range(2)]
    videos = [rng.integers(0, 256, (4, 112, 112, 3), dtype=np.uint8) for _ in range(2)]
    batch = dict(proc(text=texts, images=images, videos=videos, padding_side="left"))
    ids = batch["input_ids"]
    hf_batch = {k: v for k, v in batch.items() if k != "video_second_per_grid"}
    hf_batch["mm_token_type_ids"] = (ids == proc.image_token_id).long() + 2 * (ids == proc.video_token_id).long()
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    with torch.no_grad():
        a, b = ours(**batch).logits, hf(**hf_batch).logits
        mask = batch["attention_mask"].bool()
        diff = (a[mask] - b[mask]).abs().max().item()
        same_tokens = torch.equal(ours.generate(**batch, **gen), hf.generate(**hf_batch, **gen))
        times = {k: [] for k in ("forward_ours", "forward_transformers", "generate_ours", "generate_transformers")}
        for _ in range(repeats):
            times["forward_ours"].append(_timed(lambda: ours(**batch))[0])
            times["forward_transformers"].append(_timed(lambda: hf(**hf_batch))[0])
            times["generate_ours"].append(_timed(lambda: ours.generate(**batch, **gen))[0])
            times["generate_transformers"].append(_timed(lambda: hf.generate(**hf_batch, **gen))[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "prompt_tokens": list(ids.shape), "visual_tokens": int((ids >= proc.image_token_id).sum()),
        "max_abs_logit_diff": diff, "same_greedy_tokens": same_tokens, "seconds": med,
        "forward_ratio": med["forward_ours"] / med["forward_transformers"],
        "generate_ratio": med["generate_ours"] / med["generate_transformers"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/hf_videollm_bench")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="10 s video, 2 repeats")
    ap.add_argument("--skip-processor", action="store_true")
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--serial", action="store_true",
                    help="also time ours with frames resized after decoding (no decode-time pipeline), alternating")
    ap.add_argument("--time-order", action="store_true",
                    help="also time ours with the pipeline fed in time order (on_frame_order='time'), alternating")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.repeats = 10.0, 2
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if not args.skip_processor:
        path = ensure_video(Path(args.workdir), args.duration, 30.0, (1280, 720), 250, "ultrafast")
        p = bench_processor(path, args.repeats, args.serial, args.time_order)
        print(f"[processor] {args.duration:g} s 1280x720 video: grid {p['grid_thw']} ({p['frames']} frames), "
              f"{p['visual_tokens']} visual tokens under the default budget ({p['visual_tokens_without_budget']} "
              f"without); ours {p['seconds']['ours']:.2f} s, transformers PIL path {p['seconds']['transformers']:.2f} s "
              f"-> ratio {p['ratio']:.2f}; pixel_values_videos of the same frames: max abs diff {p['max_abs_diff']:.1e}")
        if args.serial:
            print(f"[processor] ours without the decode-time pipeline {p['seconds']['ours_serial']:.2f} s -> ratio "
                  f"{p['ratio_serial']:.2f}")
        if args.time_order:
            print(f"[processor] ours with the pipeline fed in time order {p['seconds']['ours_time_order']:.2f} s -> "
                  f"ratio {p['ratio_time_order']:.2f}")
        print(f"[processor] load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.skip_model:
        return
    m = bench_model(args.repeats, args.new_tokens)
    s = m["seconds"]
    print(f"[model] batch {m['prompt_tokens']} ({m['visual_tokens']} visual tokens), max |logit diff| "
          f"{m['max_abs_logit_diff']:.2e}, same greedy tokens: {m['same_greedy_tokens']}")
    print(f"[model] forward ours {s['forward_ours'] * 1e3:.1f} ms / transformers {s['forward_transformers'] * 1e3:.1f} ms "
          f"-> {m['forward_ratio']:.2f}; generate({args.new_tokens}) ours {s['generate_ours'] * 1e3:.0f} ms / "
          f"transformers {s['generate_transformers'] * 1e3:.0f} ms -> {m['generate_ratio']:.2f}")


if __name__ == "__main__":
    main()
