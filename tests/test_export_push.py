"""Export (LoRA merge / full re-save) and Hub push of real tiny training runs. Nothing here contacts the Hub."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import hf_videollm  # noqa: F401  (Auto registration)
from hf_videollm.training import TrainConfig, train
from hf_videollm.training.export import export_model, resolve_base_model
from hf_videollm.training.hub import CARD_MARKER, UPLOAD_IGNORE_PATTERNS, model_card, push_to_hub

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
LEFTOVERS = ("lora_", "base_layer", "modules_to_save", "original_module")


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """PNG images + a jsonl mixing LLaVA ``conversations`` and ``messages`` records."""
    from PIL import Image

    root = tmp_path_factory.mktemp("export_push")
    records = []
    for i, (name, rgb) in enumerate(COLORS.items()):
        Image.new("RGB", (32, 32), rgb).save(root / f"{name}.png")
        if i % 2:
            question = [{"type": "image", "image": f"{name}.png"}, {"type": "text", "text": "what color"}]
            records.append({"messages": [
                {"role": "user", "content": question}, {"role": "assistant", "content": name},
            ]})
        else:
            records.append({"image": f"{name}.png", "conversations": [
                {"from": "human", "value": "<image>\nwhat color"}, {"from": "gpt", "value": name},
            ]})
    (root / "colors.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return root


def _train(root: Path, name: str, **kwargs) -> Path:
    """Train in ``root`` with a *relative* output dir (so the recorded base path is relative, as users do)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        train(TrainConfig(
            model="tiny:llava", data=["colors.jsonl"], output_dir=f"runs/{name}", max_steps=2,
            per_device_train_batch_size=2, logging_steps=1, **kwargs,
        ))
    return root / "runs" / name


@pytest.fixture(scope="module")
def lora_run(workdir) -> Path:
    return _train(workdir, "lora", stage="lora", learning_rate=5e-3, save_steps=1)


@pytest.fixture(scope="module")
def full_run(workdir) -> Path:
    return _train(workdir, "full", stage="stage2", mode="full", learning_rate=1e-3)


@pytest.fixture(scope="module")
def lora_export32(lora_run, tmp_path_factory) -> Path:
    return export_model(lora_run, tmp_path_factory.mktemp("merged") / "fp32", dtype="float32")


