"""The command line: convert -> chat on a converted fixture, bench on a tiny model, clear errors."""

from __future__ import annotations

import numpy as np
from conftest import fixture_case
from PIL import Image

from hf_videollm.cli import main


def _reply_by_hand(model_dir, prompt: str, max_new_tokens: int, **media) -> str:
    """What the model answers, computed without the CLI: Auto classes, the text template, the processor's ``__call__``
    on the files, greedy ``generate``, the new tokens decoded."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    (kind, path), = media.items()
    msgs = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True)
    batch = processor(text=[text], **{kind + "s": [str(path)]})
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, batch["input_ids"].shape[1]:]
    assert 0 < len(new) <= max_new_tokens
    return processor.decode(new, skip_special_tokens=True).strip()


def test_convert_then_chat(tmp_path, capsys):
    case = fixture_case("llava_v1_5", "single_image")
    out = tmp_path / "llava"
    rc = main(["convert", "llava", str(case / "original"), str(out), "--vision-tower",
               str(case / "original" / "vision_tower"), "--quiet"])
    assert rc == 0
    assert "dropped" in capsys.readouterr().out.lower()
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(img)
    rc = main(["chat", str(out), "--image", str(img), "--prompt", "What is shown?", "--max-new-tokens", "3"])
    assert rc == 0
    # the printed answer is the model's greedy answer to this image and question, nothing more
    assert capsys.readouterr().out == _reply_by_hand(out, "What is shown?", 3, image=img) + "\n"


def test_bench_on_tiny_model(capsys):
    assert main(["bench", "--model", "llava", "--frames", "2", "--new-tokens", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    # the model line, then one row per measured stage with its time and rate in the stage's unit
    assert out.splitlines()[0].startswith("model: tiny llava") and "frames 2" in out.splitlines()[0]
    rows = {line.split("  ")[0].strip(): line.split() for line in out.splitlines()[2:] if line.strip()}
    assert [k.split(" (")[0] for k in rows] == ["encode video", "prefill", "generate"], out
    assert "(2 new)" in list(rows)[2]
    for (stage, fields), unit in zip(rows.items(), ("fr/s", "tok/s", "tok/s")):
        seconds, rate = float(fields[-3]), float(fields[-2])
        assert seconds > 0 and rate > 0 and fields[-1] == unit, (stage, fields)


def test_errors_are_reported_not_raised(tmp_path, capsys):
    rc = main(["convert", "llava", str(tmp_path / "nowhere"), str(tmp_path / "out"), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "error" in err and "nowhere" in err
    rc = main(["train", "--model", "tiny:llava"])
    assert rc == 2 and "--data" in capsys.readouterr().err


def test_videollama2_convert_then_chat_about_a_video_file(tmp_path, capsys):
    case = fixture_case("videollama2", "clip_stc_mistral_video8")
    out = tmp_path / "videollama2"
    rc = main(["convert", "videollama2", str(case / "original"), str(out), "--vision-tower",
               str(case / "original" / "vision_tower"), "--quiet"])
    assert rc == 0
    capsys.readouterr()
    video = fixture_case("videollama2", "preprocess") / "video.mp4"
    rc = main(["chat", str(out), "--video", str(video), "--prompt", "Describe the video.", "--max-new-tokens", "3"])
    assert rc == 0
    assert capsys.readouterr().out == _reply_by_hand(out, "Describe the video.", 3, video=video) + "\n"


def test_videollama2_lora_train_export_chat(tmp_path, capsys, monkeypatch):
    """CLI path for VideoLLaMA 2: train (its LoRA stage) -> export (LoRA merged) -> chat with an image."""
    import json

    monkeypatch.chdir(tmp_path)
    rows = []
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "conversations": [{"from": "human", "value": "<image>\nwhat color"},
                                                            {"from": "gpt", "value": "red"}]})
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["train", "--model", "tiny:videollama2", "--data", "d.jsonl", "--output-dir", "run", "--stage", "lora",
                 "--max-steps", "2", "--per-device-train-batch-size", "2"]) == 0
    assert json.loads((tmp_path / "run" / "adapter_config.json").read_text())["r"] == 128
    assert main(["export", "run", "exported"]) == 0
    capsys.readouterr()
    assert main(["chat", "exported", "--image", "1.png", "--prompt", "what color", "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().out == _reply_by_hand(tmp_path / "exported", "what color", 2, image="1.png") + "\n"


def test_bench_suite_names_its_parts_and_they_exist(capsys):
    from pathlib import Path

    from hf_videollm.benchmark import BENCH_SUITE

    bench = Path(__file__).resolve().parents[1] / "bench"
    assert all((bench / script).is_file() for script in BENCH_SUITE.values())
    assert main(["bench", "--suite", "preprocess,nope"]) == 2
    assert "unknown bench part(s) ['nope']" in capsys.readouterr().err
