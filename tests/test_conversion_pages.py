"""Dropping the memory-mapped pages of consumed source tensors during conversion (CheckpointSource.drop_pages).

A pickled shard is memory-mapped (``torch.load(mmap=True)``); once a tensor's outputs are written the engine hands
its pages back (``madvise(MADV_DONTNEED)``, Linux).  The output must not change, the pages must really leave the
process (RSS of the mapping in /proc/self/smaps), and anything unsupported must fall back silently.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_videollm.conversion import sources as sources_mod
from hf_videollm.conversion.engine import (
    CheckpointSource,
    KeyTable,
    Merge,
    Rename,
    Transform,
    concat,
    convert_checkpoint,
    split_fused,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.exists("/proc/self/smaps"),
                                reason="page dropping is Linux-only")


def _mapped_rss_kib(path: Path) -> int:
    """Resident KiB of this process's mappings of ``path``."""
    target, total, cur = os.path.realpath(path), 0, None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                cur = head[5].rstrip("\n") if len(head) == 6 else None
            elif line.startswith("Rss:") and cur == target:
                total += int(line.split()[1])
    return total


def _shards() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return [
        {"l0.w": torch.randn(96, 64, generator=g), "l0.qkv": torch.randn(3 * 64, 64, generator=g),
         "l0.q_bias": torch.randn(2048, generator=g), "l0.n": torch.ones(64)},
        {"l1.w": torch.randn(64, 64, generator=g).half(), "l0.v_bias": torch.randn(2048, generator=g),
         "emb": torch.randn(300, 64, generator=g)},
    ]


def _write_bin(d: Path, fmt: str = "bin") -> Path:
    import json

    d.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    stem = "pytorch_model" if fmt == "bin" else "model"
    for i, shard in enumerate(_shards(), start=1):
        name = f"{stem}-{i:05d}-of-00002.{'bin' if fmt == 'bin' else 'safetensors'}"
        if fmt == "bin":
            torch.save(shard, d / name)
        else:
            save_file(shard, str(d / name))
        weight_map.update(dict.fromkeys(shard, name))
    (d / f"{stem}.{fmt}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


TABLE = KeyTable("pages", [
    Merge((r"^(.*)\.q_bias$", r"^(.*)\.v_bias$"), r"\1.qv_bias", concat()),  # parts in shards 1 and 2
    Transform(r"^(.*)\.qkv$", (r"\1.q", r"\1.k", r"\1.v"), split_fused(3)),
    Rename(r"^", "out."),
])


def _convert(src_dir: Path, out: Path, **kw) -> tuple[CheckpointSource, dict[str, bytes]]:
    src = CheckpointSource.open(src_dir)
    convert_checkpoint([(src, TABLE)], None, out, max_shard_size="40KB", progress=False, **kw)
    return src, {p.name: p.read_bytes() for p in sorted(out.iterdir())}


@linux_only
def test_drop_pages_unmaps_the_tensor_and_keeps_its_values(tmp_path):
    path = tmp_path / "w.bin"
    torch.save({"a": torch.randn(512, 512), "tiny": torch.ones(3)}, path)
    src = CheckpointSource.open(path)
    a = src.get("a")
    want = a.clone()  # touches every page of "a"
    before = _mapped_rss_kib(path)
    assert before >= 1000  # 1 MiB of "a" resident through the mapping
    dropped = src.drop_pages(a)
    assert dropped >= 1024 * 1024 - 2 * sources_mod._PAGE_SIZE
    assert src.residency.dropped_bytes == dropped
    assert _mapped_rss_kib(path) <= before - 1000  # the pages left the process
    assert torch.equal(a, want)  # re-read from the file when touched again
    # nothing that is not a consumed tensor of the resident mapped shard is touched
    anon = torch.randn(512, 512)
    anon_copy = anon.clone()
    assert src.drop_pages(anon) == 0 and torch.equal(anon, anon_copy)  # heap memory: would be zeroed by DONTNEED
    assert src.drop_pages(src.get("tiny")) == 0  # less than a page
    mem = CheckpointSource.from_state_dict({"a": anon})
    assert mem.drop_pages(mem.get("a")) == 0 and torch.equal(anon, anon_copy)


@linux_only
def test_drop_pages_safetensors_source(tmp_path):
    want = torch.randn(512, 512)
    path = tmp_path / "w.safetensors"
    save_file({"a": want, "b": want * 2}, str(path))
    src = CheckpointSource.open(path)
    a, b = src.get("a"), src.get("b")
    assert torch.equal(a, want)  # touched
    storage = a.untyped_storage()
    mapped = sources_mod._mapping_containing(storage.data_ptr(), storage.data_ptr() + storage.nbytes(),
                                             {os.path.realpath(path)})
    dropped = src.drop_pages(a)
    if mapped is None:  # a safetensors build that copies tensors out of the file: heap memory, left alone
        assert dropped == 0
    else:  # safetensors hands out views of its (private, file-backed) mapping
        assert dropped >= 1024 * 1024 - 2 * sources_mod._PAGE_SIZE
        assert src.drop_pages(b) > 0
    assert torch.equal(a, want) and torch.equal(b, want * 2)


@linux_only
@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_conversion_drops_pages_and_output_is_byte_identical(tmp_path, monkeypatch, fmt):
    src_dir = _write_bin(tmp_path / "src", fmt)
    src, with_drop = _convert(src_dir, tmp_path / "a", dtype=torch.float32)
    if fmt == "bin":
        assert src.residency.dropped_bytes > 0  # the page-dropping path ran
    with monkeypatch.context() as m:
        m.setattr(CheckpointSource, "drop_pages", lambda self, t: 0)
        _, without = _convert(src_dir, tmp_path / "b", dtype=torch.float32)
    assert len(with_drop) > 2 and with_drop == without  # several shards + index, same bytes
    got = {}
    for name in with_drop:
        if name.endswith(".safetensors"):
            got.update(load_file(str(tmp_path / "a" / name)))
    s0, s1 = _shards()
    assert torch.equal(got["l0.qv_bias"], torch.cat([s0["l0.q_bias"], s1["l0.v_bias"]]))
    assert torch.equal(torch.cat([got["l0.q"], got["l0.k"], got["l0.v"]]), s0["l0.qkv"])
    assert torch.equal(got["out.l1.w"], s1["l1.w"].float()) and torch.equal(got["out.emb"], s1["emb"])


def _failing(*args):
    return -1


def _raising(*args):
    raise OSError("no madvise here")


@pytest.mark.parametrize("how", ["not-linux", "madvise-fails", "madvise-raises", "no-proc-maps"])
def test_page_dropping_falls_back_silently(tmp_path, monkeypatch, how):
    src_dir = _write_bin(tmp_path / "src")
    with monkeypatch.context() as m:
        m.setattr(CheckpointSource, "drop_pages", lambda self, t: 0)
        _, reference = _convert(src_dir, tmp_path / "ref")
    if how == "not-linux":
        monkeypatch.setattr(sources_mod, "_madvise_fn", None)
        monkeypatch.setattr(sources_mod.sys, "platform", "darwin")
    elif how == "madvise-fails":
        monkeypatch.setattr(sources_mod, "_madvise_fn", _failing)
    elif how == "madvise-raises":
        monkeypatch.setattr(sources_mod, "_madvise_fn", _raising)
    else:
        monkeypatch.setattr(sources_mod, "_mapping_containing", lambda start, end, paths: None)
    src, got = _convert(src_dir, tmp_path / "out")
    assert src.residency.dropped_bytes == 0
    assert got == reference
    if how == "not-linux":
        assert sources_mod._madvise() is None
