"""Model forward / ``generate``: hf_videollm LLaVA against transformers' ``LlavaForConditionalGeneration``, same weights.

CPU-sized config with the real image geometry (CLIP at 336 px, patch 14: 576 tokens per image;
``vision_feature_layer=-2``): CLIP 6 x 256, LLaMA 4 x 256, float32, eager attention. Both models get the same
``input_ids`` / ``pixel_values`` (our processor's output); the logits are compared. Times are medians of
``--repeats`` alternating runs (A B A B ...) in one process -- only the ratio is meaningful on a shared machine.

    python3 bench/bench_model.py            # prints the table, appends it to bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_preprocess import alternate, record  # noqa: E402


def build_pair():
    """(ours, transformers' LlavaForConditionalGeneration with the same weights, our processor)."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    from hf_videollm.tiny import build_tiny

    vision = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=4)
    text = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4)
    ours, processor = build_tiny("llava", image_size=336, vision_config=vision, text_config=text)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ours, theirs, processor = build_pair()
    rng = np.random.default_rng(0)
    pics = [rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8) for _ in range(args.images)]
    batch = processor(text=[" ".join([processor.image_token] * args.images) + " describe the picture"], images=pics)
    ins = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    with torch.no_grad():
        a = ours(**ins).logits
        b = theirs(**ins).logits[..., : a.shape[-1]]
        diff = (a - b).abs().max().item()
        ga = ours.generate(**ins, **gen)
        gb = theirs.generate(**ins, **gen)
        same = torch.equal(ga[:, -args.new_tokens:], gb[:, -args.new_tokens:])
        rows = [
            ("forward", lambda: ours(**ins), lambda: theirs(**ins)),
            (f"generate {args.new_tokens} tokens", lambda: ours.generate(**ins, **gen), lambda: theirs.generate(**ins, **gen)),
        ]
        table = [f"LLaVA, {args.images} x 720p images (576 tokens each, prompt {ins['input_ids'].shape[1]} tokens); "
                 f"logits max abs diff {diff:.2e}, same generated tokens: {same}.", "",
                 "| stage | ours s | transformers s | ratio |", "|---|---:|---:|---:|"]
        for name, fa, fb in rows:
            ta, tb = alternate(fa, fb, args.repeats)
            row = f"| {name} | {ta:.3f} | {tb:.3f} | **{ta / tb:.2f}** |"
            print(row, flush=True)
            table.append(row)
    print(table[0])
    if not args.no_record:
        cmd = "python3 bench/bench_model.py " + " ".join(argv if argv is not None else sys.argv[1:])
        record("Model forward / generate vs transformers' LlavaForConditionalGeneration (same weights)", cmd.strip(),
               table, f"Median of {args.repeats} alternating runs in one process ({args.threads} threads); shared "
               "machine, only the ratios are meaningful.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
