"""The data layouts users already have: ms-swift / LLaMA-Factory records train with their media, or fail
validation naming the sample and the field -- never silently text-only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from hf_videollm.tiny import build_tiny
from hf_videollm.training import VideoLLMCollator, VideoLLMDataset, load_records, normalize_record, validate_records


@pytest.fixture(scope="module")
def processor():
    return build_tiny("llava", seed=0)[1]


def _images(tmp_path, n=2):
    for i in range(n):
        Image.fromarray(np.full((32, 32, 3), 60 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")


SWIFT_MESSAGES = {"messages": [{"role": "user", "content": "<image>what color is it? and <image>"},
                               {"role": "assistant", "content": "red"}], "images": ["0.png", "1.png"]}
FACTORY_SHAREGPT = {"conversations": [{"from": "human", "value": "<image>what color is it?"},
                                      {"from": "gpt", "value": "red"}], "images": ["0.png"]}


def _write(tmp_path, rows):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize("record", [SWIFT_MESSAGES, FACTORY_SHAREGPT], ids=["swift_messages", "factory_sharegpt"])
def test_swift_and_llamafactory_layouts_keep_their_media(record, tmp_path, processor):
    _images(tmp_path)
    recs = load_records(_write(tmp_path, [record]))
    msgs = normalize_record(recs[0])
    images = [p["image"] for p in msgs[0]["content"] if p["type"] == "image"]
    assert images == [str(tmp_path / f"{i}.png") for i in range(len(record["images"]))]  # in tag order
    assert msgs[0]["content"][1] == {"type": "text", "text": "what color is it?" + (" and " if len(images) > 1 else "")}
    assert validate_records(recs, processor) == []
    batch = VideoLLMCollator(processor)([VideoLLMDataset(recs, processor)[0]])
    assert batch["pixel_values"].shape[0] == len(images)  # trains with its media
    assert (batch["input_ids"] == processor.image_token_id).any()


def test_swift_layout_with_missing_or_extra_files_fails_validation_naming_the_field(tmp_path, processor):
    _images(tmp_path)
    rows = [
        {"messages": [{"role": "user", "content": "<image><image>q"}, {"role": "assistant", "content": "a"}],
         "images": ["0.png"]},
        {"messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "a"}],
         "images": ["0.png", "1.png"]},
        {"messages": [{"role": "user", "content": "<video>q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "a"}],
         "images": ["nope.png"]},
    ]
    by_index = {p.index: p.reason for p in validate_records(load_records(_write(tmp_path, rows)), processor)}
    assert set(by_index) == {0, 1, 2, 3}
    assert "'images'" in by_index[0] and "markers" in by_index[0]
    assert "2 files in 'images'" in by_index[1]
    assert "'videos'" in by_index[2]
    assert "not found" in by_index[3]


def test_datasets_objects_are_accepted_and_validated_like_files(tmp_path, processor, monkeypatch):
    from datasets import Dataset, DatasetDict

    from hf_videollm.training import TrainConfig
    from hf_videollm.training.data import DataFileError

    _images(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative media in a datasets object resolve against the working directory
    bad = {"messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "a"}],
           "images": ["nope.png"]}
    good = dict(SWIFT_MESSAGES, images=["0.png", "1.png"])
    ds = Dataset.from_list([good, bad])
    recs = load_records(ds)
    assert normalize_record(recs[0])[0]["content"][0] == {"type": "image", "image": str(tmp_path / "0.png")}
    problems = validate_records(recs, processor)
    assert [p.index for p in problems] == [1] and "not found" in problems[0].reason  # same path as files
    # files and objects mix; a DatasetDict gives the asked split, or names its splits
    dd = DatasetDict(train=Dataset.from_list([good]), validation=Dataset.from_list([good, good]))
    assert len(load_records([dd, _write(tmp_path, [good])])) == 2
    assert len(load_records(dd, split="validation")) == 2
    with pytest.raises(DataFileError, match=r"no split 'test'.*\['train', 'validation'\].*data_split"):
        load_records(dd, split="test")
    cfg = TrainConfig(model="tiny:llava", data=dd, output_dir=str(tmp_path / "out"), data_split="validation",
                      max_steps=1, per_device_train_batch_size=2, save_steps=None)
    assert cfg.data == [dd]
    from hf_videollm.training import train

    trainer = train(cfg)  # end to end from a DatasetDict split
    assert len(trainer.train_dataset) == 2


# ------------------------------------------------------------------------------------------- Hugging Face dataset ids
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fake_hub_dataset(cache, repo_id: str, files: dict[str, bytes]):
    """A dataset repo in huggingface_hub's real cache layout: blobs, snapshots/<commit>/... symlinks, refs/main."""
    import hashlib
    import os

    repo = cache / f"datasets--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    for rel, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        target = snap / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(os.path.relpath(blob, target.parent))
    return snap


