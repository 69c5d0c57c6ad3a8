"""The example training configs shipped in ``hf_videollm/configs/<model>/<stage>.yaml``.

Every registered model x stage has exactly one example, and every example names a real model and stage; each parses
into a ``TrainConfig`` that agrees with the stage recipe (mode, learning rates) and with its own ``hf-videollm
convert`` line (the converted directory is the ``model:`` it trains); and EVERY example starts: with ``model`` set to
``tiny:<name>``, ``data`` to a tiny synthetic video set (audio-visual for ``videollama2_av``), ``max_steps=1``,
``per_device_train_batch_size=2``, ``gradient_accumulation_steps=1`` and ``report_to="none"`` (no tracker needed),
``train()`` runs one step (about a second on a CPU) and trains exactly the stage's parts. Everything else (stage,
mode, LoRA rank, learning rates, bfloat16, max_length, num_frames, gradient checkpointing, group_by_length, ...)
comes from the file. The tiny data is built once per module (a few seconds).
"""

from __future__ import annotations

import json
import math
import re

import pytest

from hf_videollm.registry import MODELS
from hf_videollm.training.train import TRAINING_METADATA, TrainConfig, load_train_config, train
from hf_videollm.training.trainer import unwrap_videollm
from hf_videollm_cli import main
from hf_videollm_cli._configs import configs_dir, example_configs, resolve_config

EXAMPLES = example_configs()
EXPECTED = [f"{name}/{stage}" for name, entry in MODELS.items() for stage in entry.get_recipes()]
# what makes a shipped example run on a CPU in a second; nothing about the recipe is overridden
SMOKE = {"max_steps": 1, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "report_to": "none"}


