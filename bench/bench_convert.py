"""Conversion peak memory: an original-layout LLaVA checkpoint (two pickled shards, ~``--gb`` GB) -> hf_videollm.

Builds a synthetic release from the llava_v1_5 fixture's layout (its config, tokenizer and CLIP tower; the LLaMA made
big: ``--layers`` x hidden 1024 / intermediate 2816, float32, split into two ``pytorch_model-*.bin`` shards), then
converts it in fresh child processes, one after the other, and reports each one's peak RSS (``VmHWM`` of
/proc/self/status: the child's own high-water mark -- ``ru_maxrss`` is not usable here, Linux carries the parent's peak
into it across the fork + exec, and the parent has just written the 2 GB checkpoint) against the largest source shard:

* ``hf_videollm convert`` (this checkout);
* ``--before DIR``: the same with another checkout's ``hf_videollm`` (e.g. ``/work/main``) for a before/after row;
* ``naive``: load both shards (``torch.load``), rename the keys, ``safetensors.save_file`` -- the plain script.

"peak" is the whole process (Python + torch + transformers imports included); "above imports" subtracts the RSS
measured right before the conversion starts. The files are deleted afterwards (``--keep`` keeps them).

    python3 bench/bench_convert.py --before /work/main     # ~2 GB, appends the table to bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_preprocess import record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import os, resource, sys, json
sys.path.insert(0, sys.argv[1])
import torch, transformers
from hf_videollm.conversion import convert
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
base = rss()
if sys.argv[2] == 'naive':
    import re
    from safetensors.torch import save_file
    src = sys.argv[3]
    st = os.path.exists(os.path.join(src, 'model.safetensors.index.json'))
    idx = json.load(open(os.path.join(src, 'model.safetensors.index.json' if st else 'pytorch_model.bin.index.json')))['weight_map']
    sd = {}
    for f in sorted(set(idx.values())):
        if st:
            from safetensors.torch import load_file
            sd.update(load_file(os.path.join(src, f)))
        else:
            sd.update(torch.load(os.path.join(src, f), map_location='cpu', weights_only=True))
    out = {}
    for k, v in sd.items():
        if 'vision_tower' in k:
            continue
        k = re.sub(r'^model\.mm_projector\.0\.', 'multi_modal_projector.linear_1.', k)
        k = re.sub(r'^model\.mm_projector\.2\.', 'multi_modal_projector.linear_2.', k)
        k = re.sub(r'^model\.', 'language_model.model.', k)
        out[k] = v.contiguous()
    os.makedirs(sys.argv[4], exist_ok=True)
    save_file(out, os.path.join(sys.argv[4], 'model.safetensors'))
else:
    convert('llava', sys.argv[3], sys.argv[4], progress=False, max_shard_size='5GB')
maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
try:  # this process's own high-water RSS: ru_maxrss also carries the parent's peak over fork/vfork + exec
    peak = [int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]
except (OSError, IndexError):
    peak = maxrss
print(json.dumps({'base': base, 'peak': peak, 'ru_maxrss': maxrss}))
"""