def _video_bytes(tmp_path, step: int) -> bytes:
    from media_helpers import grey_ramp

    from hf_videollm.media.video_write import write_video

    return write_video(tmp_path / f"ramp{step}.mp4", grey_ramp(8, step), 8).read_bytes()


def _video_record(video: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": "<video>what changes?"}, {"role": "assistant", "content": answer}],
            "videos": [video]}


def _jsonl(rows) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_dataset_id_syntax():
    from hf_videollm.training.data import parse_hub_dataset_id

    assert parse_hub_dataset_id("owner/name") == ("owner/name", None, None)
    assert parse_hub_dataset_id("owner/name@v1.0:test") == ("owner/name", "v1.0", "test")
    assert parse_hub_dataset_id("owner/name:data/val.jsonl") == ("owner/name", None, "data/val.jsonl")
    for local in ("data/train.jsonl", "./a/b", "/abs/path", "single", __file__):  # files, paths, no owner
        assert parse_hub_dataset_id(local) is None
    with pytest.raises(FileNotFoundError, match="data/train.jsonl not found"):
        load_records("data/train.jsonl")  # a missing local file stays a file error, never a Hub lookup


def test_hub_dataset_loads_offline_from_the_cache_with_media_in_the_snapshot(tmp_path, hub_cache):
    from huggingface_hub import snapshot_download

    from hf_videollm.training import TrainConfig, train
    from hf_videollm.training.data import DataFileError

    videos = {f"videos/v{i}.mp4": _video_bytes(tmp_path, 20 + 10 * i) for i in range(2)}
    train_rows = [_video_record("videos/v0.mp4", "it brightens"), _video_record("videos/v1.mp4", "it brightens fast")]
    snap = _fake_hub_dataset(hub_cache, "owner/clips", {
        **videos, "data/train.jsonl": _jsonl(train_rows), "data/test.jsonl": _jsonl(train_rows[:1]),
        "README.md": b"---\nlicense: mit\n---\n"})
    # huggingface_hub itself finds it: the layout is the real one
    assert snapshot_download("owner/clips", repo_type="dataset", local_files_only=True, cache_dir=hub_cache) == str(snap)

    vl2 = build_tiny("videollama2", seed=0)[1]
    recs = load_records("owner/clips")  # the train split, chosen by file name among train / test
    assert len(recs) == 2
    video = normalize_record(recs[0])[0]["content"][0]
    assert video == {"type": "video", "video": str(snap / "videos/v0.mp4")}  # relative to the repo root
    assert validate_records(recs, vl2) == []
    assert len(load_records("owner/clips:test")) == 1  # a split
    assert len(load_records("owner/clips@main:data/test.jsonl")) == 1  # a revision and a path inside the repo
    assert len(load_records("owner/clips", split="test")) == 1  # data_split
    with pytest.raises(DataFileError, match=r"no data file of split 'validation' among 2 files .*data/test.jsonl"):
        load_records("owner/clips:validation")

    cfg = TrainConfig(model="tiny:videollama2", data="owner/clips", output_dir=str(tmp_path / "run"), max_steps=1,
                      per_device_train_batch_size=2, num_frames=4)
    trainer = train(cfg)
    assert len(trainer.train_dataset) == 2
    meta = json.loads((tmp_path / "run" / "hf_videollm_training.json").read_text())
    assert meta["data"] == ["owner/clips"] and meta["data_mix"] is None


def test_hub_dataset_with_several_unnamed_files_asks_to_choose(tmp_path, hub_cache):
    from hf_videollm.training.data import DataFileError

    row = _video_record("v.mp4", "x")
    _fake_hub_dataset(hub_cache, "owner/two", {"a.jsonl": _jsonl([row]), "b.parquet": b"PAR1"})
    with pytest.raises(DataFileError, match=r"'owner/two'.*among 2 files \(a.jsonl, b.parquet\).*<path inside it>"):
        load_records("owner/two")
    assert len(load_records("owner/two:a.jsonl")) == 1


