"""VideoLLaMA 2.1-AV training: audio and audio+video samples in both data formats, the AV curriculum's stages."""

from __future__ import annotations

import json
import wave

import numpy as np
import pytest

from hf_videollm.media import write_video
from hf_videollm.tiny import build_tiny
from hf_videollm.training import TrainConfig, VideoLLMCollator, VideoLLMDataset, load_records, train
from hf_videollm.training.trainer import unwrap_videollm


def _tone(freq: float, seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _write_wav(path, samples: np.ndarray, rate: int = 16000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((samples * 32767).astype("<i2").tobytes())
    return path


def _av_dataset(tmp_path, n: int = 4):
    rows = []
    for i in range(n):
        high = i % 2 == 0
        freq, answer = (1200.0, "high") if high else (300.0, "low")
        _write_wav(tmp_path / f"a{i}.wav", _tone(freq))
        frames = np.full((8, 32, 32, 3), 40 * i, dtype=np.uint8)
        write_video(tmp_path / f"v{i}.mp4", frames, fps=8, audio=_tone(freq))
        rows.append({"id": 3 * i, "audio": f"a{i}.wav", "conversations": [
            {"from": "human", "value": "<audio>\nis the tone high or low"}, {"from": "gpt", "value": answer}]})
        rows.append({"id": 3 * i + 1, "video": f"v{i}.mp4", "with_audio": True, "conversations": [
            {"from": "human", "value": "<video>\nis the tone high or low"}, {"from": "gpt", "value": answer}]})
        rows.append({"id": 3 * i + 2, "messages": [
            {"role": "user", "content": [{"type": "video", "video": f"v{i}.mp4", "with_audio": True},
                                         {"type": "text", "text": "is the tone high or low"}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]}]})
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_av_records_reach_the_model_with_audio(tmp_path):
    model, processor = build_tiny("videollama2_av")
    data = _av_dataset(tmp_path, n=1)
    ds = VideoLLMDataset(load_records([str(data)]), processor)
    batch = VideoLLMCollator(processor)([ds[i] for i in range(len(ds))])
    assert batch["input_features"].shape[0] == 3  # the wav, then each video's own track
    assert batch["pixel_values_videos"].shape[0] == 2
    audio_id = processor.audio_token_id
    assert ((batch["input_ids"] == audio_id).sum(1) == processor.audio_tokens()).all()
    assert (batch["labels"][batch["input_ids"] == audio_id] == -100).all()
    out = model(**batch)
    assert np.isfinite(out.loss.item())


STAGES = {
    "audio_stage1": ({"audio_projector"}, 1e-3),
    "audio_stage2": ({"audio_projector", "audio_tower"}, 2e-5),
    "av_joint": ({"connector", "audio_projector", "language_model"}, 2e-5),
    "av_joint_lora": ({"connector", "audio_projector", "language_model"}, 2e-5),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_av_stage_recipes(tmp_path, stage):
    data = _av_dataset(tmp_path, n=2)
    extra = {"lora_r": 4, "lora_alpha": 8} if stage.endswith("lora") else {}
    trainer = train(TrainConfig(model="tiny:videollama2_av", data=[str(data)], output_dir=str(tmp_path / "out"),
                                stage=stage, max_steps=2, per_device_train_batch_size=3, logging_steps=1,
                                save_steps=None, **extra))
    core = unwrap_videollm(trainer.model)
    trainable = {core.part_of_parameter(n.replace("base_model.model.", "")) for n, p in trainer.model.named_parameters()
                 if p.requires_grad}
    parts, lr = STAGES[stage]
    assert trainable == parts
    if stage.endswith("lora"):
        lora = [n for n, p in trainer.model.named_parameters() if p.requires_grad and "lora_" in n]
        assert lora and all(".language_model." in n for n in lora)
    else:
        assert {g["initial_lr"] for g in trainer.optimizer.param_groups} == {lr}
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(np.isfinite(losses))


@pytest.mark.parametrize("audio", [None, False])
def test_bench_synthetic_hears_the_tracks_or_not(tmp_path, audio):
    """``bench-synthetic --model videollama2_av``: the audio kinds' tracks reach the model (``--no-audio``: never)."""
    from hf_videollm.demo import BenchSettings, run_benchmark

    settings = BenchSettings(model="videollama2_av", workdir=str(tmp_path), kinds=["pitch"], train_per_kind=4,
                             test_per_kind=2, max_steps=1, batch_size=2, first_steps=0, progress=False, audio=audio)
    report = run_benchmark(settings)
    assert report["settings"]["audio"] is (audio is None)
    assert report["accuracy"]["count"] == {"pitch": 2.0}
    rows = [json.loads(x) for x in (tmp_path / "data" / "train" / "data.jsonl").read_text().splitlines()]
    heard = [p.get("with_audio", False) for r in rows for p in r["messages"][0]["content"] if p["type"] == "video"]
    assert heard and all(h is (audio is None) for h in heard)
