"""The default demo's data path without the model (issue 18 item 5): the time the training phase spends on data.

Reads a demo work directory (``hf-videollm demo --workdir W`` leaves ``W/data/train/schedule.jsonl`` and
``W/base_model``) and times what ``train()`` does with the data before and between the steps: ``load_records`` of a
fresh copy of the schedule (no ``datasets`` cache), the up-front checks (``VideoLLMDataset``), the collator cache
prefill in 2 threads when this code has it (``TrainConfig.prefill_cache_threads``), then every batch of 32 in file
order as the Trainer's DataLoader gives them (the first epoch decodes each video once when nothing was prefilled).

    OMP_NUM_THREADS=2 python bench/bench_demo_data_path.py W [--batch-size 32] [--threads 2]

Run it alternately with two checkouts (``PYTHONPATH=<checkout>``) to compare them; results in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdir", type=Path)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="prefill threads (when the code has prefill)")
    args = ap.parse_args()
    from transformers import AutoProcessor

    import hf_videollm
    from hf_videollm.training.collator import VideoLLMCollator
    from hf_videollm.training.data import VideoLLMDataset, load_records

    src = args.workdir / "data" / "train" / "schedule.jsonl"
    copy = src.with_name(f"schedule_bench_{os.getpid()}.jsonl")  # a new file: datasets reads it afresh
    shutil.copy(src, copy)
    try:
        processor = AutoProcessor.from_pretrained(args.workdir / "base_model")
        load = open("/proc/loadavg").read().split()[:3]
        t0 = time.perf_counter()
        records = load_records([str(copy)])
        t1 = time.perf_counter()
        dataset = VideoLLMDataset(records, processor)
        t2 = time.perf_counter()
        collator = VideoLLMCollator(processor, cache=True)
        if hasattr(collator, "prefill"):
            collator.prefill((dataset[i] for i in dataset.distinct_positions()), threads=args.threads)
        t3 = time.perf_counter()
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=False, collate_fn=collator)
        n = sum(1 for _ in loader)
        t4 = time.perf_counter()
    finally:
        copy.unlink(missing_ok=True)
    print(f"{Path(hf_videollm.__file__).parent.parent} (load average {' '.join(load)}): load_records {t1 - t0:.1f} s, "
          f"checks {t2 - t1:.1f} s, prefill {t3 - t2:.1f} s, {n} batches {t4 - t3:.1f} s; total {t4 - t0:.1f} s")


if __name__ == "__main__":
    main()