def test_uncached_hub_dataset_offline_is_one_clear_error(tmp_path, hub_cache, capsys):
    from hf_videollm.training.data import DataFileError
    from hf_videollm_cli import main

    with pytest.raises(DataFileError) as err:
        load_records("owner/missing")
    msg = str(err.value)
    assert "'owner/missing'" in msg and str(hub_cache) in msg and "HF_HUB_OFFLINE" in msg
    assert "huggingface-cli download --repo-type dataset owner/missing" in msg and "local data files" in msg
    rc = main(["train", "--model", "tiny:videollama2", "--data", "owner/missing", "--output-dir", str(tmp_path / "r")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "owner/missing" in lines[0] and "Traceback" not in lines[0]
    assert not (tmp_path / "r" / "base_model").exists()  # failed before loading a model


# ------------------------------------------------------------------------------------------------- mixing sources
def _source(name: str, n: int):
    from datasets import Dataset

    return name, Dataset.from_list([{"k": f"{name}{i}", "_media_root": "/"} for i in range(n)])


def _per_source(mixed) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for src, idx in zip(mixed["_source"], mixed["_source_index"], strict=True):
        out.setdefault(src, []).append(idx)
    return out


@pytest.mark.parametrize(("sizes", "ratios", "total", "expected"), [
    ([4, 6], [0.7, 0.3], None, [7, 3]),         # total = sum of sizes; A oversampled, B sub-sampled
    ([3, 3, 4], [1, 1, 1], None, [4, 3, 3]),    # largest remainder, ties to the earlier source
    ([5, 5], [2, 1], 7, [5, 2]),                # data_mix_size; 4.67 / 2.33 -> 5 / 2
    ([5, 5], [0.29, 0.71], 100, [29, 71]),      # float shares round to the exact total
    ([5, 5, 5], [1, 0, 3], 9, [2, 0, 7]),       # weight 0: the source is left out
])
def test_mix_counts_are_exact(sizes, ratios, total, expected):
    from hf_videollm.training.data import mix_counts

    assert mix_counts(sizes, ratios, total) == expected


def test_mix_repeats_small_sources_subsamples_large_ones_and_is_seeded():
    from hf_videollm.training.data import format_mix_table, mix_sources

    sources = [_source("a", 3), _source("b", 50)]
    mixed, table = mix_sources(sources, [7, 3], seed=1, size=10)
    got = _per_source(mixed)
    assert len(got["a"]) == 7 and all(got["a"].count(i) in (2, 3) for i in range(3))  # 2 full passes + 1 sampled
    assert sum(got["a"].count(i) == 3 for i in range(3)) == 1
    assert len(got["b"]) == 3 and len(set(got["b"])) == 3  # without replacement
    assert [r["samples"] for r in table] == [7, 3] and (table[0]["full_passes"], table[0]["extra"]) == (2, 1)
    assert mixed[0]["k"] == f"a{mixed[0]['_source_index']}"  # rows are the sources' own records
    again, _ = mix_sources(sources, [7, 3], seed=1, size=10)
    assert again["_source_index"] == mixed["_source_index"]  # deterministic for a seed
    others = {tuple(mix_sources(sources, [7, 3], seed=s, size=10)[0]["_source_index"]) for s in range(2, 6)}
    assert len(others | {tuple(mixed["_source_index"])}) > 1  # and the seed matters
    text = format_mix_table(table, seed=1)
    assert "2.33x (2 full + 1)" in text and "0.06x (0 full + 3)" in text and "70.0%" in text


@pytest.mark.parametrize(("ratios", "match"), [
    ([1.0], "data_ratios has 1 weight.*2 source"),
    ([1, -1], "data_ratios must not be negative"),
    ([0, 0], "data_ratios are all zero"),
    ([float("nan"), 1], "data_ratios must be finite"),
    (["x", 1], "data_ratios must be numbers"),
])
def test_bad_data_ratios_are_clear_errors(ratios, match, tmp_path):
    from hf_videollm.training import TrainConfig

    with pytest.raises(ValueError, match=match):
        TrainConfig(model="tiny:llava", data=["a.jsonl", "b.jsonl"], output_dir=str(tmp_path), data_ratios=ratios)
    with pytest.raises(ValueError, match="data_mix_size needs data_ratios"):
        TrainConfig(model="tiny:llava", data=["a.jsonl"], output_dir=str(tmp_path), data_mix_size=4)
    with pytest.raises(ValueError, match="data_mix_size must be a positive whole number"):
        TrainConfig(model="tiny:llava", data=["a.jsonl"], output_dir=str(tmp_path), data_ratios=[1], data_mix_size=0)


def test_mixed_data_is_validated_naming_source_and_row(tmp_path, processor):
    from hf_videollm.training.data import InvalidDataError

    _images(tmp_path)
    good = dict(SWIFT_MESSAGES)
    bad = dict(SWIFT_MESSAGES, images=["0.png", "nope.png"])
    (tmp_path / "a.jsonl").write_text(json.dumps(good) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    recs = load_records([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], ratios=[1, 2], mix_size=6)
    problems = validate_records(recs, processor)
    assert {(p.source, p.source_index) for p in problems} == {(str(tmp_path / "b.jsonl"), 1)}
    assert len(problems) == 2  # the bad row, drawn twice (4 b samples = 2 full passes)
    with pytest.raises(InvalidDataError, match=r"nope.png.*\[.*b.jsonl record 1\]"):
        VideoLLMDataset(recs, processor)
    # without ratios several sources are concatenated, and named the same way
    plain = validate_records(load_records([tmp_path / "a.jsonl", tmp_path / "b.jsonl"]), processor)
    assert [(p.index, p.source_index) for p in plain] == [(2, 1)]


def test_train_on_two_sources_with_ratios_from_the_cli(tmp_path, monkeypatch, capsys):
    from hf_videollm_cli import main

    _images(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.jsonl").write_text(json.dumps(SWIFT_MESSAGES) + "\n")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(dict(FACTORY_SHAREGPT, images=[f"{i % 2}.png"])) + "\n"
                                              for i in range(6)))
    assert main(["train", "--model", "tiny:llava", "--data", "a.jsonl", "b.jsonl", "--data-ratios", "0.5", "0.5",
                 "--data-mix-size", "4", "--output-dir", "run", "--max-steps", "1",
                 "--per-device-train-batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "data mix: 4 samples (seed 42)" in out and "2.00x (2 full + 0)" in out
    meta = json.loads((tmp_path / "run" / "hf_videollm_training.json").read_text())
    assert meta["data"] == ["a.jsonl", "b.jsonl"] and meta["num_samples"] == 4
    assert [(r["source"], r["records"], r["weight"], r["samples"]) for r in meta["data_mix"]] == [
        ("a.jsonl", 1, 0.5, 2), ("b.jsonl", 6, 0.5, 2)]


def test_uncached_hub_dataset_is_downloaded_when_online(tmp_path, hub_cache, monkeypatch):
    """Not cached and not offline: ``snapshot_download`` fetches the repo (network replaced by a fake that fills the
    cache); a failing download is one error naming the id, the cache and the cause."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    from hf_videollm.training.data import DataFileError

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = []

    def fake_snapshot_download(repo_id, *, repo_type, revision, cache_dir, local_files_only=False):
        calls.append((repo_id, repo_type, revision, cache_dir, local_files_only))
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        if repo_id == "owner/down":
            raise ConnectionError("network unreachable")
        return str(_fake_hub_dataset(hub_cache, repo_id, {"train.jsonl": _jsonl([_video_record("v.mp4", "x")])}))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert len(load_records("owner/fresh@main")) == 1
    assert calls == [("owner/fresh", "dataset", "main", str(hub_cache), True),
                     ("owner/fresh", "dataset", "main", str(hub_cache), False)]
    with pytest.raises(DataFileError, match=r"'owner/down' is not in the local cache .*hub.* could not be downloaded "
                                            r"\(ConnectionError: network unreachable\)"):
        load_records("owner/down")


def test_local_folder_and_mixing_any_kind_of_source(tmp_path, hub_cache, processor):
    """A local folder is read like a Hub snapshot; files, folders, Hub ids and datasets objects mix alike."""
    from datasets import Dataset

    from hf_videollm.training.data import load_sources, mix_sources

    folder = tmp_path / "local_ds"
    (folder / "data").mkdir(parents=True)
    _images(folder)
    (folder / "data" / "train-00000-of-00001.jsonl").write_text(json.dumps(SWIFT_MESSAGES) + "\n")
    (folder / "data" / "validation.jsonl").write_text((json.dumps(SWIFT_MESSAGES) + "\n") * 3)
    recs = load_records(str(folder))  # the train file; media relative to the folder's root
    assert len(recs) == 1 and normalize_record(recs[0])[0]["content"][0]["image"] == str(folder / "0.png")
    assert len(load_records(str(folder), split="validation")) == 3

    _images(tmp_path)
    image_rec = dict(FACTORY_SHAREGPT, images=[str(tmp_path / "0.png")])  # absolute: no media root needed
    snap_rows = _jsonl([image_rec] * 2)
    _fake_hub_dataset(hub_cache, "owner/imgs", {"train.jsonl": snap_rows})
    (tmp_path / "f.jsonl").write_text(json.dumps(image_rec) + "\n")
    sources = load_sources([str(tmp_path / "f.jsonl"), str(folder), "owner/imgs", Dataset.from_list([image_rec] * 4)])
    assert [n for n, _ in sources][2:] == ["owner/imgs", "Dataset 3"]
    mixed, table = mix_sources(sources, [1, 1, 1, 1], seed=0, size=8)
    assert [r["samples"] for r in table] == [2, 2, 2, 2] and len(mixed) == 8
    assert validate_records(mixed, processor) == []
