"""One training step of the default demo's model under variants, alternating in one process (issue 18 item 5).

Each variant gets its own copy of the model (same weights) and its own AdamW; the steps alternate A, B, C, ... on one
fixed batch of 32 real demo samples (forward + backward + gradient clipping at 1.0 + AdamW, lr 1e-3, betas (0.9,
0.95)), so machine load hits every variant alike. Prints the median and minimum step time and the loss each variant
reaches (equal up to float rounding when a variant does not change the maths).

    OMP_NUM_THREADS=1 python bench/bench_demo_step_variants.py W base fused foreach eager_llm eager_vision noclip

``W``: a demo work directory (``W/base_model``, ``W/data/train``). Variants: ``base`` (what the Trainer's
``adamw_torch`` gets on CPU: the for-loop AdamW), ``fused`` / ``foreach`` AdamW, ``eager_llm`` / ``eager_vision`` /
``eager_all`` (eager attention in that sub-model), ``noclip``, ``clipforeach``. ``--attention`` also times SDPA's CPU
kernel against the math backend and a manual softmax for the demo's two attention shapes. Results in bench/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch


def attention_case(shape: tuple[int, ...], causal: bool) -> None:
    """SDPA's CPU kernel vs the math backend vs a manual softmax, forward + backward, alternating."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(*shape, requires_grad=True) for _ in range(3))

    def flash():
        F.scaled_dot_product_attention(q, k, v, is_causal=causal).sum().backward()

    def math():
        with sdpa_kernel(SDPBackend.MATH):
            F.scaled_dot_product_attention(q, k, v, is_causal=causal).sum().backward()

    def manual():
        s = (q @ k.transpose(-1, -2)) * shape[-1] ** -0.5
        if causal:
            s = s.masked_fill(torch.ones(shape[2], shape[2], dtype=torch.bool).triu(1), float("-inf"))
        (s.softmax(-1) @ v).sum().backward()

    fns = {"sdpa": flash, "math": math, "manual": manual}
    times = {n: [] for n in fns}
    for _ in range(3):
        for f in fns.values():
            f()
    for _ in range(30):
        for n, f in fns.items():
            t = time.perf_counter()
            f()
            times[n].append(time.perf_counter() - t)
    print(shape, "causal" if causal else "", {n: f"{statistics.median(t) * 1e3:.2f} ms" for n, t in times.items()},
          "forward + backward")


def attention_shapes() -> None:
    attention_case((32, 8, 82, 8), True)  # the LLM's
    attention_case((256, 2, 65, 16), False)  # the CLIP tower's


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--attention"]
    if "--attention" in sys.argv:
        attention_shapes()
    if len(args) < 2:
        return
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import hf_videollm  # noqa: F401
    from hf_videollm.training.collator import VideoLLMCollator
    from hf_videollm.training.data import normalize_record

    workdir, variants = args[0], args[1:]
    mdir, data = f"{workdir}/base_model", f"{workdir}/data/train"
    processor = AutoProcessor.from_pretrained(mdir)
    rows = [json.loads(line) for line in open(f"{data}/data.jsonl")][:32]
    batch = VideoLLMCollator(processor)(
        [{"index": i, "messages": normalize_record(dict(r, _media_root=data))} for i, r in enumerate(rows)])

    def make(variant):
        torch.manual_seed(0)
        kw = {"attn_implementation": "eager"} if variant == "eager_all" else {}
        model = AutoModelForImageTextToText.from_pretrained(mdir, **kw)
        if variant in ("eager_llm", "eager_vision"):
            eager, sdpa = ("text_config", "vision_config") if variant == "eager_llm" else ("vision_config", "text_config")
            model.set_attn_implementation({eager: "eager", sdpa: "sdpa"})
        model.train()
        opt_kw = {"fused": True} if variant == "fused" else {"foreach": variant == "foreach"}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0, **opt_kw)

        def step():
            out = model(**batch)
            out.loss.backward()
            if variant != "noclip":
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True if variant == "clipforeach" else None)
            opt.step()
            model.zero_grad(set_to_none=True)
            return out.loss.item()

        return step

    steps = {v: make(v) for v in variants}
    for v in variants:
        for _ in range(3):
            steps[v]()
    times, losses = {v: [] for v in variants}, {}
    for _ in range(int(os.environ.get("REPS", "15"))):
        for v in variants:
            t = time.perf_counter()
            losses[v] = steps[v]()
            times[v].append(time.perf_counter() - t)
    print("threads", torch.get_num_threads(), "load average", " ".join(open("/proc/loadavg").read().split()[:3]))
    for v in variants:
        print(f"{v:12s} median {statistics.median(times[v]):.4f} s  min {min(times[v]):.4f} s  "
              f"loss after {len(times[v]) + 3} steps {losses[v]:.6f}")


if __name__ == "__main__":
    main()
