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


def _tiny_data(tmp_path):
    import json

    rows = []
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "conversations": [{"from": "human", "value": "<image>\nwhat color"},
                                                            {"from": "gpt", "value": "red"}]})
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))


def test_resume_from_checkpoint_true_resumes_from_the_latest(tmp_path, monkeypatch):
    """`--resume-from-checkpoint true` (as the README writes it) means the latest checkpoint-N in --output-dir."""
    from transformers import Trainer

    monkeypatch.chdir(tmp_path)
    _tiny_data(tmp_path)
    common = ["train", "--model", "tiny:llava", "--data", "d.jsonl", "--output-dir", "run", "--stage", "lora",
              "--per-device-train-batch-size", "2", "--save-steps", "1"]
    assert main([*common, "--max-steps", "2"]) == 0
    loaded = []
    real = Trainer._load_from_checkpoint
    monkeypatch.setattr(Trainer, "_load_from_checkpoint",
                        lambda self, path, *a, **k: (loaded.append(path), real(self, path, *a, **k))[1])
    assert main([*common, "--max-steps", "3", "--resume-from-checkpoint", "true"]) == 0
    assert [p.replace("\\", "/").rstrip("/").split("/")[-1] for p in loaded] == ["checkpoint-2"]


def test_network_and_os_errors_end_as_one_line(tmp_path, capsys, monkeypatch):
    import huggingface_hub

    from hf_videollm.tiny import build_tiny

    model, processor = build_tiny("llava")
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    capsys.readouterr()

    def offline(self, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co' ([Errno -3] Temporary failure in name resolution)")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", offline)
    assert main(["push", str(tmp_path / "m"), "me/m", "--token", "hf_fake"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "huggingface.co" in err and "HF_HUB_OFFLINE" in err

    (tmp_path / "locked").mkdir()
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied", "x")))
    assert main(["push", str(tmp_path / "m"), "me/m", "--token", "hf_fake"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Permission denied" in err


def test_help_lists_stages_and_only_valid_choices(capsys):
    import subprocess
    import sys

    import pytest

    from hf_videollm.registry import MODELS

    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name, entry in MODELS.items():
        assert f"  {name}:" in out
        for stage_name, stage in entry.get_recipes().items():
            assert f"{stage_name:<10} {stage.description}" in out
    assert "{float32,bfloat16,float16}" in out  # --dtype
    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    assert "{eager,sdpa,flash_attention_2}" in capsys.readouterr().out  # --attn: no None among the choices
    # a fresh process: help of every command prints no third-party warnings on stderr, and imports neither torch nor
    # transformers nor the package's models (what made it take 7-18 s)
    from hf_videollm_cli import build_parser

    commands = [[]] + [[c] for c in build_parser()._subparsers._group_actions[0].choices]
    probe = ("import sys\nfrom hf_videollm_cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
             "    assert e.code == 0, e.code\nheavy = sorted(m for m in ('torch', 'transformers', 'hf_videollm') if m in "
             "sys.modules)\nprint('HEAVY', heavy)")
    for cmd in commands:
        res = subprocess.run([sys.executable, "-c", probe, *cmd, "--help"], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and "usage: hf-videollm" in res.stdout, (cmd, res.stderr[-2000:])
        assert res.stdout.strip().endswith("HEAVY []") and res.stderr.strip() == "", (cmd, res.stdout[-300:], res.stderr[-2000:])
    assert len(commands) == 9  # the CLI's eight commands and the top level


def test_cli_metadata_equals_the_registry():
    """The CLI parser's static copy of the registry's stages and TrainConfig's fields (hf_videollm_cli/_meta.py) is
    what the live package says; when this fails, regenerate it: python -c "from hf_videollm.cli import
    write_cli_metadata; write_cli_metadata()"."""
    from hf_videollm.cli import cli_metadata
    from hf_videollm_cli import _meta

    stages, fields = cli_metadata()
    assert _meta.STAGES == stages and _meta.TRAIN_FIELDS == fields


def test_chat_with_a_missing_model_directory_is_one_clear_line(tmp_path, capsys):
    assert main(["chat", str(tmp_path / "no-such-model"), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-such-model: no such model directory" in err and "Hub repo id" in err