def _processor_batch(model_dir: Path, workdir: Path):
    """A left-padded batch of two image questions, from the processor saved in ``model_dir``."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    questions = (("red", "what color"), ("blue", "what color is it"))  # different lengths: a padded batch
    convs = []
    for color, question in questions:
        image = {"type": "image", "image": str(workdir / f"{color}.png")}
        convs.append([{"role": "user", "content": [image, {"type": "text", "text": question}]}])
    return processor.apply_chat_template(convs, add_generation_prompt=True, tokenize=True)


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits.float()


def _auto(path, dtype=torch.float32):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).eval()


def _saved_keys(model_dir: Path) -> list[str]:
    from safetensors import safe_open

    keys = []
    for f in model_dir.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            keys += list(st.keys())
    return keys


# ------------------------------------------------------------------------------------------------ export: LoRA
def test_lora_export_matches_peft_logits(lora_run, lora_export32, workdir):
    from peft import PeftModel

    meta = json.loads((lora_run / "hf_videollm_training.json").read_text())
    assert meta["mode"] == "lora" and Path(meta["base_model"]).is_absolute()  # recorded resolved, usable from any cwd
    base = _auto(lora_run / "base_model")
    batch = _processor_batch(lora_export32, workdir)
    base_logits = _logits(base, batch)
    peft_model = PeftModel.from_pretrained(base, str(lora_run)).eval()
    peft_logits = _logits(peft_model, batch)
    merged_logits = _logits(_auto(lora_export32), batch)

    assert (peft_logits - base_logits).abs().max() > 1e-4, "the adapter should change the model"
    torch.testing.assert_close(merged_logits, peft_logits, atol=1e-5, rtol=0)
    keys = _saved_keys(lora_export32)
    assert keys and not [k for k in keys if any(s in k for s in LEFTOVERS)]
    assert not (lora_export32 / "adapter_config.json").exists()


def test_lora_export_carries_processor_template_and_metadata(lora_run, lora_export32):
    for name in ("config.json", "processor_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (lora_export32 / name).is_file(), name
    assert (lora_export32 / "chat_template.jinja").read_text() == (lora_run / "chat_template.jinja").read_text()
    meta = json.loads((lora_export32 / "hf_videollm_training.json").read_text())
    assert meta["stage"]["name"] == "lora" and meta["mode"] == "lora"
    assert meta["export"]["merged_adapter"] is True and meta["export"]["dtype"] == "float32"
    assert Path(meta["export"]["merged_into"]).resolve() == (lora_run / "base_model").resolve()


def test_lora_export_bfloat16(lora_run, tmp_path):
    out = export_model(lora_run, tmp_path / "bf16")
    assert json.loads((out / "config.json").read_text()).get("dtype") == "bfloat16"
    model = _auto(out, dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_export_trainer_checkpoint_dir(lora_run, tmp_path, workdir):
    ckpt = lora_run / "checkpoint-1"
    assert (ckpt / "processor_config.json").is_file()  # the whole processor is saved in every checkpoint
    out = export_model(ckpt, tmp_path / "step1", dtype="float32")
    assert (out / "processor_config.json").is_file() and (out / "chat_template.jinja").is_file()
    meta = json.loads((out / "hf_videollm_training.json").read_text())
    assert meta["export"]["global_step"] == 1 and meta["stage"]["name"] == "lora"
    assert _logits(_auto(out), _processor_batch(out, workdir)).isfinite().all()


# ------------------------------------------------------------------------------------------------ export: full
def test_full_finetune_export(full_run, tmp_path, workdir):
    assert not (full_run / "adapter_config.json").exists()
    out32 = export_model(full_run, tmp_path / "fp32", dtype="float32")
    batch = _processor_batch(out32, workdir)
    torch.testing.assert_close(_logits(_auto(out32), batch), _logits(_auto(full_run), batch), atol=0, rtol=0)
    meta = json.loads((out32 / "hf_videollm_training.json").read_text())
    assert meta["mode"] == "full" and meta["export"]["merged_adapter"] is False
    out16 = export_model(full_run, tmp_path / "bf16", dtype="bfloat16")
    assert {p.dtype for p in _auto(out16, dtype="auto").parameters()} == {torch.bfloat16}
    assert (out16 / "chat_template.jinja").is_file()


# ------------------------------------------------------------------------------------------------ export: errors
def test_export_errors(lora_run, tmp_path):
    empty = tmp_path / "empty"
    (empty / "checkpoint-3").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no model .* no PEFT adapter.*checkpoint-3"):
        export_model(empty, tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        export_model(tmp_path / "missing", tmp_path / "o")
    with pytest.raises(ValueError, match="dtype must be one of"):
        export_model(lora_run, tmp_path / "o", dtype="int8")
    with pytest.raises(ValueError, match="must differ"):
        export_model(lora_run, lora_run, dtype="float32")

    orphan = tmp_path / "orphan"  # an adapter whose base is gone and recorded nowhere else
    orphan.mkdir()
    cfg = json.loads((lora_run / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "gone" / "base")
    (orphan / "adapter_config.json").write_text(json.dumps(cfg))
    shutil.copy(lora_run / "adapter_model.safetensors", orphan)
    with pytest.raises(FileNotFoundError, match="cannot find the base model.*--base"):
        resolve_base_model(orphan)
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        resolve_base_model(orphan, base=str(tmp_path / "nowhere"))


def test_resolve_base_model(tmp_path):
    run = tmp_path / "moved_run"  # recorded absolute path is stale; the run dir was moved with its base_model/
    (run / "base_model").mkdir(parents=True)
    (run / "base_model" / "config.json").write_text("{}")
    (run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/old/place/base_model"}))
    assert Path(resolve_base_model(run)) == run / "base_model"
    (run / "checkpoint-7").mkdir()
    shutil.copy(run / "adapter_config.json", run / "checkpoint-7")
    assert Path(resolve_base_model(run / "checkpoint-7")) == run / "base_model"  # looked up from its run dir

    hub_run = tmp_path / "hub_run"
    hub_run.mkdir()
    (hub_run / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/base-7b"}))
    assert resolve_base_model(hub_run) == "org/base-7b"
    assert resolve_base_model(hub_run, base="other/base") == "other/base"


# ------------------------------------------------------------------------------------------------ model card
def _front_matter(card: str) -> dict:
    import yaml

    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_model_card_from_training_metadata(lora_export32):
    card = model_card(lora_export32, repo_id="me/tiny-llava-lora")
    fm = _front_matter(card)
    assert fm["library_name"] == "transformers" and fm["pipeline_tag"] == "image-text-to-text"
    assert fm["tags"][:3] == ["hf_videollm", "video-llm", "llava"]
    assert "base_model" not in fm  # a local path is no Hub base model
    assert "Stage: `lora`" in card and "stage 2 with LoRA" in card and "Mode: LoRA" in card
    assert "`colors.jsonl` (4 samples)" in card and "Final train loss:" in card and "| learning_rate | 0.005 |" in card
    # a LoRA run names what LoRA trained and what trained fully beside it, each with its learning rate
    assert "LoRA-trained: `language_model` (its Linear layers; r=128, alpha=256, dropout 0.05) at learning rate 0.005" in card
    assert "Trained fully next to LoRA: `connector` at learning rate 2e-05" in card
    assert "Frames per video: 4" in card and "Image size: 28" in card
    assert (lora_export32 / "chat_template.jinja").read_text().rstrip("\n") in card
    assert "USER: <video>\nWhat happens in this video? ASSISTANT:" in card
    assert "import hf_videollm" in card and 'from_pretrained("me/tiny-llava-lora"' in card and ".generate(" in card
    assert "VideoLLMLlavaForConditionalGeneration" in card and "`videollm_llava`" in card
    assert "trust_remote_code=True" in card  # both ways: with the package, and with transformers alone


def test_export_writes_remote_code(lora_export32):
    config = json.loads((lora_export32 / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == (
        "modeling_videollm_llava.VideoLLMLlavaForConditionalGeneration")
    assert json.loads((lora_export32 / "processor_config.json").read_text())["auto_map"]["AutoProcessor"] == (
        "modeling_videollm_llava.VideoLLMLlavaProcessor")
    assert (lora_export32 / "modeling_videollm_llava.py").is_file()


def test_push_restores_missing_remote_code(lora_export32, tmp_path, hub_calls):
    model_dir = tmp_path / "old"
    shutil.copytree(lora_export32, model_dir)
    for f in model_dir.glob("*videollm_*.py"):
        f.unlink()
    config = json.loads((model_dir / "config.json").read_text())
    config.pop("auto_map")
    (model_dir / "config.json").write_text(json.dumps(config))
    push_to_hub(model_dir, "me/old", token="hf_fake")
    assert (model_dir / "modeling_videollm_llava.py").is_file()
    assert "auto_map" in json.loads((model_dir / "config.json").read_text())


def test_model_card_hub_base_model(lora_export32, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(lora_export32, model_dir)
    meta = json.loads((model_dir / "hf_videollm_training.json").read_text())
    meta["base_model"] = "org/base-7b"
    (model_dir / "hf_videollm_training.json").write_text(json.dumps(meta))
    assert _front_matter(model_card(model_dir))["base_model"] == "org/base-7b"


def test_model_card_without_training_json(tmp_path):
    from hf_videollm.tiny import build_tiny

    model, processor = build_tiny("llava")
    model.save_pretrained(tmp_path / "converted")
    processor.save_pretrained(tmp_path / "converted")
    card = model_card(tmp_path / "converted")
    fm = _front_matter(card)
    assert fm["tags"] == ["hf_videollm", "video-llm", "llava"] and "base_model" not in fm
    assert "converted checkpoint" in card and "## Training" not in card
    assert "Frames per video: 4" in card and "```jinja" in card and "# converted" in card
    with pytest.raises(FileNotFoundError, match="neither config.json"):
        model_card(tmp_path / "nothing")


# ------------------------------------------------------------------------------------------------ push
@pytest.fixture
def hub_calls(monkeypatch):
    """Record HfApi.create_repo / upload_folder calls instead of contacting the Hub."""
    import huggingface_hub

    calls: dict[str, list] = {"create_repo": [], "upload_folder": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, **kwargs})
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        calls["upload_folder"].append(kwargs)
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc123", pr_url=None)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def _uploaded(folder: Path, ignore_patterns) -> set[str]:
    from huggingface_hub.utils import filter_repo_objects

    files = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    return set(filter_repo_objects(files, ignore_patterns=ignore_patterns))


def test_push_to_hub(lora_export32, tmp_path, hub_calls):
    model_dir = tmp_path / "push"
    shutil.copytree(lora_export32, model_dir)
    junk = ["checkpoint-2/optimizer.pt", "checkpoint-2/model.safetensors", "optimizer.pt", "scheduler.pt",
            "training_args.bin", "trainer_state.json", "rng_state.pth", "base_model/model.safetensors"]
    for name in junk:
        (model_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (model_dir / name).write_bytes(b"x")

    url = push_to_hub(model_dir, "me/tiny-llava-lora", private=True, token="hf_fake")
    assert url == "https://huggingface.co/me/tiny-llava-lora/commit/abc123"
    (create,) = hub_calls["create_repo"]
    assert create == {"repo_id": "me/tiny-llava-lora", "exist_ok": True, "private": True, "repo_type": "model"}
    (upload,) = hub_calls["upload_folder"]
    assert upload["repo_id"] == "me/tiny-llava-lora" and Path(upload["folder_path"]) == model_dir
    assert upload["ignore_patterns"] == UPLOAD_IGNORE_PATTERNS and upload["create_pr"] is False
    assert "lora" in upload["commit_message"]
    sent = _uploaded(model_dir, upload["ignore_patterns"])
    assert not sent & set(junk)
    # the model's code goes with it, and config.json names it (transformers alone, trust_remote_code=True)
    assert {"modeling_videollm_llava.py", "videollm_modeling_llava.py", "videollm_processors_llava.py"} <= sent
    assert json.loads((model_dir / "config.json").read_text())["auto_map"]["AutoConfig"] == (
        "modeling_videollm_llava.VideoLLMLlavaConfig")
    assert {"README.md", "config.json", "model.safetensors", "processor_config.json", "chat_template.jinja",
            "hf_videollm_training.json", "tokenizer.json"} <= sent

    readme = (model_dir / "README.md").read_text()
    assert _front_matter(readme)["library_name"] == "transformers" and CARD_MARKER in readme
    assert "Stage: `lora`" in readme and "Frames per video: 4" in readme
    assert (model_dir / "chat_template.jinja").read_text().rstrip("\n") in readme
    assert 'from_pretrained("me/tiny-llava-lora"' in readme


def test_push_readme_policy(lora_export32, tmp_path, hub_calls):
    model_dir = tmp_path / "push"
    shutil.copytree(lora_export32, model_dir)
    readme = model_dir / "README.md"
    readme.write_text("# Model Card for Model ID\n\n[More Information Needed]\n")  # PEFT's stub: replaced
    push_to_hub(model_dir, "me/m", commit_message="custom", create_pr=True)
    assert CARD_MARKER in readme.read_text()
    assert hub_calls["upload_folder"][-1]["commit_message"] == "custom" and hub_calls["upload_folder"][-1]["create_pr"]
    readme.write_text("# My own card\n")  # hand-written: kept unless overwrite_card=True
    push_to_hub(model_dir, "me/m")
    assert readme.read_text() == "# My own card\n"
    push_to_hub(model_dir, "me/m", overwrite_card=True)
    assert CARD_MARKER in readme.read_text()


def test_push_errors(lora_run, tmp_path, hub_calls):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        push_to_hub(tmp_path / "missing", "me/m")
    with pytest.raises(FileNotFoundError, match="no config.json.*PEFT adapter.*export"):
        push_to_hub(lora_run, "me/m")  # an unmerged LoRA output
    (tmp_path / "weightless").mkdir()
    (tmp_path / "weightless" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no model weights"):
        push_to_hub(tmp_path / "weightless", "me/m")
    assert hub_calls == {"create_repo": [], "upload_folder": []}