def build(workdir: Path, layers: int, fmt: str = "bin") -> Path:
    fixtures = Path(os.environ.get("HF_VIDEOLLM_FIXTURES", "/work/shared/fixtures"))
    orig = fixtures / "llava_v1_5" / "single_image" / "original"
    if not orig.is_dir():
        raise SystemExit(f"needs the llava_v1_5 fixture at {orig} (set HF_VIDEOLLM_FIXTURES)")
    dst = workdir / "original"
    shutil.copytree(orig, dst, ignore=lambda d, names: [n for n in names if Path(d) == orig and n.startswith("pytorch_model")])
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    dst.chmod(0o755)
    h, inter = 1024, 2816
    cfg = json.loads((orig / "config.json").read_text())
    cfg.update(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=8,
               num_key_value_heads=8, mm_vision_tower=str(dst / "vision_tower"))
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    small = {}
    for f in sorted(orig.glob("pytorch_model-*.bin")):
        small.update(torch.load(f, map_location="cpu", weights_only=True))
    vocab, mm = cfg["vocab_size"], cfg["mm_hidden_size"]
    g = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    def layer(i):
        p = f"model.layers.{i}."
        out = {p + f"self_attn.{n}_proj.weight": rnd(h, h) for n in "qkvo"}
        out.update({p + "mlp.gate_proj.weight": rnd(inter, h), p + "mlp.up_proj.weight": rnd(inter, h),
                    p + "mlp.down_proj.weight": rnd(h, inter)})
        out.update({p + "input_layernorm.weight": torch.ones(h), p + "post_attention_layernorm.weight": torch.ones(h)})
        return out

    half = layers // 2
    shards = [
        {"model.embed_tokens.weight": rnd(vocab, h)},
        {"model.norm.weight": torch.ones(h), "lm_head.weight": rnd(vocab, h), "model.mm_projector.0.weight": rnd(h, mm),
         "model.mm_projector.0.bias": rnd(h), "model.mm_projector.2.weight": rnd(h, h), "model.mm_projector.2.bias": rnd(h),
         **{k: v for k, v in small.items() if "vision_tower" in k}},
    ]
    weight_map, total = {}, 0
    for si, (lo, hi) in enumerate(((0, half), (half, layers))):
        sd = shards[si]
        for i in range(lo, hi):
            sd.update(layer(i))
        if fmt == "safetensors":
            from safetensors.torch import save_file

            name = f"model-{si + 1:05d}-of-00002.safetensors"
            save_file(sd, str(dst / name))
        else:
            name = f"pytorch_model-{si + 1:05d}-of-00002.bin"
            torch.save(sd, dst / name)
        for k, v in sd.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
        del sd
        shards[si] = None
    index = "model.safetensors.index.json" if fmt == "safetensors" else "pytorch_model.bin.index.json"
    (dst / index).write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    return dst


def measure(code_root: str, mode: str, src: Path, out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": code_root}
    res = subprocess.run([sys.executable, "-c", CHILD, code_root, mode, str(src), str(out)], env=env,
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{mode} ({code_root}) failed:\n{res.stderr[-3000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=40, help="40 layers ~ 2.1 GB float32")
    p.add_argument("--before", default=None, help="another checkout whose hf_videollm to measure too")
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--repeats", type=int, default=2, help="runs per converter (alternating)")
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--format", choices=("bin", "safetensors"), default="bin",
                   help="source shards: pickled pytorch_model-*.bin (default) or model-*.safetensors")
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_convert_", dir="/tmp"))
    try:
        src = build(work, args.layers, args.format)
        shards = sorted(src.glob("model-*.safetensors" if args.format == "safetensors" else "pytorch_model-*.bin"))
        largest = max(f.stat().st_size for f in shards)
        total = sum(f.stat().st_size for f in shards)
        runs = [("hf_videollm convert (this checkout)", str(ROOT), "convert")]
        if args.before:
            runs.append((f"hf_videollm convert ({args.before})", args.before, "convert"))
        runs.append(("naive: torch.load all + save_file", str(ROOT), "naive"))
        table = [f"Source: {len(shards)} {'safetensors' if args.format == 'safetensors' else 'pickled'} shards, {total / 2**30:.2f} GiB, largest {largest / 2**30:.2f} GiB.", "",
                 "| converter | peak RSS GiB | peak / largest shard | above imports GiB | above imports / largest "
                 "| (ru_maxrss GiB, parent's peak included) |",
                 "|---|---:|---:|---:|---:|---:|"]
        for rep in range(args.repeats):  # alternating converters, each run in its own process
            for label, root, mode in runs:
                r = measure(root, mode, src, work / "out")
                above = r["peak"] - r["base"]
                row = (f"| {label}, run {rep + 1} | {r['peak'] / 2**30:.2f} | **{r['peak'] / largest:.2f}** | "
                       f"{above / 2**30:.2f} | {above / largest:.2f} | {r['ru_maxrss'] / 2**30:.2f} |")
                print(row, flush=True)
                table.append(row)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if not args.no_record:
        cmd = "python3 bench/bench_convert.py " + " ".join(argv if argv is not None else sys.argv[1:])
        record(f"Conversion peak RSS (original-layout LLaVA, two {args.format} shards)", cmd.strip(), table,
               "Each converter runs alone in a fresh child process (1 thread); peak = VmHWM of that process "
               "(its own high-water RSS; ru_maxrss would include the parent's peak).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
