"""Conversion time with and without dropping the consumed source pages (``CheckpointSource.drop_pages``).

Same synthetic original-layout LLaVA checkpoint as ``bench_convert.py`` (two shards, ~2 GB float32 at 40 layers);
``hf_videollm convert`` runs in this process, alternately with page dropping and with ``drop_pages`` replaced by a
no-op (A B A B ..., one warm-up each, medians). The files are deleted afterwards.

    python3 bench/bench_convert_time.py --repeats 5      # appends the table to bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_convert import build  # noqa: E402
from bench_preprocess import alternate, record  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=40, help="40 layers ~ 2.1 GB float32")
    p.add_argument("--format", choices=("bin", "safetensors"), default="bin")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    from hf_videollm.conversion import convert
    from hf_videollm.conversion.sources import CheckpointSource

    work = Path(tempfile.mkdtemp(prefix="bench_convert_time_", dir="/tmp"))
    real = CheckpointSource.drop_pages
    try:
        src = build(work, args.layers, args.format)

        def run(drop: bool):
            def go():
                CheckpointSource.drop_pages = real if drop else (lambda self, t: 0)
                try:
                    convert("llava", src, work / "out", progress=False)
                finally:
                    CheckpointSource.drop_pages = real
                    shutil.rmtree(work / "out", ignore_errors=True)
            return go

        t_drop, t_keep = alternate(run(True), run(False), args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = ["| converter | median s | ratio |", "|---|---:|---:|",
             f"| drop_pages (default) | {t_drop:.2f} | **{t_drop / t_keep:.2f}** |",
             f"| drop_pages a no-op | {t_keep:.2f} | 1.00 |"]
    print("\n".join(table))
    if not args.no_record:
        cmd = "python3 bench/bench_convert_time.py " + " ".join(argv if argv is not None else sys.argv[1:])
        record(f"Conversion time with / without page dropping ({args.format} source)", cmd.strip(), table,
               f"Median of {args.repeats} alternating runs in one process; shared machine, only the ratio is "
               "meaningful.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
