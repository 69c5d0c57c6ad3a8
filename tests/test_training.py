"""Training: data validation, collator labels and truncation, stage recipes, LoRA/QLoRA, loss goes down, resume."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from hf_videollm.processors.base import ProcessorInputError
from hf_videollm.tiny import build_tiny
from hf_videollm.training import (
    InvalidDataError,
    TrainConfig,
    VideoLLMCollator,
    VideoLLMDataset,
    load_records,
    normalize_record,
    train,
    validate_records,
)
from hf_videollm.training.trainer import unwrap_videollm

COLORS = ["red", "blue", "green", "yellow"]


def _write_image(path, color_idx: int, seed: int):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 40, (32, 32, 3), dtype=np.uint8)
    img[8:24, 8:24] = np.array([[255, 0, 0], [0, 0, 255], [0, 255, 0], [255, 255, 0]][color_idx], dtype=np.uint8)
    Image.fromarray(img).save(path)


def _dataset(tmp_path, n=8, text_only=0, extra=()):
    (tmp_path / "img").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        c = i % len(COLORS)
        _write_image(tmp_path / "img" / f"{i}.png", c, i)
        if i % 2 == 0:
            rows.append({"id": i, "image": f"img/{i}.png", "conversations": [
                {"from": "human", "value": "<image>\nwhat color is the square"}, {"from": "gpt", "value": COLORS[c]}]})
        else:
            rows.append({"id": i, "messages": [
                {"role": "user", "content": [{"type": "image", "image": f"img/{i}.png"},
                                             {"type": "text", "text": "what color is the square"}]},
                {"role": "assistant", "content": [{"type": "text", "text": COLORS[c]}]}]})
    for i in range(text_only):
        rows.append({"id": 100 + i, "messages": [{"role": "user", "content": "say yes"},
                                                 {"role": "assistant", "content": "yes"}]})
    rows.extend(extra)
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


@pytest.fixture(scope="module")
def tiny_llava():
    model, processor = build_tiny("llava", seed=0)
    return model, processor


def test_both_record_formats_normalize_to_the_same_messages(tmp_path):
    path = _dataset(tmp_path, n=2)
    recs = load_records(path)
    a, b = normalize_record(recs[0]), normalize_record(recs[1])
    for msgs in (a, b):
        assert [m["role"] for m in msgs] == ["user", "assistant"]
        kinds = [p["type"] for p in msgs[0]["content"]]
        assert kinds == ["image", "text"]
        assert msgs[0]["content"][0]["image"].startswith(str(tmp_path))  # resolved against the data file
    assert a[0]["content"][1]["text"] == "what color is the square"  # "<image>\n" consumed with its newline


def test_validation_of_repeated_rows_reports_each_index_and_checks_once(tmp_path, tiny_llava, monkeypatch):
    """A schedule that repeats rows (the demo's: 76,800 rows over 5,000 samples) is checked once per distinct row,
    and every repeat of a bad row is still reported with its own index."""
    from hf_videollm.training import data as data_mod

    _, processor = tiny_llava
    bad = {"image": "img/missing.png", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}
    good = {"image": "img/0.png", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}
    path = _dataset(tmp_path, n=1, extra=[good, bad, good, bad, bad, good])  # row 0: _dataset's own
    calls = []
    real = data_mod._record_problems
    monkeypatch.setattr(data_mod, "_record_problems", lambda *a, **k: calls.append(1) or real(*a, **k))
    problems = validate_records(load_records(path), processor)
    assert [p.index for p in problems] == [2, 4, 5]
    assert all("not found" in p.reason for p in problems)
    assert len(calls) == 3  # row 0, the good row, the bad row
    assert [p.index for p in validate_records([bad, bad], processor)] == [0, 1]  # plain lists too


def test_repeated_rows_are_read_once_and_every_sample_is_a_fresh_copy(tmp_path, tiny_llava, monkeypatch):
    """A row repeated in the data (the demo's schedule) is read and normalized once; its repeats give the same
    messages as reading the row, each a new object; rows that are not plain JSON are never grouped."""
    from hf_videollm.training import data as data_mod

    _, processor = tiny_llava
    a = {"image": "img/0.png", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]}
    recs = load_records(_dataset(tmp_path, n=2, extra=[a, a, a]))  # rows 0, 1 once each, then a three times
    expected = [normalize_record(recs[i]) for i in range(len(recs))]
    ds = VideoLLMDataset(recs, processor)
    calls = []
    real = data_mod.normalize_record
    monkeypatch.setattr(data_mod, "normalize_record", lambda *x, **k: calls.append(1) or real(*x, **k))
    for _ in range(2):
        assert [ds[i] for i in range(len(ds))] == [{"index": i, "messages": m} for i, m in enumerate(expected)]
    assert len(calls) == 2 * 2 + 1  # rows 0 and 1 in each pass, the repeated row once
    ds[3]["messages"][0]["content"].clear()  # a caller changing its sample changes no other sample
    assert ds[3]["messages"] == ds[4]["messages"] == expected[4]
    # skip_invalid keeps the record indices of the repeats
    bad = {"image": "img/missing.png", "conversations": a["conversations"]}
    kept = VideoLLMDataset(load_records(_dataset(tmp_path, n=1, extra=[bad, a, a])), processor, skip_invalid=True)
    assert [kept[i]["index"] for i in range(len(kept))] == [0, 2, 3]
    assert kept[1]["messages"] == kept[2]["messages"] == normalize_record(a, str(tmp_path))
    # an image object in the record: served as it is, never through JSON
    img = Image.new("RGB", (8, 8))
    obj = {"messages": [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "q"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "a"}]}]}
    objs = VideoLLMDataset([obj, obj], processor)
    assert objs[1]["messages"][0]["content"][0]["image"] is img


def test_a_file_of_repeated_rows_loads_as_read_row_by_row(tmp_path, monkeypatch):
    """A JSON Lines file mostly of repeats (a data schedule) is read as its distinct lines, then put in file order:
    the same records, columns and order as reading every line."""
    from hf_videollm.training import data as data_mod

    rows = [json.loads(line) for line in _dataset(tmp_path, n=6).read_text().splitlines()]
    rng = np.random.default_rng(0)
    path = tmp_path / "schedule.jsonl"
    path.write_text("".join(json.dumps(rows[i]) + "\n" for i in rng.integers(0, len(rows), 1200)))
    loads = []
    real = data_mod._distinct_lines
    monkeypatch.setattr(data_mod, "_distinct_lines", lambda lines: loads.append(r := real(lines)) or r)
    deduped = load_records(path)
    assert loads[-1] is not None and len(loads[-1][0]) == len(rows)  # 6 distinct lines read
    n = len(loads)
    assert len(load_records([path, path])) == 2400 and len(loads) == n  # several sources (tagged): read as they are
    monkeypatch.setattr(data_mod, "_DEDUPE_MIN_ROWS", 10**9)
    plain = load_records(path)
    assert loads[-1] is None
    assert deduped.column_names == plain.column_names and deduped.features == plain.features
    assert deduped.to_list() == plain.to_list() and len(plain) == 1200


def test_validation_reports_every_bad_sample_with_its_index(tmp_path, tiny_llava):
    _, processor = tiny_llava
    bad = [
        {"image": "img/missing.png", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]},
        {"conversations": [{"from": "human", "value": "<image> <image>\nq"}, {"from": "gpt", "value": "a"}], "image": "img/0.png"},
        {"messages": []},
        {"messages": [{"role": "user", "content": "only a question"}]},
        {"something": "else"},
    ]
    path = _dataset(tmp_path, n=2, extra=bad)
    problems = validate_records(load_records(path), processor)
    by_index = {p.index: p.reason for p in problems}
    assert set(by_index) == {2, 3, 4, 5, 6}
    assert "not found" in by_index[2]
    assert "markers" in by_index[3]
    assert "empty" in by_index[4]
    assert "assistant" in by_index[5]
    with pytest.raises(InvalidDataError) as e:
        VideoLLMDataset(load_records(path), processor)
    assert "sample 2" in str(e.value) and "skip_invalid" in str(e.value)
    ds = VideoLLMDataset(load_records(path), processor, skip_invalid=True)
    assert len(ds) == 2


def test_collator_supervises_only_assistant_tokens_and_right_pads(tmp_path, tiny_llava):
    _, processor = tiny_llava
    ds = VideoLLMDataset(load_records(_dataset(tmp_path, n=2, text_only=1)), processor)
    collator = VideoLLMCollator(processor)
    batch = collator([ds[0], ds[2]])  # an image sample and a text-only sample in one batch
    tok = processor.tokenizer
    assert batch["pixel_values"].shape[0] == 1
    for row in range(2):
        labels = batch["labels"][row]
        supervised = labels[labels != -100].tolist()
        answer = "red" if row == 0 else "yes"
        assert tok.decode(supervised) == f"{answer} </s>"  # the answer and its end-of-turn token, nothing else
    # right padding, padding never supervised
    mask = batch["attention_mask"]
    assert mask[:, 0].all() and not mask[1, -1]
    assert (batch["labels"][mask == 0] == -100).all()
    # no media position is supervised
    assert (batch["labels"][batch["input_ids"] == processor.image_token_id] == -100).all()


def test_collator_cache_encodes_each_sample_once(tmp_path, tiny_llava, monkeypatch):
    _, processor = tiny_llava
    ds = VideoLLMDataset(load_records(_dataset(tmp_path, n=3)), processor)
    calls = []
    real_call = type(processor).__call__
    monkeypatch.setattr(type(processor), "__call__", lambda self, *a, **k: calls.append(1) or real_call(self, *a, **k))
    cached = VideoLLMCollator(processor, cache=True)
    first = cached([ds[0], ds[1]])
    again = cached([ds[1], ds[0], ds[2]])  # a later epoch: only the new sample is processed
    assert len(calls) == 3
    assert torch.equal(again["input_ids"][0], first["input_ids"][1])
    assert torch.equal(again["pixel_values"][1], first["pixel_values"][0])
    plain = VideoLLMCollator(processor)
    plain([ds[0]]), plain([ds[0]])
    assert len(calls) == 5  # without the cache every call processes again
    # the cache is keyed by the sample's content: a row repeated in the data (another index) is not decoded again
    repeated = VideoLLMDataset(load_records([_dataset(tmp_path, n=3)] * 2), processor)
    assert len(repeated) == 6 and repeated[4]["index"] == 4
    cached([repeated[3], repeated[4], repeated[5]])
    assert len(calls) == 5
    other = dict(repeated[4], messages=[dict(m) for m in repeated[4]["messages"]])
    other["messages"][1] = {"role": "assistant", "content": [{"type": "text", "text": "green"}]}
    assert cached([other])["labels"].ne(-100).any() and len(calls) == 6  # another answer: a new entry


def test_truncation_never_cuts_a_media_span(tmp_path, tiny_llava):
    _, processor = tiny_llava
    long_answer = " ".join(["red"] * 60)
    extra = [{"image": "img/0.png", "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": long_answer}]}]
    ds = VideoLLMDataset(load_records(_dataset(tmp_path, n=1, extra=extra)), processor)
    n_img = processor.estimate_media_tokens({"image": [1]})
    # text is shortened from the end when the cut stays after the image
    col = VideoLLMCollator(processor, max_length=n_img + 40)
    out = col([ds[1]])
    assert out["input_ids"].shape[1] == n_img + 40
    assert (out["input_ids"][0] == processor.image_token_id).sum() == n_img
    assert (out["labels"] != -100).any()
    # a limit inside the media span drops the sample with a reason (or fails on request)
    col = VideoLLMCollator(processor, max_length=n_img // 2)
    with pytest.raises(ProcessorInputError, match="dropped"):
        col([ds[1]])
    assert col.dropped and "past max_length" in col.dropped[0][1]
    with pytest.raises(ProcessorInputError, match="max_length"):
        VideoLLMCollator(processor, max_length=n_img // 2, on_overflow="error")([ds[1]])
    # per-sample visual-token budget
    processor.max_visual_tokens = n_img - 1
    try:
        col = VideoLLMCollator(processor)
        with pytest.raises(ProcessorInputError, match="dropped"):
            col([ds[0]])
        assert "budget" in col.dropped[0][1]
    finally:
        processor.max_visual_tokens = None


def _losses(trainer):
    """The logged training losses; a run that logged none (or a non-finite one) fails here, not by ``all([])``."""
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    steps = trainer.state.global_step
    assert len(losses) == steps // trainer.args.logging_steps and steps > 0, (steps, trainer.state.log_history)
    assert all(np.isfinite(loss) for loss in losses), losses
    return losses


def test_full_stage2_training_lowers_the_loss(tmp_path):
    data = _dataset(tmp_path, n=8)
    trainer = train(TrainConfig(
        model="tiny:llava", data=[str(data)], output_dir=str(tmp_path / "out"), stage="stage2",
        max_steps=24, per_device_train_batch_size=4, learning_rate=3e-3, logging_steps=1, warmup_ratio=0.0,
    ))
    losses = _losses(trainer)
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4]), losses
    meta = json.loads((tmp_path / "out" / "hf_videollm_training.json").read_text())
    assert meta["stage"]["name"] == "stage2" and meta["mode"] == "full"


def test_shuffle_false_reads_the_data_file_in_order(tmp_path, monkeypatch):
    seen = []
    real_call = VideoLLMCollator.__call__
    monkeypatch.setattr(VideoLLMCollator, "__call__", lambda self, samples: seen.append(
        [s["index"] for s in samples]) or real_call(self, samples))
    train(TrainConfig(model="tiny:llava", data=[str(_dataset(tmp_path, n=8))], output_dir=str(tmp_path / "out"),
                      max_steps=3, per_device_train_batch_size=2, shuffle=False, save_steps=None))
    assert seen[:3] == [[0, 1], [2, 3], [4, 5]]  # (the loader may fetch one batch ahead)
    with pytest.raises(ValueError, match="group_by_length reorders samples"):
        TrainConfig(model="tiny:llava", data=["x.jsonl"], output_dir="o", shuffle=False, group_by_length=True)


def test_stage1_trains_the_connector_only_with_its_recipe_lr(tmp_path):
    data = _dataset(tmp_path, n=4)
    before = build_tiny("llava", seed=42)[0].state_dict()  # tiny:llava bases are built with the run's seed
    trainer = train(TrainConfig(model="tiny:llava", data=[str(data)], output_dir=str(tmp_path / "out"),
                                stage="stage1", max_steps=2, per_device_train_batch_size=2))
    core = unwrap_videollm(trainer.model)
    trainable = {core.part_of_parameter(n) for n, p in core.named_parameters() if p.requires_grad}
    assert trainable == {"connector"}
    assert trainer.args.learning_rate == 1e-3
    after = core.state_dict()
    changed = {core.part_of_parameter(k) for k in after if not torch.equal(after[k], before[k])}
    assert changed == {"connector"}


def test_lora_stage_and_part_learning_rates(tmp_path):
    data = _dataset(tmp_path, n=4)
    trainer = train(TrainConfig(model="tiny:llava", data=[str(data)], output_dir=str(tmp_path / "out"),
                                stage="lora", lora_r=4, lora_alpha=8, max_steps=2, per_device_train_batch_size=2,
                                part_learning_rates={"vision_tower": 1e-6}, lora_vision_tower=False))
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    lora = [n for n in names if "lora_" in n]
    assert lora and all(".language_model." in n for n in lora)
    full = [n for n in names if "lora_" not in n]
    assert full and all("multi_modal_projector" in n for n in full)  # connector trained fully (modules_to_save)
    groups = trainer.optimizer.param_groups
    initial = sorted({g["initial_lr"] for g in groups})
    assert initial == [2e-5, 2e-4]  # connector at the recipe's mm_projector_lr, LoRA at the stage lr
    # one schedule scales every group: after the steps, each group's lr is its own initial lr times the same factor
    factors = {round(g["lr"] / g["initial_lr"], 9) for g in groups}
    assert len(factors) == 1 and factors != {1.0}, [(g["initial_lr"], g["lr"]) for g in groups]
    assert (tmp_path / "out" / "adapter_config.json").is_file()


def test_qlora_step_runs(tmp_path):
    pytest.importorskip("bitsandbytes")
    data = _dataset(tmp_path, n=4)
    trainer = train(TrainConfig(model="tiny:llava", data=[str(data)], output_dir=str(tmp_path / "out"),
                                stage="lora", mode="qlora", lora_r=4, lora_alpha=8, max_steps=2,
                                per_device_train_batch_size=2, logging_steps=1))
    kinds = {type(m).__name__ for n, m in trainer.model.named_modules() if "language_model" in n}
    assert "Linear4bit" in kinds
    assert all(np.isfinite(loss) for loss in _losses(trainer))


def test_gradient_checkpointing_with_frozen_tower(tmp_path):
    data = _dataset(tmp_path, n=4, text_only=2)
    trainer = train(TrainConfig(model="tiny:llava", data=[str(data)], output_dir=str(tmp_path / "out"),
                                stage="stage2", max_steps=3, per_device_train_batch_size=3,
                                gradient_checkpointing=True, group_by_length=True, logging_steps=1))
    core = unwrap_videollm(trainer.model)
    assert core.language_model.model.gradient_checkpointing
    assert all(np.isfinite(loss) for loss in _losses(trainer))


_RESUME_SCRIPT = """
import os, sys
from transformers import TrainerCallback
from hf_videollm.training import TrainConfig, train
from hf_videollm.training.trainer import VideoLLMTrainer

class Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 4:  # after checkpoint-3 was written
            os._exit(17)

orig = VideoLLMTrainer.__init__
def init(self, *a, **k):
    orig(self, *a, **k)
    self.add_callback(Kill())
VideoLLMTrainer.__init__ = init
train(TrainConfig(model="tiny:llava", data=[sys.argv[1]], output_dir=sys.argv[2], stage="stage2", max_steps=6,
                  save_steps=3, per_device_train_batch_size=2, learning_rate=1e-3))
"""


def test_resume_after_a_kill_gives_the_same_weights(tmp_path):
    from safetensors.torch import load_file

    data = _dataset(tmp_path, n=8)
    common = dict(model="tiny:llava", data=[str(data)], stage="stage2", max_steps=6, save_steps=3,
                  per_device_train_batch_size=2, learning_rate=1e-3)
    train(TrainConfig(output_dir=str(tmp_path / "straight"), **common))

    killed = tmp_path / "killed"
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(_RESUME_SCRIPT))
    res = subprocess.run([sys.executable, str(script), str(data), str(killed)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 17, res.stderr[-2000:]
    assert (killed / "checkpoint-3").is_dir() and not (killed / "model.safetensors").exists()
    train(TrainConfig(output_dir=str(killed), resume_from_checkpoint=True, **common))

    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_parquet_yaml_config_video_and_vision_lora(tmp_path, tiny_llava):
    """Parquet data + a YAML config, a video sample mixed with image and text-only ones, LoRA on the tower too."""
    import pandas as pd
    import yaml

    from hf_videollm.media import write_video
    from hf_videollm.training import load_train_config

    _, processor = tiny_llava
    jsonl = _dataset(tmp_path, n=2, text_only=1)
    frames = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    write_video(tmp_path / "clip.mp4", frames, fps=4)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    rows.append({"messages": [{"role": "user", "content": [{"type": "video", "video": "clip.mp4"},
                                                           {"type": "text", "text": "what moves"}]},
                              {"role": "assistant", "content": [{"type": "text", "text": "a square"}]}]})
    parquet = tmp_path / "train.parquet"
    rows = [r for r in rows if "messages" in r]
    for r in rows:  # parquet needs one type per column: content as a list of parts everywhere
        for m in r["messages"]:
            if isinstance(m["content"], str):
                m["content"] = [{"type": "text", "text": m["content"]}]
    pd.DataFrame({"messages": [r["messages"] for r in rows]}).to_parquet(parquet)
    ds = VideoLLMDataset(load_records(parquet), processor)
    batch = VideoLLMCollator(processor)([ds[i] for i in range(len(ds))])
    assert batch["pixel_values"].shape[0] == 1 and batch["pixel_values_videos"].shape[0] == 1
    assert batch["input_ids"].shape[0] == len(rows) == 3

    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "model": "tiny:llava", "data": [str(parquet)], "output_dir": str(tmp_path / "out"), "stage": "lora",
        "lora_r": 4, "lora_alpha": 8, "lora_vision_tower": True, "max_steps": 1, "per_device_train_batch_size": 4,
    }))
    cfg = load_train_config(cfg_path, max_steps=2)  # flags override the file
    assert cfg.max_steps == 2
    trainer = train(cfg)
    lora = [n for n, _ in trainer.model.named_modules() if n.endswith("lora_A")]
    assert any(".vision_tower." in n for n in lora) and any(".language_model." in n for n in lora)
    assert not any("multi_modal_projector" in n for n in lora)
    with pytest.raises(ValueError, match="unknown training option"):
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({"model": "x", "data": ["y"], "output_dir": "z", "learning_rat": 1}))
        load_train_config(bad)


@pytest.mark.parametrize("stage,mode", [("stage1", "full"), ("stage2", "full"), ("lora", "qlora")])
def test_videollama2_stage_recipes(tmp_path, stage, mode):
    """VideoLLaMA 2's own curriculum: stage 1 trains the STC connector only at 1e-3; stage 2 connector + LLM at 2e-5;
    LoRA r128/alpha256 on the LLM at 2e-5 with the connector trained fully (finetune_lora.sh), here as QLoRA."""
    if mode == "qlora":
        pytest.importorskip("bitsandbytes")
    data = _dataset(tmp_path, n=4)
    trainer = train(TrainConfig(model="tiny:videollama2", data=[str(data)], output_dir=str(tmp_path / "out"),
                                stage=stage, mode=mode, max_steps=2, per_device_train_batch_size=2, logging_steps=1))
    core = unwrap_videollm(trainer.model)
    trainable = {core.part_of_parameter(n.replace("base_model.model.", "")) for n, p in trainer.model.named_parameters()
                 if p.requires_grad}
    expected = {"stage1": {"connector"}, "stage2": {"connector", "language_model"}, "lora": {"connector", "language_model"}}
    assert trainable == expected[stage]
    assert {g["initial_lr"] for g in trainer.optimizer.param_groups} == {1e-3 if stage == "stage1" else 2e-5}
    assert all(np.isfinite(loss) for loss in _losses(trainer))
    if mode == "qlora":
        assert "Linear4bit" in {type(m).__name__ for n, m in trainer.model.named_modules() if "language_model" in n}
        assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["r"] == 128
