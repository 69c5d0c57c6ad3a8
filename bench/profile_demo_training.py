"""Where the default demo's training phase spends its time (issue 18 item 5): timers around the Trainer's parts.

Runs the demo's own training configuration (``run_benchmark``'s ``TrainConfig``: the VideoLLaMA 2 preset, batch 32,
the hard-first schedule for STEPS steps, the collator cache) on the data and base model of a demo work directory
(``hf-videollm demo --workdir W``; the schedule is rewritten for STEPS), and prints one JSON line: seconds and calls of
the up-front checks, the data fetch (dataset items, collator, encoding of new samples), forward + backward, gradient
clipping, AdamW, the scheduler, logging and the final save.

    OMP_NUM_THREADS=2 python bench/profile_demo_training.py W STEPS [name=value ...]

``name=value`` (JSON values) sets a ``TrainConfig`` field (``prefill_cache_threads=2``, ``dataloader_num_workers=1``)
or else a ``TrainingArguments`` one (``optim="adamw_torch_fused"``). Results in bench/RESULTS.md.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import json
import shutil
import sys
import time
from pathlib import Path

import torch


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    import transformers

    from hf_videollm.demo import write_schedule
    from hf_videollm.registry import MODELS
    from hf_videollm.training import collator as C
    from hf_videollm.training import data as D
    from hf_videollm.training import trainer as TR

    T = importlib.import_module("hf_videollm.training.train")
    workdir, steps = Path(sys.argv[1]), int(sys.argv[2])
    fields = {f.name for f in dataclasses.fields(T.TrainConfig)}
    cfg_kw, extra = {}, {}
    for item in sys.argv[3:]:
        name, value = item.split("=", 1)
        (cfg_kw if name in fields else extra)[name] = json.loads(value)
    preset = MODELS["videollama2"].get_demo_preset()
    schedule, _ = write_schedule(workdir / "data" / "train" / "data.jsonl", first_types=preset.first_types,
                                 first_steps=round(preset.first_fraction * steps), steps=steps,
                                 batch_size=preset.batch_size, seed=0)
    out = workdir / f"profile_{steps}"
    shutil.rmtree(out, ignore_errors=True)
    seconds, calls = collections.defaultdict(float), collections.Counter()

    def timed(owner, name, label):
        fn = getattr(owner, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                seconds[label] += time.perf_counter() - t
                calls[label] += 1

        setattr(owner, name, wrapper)

    timed(D, "validate_records", "checks")
    timed(D.VideoLLMDataset, "__getitem__", "dataset_item")
    timed(C.VideoLLMCollator, "__call__", "collator")
    timed(C.VideoLLMCollator, "_encode", "encode_new_sample")
    if hasattr(C.VideoLLMCollator, "prefill"):
        timed(C.VideoLLMCollator, "prefill", "prefill")
    timed(TR.VideoLLMTrainer, "get_batch_samples", "data_fetch")
    timed(TR.VideoLLMTrainer, "training_step", "forward_backward")
    timed(TR.VideoLLMTrainer, "_clip_grad_norm", "clip_grad_norm")
    timed(TR.VideoLLMTrainer, "_maybe_log_save_evaluate", "log")
    timed(TR.VideoLLMTrainer, "save_model", "final_save")
    timed(torch.optim.AdamW, "step", "adamw_step")
    timed(torch.optim.lr_scheduler.LambdaLR, "step", "scheduler_step")
    cfg = T.TrainConfig(
        model=str(workdir / "base_model"), data=[str(schedule)], shuffle=False, output_dir=str(out),
        model_family="videollama2", stage=preset.stage, trainable_parts=["vision_tower", "connector", "language_model"],
        learning_rate=preset.learning_rate, max_steps=steps, per_device_train_batch_size=preset.batch_size,
        warmup_ratio=preset.warmup_ratio, weight_decay=0.0, lr_scheduler_type="cosine", seed=0,
        cache_encoded_samples=True, logging_steps=max(1, steps // 10), use_cpu=True,
        extra_training_args={"disable_tqdm": True, "max_grad_norm": 1.0, **preset.trainer_args, **extra}, **cfg_kw,
    )
    transformers.logging.set_verbosity_error()
    load = open("/proc/loadavg").read().split()[:3]
    t = time.perf_counter()
    trainer = T.train(cfg)
    total = time.perf_counter() - t
    losses = [round(h["loss"], 4) for h in trainer.state.log_history if "loss" in h]
    print(json.dumps({"steps": steps, "settings": {**cfg_kw, **extra}, "load_average_before": load,
                      "torch_threads": torch.get_num_threads(), "train_s": round(total, 1),
                      **{k: [round(v, 2), calls[k]] for k, v in seconds.items()}, "losses": losses}))
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
