"""Saved checkpoints load with transformers alone (trust_remote_code=True), for every model in the registry.

The code beside the weights is generated from the package's modules (hf_videollm.remote_code); the test loads a
saved tiny model in a subprocess in which ``import hf_videollm`` fails and compares processor outputs and logits
with the package's.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_videollm.registry import MODELS
from hf_videollm.remote_code import bundle_sources, entry_file_name
from hf_videollm.tiny import build_tiny, tiny_media

NAMES = sorted(MODELS)
_ARG = {"image": "images", "video": "videos", "audio": "audio"}

# Makes `import hf_videollm` fail (the editable install and PYTHONPATH both put it on the path otherwise).
BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_videollm" or name.startswith("hf_videollm."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
    sys.meta_path.insert(0, _Block())
    try:
        import hf_videollm  # noqa: F401
        raise SystemExit("hf_videollm is importable: the test would prove nothing")
    except ImportError:
        pass
    """
)


def _media_for_child(modality, item):
    """(tensor, how to rebuild it): torch.load(weights_only=True) takes tensors, not numpy arrays or dicts."""
    if isinstance(item, dict):
        return {"kind": "audio", "array": torch.from_numpy(item["array"]), "rate": item["sampling_rate"]}
    if isinstance(item, np.ndarray):
        return {"kind": "numpy", "array": torch.from_numpy(item)}
    return {"kind": "tensor", "array": item}


def _save(name, tmp_path):
    model, processor = build_tiny(name)
    model.eval()
    placeholders = " ".join(processor.media_token(m) for m in processor.modalities)
    text = f"USER: {placeholders} what is shown ASSISTANT:"
    media = {m: tiny_media(m, 1) for m in processor.modalities}
    batch = processor(text=[text], **{_ARG[m]: [v] for m, v in media.items()})
    # an encoder-decoder LM scores its first decoder step (from the decoder start token)
    extra = ({"decoder_input_ids": torch.tensor([[model.generation_config.decoder_start_token_id]])}
             if model.is_seq2seq else {})
    with torch.no_grad():
        logits = model(**batch, **extra).logits
    out = tmp_path / name
    model.save_pretrained(out)
    processor.save_pretrained(out)
    torch.save({"text": text, "batch": dict(batch), "extra": extra, "logits": logits,
                "media": {_ARG[m]: _media_for_child(m, v) for m, v in media.items()}}, tmp_path / f"{name}_ref.pt")
    return model, processor, out


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_loads_with_transformers_alone(name, tmp_path):
    # entries sharing classes (blip2 / blip2_t5) save the code of the first registered one
    entry = next(e for e in MODELS.values() if e.model_class is MODELS[name].model_class)
    _, _, out = _save(name, tmp_path)
    config = json.loads((out / "config.json").read_text())
    mod = entry_file_name(entry)[:-3]
    assert config["auto_map"]["AutoModelForImageTextToText"] == f"{mod}.{entry.model_class.__name__}"
    assert json.loads((out / "processor_config.json").read_text())["auto_map"] == {
        "AutoProcessor": f"{mod}.{entry.processor_class.__name__}"}
    assert (out / entry_file_name(entry)).is_file()

    script = BLOCKER + textwrap.dedent(
        f"""
        import json, torch
        from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor
        d, ref = {str(out)!r}, torch.load({str(tmp_path / f"{name}_ref.pt")!r}, weights_only=True)
        def rebuild(x):
            if x["kind"] == "audio":
                return {{"array": x["array"].numpy(), "sampling_rate": x["rate"]}}
            return x["array"].numpy() if x["kind"] == "numpy" else x["array"]
        config = AutoConfig.from_pretrained(d, trust_remote_code=True)
        proc = AutoProcessor.from_pretrained(d, trust_remote_code=True)
        model = AutoModelForImageTextToText.from_pretrained(d, trust_remote_code=True).eval()
        base = AutoModel.from_pretrained(d, trust_remote_code=True)
        batch = proc(text=[ref["text"]], **{{k: [rebuild(v)] for k, v in ref["media"].items()}})
        same_inputs = sorted(batch) == sorted(ref["batch"]) and all(
            torch.equal(batch[k], ref["batch"][k]) for k in batch)
        with torch.no_grad():
            logits = model(**ref["batch"], **ref["extra"]).logits
        classes = [type(o) for o in (config, model, base, proc)]
        print(json.dumps({{
            "names": [c.__name__ for c in classes],
            "modules": [c.__module__ for c in classes],
            "same_inputs": same_inputs,
            "max_diff": (logits - ref["logits"]).abs().max().item(),
            "package_loaded": [m for m in sys.modules if m == "hf_videollm" or m.startswith("hf_videollm.")],
        }}))
        """
    )
    env = {**__import__("os").environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["names"] == [c.__name__ for c in (entry.config_class, entry.model_class, entry.base_model_class,
                                                  entry.processor_class)]
    assert all(m.startswith("transformers_modules.") for m in info["modules"]), info["modules"]
    assert info["package_loaded"] == []
    assert info["same_inputs"]
    assert info["max_diff"] <= 1e-5


def test_native_classes_when_the_package_is_installed(tmp_path):
    """With hf_videollm importable, trust_remote_code=True still gives the package's own classes."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    name = NAMES[0]
    entry = MODELS[name]
    _, _, out = _save(name, tmp_path)
    assert type(AutoProcessor.from_pretrained(out, trust_remote_code=True)) is entry.processor_class
    assert type(AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True)) is entry.model_class
    assert type(AutoModelForImageTextToText.from_pretrained(out)) is entry.model_class


class _NoImports(ast.NodeTransformer):
    def visit_Import(self, node):
        return ast.Pass()

    visit_ImportFrom = visit_Import


def _without_imports(src: str) -> str:
    return ast.dump(_NoImports().visit(ast.parse(src)))


@pytest.mark.parametrize("name", NAMES)
def test_bundle_is_generated_from_the_package(name, tmp_path):
    """Every bundled file is a package module with only its import statements rewritten, and no absolute
    hf_videollm import is left outside a try block (transformers' import check must pass without the package)."""
    from transformers.dynamic_module_utils import get_imports

    import hf_videollm

    entry = MODELS[name]
    files = bundle_sources(tuple(sorted({c.__module__ for c in (entry.config_class, entry.model_class,
                                                                   entry.processor_class)})))
    root = Path(hf_videollm.__file__).parent
    parts = {p: [x for x in p.relative_to(root).with_suffix("").parts if x != "__init__"] for p in root.rglob("*.py")}
    modules = {"_".join(["videollm", *parts[p]]): p for p in parts}
    assert files, name
    for fname, text in files.items():
        assert fname[:-3] in modules, f"{fname}: no package module of that name"
        assert _without_imports(text) == _without_imports(modules[fname[:-3]].read_text()), fname
        (tmp_path / fname).write_text(text)
        assert "hf_videollm" not in get_imports(tmp_path / fname), fname
