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
