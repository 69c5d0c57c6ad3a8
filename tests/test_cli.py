"""The command line: convert -> chat on a converted fixture, bench on a tiny model, clear errors."""

from __future__ import annotations

import numpy as np
from conftest import fixture_case
from PIL import Image

from hf_videollm.cli import main


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
    assert capsys.readouterr().out.strip()  # the tiny random model says something; the path works


def test_bench_on_tiny_model(capsys):
    assert main(["bench", "--model", "llava", "--frames", "2", "--new-tokens", "2", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "encode video" in out and "tok/s" in out


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
    assert capsys.readouterr().out.strip()


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
    assert capsys.readouterr().out.strip()


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
    # a fresh process: help of every command prints no third-party warnings on stderr
    for cmd in ([], ["train"]):
        res = subprocess.run([sys.executable, "-m", "hf_videollm.cli", *cmd, "--help"], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0 and res.stdout.strip() and res.stderr.strip() == "", (cmd, res.stderr[-2000:])
