"""``TrainConfig(report_to=...)`` / ``--report-to``: TensorBoard event files and offline W&B runs hold the training loss;
a tracker whose package is missing is one clear error naming the extra to install, before anything is loaded.

The tracker tests skip (with the reason) when ``tensorboard`` / ``wandb`` is not installed: ``pip install
"hf-videollm[tracking]"``. Nothing here touches the network (W&B runs with ``WANDB_MODE=offline``).
"""

from __future__ import annotations

import importlib.util
import json
import struct

import numpy as np
import pytest
from PIL import Image

from hf_videollm.training.train import TrainConfig, check_report_to, train
from hf_videollm_cli import main


def _data(tmp_path):
    rows = []
    for i, color in enumerate(["red", "blue"]):
        img = np.zeros((32, 32, 3), dtype=np.uint8)
        img[8:24, 8:24, 0 if color == "red" else 2] = 255
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nwhat color is the square"}, {"from": "gpt", "value": color}]})
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _two_steps(tmp_path, report_to):
    return train(TrainConfig(
        model="tiny:llava", data=[str(_data(tmp_path))], output_dir=str(tmp_path / "run"), max_steps=2,
        logging_steps=1, per_device_train_batch_size=1, report_to=report_to,
    ))


def _logged_losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def test_tensorboard_event_files_hold_the_loss(tmp_path):
    if importlib.util.find_spec("tensorboard") is None:
        pytest.skip('tensorboard is not installed (pip install "hf-videollm[tracking]")')
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _two_steps(tmp_path, "tensorboard")
    runs = sorted((tmp_path / "run" / "runs").iterdir())  # transformers' default logging_dir: <output_dir>/runs/<date>
    assert len(runs) == 1 and list(runs[0].glob("events.out.tfevents.*"))
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    scalars = events.Scalars("train/loss")
    assert [s.step for s in scalars] == [1, 2]
    assert [s.value for s in scalars] == pytest.approx(_logged_losses(trainer), rel=1e-6)
    assert "train/learning_rate" in events.Tags()["scalars"]


def _wandb_records(path):
    """Protobuf ``Record``s of a ``.wandb`` file (a LevelDB-style log: 32 KiB blocks of 7-byte-headed chunks after a
    7-byte file header); wandb 0.31 ships no Python reader for it."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, pending = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # full / first
            pending = chunk
        elif kind in (3, 4):  # middle / last
            pending += chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def test_wandb_offline_run_holds_the_loss(tmp_path, monkeypatch):
    if importlib.util.find_spec("wandb") is None:
        pytest.skip('wandb is not installed (pip install "hf-videollm[tracking]")')
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")  # never the network
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):  # nothing written outside tmp
        monkeypatch.setenv(var, str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "hf-videollm-test")
    try:
        trainer = _two_steps(tmp_path, "wandb")
    finally:
        wandb.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, f"one offline run expected under {tmp_path / 'wandb'}, found {runs}"
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in _wandb_records(runs[0]) if r.WhichOneof("record_type") == "history"]
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    assert losses == pytest.approx(_logged_losses(trainer), rel=1e-6) and len(losses) == 2


@pytest.mark.parametrize("tracker,module", [("tensorboard", "tensorboard"), ("wandb", "wandb")])
def test_a_missing_tracker_is_one_clear_error_before_anything_is_written(tracker, module, tmp_path, monkeypatch,
                                                                          capsys):
    real = importlib.util.find_spec
    missing = {module, "tensorboardX"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a))
    with pytest.raises(ValueError, match=r'hf-videollm\[tracking\]') as e:
        check_report_to(f"none,{tracker}")
    assert repr(tracker) in str(e.value)
    out = tmp_path / "run"
    rc = main(["train", "--model", "tiny:llava", "--data", "d.jsonl", "--output-dir", str(out), "--report-to", tracker])
    err = capsys.readouterr().err
    assert rc == 2 and "hf-videollm[tracking]" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing loaded or written
    assert check_report_to("none") == [] and check_report_to(None) == []


def test_an_unknown_tracker_name_is_a_clear_error_before_anything_is_loaded(tmp_path):
    from hf_videollm.training.train import TrainConfig, check_report_to, train

    assert check_report_to("none") == [] and check_report_to("tensorboard, none") == ["tensorboard"]
    with pytest.raises(ValueError, match=r"unknown tracker\(s\) \['wandbb'\].*none, tensorboard or wandb"):
        check_report_to("tensorboard,wandbb")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="wandbb"):
        train(TrainConfig(model="tiny:llava", data=[str(tmp_path / "absent.jsonl")], output_dir=str(out),
                          report_to="wandbb"))
    assert not out.exists()  # refused before the data, the model or the output directory
