"""Forward and 32-token greedy generate latency: hf_videollm BLIP-2 / InstructBLIP ÷ transformers' own classes.

The same random weights both ways: a transformers ``Blip2ForConditionalGeneration`` (OPT) /
``InstructBlipForConditionalGeneration`` (LLaMA) with a CPU-sized config is saved, converted with our
``transformers`` reader, and both models run the same inputs (one image, a 24-token prompt) in float32, eager
attention, ``torch.inference_mode``. Runs alternate (ours, theirs, ours, ...) so load drift hits both alike; medians.
The two models' logits and greedy tokens are checked equal before timing.

    python bench/bench_blip2.py --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _configs(instruct: bool):
    vision = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=4, image_size=224,
                  patch_size=14, initializer_range=0.02)
    qformer = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                   encoder_hidden_size=256, vocab_size=1000, max_position_embeddings=128)
    if instruct:
        text = dict(model_type="llama", hidden_size=512, intermediate_size=1376, num_hidden_layers=6,
                    num_attention_heads=8, num_key_value_heads=8, vocab_size=2000, max_position_embeddings=512,
                    tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    else:
        text = dict(model_type="opt", hidden_size=512, ffn_dim=2048, num_hidden_layers=6, num_attention_heads=8,
                    vocab_size=2000, word_embed_proj_dim=512, max_position_embeddings=512, bos_token_id=2,
                    eos_token_id=2, pad_token_id=1)
    return vision, qformer, text


def _build_reference(instruct: bool, out: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        PreTrainedTokenizerFast,
    )

    vision, qformer, text = _configs(instruct)
    nq = 32
    image_token = 1999
    torch.manual_seed(0)
    if instruct:
        cfg = InstructBlipConfig(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=nq,
                                 image_token_index=image_token)
        model = InstructBlipForConditionalGeneration(cfg)
    else:
        cfg = Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text, num_query_tokens=nq,
                          image_token_index=image_token)
        model = Blip2ForConditionalGeneration(cfg)
    with torch.no_grad():  # non-trivial weights everywhere (transformers' ViT init std is 1e-10)
        for p in model.parameters():
            p.normal_(0, 0.05)
    model.eval().save_pretrained(out)
    vocab = {f"w{i}": i for i in range(1999)}
    vocab["<image>"] = image_token
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", bos_token="w1", eos_token="w2", pad_token="w0")
    fast.save_pretrained(out)
    if instruct:
        fast.save_pretrained(out / "qformer_tokenizer")
    return model, image_token, nq


def _time(fn, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def run(instruct: bool, repeats: int) -> dict:
    from hf_videollm.conversion import convert
    from hf_videollm.registry import get_entry

    name = "instructblip" if instruct else "blip2"
    with tempfile.TemporaryDirectory() as d:
        ref_dir, ours_dir = Path(d) / "ref", Path(d) / "ours"
        theirs, image_token, nq = _build_reference(instruct, ref_dir)
        theirs.set_attn_implementation("eager")
        convert(name, ref_dir, ours_dir, source_format="transformers", progress=False)
        ours = get_entry(name).model_class.from_pretrained(ours_dir, attn_implementation="eager",
                                                           dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, 224, 224, generator=g)
    text = torch.randint(3, 1900, (1, 24), generator=g)
    ids = torch.cat([torch.full((1, nq), image_token), torch.tensor([[1]]), text], 1)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}
    if instruct:
        q = torch.randint(3, 900, (1, 12), generator=g)
        batch.update(qformer_input_ids=q, qformer_attention_mask=torch.ones_like(q))
    gen = dict(max_new_tokens=32, min_new_tokens=32, do_sample=False)
    with torch.inference_mode():
        a, b = ours(**batch).logits, theirs(**batch).logits
        max_diff = float((a - b).abs().max())
        ga, gb = ours.generate(**batch, **gen), theirs.generate(**batch, **gen)
        same_tokens = torch.equal(ga[:, -32:], gb[:, -32:])
        fwd = {"ours": [], "theirs": []}
        gen_t = {"ours": [], "theirs": []}
        for _ in range(repeats):
            fwd["ours"] += _time(lambda: ours(**batch), 1)
            fwd["theirs"] += _time(lambda: theirs(**batch), 1)
            gen_t["ours"] += _time(lambda: ours.generate(**batch, **gen), 1)
            gen_t["theirs"] += _time(lambda: theirs.generate(**batch, **gen), 1)
    med = {k: {w: statistics.median(v[w]) for w in v} for k, v in (("forward", fwd), ("generate32", gen_t))}
    return {"model": name, "max_abs_logit_diff": max_diff, "same_greedy_tokens": same_tokens, "median_s": med,
            "ratio": {k: med[k]["ours"] / med[k]["theirs"] for k in med}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--models", default="blip2,instructblip")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for m in args.models.split(","):
        r = run(m == "instructblip", args.repeats)
        print(r)


if __name__ == "__main__":
    main()