def test_every_registered_model_and_stage_has_exactly_one_example():
    files = sorted(p.relative_to(configs_dir()).as_posix() for p in configs_dir().rglob("*") if p.is_file())
    assert files == sorted(f"{n}.yaml" for n in EXAMPLES), f"unexpected files next to the examples: {files}"
    assert sorted(EXAMPLES) == sorted(EXPECTED), (
        f"missing examples: {sorted(set(EXPECTED) - set(EXAMPLES))}; "
        f"examples of no registered model/stage: {sorted(set(EXAMPLES) - set(EXPECTED))}"
    )


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_parses_and_agrees_with_its_recipe_and_convert_line(name):
    model_name, stage_name = name.split("/")
    cfg = load_train_config(name)  # by name, as `--config llava/stage2`
    assert isinstance(cfg, TrainConfig)
    assert resolve_config(name) == EXAMPLES[name] == resolve_config(f"{name}.yaml")
    stage = MODELS[model_name].get_recipes()[stage_name]
    assert cfg.stage == stage_name
    assert cfg.mode == ("lora" if stage.lora else "full")
    # numbers are numbers (YAML reads `2e-5` as a string; the files write 2.0e-5)
    assert isinstance(cfg.learning_rate, float) and cfg.learning_rate == stage.learning_rate
    assert {k: float(v) for k, v in cfg.part_learning_rates.items()} == cfg.part_learning_rates
    assert {**stage.part_learning_rates, **cfg.part_learning_rates} == stage.part_learning_rates
    if stage.lora:
        assert (cfg.lora_r, cfg.lora_alpha) == (stage.lora_r, stage.lora_alpha)
    for key in ("num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps"):
        assert isinstance(getattr(cfg, key), (int, float)) and getattr(cfg, key) > 0, key
    assert cfg.max_length is None or isinstance(cfg.max_length, int)
    assert cfg.dtype == "bfloat16" and cfg.report_to == "tensorboard"
    assert cfg.output_dir == f"runs/{model_name}-{stage_name}"
    assert cfg.data and all(d.startswith("path/to/") for d in cfg.data)  # placeholders, never a real path
    # the model trained is the directory the file's own `hf-videollm convert` line writes, with a registered reader
    text = EXAMPLES[name].read_text()
    convert = re.findall(r"^#\s+hf-videollm convert (\S+) (\S+) (\S+)(.*)$", text, flags=re.M)
    assert len(convert) == 1, f"{name}: one `hf-videollm convert` line expected, found {convert}"
    family, _src, out, rest = convert[0]
    assert out == cfg.model, f"{name}: converts to {out} but trains {cfg.model}"
    source_format = "transformers" if "--from transformers" in rest else "original"
    assert source_format in MODELS[family].readers, f"{name}: {family} has no {source_format} reader"
    assert model_name.startswith(family), f"{name}: converted with {family}"  # blip2_t5 <- blip2, videollama2_av <- videollama2
    assert "specs/" in text  # cites the spec it was read from


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Two short synthetic videos with a tone (audio track), written once: ``data.jsonl`` and ``av.jsonl`` (the same
    records, heard with their audio, for the audio-visual stages)."""
    from hf_videollm.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("example_configs_data")
    data = generate_dataset(root, split="train", samples_per_kind=2, kinds=["pitch"], size=32, num_frames=8, fps=4)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    av = data.parent / "av.jsonl"
    av.write_text("\n".join(json.dumps({**r, "with_audio": True}) for r in rows))
    return {"video": data, "av": av}


def _data_for(model_name: str, tiny_data, stage_name: str = "") -> str:
    av = model_name == "videollama2_av" or (model_name == "video_llama" and stage_name.startswith("audio"))
    return str(tiny_data["av" if av else "video"])


def stage_of(model_name: str, stage_name: str):
    return MODELS[model_name].get_recipes()[stage_name]


def _part_of(core, param_name: str) -> str:
    """The most specific part holding a parameter (parts may nest: BLIP-2's ``ln_vision`` is inside ``vision_tower``)."""
    matches = [(len(path), part) for part, paths in core._parts.items() for path in paths
               if param_name == path or param_name.startswith(path + ".")]
    return max(matches)[1] if matches else "other"


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_starts_on_a_tiny_model(name, tiny_data, tmp_path):
    model_name, stage_name = name.split("/")
    cfg = load_train_config(name, model=f"tiny:{model_name}", data=[_data_for(model_name, tiny_data, stage_name)],
                            output_dir=str(tmp_path / "run"), **SMOKE)
    file_values = load_train_config(name)
    for key in ("stage", "mode", "learning_rate", "dtype", "max_length", "num_frames", "gradient_checkpointing",
                "lora_r"):
        assert getattr(cfg, key) == getattr(file_values, key), key  # the overrides touched nothing else
    trainer = train(cfg)
    assert trainer.state.global_step == 1
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])
    meta = json.loads((tmp_path / "run" / TRAINING_METADATA).read_text())
    assert (meta["stage"]["name"], meta["mode"]) == (stage_name, cfg.mode)
    assert meta["hyperparameters"]["dtype"] == "bfloat16"
    scheduler = trainer.args.lr_scheduler_type
    assert getattr(scheduler, "value", scheduler) == (cfg.lr_scheduler_type or stage_of(model_name, stage_name).lr_scheduler_type)
    # exactly the stage's parts train
    stage = stage_of(model_name, stage_name)
    core = unwrap_videollm(trainer.model)
    for part in stage.trainable_parts:
        params = [p for m in core.get_part_modules(part) for p in m.parameters()]
        assert params and any(p.requires_grad for p in params), f"{part} should train"
    if cfg.mode == "full":
        trained = {_part_of(core, n) for n, p in core.named_parameters() if p.requires_grad}
        assert trained <= set(stage.trainable_parts), f"trained {trained}, stage parts {stage.trainable_parts}"
    else:
        assert any("lora_" in n and p.requires_grad for n, p in trainer.model.named_parameters())


def test_cli_trains_from_a_shipped_example_by_name(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--config", "llava/stage1", "--model", "tiny:llava", "--data", _data_for("llava", tiny_data),
               "--output-dir", str(out), "--max-steps", "1", "--dtype", "float32", "--report-to", "none",
               "--per-device-train-batch-size", "2", "--learning-rate", "0.5"])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / TRAINING_METADATA).read_text())
    assert meta["stage"]["name"] == "stage1" and meta["mode"] == "full"
    assert meta["hyperparameters"]["learning_rate"] == 0.5  # a flag overrides the file
    assert meta["hyperparameters"]["per_device_train_batch_size"] == 2


def test_cli_lists_the_examples_and_names_them_on_a_typo(capsys):
    assert main(["train", "--list-configs"]) == 0
    out = capsys.readouterr().out
    for name in EXAMPLES:
        assert re.search(rf"^  {re.escape(name)} +\S", out, flags=re.M), name
    assert main(["train", "--config", "llava/stage9", "--data", "x.jsonl", "--output-dir", "o"]) == 2
    err = capsys.readouterr().err
    assert "llava/stage9" in err and "llava/stage2" in err and "--list-configs" in err
    assert len(err.strip().splitlines()) == 1


def test_list_configs_piped_into_head_ends_quietly():
    """A closed pipe (`| head -1`) is not a network error: no message, no traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(f"{sys.executable} -m hf_videollm_cli train --list-configs | head -c 10",
                          shell=True, capture_output=True, text=True, env=env, timeout=60)
    assert proc.stdout.startswith("example tr") and proc.stderr == ""
