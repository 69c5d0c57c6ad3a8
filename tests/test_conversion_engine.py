"""Tests for the streaming checkpoint-conversion engine (hf_videollm.conversion.engine / .sources).

Every checkpoint is synthetic and built in tmp_path: single / sharded safetensors, single / sharded / legacy .bin,
LAVIS-style wrapped .pth, and pickles that must be refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_videollm.conversion import sources as sources_mod
from hf_videollm.conversion.engine import (
    AddDelta,
    CheckpointSource,
    ConversionError,
    ConversionReport,
    Drop,
    KeyTable,
    Merge,
    Rename,
    Transform,
    concat,
    convert_checkpoint,
    expected_from_model,
    parse_size,
    split_fused,
    split_per_head,
    transpose,
    weight_norm,
)
from hf_videollm.conversion.sources import TORCH_SHARD_STATS

# ---------------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------------


def _sd(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "enc.layer.0.fc.weight": torch.randn(6, 4, generator=g),
        "enc.layer.0.fc.bias": torch.randn(6, generator=g),
        "enc.layer.1.fc.weight": torch.randn(6, 4, generator=g),
        "enc.layer.1.fc.bias": torch.randn(6, generator=g),
        "enc.pos_ids": torch.arange(5),
        "enc.mask": torch.tensor([True, False, True]),
    }


def _write_sharded_safetensors(d: Path, shards: list[dict[str, torch.Tensor]], stem: str = "model") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    n = len(shards)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, start=1):
        name = f"{stem}-{i:05d}-of-{n:05d}.safetensors"
        save_file(shard, str(d / name), metadata={"format": "pt"})
        for k, v in shard.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()
    (d / f"{stem}.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    return d


def _write_sharded_bin(d: Path, shards: list[dict[str, torch.Tensor]]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    n = len(shards)
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"pytorch_model-{i:05d}-of-{n:05d}.bin"
        torch.save(shard, d / name)
        weight_map.update(dict.fromkeys(shard, name))
    (d / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return d


def _expected(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Size, torch.dtype]]:
    return {k: (v.shape, v.dtype) for k, v in tensors.items()}


def _load_out(out: Path) -> dict[str, torch.Tensor]:
    index = out / "model.safetensors.index.json"
    if not index.exists():
        return load_file(str(out / "model.safetensors"))
    weight_map = json.loads(index.read_text())["weight_map"]
    result: dict[str, torch.Tensor] = {}
    for f in sorted(set(weight_map.values())):
        result.update(load_file(str(out / f)))
    return result


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".converting-" in p.name]


class NotATensor:  # pickled into a .bin: weights_only loading must refuse it
    def __init__(self):
        self.x = 1


RENAME_TABLE = KeyTable(
    "enc2dec",
    [
        Drop(r"^enc\.pos_ids$", "buffer re-created by the model"),
        Rename(r"^enc\.layer\.(\d+)\.fc\.", r"dec.blocks.\1.linear."),
        Rename(r"^enc\.mask$", "dec.mask"),
    ],
)


def _renamed(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k == "enc.pos_ids":
            continue
        out[k.replace("enc.layer.", "dec.blocks.").replace(".fc.", ".linear.").replace("enc.mask", "dec.mask")] = v
    return out


# ---------------------------------------------------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------------------------------------------------


def test_single_safetensors_is_lazy(tmp_path, monkeypatch):
    sd = _sd()
    save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt", "origin": "unit"})
    src = CheckpointSource.open(tmp_path, prefix="tower::")
    assert sorted(src.keys()) == sorted("tower::" + k for k in sd)
    assert list(src.shards()) == [src.keys()]
    assert src.files == [tmp_path / "model.safetensors"] and src.format == "safetensors"
    assert src.metadata()["safetensors_metadata"]["origin"] == "unit"
    # shapes and dtypes come from the header: opening the file for tensor data must not be needed
    monkeypatch.setattr(sources_mod._SafetensorsShard, "open_handle", lambda self: pytest.fail("materialised"))
    assert src.shape("tower::enc.layer.0.fc.weight") == torch.Size([6, 4])
    assert src.dtype("tower::enc.pos_ids") == torch.int64 and src.dtype("tower::enc.mask") == torch.bool
    assert src.nbytes("tower::enc.layer.0.fc.bias") == 24
    monkeypatch.undo()
    assert torch.equal(src.get("tower::enc.layer.1.fc.weight"), sd["enc.layer.1.fc.weight"])
    assert "tower::enc.mask" in src and "enc.mask" not in src and len(src) == len(sd)
    with pytest.raises(KeyError):
        src.get("tower::nope")
    # a file path works as well as its directory
    assert sorted(CheckpointSource.open(tmp_path / "model.safetensors").keys()) == sorted(sd)


def test_sharded_safetensors_with_index(tmp_path):
    sd = _sd()
    items = list(sd.items())
    _write_sharded_safetensors(tmp_path, [dict(items[:2]), dict(items[2:4]), dict(items[4:])])
    src = CheckpointSource.open(tmp_path)
    groups = list(src.shards())
    assert [sorted(g) for g in groups] == [sorted(k for k, _ in items[:2]), sorted(k for k, _ in items[2:4]),
                                           sorted(k for k, _ in items[4:])]
    assert [f.name for f in src.files] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    for k, v in sd.items():
        assert torch.equal(src.get(k), v) and src.shape(k) == v.shape
    assert src.metadata()["index_metadata"]["total_size"] > 0
    # the index file itself can be opened too
    assert sorted(CheckpointSource.open(tmp_path / "model.safetensors.index.json").keys()) == sorted(sd)


def test_single_bin_zip_and_legacy(tmp_path):
    sd = _sd()
    torch.save(sd, tmp_path / "pytorch_model.bin")
    src = CheckpointSource.open(tmp_path)
    assert sorted(src.keys()) == sorted(sd) and src.format == "torch"
    assert torch.equal(src.get("enc.pos_ids"), sd["enc.pos_ids"])
    assert src.metadata()["mmap"] is True
    legacy = tmp_path / "legacy.pt"
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    src2 = CheckpointSource.open(legacy)
    assert torch.equal(src2.get("enc.layer.0.fc.weight"), sd["enc.layer.0.fc.weight"])
    assert src2.metadata()["mmap"] is False  # legacy files cannot be memory-mapped


def test_sharded_bin_keys_from_index_without_loading(tmp_path):
    sd = _sd()
    items = list(sd.items())
    _write_sharded_bin(tmp_path, [dict(items[:3]), dict(items[3:])])
    src = CheckpointSource.open(tmp_path)
    assert src.residency.loads == 0
    assert [sorted(g) for g in src.shards()] == [sorted(k for k, _ in items[:3]), sorted(k for k, _ in items[3:])]
    assert sorted(src.keys()) == sorted(sd) and src.residency.loads == 0  # listed by the index
    assert src.shape("enc.mask") == torch.Size([3]) and src.residency.loads == 1
    for k, v in sd.items():
        assert torch.equal(src.get(k), v)
    assert src.residency.peak == 1 and src.residency.current == 1
    src.release()
    assert src.residency.current == 0


def test_lavis_style_wrapped_pth(tmp_path):
    sd = _sd()
    path = tmp_path / "blip2_pretrained.pth"
    torch.save({"model": sd, "optimizer": {"state": {}, "lr": 1.0}, "epoch": 3}, path)
    src = CheckpointSource.open(path)
    assert sorted(src.keys()) == sorted(sd)
    assert src.subkey == "model" and src.metadata()["subkey_detected"] is True
    explicit = CheckpointSource.open(path, subkey="model")
    assert torch.equal(explicit.get("enc.layer.0.fc.bias"), sd["enc.layer.0.fc.bias"])
    assert explicit.metadata()["subkey_detected"] is False
    nested = tmp_path / "nested.pth"
    torch.save({"state_dict": {"module": sd}}, nested)
    assert sorted(CheckpointSource.open(nested, subkey="state_dict/module").keys()) == sorted(sd)
    with pytest.raises(ConversionError, match="subkey 'weights' not found"):
        CheckpointSource.open(path, subkey="weights").keys()
    both = tmp_path / "both.pth"
    torch.save({"model": sd, "state_dict": sd}, both)
    with pytest.raises(ConversionError, match="pass subkey="):
        CheckpointSource.open(both).keys()


def test_refuses_arbitrary_pickles(tmp_path):
    bad = tmp_path / "evil.bin"
    torch.save({"w": torch.ones(2), "obj": NotATensor()}, bad)
    with pytest.raises(ConversionError, match="refusing to unpickle arbitrary objects; convert it to safetensors "
                                              "or a plain state dict") as e:
        CheckpointSource.open(bad).keys()
    assert "evil.bin" in str(e.value)
    # plain containers load under weights_only, but non-tensor entries are still not a state dict
    mixed = tmp_path / "mixed.bin"
    torch.save({"w": torch.ones(2), "step": 7}, mixed)
    with pytest.raises(ConversionError, match=r"not a plain tensor dict.*'step' \(int\)"):
        CheckpointSource.open(mixed).keys()
    not_dict = tmp_path / "list.pt"
    torch.save([torch.ones(1)], not_dict)
    with pytest.raises(ConversionError, match="does not hold a tensor dict"):
        CheckpointSource.open(not_dict).keys()


def test_torch_load_is_weights_only_and_mmap(tmp_path, monkeypatch):
    torch.save(_sd(), tmp_path / "a.bin")
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    CheckpointSource.open(tmp_path / "a.bin").keys()
    assert calls == [{"map_location": "cpu", "weights_only": True, "mmap": True}]


def test_source_errors(tmp_path):
    with pytest.raises(ConversionError, match="does not exist"):
        CheckpointSource.open(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    (empty / "README.md").write_text("hi")
    with pytest.raises(ConversionError, match=r"no checkpoint files.*found: README.md, config.json"):
        CheckpointSource.open(empty)
    two = tmp_path / "two"
    two.mkdir()
    torch.save(_sd(), two / "a.pth")
    save_file(_sd(), str(two / "b.safetensors"))
    with pytest.raises(ConversionError, match=r"several candidates.*a.pth, b.safetensors"):
        CheckpointSource.open(two)
    shard_dir = _write_sharded_safetensors(tmp_path / "sharded", [{"a": torch.ones(1)}, {"b": torch.ones(1)}])
    (shard_dir / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(ConversionError, match="references missing shard files: model-00002-of-00002.safetensors"):
        CheckpointSource.open(shard_dir)
    stale = _write_sharded_safetensors(tmp_path / "stale", [{"a": torch.ones(1)}, {"b": torch.ones(1)}])
    index = json.loads((stale / "model.safetensors.index.json").read_text())
    index["weight_map"]["ghost"] = "model-00001-of-00002.safetensors"
    (stale / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match="listed but absent: \\[ghost\\]"):
        CheckpointSource.open(stale)
    truncated = tmp_path / "trunc.safetensors"
    save_file({"w": torch.ones(100)}, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:-50])
    with pytest.raises(ConversionError, match="corrupt safetensors file .*trunc.safetensors.*truncated"):
        CheckpointSource.open(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    with pytest.raises(ConversionError, match="garbage.safetensors"):
        CheckpointSource.open(garbage)
    bad_bin = tmp_path / "broken.bin"
    bad_bin.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(ConversionError, match="unreadable or corrupt checkpoint file .*broken.bin"):
        CheckpointSource.open(bad_bin).keys()
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"x")
    with pytest.raises(ConversionError, match="unsupported checkpoint file"):
        CheckpointSource.open(odd)
    st = tmp_path / "st.safetensors"
    save_file({"a": torch.ones(1)}, str(st))
    with pytest.raises(ConversionError, match="only applies to pickled"):
        CheckpointSource.open(st, subkey="model")


# ---------------------------------------------------------------------------------------------------------------------
# rules and tables
# ---------------------------------------------------------------------------------------------------------------------


def test_keytable_resolution_semantics():
    table = KeyTable(
        "t",
        [
            Drop(r"\.num_batches_tracked$", "BatchNorm counter"),
            Rename(r"^model\.", "lm.model."),  # prefix-only pattern: the rest of the key is kept
            Rename(r"^vis\.(\d+)\.(.*)$", r"vision.layers.\1.\2"),  # fully spelled-out pattern
            Merge((r"^(.*)\.q_bias$", r"^(.*)\.v_bias$"), r"\1.qkv.bias", concat()),
            Transform(r"^(.*)\.qkv$", (r"\1.q", r"\1.k", r"\1.v"), split_fused()),
            Transform(r"^fused\.(\d+)$", lambda m: (f"a.{m.group(1)}", f"b.{m.group(1)}"), split_fused(2)),
            Rename(r"^model\.never$", "unreachable"),  # shadowed by the earlier prefix rule
        ],
    )
    assert table.resolve("model.layers.0.w").targets == ("lm.model.layers.0.w",)
    assert table.resolve("model.bn.num_batches_tracked").targets == ()  # first matching rule wins
    assert table.resolve("vis.3.attn.w").targets == ("vision.layers.3.attn.w",)
    r = table.resolve("blk.2.v_bias")
    assert isinstance(r.rule, Merge) and r.part == 1 and r.targets == ("blk.2.qkv.bias",)
    assert table.resolve("x.qkv").targets == ("x.q", "x.k", "x.v")
    assert table.resolve("fused.7").targets == ("a.7", "b.7")
    assert table.resolve("unknown") is None
    with pytest.raises(ConversionError, match="invalid regular expression"):
        Rename("([", "x")
    with pytest.raises(ConversionError, match="needs a non-empty reason"):
        Drop("x", "")
    with pytest.raises(ConversionError, match="at least two patterns"):
        Merge(("a",), "b", concat())
    with pytest.raises(ConversionError, match="not a rule"):
        KeyTable("bad", ["Rename"])


def test_rename_drop_report_and_metadata(tmp_path):
    sd = _sd()
    save_file(sd, str(tmp_path / "src.safetensors"))
    src = CheckpointSource.open(tmp_path / "src.safetensors")
    table = KeyTable("enc2dec", RENAME_TABLE.rules + [Rename(r"^never$", "x")])
    want = _renamed(sd)
    out = tmp_path / "out"
    report = convert_checkpoint([(src, table)], _expected(want), out, progress=False,
                                metadata={"converted_from": "unit-test"})
    assert isinstance(report, ConversionReport)
    assert report.counts == {"Rename": 5, "Drop": 1, "Transform": 0, "Merge": 0, "AddDelta": 0}
    assert report.dropped == {"enc.pos_ids": "buffer re-created by the model"}
    assert report.files == [out / "model.safetensors"] and report.index_file is None
    assert report.num_tensors == 5 and report.total_bytes == sum(v.numel() * v.element_size() for v in want.values())
    assert report.unused_rules == ["enc2dec: Rename('^never$' -> 'x')"]
    summary = report.summary()
    assert "buffer re-created by the model: 1 key(s) (enc.pos_ids)" in summary and "Rename 5" in summary
    as_json = json.loads(report.to_json())
    assert as_json["dropped"] == report.dropped and as_json["files"] == [str(out / "model.safetensors")]
    got = load_file(str(out / "model.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "converted_from": "unit-test"}
    assert _leftovers(tmp_path) == []


def test_transform_split_fused_qkv_contiguous_thirds(tmp_path):
    h = 8
    qkv_w, qkv_b = torch.randn(3 * h, h), torch.randn(3 * h)
    save_file({"blk.0.attn.qkv.weight": qkv_w, "blk.0.attn.qkv.bias": qkv_b}, str(tmp_path / "m.safetensors"))
    table = KeyTable("qkv", [
        Transform(r"^blk\.(\d+)\.attn\.qkv\.(weight|bias)$",
                  (r"layers.\1.q_proj.\2", r"layers.\1.k_proj.\2", r"layers.\1.v_proj.\2"),
                  split_fused(3), reason="fused qkv -> q, k, v"),
    ])
    expected = {f"layers.0.{p}_proj.{s}": ((h, h) if s == "weight" else (h,)) for p in "qkv" for s in ("weight", "bias")}
    report = convert_checkpoint([(CheckpointSource.open(tmp_path / "m.safetensors"), table)],
                                {k: torch.Size(v) for k, v in expected.items()}, tmp_path / "out", progress=False)
    got = _load_out(tmp_path / "out")
    for i, p in enumerate("qkv"):  # manual split: contiguous thirds
        assert torch.equal(got[f"layers.0.{p}_proj.weight"], qkv_w[i * h:(i + 1) * h])
        assert torch.equal(got[f"layers.0.{p}_proj.bias"], qkv_b[i * h:(i + 1) * h])
    assert report.counts["Transform"] == 2 and report.transformed[0]["reason"] == "fused qkv -> q, k, v"
    assert "Transform: fused qkv -> q, k, v: 2" in report.summary()


def test_transform_split_per_head_interleaved_qkv(tmp_path):
    heads, head_dim, hidden = 4, 3, 12
    q, k, v = (torch.randn(heads * head_dim, hidden) for _ in range(3))
    qb, kb, vb = (torch.randn(heads * head_dim) for _ in range(3))

    def interleave(a, b, c):  # rows laid out as [h0: q k v][h1: q k v]...
        blocks = []
        for i in range(heads):
            s = slice(i * head_dim, (i + 1) * head_dim)
            blocks += [a[s], b[s], c[s]]
        return torch.cat(blocks)

    save_file({"attn.qkv.weight": interleave(q, k, v), "attn.qkv.bias": interleave(qb, kb, vb),
               "attn.proj.weight": torch.randn(hidden, hidden)}, str(tmp_path / "m.safetensors"))

    def split_with_ctx(t, match, ctx):  # head count taken from the model's expected shape
        assert ctx.key.startswith("attn.qkv") and ctx.expected_shape(ctx.targets[0])[0] == heads * head_dim
        return split_per_head(heads)(t, match, ctx)

    table = KeyTable("interleaved", [
        Transform(r"^attn\.qkv\.weight$", ("q.weight", "k.weight", "v.weight"), split_with_ctx),
        Transform(r"^attn\.qkv\.bias$", ("q.bias", "k.bias", "v.bias"), split_per_head(heads)),
        Transform(r"^attn\.proj\.weight$", ("proj.weight",), transpose(), reason="[in, out] -> [out, in]"),
    ])
    src = CheckpointSource.open(tmp_path / "m.safetensors")
    expected = {f"{p}.weight": torch.Size([heads * head_dim, hidden]) for p in "qkv"}
    expected |= {f"{p}.bias": torch.Size([heads * head_dim]) for p in "qkv"} | {"proj.weight": torch.Size([12, 12])}
    convert_checkpoint([(src, table)], expected, tmp_path / "out", progress=False)
    got = _load_out(tmp_path / "out")
    for name, ref in {"q": q, "k": k, "v": v}.items():
        assert torch.equal(got[f"{name}.weight"], ref)
    for name, ref in {"q": qb, "k": kb, "v": vb}.items():
        assert torch.equal(got[f"{name}.bias"], ref)
    assert torch.equal(got["proj.weight"], src.get("attn.proj.weight").t())


def test_merge_across_shards(tmp_path):
    q_bias, v_bias = torch.randn(6), torch.randn(6)
    g, v = torch.rand(5, 1, 1) + 0.5, torch.randn(5, 2, 3)
    _write_sharded_safetensors(tmp_path / "src", [
        {"blk.0.attn.q_bias": q_bias, "conv.weight_v": v, "other": torch.ones(2)},
        {"blk.0.attn.v_bias": v_bias, "conv.weight_g": g},
    ])
    src = CheckpointSource.open(tmp_path / "src")
    assert len(list(src.shards())) == 2
    table = KeyTable("eva", [
        Merge((r"^(.*)\.q_bias$", r"^(.*)\.v_bias$"), r"\1.qkv.bias",
              lambda qb, vb: torch.cat([qb, torch.zeros_like(qb), vb]), reason="q, 0, v bias"),
        Merge((r"^(.*)\.weight_g$", r"^(.*)\.weight_v$"), r"\1.weight", weight_norm(0), reason="weight norm"),
        Rename(r"^other$", "other"),
    ])
    expected = {"blk.0.attn.qkv.bias": torch.Size([18]), "conv.weight": torch.Size([5, 2, 3]),
                "other": torch.Size([2])}
    report = convert_checkpoint([(src, table)], expected, tmp_path / "out", progress=False)
    got = _load_out(tmp_path / "out")
    assert torch.equal(got["blk.0.attn.qkv.bias"], torch.cat([q_bias, torch.zeros(6), v_bias]))
    ref = g * v / v.norm(dim=(1, 2), keepdim=True)
    assert torch.allclose(got["conv.weight"], ref, atol=1e-6)
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(2, 5, 3), dim=0)
    with torch.no_grad():
        conv.parametrizations.weight.original0.copy_(g)
        conv.parametrizations.weight.original1.copy_(v)
    assert torch.allclose(got["conv.weight"], conv.weight, atol=1e-6)
    assert report.counts["Merge"] == 4
    merged = [t for t in report.transformed if t["rule"] == "Merge"]
    assert {tuple(sorted(t["sources"])) for t in merged} == {("blk.0.attn.q_bias", "blk.0.attn.v_bias"),
                                                             ("conv.weight_g", "conv.weight_v")}


def test_several_sources_with_prefixes_feed_one_table(tmp_path):
    llm = {"model.embed.weight": torch.randn(10, 4), "mm.q_part": torch.randn(2, 4)}
    tower = {"encoder.w": torch.randn(3, 3), "k_part": torch.randn(2, 4)}
    save_file(llm, str(tmp_path / "llm.safetensors"))
    torch.save({"model": tower}, tmp_path / "tower.pth")
    a = CheckpointSource.open(tmp_path / "llm.safetensors")
    b = CheckpointSource.open(tmp_path / "tower.pth", prefix="vision_tower::")
    assert "vision_tower::encoder.w" in b.keys()
    table = KeyTable("llava", [
        Merge((r"^mm\.q_part$", r"^vision_tower::k_part$"), "projector.weight", concat(0)),
        Rename(r"^vision_tower::", "vision_tower."),
        Rename(r"^model\.", "language_model."),
    ])
    convert_checkpoint([(a, table), (b, table)], None, tmp_path / "out", progress=False)
    got = _load_out(tmp_path / "out")
    assert set(got) == {"language_model.embed.weight", "vision_tower.encoder.w", "projector.weight"}
    assert torch.equal(got["projector.weight"], torch.cat([llm["mm.q_part"], tower["k_part"]]))


def test_add_delta_with_extra_vocab_rows(tmp_path):
    base = {"model.embed_tokens.weight": torch.randn(10, 4), "model.norm.weight": torch.randn(4),
            "model.layers.0.w": torch.randn(4, 4), "model.counter": torch.tensor([1])}
    delta = {"model.embed_tokens.weight": torch.randn(12, 4).half(), "model.norm.weight": torch.randn(4).half(),
             "model.layers.0.w": torch.randn(4, 4).half(), "model.counter": torch.tensor([3])}
    save_file(base, str(tmp_path / "base.safetensors"))
    _write_sharded_bin(tmp_path / "delta", [dict(list(delta.items())[:2]), dict(list(delta.items())[2:])])
    table = KeyTable("vicuna-delta", [
        AddDelta(r"^model\.(.*)$", replacement=r"language_model.\1"),  # base looked up by original key
    ])
    src = CheckpointSource.open(tmp_path / "delta")
    base_src = CheckpointSource.open(tmp_path / "base.safetensors")
    base_src_renamed = CheckpointSource.from_state_dict({"w0": base["model.layers.0.w"]})
    expected = {f"language_model.{k[len('model.'):]}": v.shape for k, v in delta.items()}
    report = convert_checkpoint([(src, table)], expected, tmp_path / "out", extra_sources={"base": base_src},
                                progress=False)
    got = _load_out(tmp_path / "out")
    emb = got["language_model.embed_tokens.weight"]
    assert emb.dtype == torch.float16 and emb.shape == (12, 4)
    ref = (delta["model.embed_tokens.weight"].float()[:10] + base["model.embed_tokens.weight"]).half()
    assert torch.equal(emb[:10], ref)
    assert torch.equal(emb[10:], delta["model.embed_tokens.weight"][10:])  # new rows: the delta as is
    assert torch.equal(got["language_model.norm.weight"],
                       (delta["model.norm.weight"].float() + base["model.norm.weight"]).half())
    assert torch.equal(got["language_model.counter"], delta["model.counter"])
    assert any("rows 10..11 taken from the delta as is" in n and "embed_tokens" in n for n in report.notes)
    assert report.counts["AddDelta"] == 4 and "rows 10..11" in report.summary()
    # base_key template: the base stores the tensor under another name
    table2 = KeyTable("d2", [AddDelta(r"^model\.layers\.0\.w$", base="b", base_key="w0"),
                             Drop(r".*", "not needed here")])
    convert_checkpoint([(src, table2)], None, tmp_path / "out2", extra_sources={"b": base_src_renamed},
                       progress=False)
    got2 = _load_out(tmp_path / "out2")
    assert torch.equal(got2["model.layers.0.w"],
                       (delta["model.layers.0.w"].float() + base["model.layers.0.w"]).half())


def test_dtype_cast_leaves_int_and_bool_alone(tmp_path):
    sd = _sd()
    save_file(sd, str(tmp_path / "m.safetensors"))
    report = convert_checkpoint([(CheckpointSource.open(tmp_path / "m.safetensors"), RENAME_TABLE)], None,
                                tmp_path / "out", dtype=torch.bfloat16, progress=False)
    got = _load_out(tmp_path / "out")
    assert got["dec.blocks.0.linear.weight"].dtype == torch.bfloat16
    assert torch.equal(got["dec.blocks.0.linear.weight"], sd["enc.layer.0.fc.weight"].bfloat16())
    assert got["dec.mask"].dtype == torch.bool and torch.equal(got["dec.mask"], sd["enc.mask"])
    assert report.cast_tensors == 4 and report.dtype == "bfloat16"
    with pytest.raises(ValueError, match="floating"):
        convert_checkpoint([(CheckpointSource.open(tmp_path / "m.safetensors"), RENAME_TABLE)], None,
                           tmp_path / "out3", dtype=torch.int8, progress=False)


def test_sharded_output_and_index(tmp_path):
    sd = {f"layer.{i}.w": torch.randn(16, 16) for i in range(7)}  # 1024 bytes each
    sd["big"] = torch.randn(40, 16)  # 2560 bytes: larger than a shard, gets its own
    sd["steps"] = torch.arange(4)
    save_file(sd, str(tmp_path / "m.safetensors"))
    table = KeyTable("copy", [Rename(r"^", "m.")])
    out = tmp_path / "out"
    report = convert_checkpoint([(CheckpointSource.open(tmp_path / "m.safetensors"), table)], None, out,
                                max_shard_size="2.5KB", progress=False)
    files = sorted(p.name for p in out.iterdir())
    n = len(report.files)
    assert n >= 4 and files == sorted([f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
                                      + ["model.safetensors.index.json"])
    index = json.loads((out / "model.safetensors.index.json").read_text())
    want = {f"m.{k}": v for k, v in sd.items()}
    assert set(index["weight_map"]) == set(want)
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in want.values())
    assert index["metadata"]["total_size"] == report.total_bytes
    assert report.index_file == out / "model.safetensors.index.json"
    for f in report.files:
        shard = load_file(str(f))
        assert all(index["weight_map"][k] == f.name for k in shard)
        size = sum(v.numel() * v.element_size() for v in shard.values())
        assert size <= 2500 or len(shard) == 1
    got = _load_out(out)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    # and the output reads back as a source
    assert sorted(CheckpointSource.open(out).keys()) == sorted(want)


def test_llama_round_trip_through_from_pretrained(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    sd = model.state_dict()

    def old_name(k: str) -> str:
        return k.replace("model.layers.", "transformer.h.").replace("model.", "transformer.").replace(
            "lm_head.", "output.")

    renamed = {old_name(k): v.clone() for k, v in sd.items()}
    items = list(renamed.items())
    _write_sharded_bin(tmp_path / "orig", [dict(items[: len(items) // 2]), dict(items[len(items) // 2:])])
    table = KeyTable("llama", [
        Rename(r"^transformer\.h\.", "model.layers."),
        Rename(r"^transformer\.", "model."),
        Rename(r"^output\.", "lm_head."),
    ])
    with torch.device("meta"):
        expected = expected_from_model(LlamaForCausalLM(cfg))
    out = tmp_path / "hf"
    report = convert_checkpoint([(CheckpointSource.open(tmp_path / "orig"), table)], expected, out,
                                max_shard_size="8KB", progress=False)
    assert len(report.files) > 1
    cfg.save_pretrained(out)
    loaded = LlamaForCausalLM.from_pretrained(out).eval()
    lsd = loaded.state_dict()
    assert lsd.keys() == sd.keys() and all(torch.equal(lsd[k], sd[k]) for k in sd)
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-6)


def test_expected_from_model_skips_tied_aliases():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2, tie_word_embeddings=True)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    exp = expected_from_model(model)
    assert "model.embed_tokens.weight" in exp and "lm_head.weight" not in exp
    assert "lm_head.weight" in expected_from_model(model, exclude_tied=False)
    assert exp["model.embed_tokens.weight"] == (torch.Size([32, 8]), torch.float32)


def test_tied_alias_in_pickled_source(tmp_path):
    emb = torch.randn(10, 4)
    torch.save({"tok.weight": emb, "head.weight": emb, "fused": torch.randn(6, 4)}, tmp_path / "m.bin")
    src = CheckpointSource.open(tmp_path / "m.bin")
    assert src.get("tok.weight").untyped_storage().data_ptr() == src.get("head.weight").untyped_storage().data_ptr()
    table = KeyTable("tied", [
        Drop(r"^head\.weight$", "tied alias"),
        Rename(r"^tok\.", "embed."),
        Transform(r"^fused$", ("a", "b"), split_fused(2)),  # views of one storage: cloned before saving
    ])
    report = convert_checkpoint([(src, table)], None, tmp_path / "out", progress=False)
    assert report.dropped == {"head.weight": "tied alias"}
    # both aliases kept (e.g. a model without tying): shared storage must be cloned for safetensors
    keep = KeyTable("both", [Rename(r"^(tok|head)\.", r"\1_copy."), Transform(r"^fused$", ("a", "b"),
                                                                              split_fused(2))])
    convert_checkpoint([(src, keep)], None, tmp_path / "out2", progress=False)
    got = _load_out(tmp_path / "out2")
    assert torch.equal(got["tok_copy.weight"], emb) and torch.equal(got["head_copy.weight"], emb)
    assert torch.equal(torch.cat([got["a"], got["b"]]), src.get("fused"))


# ---------------------------------------------------------------------------------------------------------------------
# errors and atomicity
# ---------------------------------------------------------------------------------------------------------------------


def test_every_error_group_is_reported_before_writing(tmp_path, monkeypatch):
    sd = {
        "a.weight": torch.randn(3, 3),  # -> x.weight, expected (2, 2): shape mismatch
        "b.weight": torch.randn(2),  # -> dup.weight
        "c.weight": torch.randn(2),  # -> dup.weight again: duplicate target
        "zzz": torch.randn(1),  # no rule: unexpected source key
        "m.q_bias": torch.randn(2),  # merge whose v part never appears
        "d.weight": torch.randn(2),  # AddDelta: key absent from the base
        "e.qkv": torch.randn(6),  # Transform returning 2 tensors for 3 targets
        "u.weight": torch.randn(2),  # -> unexpected.weight, not expected
    }
    save_file(sd, str(tmp_path / "m.safetensors"))
    table = KeyTable("broken", [
        Rename(r"^a\.", "x."),
        Rename(r"^[bc]\.weight$", "dup.weight"),
        Merge((r"^(.*)\.q_bias$", r"^(.*)\.v_bias$"), r"\1.qkv_bias", concat()),
        AddDelta(r"^d\.weight$"),
        Transform(r"^e\.qkv$", ("e.q", "e.k", "e.v"), lambda t, m, c: t.chunk(2)),
        Rename(r"^u\.", "unexpected."),
    ])
    expected = {"x.weight": torch.Size([2, 2]), "dup.weight": torch.Size([2]), "m.qkv_bias": torch.Size([6]),
                "d.weight": torch.Size([2]), "e.q": torch.Size([2]), "e.k": torch.Size([2]),
                "e.v": torch.Size([2]), "missing.weight": torch.Size([1])}
    base = CheckpointSource.from_state_dict({"other": torch.zeros(2)})
    written = []
    monkeypatch.setattr("hf_videollm.conversion.engine._ShardWriter.add", lambda *a: written.append(a))
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as e:
        convert_checkpoint([(CheckpointSource.open(tmp_path / "m.safetensors"), table)], expected, out,
                           extra_sources={"base": base}, progress=False)
    msg = str(e.value)
    assert set(e.value.problems) == {"unexpected source keys", "duplicate targets", "missing target keys",
                                     "unexpected target keys", "shape mismatches", "incomplete merges",
                                     "AddDelta base problems", "rule failures"}
    for group, count in [("unexpected source keys", 1), ("duplicate targets", 1), ("missing target keys", 1),
                         ("unexpected target keys", 1), ("shape mismatches", 1), ("incomplete merges", 1),
                         ("AddDelta base problems", 1), ("rule failures", 1)]:
        assert f"{group} ({count})" in msg
    assert "zzz" in msg
    assert "dup.weight: from b.weight and from c.weight" in msg
    assert "x.weight: got (3, 3) expected (2, 2)" in msg
    assert "m.qkv_bias" in msg and "missing parts matching ['^(.*)\\\\.v_bias$']" in msg
    assert "missing.weight" in msg and "unexpected.weight" in msg
    assert "d.weight: base key missing" in msg and "returned 2 tensor(s) for 3 target(s)" in msg
    assert isinstance(e.value, ValueError)
    assert written == []  # failed fast: nothing was written
    assert not out.exists() and _leftovers(tmp_path) == []
    # a missing extra source is reported in the same group
    with pytest.raises(ConversionError, match="no extra source named 'base'"):
        convert_checkpoint([(CheckpointSource.open(tmp_path / "m.safetensors"),
                             KeyTable("t", [AddDelta(r".*")]))], None, out, progress=False)


def test_long_groups_are_truncated_and_allow_missing(tmp_path):
    save_file({f"k{i}": torch.ones(1) for i in range(30)}, str(tmp_path / "m.safetensors"))
    with pytest.raises(ConversionError, match=r"unexpected source keys \(30\)[\s\S]*\.\.\. and 10 more"):
        convert_checkpoint([(CheckpointSource.open(tmp_path / "m.safetensors"), KeyTable("none", []))], None,
                           tmp_path / "out", progress=False)
    table = KeyTable("all", [Rename(r"^", "")])
    expected = {f"k{i}": torch.Size([1]) for i in range(30)} | {"rotary.inv_freq": torch.Size([4])}
    report = convert_checkpoint([(CheckpointSource.open(tmp_path / "m.safetensors"), table)], expected,
                                tmp_path / "out", allow_missing=[r"\.inv_freq$"], progress=False)
    assert report.allowed_missing == ["rotary.inv_freq"] and "left unfilled (allowed): 1" in report.summary()


def test_runtime_failure_leaves_no_output(tmp_path):
    save_file({"w": torch.randn(4, 4), "s": torch.randn(4)}, str(tmp_path / "m.safetensors"))

    def data_dependent(t, match, ctx):
        if t.device.type == "meta":
            raise NotImplementedError("needs data")  # planning cannot run it: checked while streaming
        raise RuntimeError("boom on real data")

    table = KeyTable("t", [Transform(r"^w$", ("w",), data_dependent), Rename(r"^s$", "s")])
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=r"rule failures \(1\)[\s\S]*w \(Transform.*RuntimeError: boom"):
        convert_checkpoint([(CheckpointSource.open(tmp_path / "m.safetensors"), table)], None, out,
                           max_shard_size=1, progress=False)
    assert not out.exists() and _leftovers(tmp_path) == []
    # an existing out_dir is left as it was
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(ConversionError):
        convert_checkpoint([(CheckpointSource.open(tmp_path / "m.safetensors"), table)], None, out,
                           progress=False)
    assert os.listdir(out) == ["config.json"] and _leftovers(tmp_path) == []
    # output parents created for the run are removed again
    nested = tmp_path / "a" / "b" / "out"
    with pytest.raises(ConversionError):
        convert_checkpoint([(CheckpointSource.open(tmp_path / "m.safetensors"), table)], None, nested,
                           progress=False)
    assert not (tmp_path / "a").exists()


def test_shape_check_for_functions_that_cannot_run_on_meta(tmp_path):
    save_file({"w": torch.randn(4, 4)}, str(tmp_path / "m.safetensors"))

    def needs_data(t, match, ctx):
        n = int(t.abs().sum().item() > -1)  # .item() is impossible on meta tensors
        return (t[: 2 + n],)

    table = KeyTable("t", [Transform(r"^w$", ("w",), needs_data)])
    with pytest.raises(ConversionError, match=r"shape mismatches \(1\)[\s\S]*w: got \(3, 4\) expected \(4, 4\)"):
        convert_checkpoint([(CheckpointSource.open(tmp_path / "m.safetensors"), table)],
                           {"w": torch.Size([4, 4])}, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_existing_out_dir_keeps_other_files_and_replaces_stale_weights(tmp_path):
    save_file(_sd(), str(tmp_path / "m.safetensors"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    for name in ("model-00001-of-00009.safetensors", "model.safetensors.index.json"):
        (out / name).write_text("stale")
    report = convert_checkpoint([(CheckpointSource.open(tmp_path / "m.safetensors"), RENAME_TABLE)], None, out,
                                progress=False)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
    assert report.removed_stale == ["model-00001-of-00009.safetensors", "model.safetensors.index.json"]
    assert _leftovers(tmp_path) == []


def test_sharded_bin_keeps_at_most_one_shard_resident(tmp_path):
    g = torch.Generator().manual_seed(1)
    shards = [
        {"l0.w": torch.randn(8, 8, generator=g), "l0.q_bias": torch.randn(8, generator=g)},
        {"l1.w": torch.randn(8, 8, generator=g), "l0.v_bias": torch.randn(8, generator=g)},
        {"l2.w": torch.randn(8, 8, generator=g), "emb": torch.randn(4, 8, generator=g)},
    ]
    _write_sharded_bin(tmp_path / "src", shards)
    table = KeyTable("t", [
        Merge((r"^(.*)\.q_bias$", r"^(.*)\.v_bias$"), r"\1.qkv_bias", concat()),  # parts in shards 1 and 2
        Rename(r"^", "out."),
    ])
    TORCH_SHARD_STATS.reset()
    src = CheckpointSource.open(tmp_path / "src")
    report = convert_checkpoint([(src, table)], None, tmp_path / "out", max_shard_size="300B", progress=False)
    assert TORCH_SHARD_STATS.peak == 1 and src.residency.peak == 1
    assert TORCH_SHARD_STATS.current == 0  # released at the end
    assert src.residency.loads == 6  # each shard once to plan (shapes), once to stream
    got = _load_out(tmp_path / "out")
    assert torch.equal(got["l0.qkv_bias"], torch.cat([shards[0]["l0.q_bias"], shards[1]["l0.v_bias"]]))
    assert torch.equal(got["out.l2.w"], shards[2]["l2.w"]) and len(report.files) > 1


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30
    assert parse_size("500MB") == 500 * 10**6 and parse_size("10kb") == 10_000 and parse_size(123) == 123
    assert parse_size("1.5MiB") == int(1.5 * 2**20) and parse_size("64") == 64
    for bad in ("lots", "5XB", 0, "-3MB"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_transform_lookup_in_extra_source(tmp_path):
    save_file({"scale": torch.full((3,), 2.0)}, str(tmp_path / "m.safetensors"))
    other = CheckpointSource.from_state_dict({"base.scale": torch.tensor([1.0, 2.0, 3.0])})

    def times_base(t, match, ctx):
        return (t * ctx.lookup("ref", "base." + ctx.key),)

    table = KeyTable("t", [Transform(r"^scale$", ("scale",), times_base)])
    convert_checkpoint([(CheckpointSource.open(tmp_path / "m.safetensors"), table)], {"scale": torch.Size([3])},
                       tmp_path / "out", extra_sources={"ref": other}, progress=False)
    assert torch.equal(_load_out(tmp_path / "out")["scale"], torch.tensor([2.0, 4.0, 6.0]))


def test_shard_writer_streams_each_tensor_and_keeps_none(tmp_path):
    """Tensors go to disk when added (the writer keeps no reference, so a source shard's mapping can go once it is
    done); shards split at the limit, headers are 8-byte aligned, every dtype and empty tensors read back exactly."""
    import weakref

    from safetensors import safe_open

    from hf_videollm.conversion.engine import _ShardWriter

    g = torch.Generator().manual_seed(0)
    tensors = {
        "a": torch.randn(64, 32, generator=g),
        "b": torch.randn(16, generator=g).to(torch.bfloat16),
        "c.empty": torch.zeros(0, 4),
        "d": torch.randint(0, 9, (5, 3), generator=g),
        "e": torch.rand(7, generator=g) > 0.5,
        "f": torch.randn(40, 40, generator=g).T,  # not contiguous
    }
    w = _ShardWriter(tmp_path, 10_000, {"format": "pt", "who": "test"})
    for name, t in tensors.items():
        probe = t.clone()
        ref = weakref.ref(probe)
        w.add(name, probe)
        del probe
        assert ref() is None, f"{name} is still referenced after add"
    with pytest.raises(ConversionError, match="written twice"):
        w.add("a", tensors["a"])
    files, index = w.finish()
    assert len(files) > 1 and index is not None
    weight_map = json.loads(index.read_text())["weight_map"]
    assert set(weight_map) == set(tensors)
    for f in files:
        header_len = int.from_bytes(f.read_bytes()[:8], "little")
        assert header_len % 8 == 0
        with safe_open(str(f), framework="pt") as h:
            assert h.metadata() == {"format": "pt", "who": "test"}
            for k in h.keys():
                got = h.get_tensor(k)
                assert got.dtype == tensors[k].dtype and torch.equal(got, tensors[k]), k
    assert not list(tmp_path.glob("*.tmp"))
