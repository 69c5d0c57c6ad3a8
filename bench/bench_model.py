"""Model forward / ``generate``: hf_videollm against the reference computation of each model, same weights.

* ``--model llava``: ours vs transformers' ``LlavaForConditionalGeneration``. CLIP at
  336 px, patch 14 (576 tokens per image; ``vision_feature_layer=-2``), CLIP 6 x 256, LLaMA 4 x 256.
* ``--model videollama2``: transformers has no VideoLLaMA 2, so the reference is the ORIGINAL release's inference
  computation (DAMO-NLP-SG/VideoLLaMA2, ``encoder.py`` / ``videollama2_arch.py`` / its ``generate``), written here
  (:class:`OriginalVideoLlama2`) from transformers' ``CLIPVisionModel`` (every layer run with
  ``output_hidden_states=True``, ``hidden_states[-2]``, CLS dropped, all frames in one call), the same STC connector
  module, and the same ``MistralForCausalLM``: a prompt with ONE ``<video>`` id per video, its text pieces embedded
  and ``torch.cat`` with the video features sample by sample; ``generate`` = the LM's ``generate(inputs_embeds=)``
  (the media encoded once). 16 frames of 720p -> CLIP 336 (6 x 256) -> ``stc_connector`` (depth 4, 9 x 13 x 13 =
  1521 tokens) -> Mistral 4 x 256 (no sliding window, as the release's Mistral-7B-Instruct-v0.2).

Both sides get the same pixels (our processor's output) and weights (deep copies); float32, each side's default
attention (SDPA). The logits are compared (max abs diff) and the greedy tokens must match. Times are medians of
``--repeats`` alternating runs (A B A B ...) in one process -- only the ratio is meaningful on a shared machine.

    python3 bench/bench_model.py                       # both (--model all); prints the tables, appends them to bench/RESULTS.md
    python3 bench/bench_model.py --model llava         # LLaVA only
    python3 bench/bench_model.py --model videollama2   # VideoLLaMA 2 against the original's computation
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_preprocess import alternate_stats, record  # noqa: E402

VISION = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=4)
TEXT = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4)


def build_pair():
    """(ours, transformers' LlavaForConditionalGeneration with the same weights, our processor)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from hf_videollm.tiny import build_tiny

    ours, processor = build_tiny("llava", image_size=336, vision_config=dict(VISION), text_config=dict(TEXT))
    ours.eval()
    cfg = ours.config
    theirs_cfg = LlavaConfig(
        vision_config=cfg.vision_config.to_dict(),
        # transformers embeds input_ids before swapping in the image features: the placeholder ids (ours lie past
        # the vocabulary) need rows; 2 extra rows (zero in lm_head), the logits compared on the real vocabulary
        text_config={**cfg.text_config.to_dict(), "vocab_size": cfg.text_config.vocab_size + 2},
        image_token_id=cfg.image_token_id,
        vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        projector_hidden_act="gelu",
    )
    theirs = LlavaForConditionalGeneration(theirs_cfg).eval()
    sd = {}
    for k, v in ours.state_dict().items():
        if k.startswith("language_model.model."):
            k = "model.language_model." + k[len("language_model.model."):]
        elif k.startswith("language_model.lm_head."):
            k = k[len("language_model."):]
        else:
            k = "model." + k
        sd[k] = v
    for k in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
        sd[k] = torch.cat([sd[k], torch.zeros(2, sd[k].shape[1])])
    missing, unexpected = theirs.load_state_dict(sd, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise SystemExit(f"weight mapping failed: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for m in (ours, theirs):
        m.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return ours, theirs, processor


# ---------------------------------------------------------------------------------------------------- VideoLLaMA 2
class OriginalVideoLlama2(nn.Module):
    """VideoLLaMA 2's inference computation as the original release does it (written for this benchmark, not
    copied): tower over every frame of every video in one call with all hidden states kept, the selected one
    sliced; connector on ``(B, T, N, C)``; per sample, the text between placeholders embedded piece by piece and
    concatenated with the video features (``prepare_inputs_labels_for_multimodal``); the LM run on
    ``inputs_embeds`` (``generate`` too: the media encoded once, before the LM's own ``generate``)."""

    def __init__(self, ours):
        super().__init__()
        cfg = ours.config
        self.vision_tower = copy.deepcopy(ours.vision_tower)  # transformers' CLIPVisionModel / SiglipVisionModel
        self.mm_projector = copy.deepcopy(ours.multi_modal_projector)  # the same STC connector module
        self.llm = copy.deepcopy(ours.language_model)  # transformers' MistralForCausalLM
        self.select_layer = cfg.vision_feature_layer
        self.drop_cls = cfg.vision_feature_select_strategy == "default"  # the original's 'patch' for CLIP
        self.mm_ids = torch.tensor([i for i in (cfg.image_token_id, cfg.video_token_id) if i is not None])

    def encode(self, videos: torch.Tensor) -> torch.Tensor:
        b = videos.shape[0]
        frames = videos.flatten(0, 1)  # (b t) c h w
        out = self.vision_tower(frames, output_hidden_states=True)
        feats = out.hidden_states[self.select_layer]
        if self.drop_cls:
            feats = feats[:, 1:]
        return self.mm_projector(feats.unflatten(0, (b, -1)))  # b t n c -> b tokens d

    def embeds(self, input_ids: torch.Tensor, videos: torch.Tensor) -> torch.Tensor:
        features = self.encode(videos)
        embed = self.llm.get_input_embeddings()
        rows, item = [], 0
        for ids in input_ids:
            pieces = []
            hits = torch.where(torch.isin(ids, self.mm_ids))[0]
            while hits.numel() > 0:
                start = hits[0]
                pieces += [embed(ids[:start]), features[item]]
                item += 1
                ids = ids[start + 1:]
                hits = torch.where(torch.isin(ids, self.mm_ids))[0]
            if ids.numel() > 0:
                pieces.append(embed(ids))
            rows.append(torch.cat(pieces, dim=0))
        return torch.stack(rows)  # the benchmark's batch has one sample (the original pads unequal rows)

    def forward(self, input_ids, videos):
        e = self.embeds(input_ids, videos)
        return self.llm(inputs_embeds=e, attention_mask=torch.ones(e.shape[:2], dtype=torch.long))

    def generate(self, input_ids, videos, **gen):
        e = self.embeds(input_ids, videos)
        return self.llm.generate(inputs_embeds=e, attention_mask=torch.ones(e.shape[:2], dtype=torch.long), **gen)


def collapse_runs(input_ids: torch.Tensor, token_id: int) -> torch.Tensor:
    """Our expanded prompt (one placeholder id per visual token) -> the original's (one id per video)."""
    rows = []
    for ids in input_ids:
        keep = torch.ones_like(ids, dtype=torch.bool)
        keep[1:] = ~((ids[1:] == token_id) & (ids[:-1] == token_id))
        rows.append(ids[keep])
    return torch.stack(rows)


def build_videollama2_pair(frames: int):
    from hf_videollm.tiny import build_tiny

    # sliding_window=None as the release's Mistral-7B-Instruct-v0.2 (transformers' MistralConfig default is 4096)
    ours, processor = build_tiny(
        "videollama2", image_size=336, vision_config=dict(VISION), text_config=dict(TEXT, sliding_window=None),
        num_frames=frames,
    )
    ours.eval()
    ours.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    theirs = OriginalVideoLlama2(ours).eval()
    theirs.llm.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    return ours, theirs, processor


# ---------------------------------------------------------------------------------------------------- runs
def run_llava(args) -> tuple[str, list[str], list[tuple], tuple[float, bool]]:
    ours, theirs, processor = build_pair()
    rng = np.random.default_rng(0)
    pics = [rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8) for _ in range(args.images)]
    batch = processor(text=[" ".join([processor.image_token] * args.images) + " describe the picture"], images=pics)
    ins = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    n = args.new_tokens
    a = ours(**ins).logits
    b = theirs(**ins).logits[..., : a.shape[-1]]
    diff = (a - b).abs().max().item()
    same = torch.equal(ours.generate(**ins, **gen)[:, -n:], theirs.generate(**ins, **gen)[:, -n:])
    head = (f"LLaVA, {args.images} x 720p images (576 tokens each, prompt {ins['input_ids'].shape[1]} tokens); "
            f"logits max abs diff {diff:.2e}, same generated tokens: {same}.")
    rows = [
        ("forward", lambda: ours(**ins), lambda: theirs(**ins)),
        (f"generate {n} tokens", lambda: ours.generate(**ins, **gen), lambda: theirs.generate(**ins, **gen)),
    ]
    return "Model forward / generate vs transformers' LlavaForConditionalGeneration (same weights)", [head], rows, (diff, same)


def run_videollama2(args) -> tuple[str, list[str], list[tuple], tuple[float, bool]]:
    ours, theirs, processor = build_videollama2_pair(args.frames)
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (args.frames, 720, 1280, 3), dtype=np.uint8)
    batch = processor(text=[processor.video_token + " describe the video"], videos=[video])
    ins = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values_videos")}
    ids, pixels = collapse_runs(ins["input_ids"], ours.config.video_token_id), ins["pixel_values_videos"]
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    n = args.new_tokens
    a = ours(**ins).logits
    b = theirs(ids, pixels).logits
    if a.shape != b.shape:
        raise SystemExit(f"reference built a sequence of another length: {tuple(b.shape)} vs ours {tuple(a.shape)}")
    diff = (a - b).abs().max().item()
    same = torch.equal(ours.generate(**ins, **gen)[:, -n:], theirs.generate(ids, pixels, **gen)[:, -n:])
    tokens = ours.config.video_seq_length(args.frames)
    head = (f"VideoLLaMA 2 (CLIP-336 6 x 256 -> stc_connector depth 4 -> Mistral 4 x 256), {args.frames} x 720p "
            f"frames ({tokens} video tokens, prompt {ins['input_ids'].shape[1]} tokens) vs the original's computation; "
            f"logits max abs diff {diff:.2e}, same generated tokens: {same}.")
    rows = [
        ("forward", lambda: ours(**ins), lambda: theirs(ids, pixels)),
        (f"generate {n} tokens", lambda: ours.generate(**ins, **gen), lambda: theirs.generate(ids, pixels, **gen)),
    ]
    return "Model forward / generate: VideoLLaMA 2 vs the original's computation (same weights)", [head], rows, (diff, same)


RUNS = {"llava": run_llava, "videollama2": run_videollama2}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=[*RUNS, "all"], default="all")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=2, help="LLaVA: 720p images in the prompt")
    p.add_argument("--frames", type=int, default=16, help="VideoLLaMA 2: 720p frames of the video")
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cmd = ("python3 bench/bench_model.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    status = 0
    for name in RUNS if args.model == "all" else [args.model]:
        with torch.no_grad():
            title, head, rows, (diff, same) = RUNS[name](args)
            print(head[0], flush=True)
            if diff > 1e-4 or not same:
                print(f"{name}: ours and the reference disagree (logits diff {diff:.2e}, same tokens {same})", flush=True)
                status = 1
            table = [*head, "", "| stage | ours s | reference s | ratio of medians | median of pair ratios | ratio of fastest |",
                     "|---|---:|---:|---:|---:|---:|"]
            for stage, fa, fb in rows:
                ta, tb, pairs, fastest = alternate_stats(fa, fb, args.repeats)
                row = f"| {stage} | {ta:.3f} | {tb:.3f} | {ta / tb:.2f} | **{pairs:.2f}** | {fastest:.2f} |"
                print(row, flush=True)
                table.append(row)
        if not args.no_record:
            record(title, cmd, table, f"{args.repeats} alternating runs in one process ({args.threads} threads) after "
                   "one warm-up each; shared machine, only the ratios are meaningful (per-pair ratio: each run of ours "
                   "divided by the reference run right after it).")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
