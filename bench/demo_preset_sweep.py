"""One run of the default demo's benchmark (``run_benchmark``: data -> training -> held-out evaluation) with fields of
the VideoLLaMA 2 demo preset replaced -- for comparing presets (issue 18 item 5; results in bench/RESULTS.md).

    OMP_NUM_THREADS=1 python bench/demo_preset_sweep.py NAME SEED '{"max_steps": 1400, "learning_rate": 2e-3}'
    OMP_NUM_THREADS=1 python bench/demo_preset_sweep.py NAME SEED '{"lr_scheduler_type": "cosine"}'

The JSON names :class:`hf_videollm.demo_presets.DemoPreset` fields (``trainer_args`` replaces the whole dict). The
videos of each (split, seed, counts) are generated once under ``--cache`` (default /tmp/demo_sweep/cache) and linked
into the run's work directory, so runs with the same data skip the generation (the same files ``hf-videollm demo``
would write: same seeds, same arguments). Appends one JSON line (accuracies, targets met, losses, seconds) to
``/tmp/demo_sweep/results.jsonl`` and prints it. Training is deterministic per seed and thread count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(os.environ.get("DEMO_SWEEP_DIR", "/tmp/demo_sweep"))


def main() -> None:
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    name, seed, over = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    import hf_videollm.demo as D
    import hf_videollm.demo_presets as P
    import hf_videollm.synthetic as S

    base = P.videollama2_demo_preset()
    P.videollama2_demo_preset = lambda: dataclasses.replace(base, **over)  # the registry resolves it at each call
    generate = S.generate_dataset

    def cached(out_dir, *, split, samples_per_kind, seed, workers=1, progress=None, **kw):
        key = json.dumps([split, samples_per_kind, seed, sorted(kw.items(), key=str)], default=str)
        cache = ROOT / "cache" / hashlib.md5(key.encode()).hexdigest()[:10]
        if not (cache / split / "data.jsonl").exists():
            generate(cache, split=split, samples_per_kind=samples_per_kind, seed=seed, workers=workers, **kw)
        d = Path(out_dir) / split
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(cache / split / "data.jsonl", d / "data.jsonl")  # the schedule is written beside it: per run
        if not (d / "videos").exists():
            os.symlink(cache / split / "videos", d / "videos")
        return d / "data.jsonl"

    S.generate_dataset = cached
    workdir = ROOT / "runs" / f"{name}_s{seed}"
    shutil.rmtree(workdir, ignore_errors=True)
    t = time.time()
    report = D.run_benchmark(D.BenchSettings(workdir=str(workdir), seed=seed, progress=False))
    acc = report["accuracy"]
    out = {
        "name": name, "seed": seed, "over": over, "steps": report["settings"]["max_steps"],
        "video": {k: round(v, 2) for k, v in acc["video"].items()},
        "single": {k: round(v, 2) for k, v in acc["single_frame"].items()},
        "met": sum(t["met"] for t in report["targets"]), "of": len(report["targets"]),
        "seconds": report["seconds"], "wall": round(time.time() - t, 1),
        "loss": [round(x, 4) for x in report["train_loss"]["logged"]], "threads": report["torch_threads"],
        "load": open("/proc/loadavg").read().split()[:3],
    }
    print(json.dumps(out))
    with open(ROOT / "results.jsonl", "a") as f:
        f.write(json.dumps(out) + "\n")
    shutil.rmtree(workdir / "model", ignore_errors=True)


if __name__ == "__main__":  # data generation spawns worker processes
    main()
