"""Why does the tiny VideoLLaMA 2 of the demo not learn direction / shape in the mix? A plain training loop for fast
what-ifs on the data and base model of a ``bench-synthetic`` work directory (results: bench/RESULTS.md).

    hf-videollm bench-synthetic --model videollama2 --workdir W --quiet      # data + base model (+ a Trainer run)
    OMP_NUM_THREADS=1 python bench/demo_diagnostics.py W --steps 1500 --every 250 [--set text.initializer_range=0.1]
        [--set projector_type=stc_connector_v35] [--kinds direction] [--curriculum direction:600] [--question-first]
        [--probe]

The loop: AdamW (weight decay 0), lr constant after a 30-step warmup, batch 32 of training samples drawn with
replacement, the same processor and chat template as the demo; frames are decoded once and cached beside the data.
Accuracy per kind = the answer option with the highest first-token logit (as ``hf_videollm.demo.evaluate``).
``--set`` changes a config field (``text.X`` / ``vision.X`` / top-level) and re-initialises the model (seed 0).
``--probe``: instead of the LLM, a linear head on the mean of the connector's tokens (vision path only).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hf_videollm.modeling.videollama2 import VideoLLMVideoLlama2ForConditionalGeneration
from hf_videollm.processors.videollama2 import VideoLLMVideoLlama2Processor
from hf_videollm.synthetic import SHAPES

VIDEO_INPUT = VideoLLMVideoLlama2ForConditionalGeneration.input_spec.encoder_inputs("video")[0]  # the video pixels


def _load(workdir: Path, proc, split: str, kinds: set[str] | None):
    rows = [json.loads(line) for line in (workdir / "data" / split / "data.jsonl").read_text().splitlines()]
    cache = workdir / f"diagnostics_{split}_{proc.image_size}.pt"
    if cache.exists():
        frames = torch.load(cache, weights_only=True)
    else:
        paths = [next(p["video"] for p in r["messages"][0]["content"] if p["type"] == "video") for r in rows]
        frames = torch.stack([
            proc(text=["<video>"], videos=[str(workdir / "data" / split / p)])[VIDEO_INPUT][0] for p in paths
        ])
        torch.save(frames, cache)
    if kinds and "shape" in kinds:  # pseudo-kind: the appearance questions about shape
        rows = [dict(r, kind="shape") if r["kind"] == "appearance" and r["answer"] in SHAPES else r for r in rows]
    keep = [i for i, r in enumerate(rows) if kinds is None or r["kind"] in kinds]
    return [rows[i] for i in keep], frames[keep]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--every", type=int, default=250)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=JSON")
    ap.add_argument("--kinds", default=None, help="comma-separated kinds to train and test on (default: all)")
    ap.add_argument("--curriculum", default=None, metavar="KIND[+shape]:STEPS",
                    help="first STEPS steps on KIND only (+shape: and appearance questions about shape)")
    ap.add_argument("--question-first", action="store_true", help="put the question before the video in the prompt")
    ap.add_argument("--probe", action="store_true", help="linear head on mean-pooled connector tokens, no LLM")
    ap.add_argument("--part-lr", action="append", default=[], metavar="PART=LR", help="another lr for a part")
    ap.add_argument("--beta2", type=float, default=0.999, help="AdamW's second-moment decay")
    ap.add_argument("--freeze", default=None, help="comma-separated parts kept at their random init (e.g. vision_tower)")
    args = ap.parse_args()

    proc = VideoLLMVideoLlama2Processor.from_pretrained(args.workdir / "model")
    model = VideoLLMVideoLlama2ForConditionalGeneration.from_pretrained(args.workdir / "base_model")
    cfg = model.config
    for item in args.set:
        field, value = item.split("=", 1)
        target, name = (cfg.text_config, field[5:]) if field.startswith("text.") else (
            (cfg.vision_config, field[7:]) if field.startswith("vision.") else (cfg, field))
        setattr(target, name, json.loads(value) if value[:1] in "0123456789-[{tf" else value)
        if field == "vision.patch_size":
            proc.patch_size = int(value)
        if field == "projector_type":
            proc.projector_type = json.loads(value) if value[:1] == '"' else value
    torch.manual_seed(0)
    model = VideoLLMVideoLlama2ForConditionalGeneration(cfg)
    kinds = set(args.kinds.split(",")) if args.kinds else None
    train_rows, train_x = _load(args.workdir, proc, "train", kinds)
    test_rows, test_x = _load(args.workdir, proc, "test", kinds)

    first_pool = None
    if args.curriculum:
        what, n = args.curriculum.split(":")
        kind, _, extra = what.partition("+")
        first_steps = int(n)
        first_pool = torch.tensor([
            i for i, r in enumerate(train_rows)
            if r["kind"] == kind or (extra == "shape" and r["kind"] == "appearance" and r["answer"] in ("circle", "square", "triangle"))
        ])

    classes = sorted({a for r in train_rows for a in r["choices"]})
    head = torch.nn.Linear(cfg.text_config.hidden_size, len(classes)) if args.probe else None

    def batch(rows, x, with_answer: bool):
        def user(m):
            return {**m, "content": list(reversed(m["content"]))} if args.question_first else m

        convs = [[user(r["messages"][0])] + ([r["messages"][1]] if with_answer else []) for r in rows]
        texts = [proc.apply_chat_template(c, add_generation_prompt=not with_answer, mark_generation=True) for c in convs]
        blank = [torch.zeros(x.shape[1], 8, 8, 3, dtype=torch.uint8).numpy() for _ in rows]
        b = proc(text=texts, videos=blank, return_labels=True, padding_side="left")
        b[VIDEO_INPUT] = x
        return b

    def probe_logits(x):
        return head(torch.stack(model.get_video_features(x)).mean(1))

    def evaluate():
        model.eval()
        per: dict[str, list[bool]] = {}
        with torch.no_grad():
            for i in range(0, len(test_rows), 50):
                rows, x = test_rows[i:i + 50], test_x[i:i + 50]
                if args.probe:
                    preds = [classes[j] for j in probe_logits(x).argmax(-1).tolist()]
                else:
                    b = batch(rows, x, with_answer=False)
                    b.pop("labels")
                    logits = model(**b).logits[:, -1]
                    preds = [r["choices"][int(lg[[proc.tokenizer.convert_tokens_to_ids(c) for c in r["choices"]]].argmax())]
                             for r, lg in zip(rows, logits)]
                for r, p in zip(rows, preds):
                    per.setdefault(r["kind"], []).append(p == r["answer"])
        model.train()
        return {k: round(sum(v) / len(v), 2) for k, v in sorted(per.items())}

    if args.freeze:
        model.freeze_parts(*args.freeze.split(","))
    part_lr = {k: float(v) for k, v in (item.split("=") for item in args.part_lr)}
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(part_lr.get(model.part_of_parameter(name), args.lr), []).append(p)
    if head is not None:
        groups.setdefault(args.lr, []).extend(head.parameters())
    opt = torch.optim.AdamW([{"params": ps, "lr": lr} for lr, ps in groups.items()], weight_decay=0.0,
                            betas=(0.9, args.beta2))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    start = time.time()
    for step in range(args.steps + 1):
        if first_pool is not None and step < first_steps:
            idx = first_pool[torch.randint(0, len(first_pool), (args.batch_size,))].tolist()
        else:
            idx = torch.randint(0, len(train_rows), (args.batch_size,)).tolist()
        rows = [train_rows[i] for i in idx]
        if args.probe:
            target = torch.tensor([classes.index(r["answer"]) for r in rows])
            loss = torch.nn.functional.cross_entropy(probe_logits(train_x[idx]), target)
        else:
            loss = model(**batch(rows, train_x[idx], with_answer=True)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % args.every == 0:
            print(f"step {step:5d}  loss {loss.item():.3f}  accuracy {evaluate()}  {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
