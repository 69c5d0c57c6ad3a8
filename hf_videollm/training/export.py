"""Export a training run as a plain, self-contained checkpoint: ``export_model(run_dir, out, dtype="bfloat16")``.

A LoRA / QLoRA run saves a PEFT adapter; export loads the base model in 16 (or 32) bits -- never 4 bits, even
for QLoRA --, applies the adapter, merges it (``merge_and_unload``) and saves a model that loads with
``AutoModelForImageTextToText`` alone. A full fine-tune is re-saved in the requested dtype. Either way the
processor, the chat template and ``hf_videollm_training.json`` travel along, and the result is reloaded and
checked before this returns.

QLoRA note: the adapter was trained against 4-bit-quantized base weights; merging it into the 16-bit base is the
usual practice but not bit-identical to the quantized model the adapter saw during training.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .train import TRAINING_METADATA

logger = logging.getLogger(__name__)

__all__ = ["export_model", "resolve_base_model", "find_training_metadata", "EXPORT_DTYPES"]

EXPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ADAPTER_CONFIG = "adapter_config.json"
_CHECKPOINT_RE = re.compile(r"checkpoint-\d+")
_WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)
#: substrings that must not survive in the key names of a merged model.
PEFT_LEFTOVERS = ("lora_", "base_layer", "modules_to_save", "original_module")


# ------------------------------------------------------------------------------------------------ inspection
def _run_dir(checkpoint: Path) -> Path:
    """The training output dir: ``checkpoint`` itself, or its parent for a Trainer ``checkpoint-N`` dir."""
    return checkpoint.parent if _CHECKPOINT_RE.fullmatch(checkpoint.name) else checkpoint


def _is_adapter(path: Path) -> bool:
    return (path / ADAPTER_CONFIG).is_file()


def _is_full_model(path: Path) -> bool:
    return (path / "config.json").is_file() and any((path / f).is_file() for f in _WEIGHT_FILES)


def find_training_metadata(checkpoint: str | Path) -> dict[str, Any] | None:
    """``hf_videollm_training.json`` of ``checkpoint`` (or of its run dir for ``checkpoint-N``), or None."""
    checkpoint = Path(checkpoint)
    for d in dict.fromkeys((checkpoint, _run_dir(checkpoint))):
        if (d / TRAINING_METADATA).is_file():
            return json.loads((d / TRAINING_METADATA).read_text())
    return None


def _check_source(checkpoint: Path) -> None:
    """Fail clearly when ``checkpoint`` holds neither a model nor an adapter (listing checkpoint-N dirs)."""
    from .checkpoints import COMPLETE_MARKER, check_final_complete, complete_checkpoints, is_complete_checkpoint

    if not checkpoint.is_dir():
        raise FileNotFoundError(f"{checkpoint}: no such directory")
    check_final_complete(checkpoint)
    if _CHECKPOINT_RE.fullmatch(checkpoint.name) and not is_complete_checkpoint(checkpoint):
        ok = [p.name for p in complete_checkpoints(checkpoint.parent, warn=False)]
        raise FileNotFoundError(
            f"{checkpoint} is incomplete (no {COMPLETE_MARKER}: the run was killed while saving it); export a "
            f"complete checkpoint{f' ({ok})' if ok else ''} or the run directory"
        )
    if _is_adapter(checkpoint) or _is_full_model(checkpoint):
        return
    found = [p.name for p in complete_checkpoints(checkpoint)]  # incomplete ones are skipped with a warning
    broken = sorted(
        (p.name for p in checkpoint.iterdir() if p.is_dir() and _CHECKPOINT_RE.fullmatch(p.name) and p.name not in found),
        key=lambda name: int(name.split("-")[1]),
    )
    hint = f"; it has Trainer checkpoints {found}: pass one of them" if found else ""
    if broken:
        hint += f"; incomplete checkpoints (killed while saving, not exportable): {broken}"
    raise FileNotFoundError(
        f"{checkpoint}: no model (config.json + model weights) and no PEFT adapter ({ADAPTER_CONFIG}) found{hint}"
    )


def _dtype(name: str) -> torch.dtype:
    if name not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(EXPORT_DTYPES)}, got {name!r}")
    return EXPORT_DTYPES[name]


# ------------------------------------------------------------------------------------------------ base model
def _looks_like_hub_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _local_candidates(recorded: str, run_dir: Path) -> list[Path]:
    """Where a recorded base path may be now.

    ``train()`` records the base as it named it, relative to the directory training ran in (e.g.
    ``runs/a/base_model``); so a relative path is tried against the current directory and against the run dir
    and each of its parents. Last, ``<run_dir>/<name>`` covers a run directory that was moved or copied.
    """
    p = Path(recorded).expanduser()
    if p.is_absolute():
        candidates = [p]
    else:
        run_abs = run_dir.resolve()
        candidates = [Path.cwd() / p, *(d / p for d in (run_abs, *run_abs.parents))]
    candidates.append(run_dir / p.name)
    return list(dict.fromkeys(candidates))


def resolve_base_model(checkpoint: str | Path, base: str | None = None) -> str:
    """The base model of an adapter dir: a local directory (as a string) or a Hub id.

    Order: ``base`` (must exist locally or be a Hub id), then ``adapter_config.json``'s
    ``base_model_name_or_path``, then ``hf_videollm_training.json``'s ``base_model``.
    """
    checkpoint = Path(checkpoint)
    run_dir = _run_dir(checkpoint)
    if base is not None:
        if (Path(base).expanduser() / "config.json").is_file():
            return str(Path(base).expanduser())
        if _looks_like_hub_id(base):
            return base
        raise FileNotFoundError(f"base model {base!r}: not a model directory (no config.json) nor a Hub id")
    recorded = []
    if _is_adapter(checkpoint):
        recorded.append(json.loads((checkpoint / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path"))
    recorded.append((find_training_metadata(checkpoint) or {}).get("base_model"))
    recorded = [r for r in dict.fromkeys(recorded) if r]
    tried: list[Path] = []
    for r in recorded:
        for c in _local_candidates(r, run_dir):
            if (c / "config.json").is_file():
                return str(c)
            tried.append(c)
    hub = [r for r in recorded if _looks_like_hub_id(r)]
    if hub:
        return hub[0]
    raise FileNotFoundError(
        f"{checkpoint}: cannot find the base model of this adapter (recorded: {recorded or 'nothing'}; "
        f"looked in {[str(t) for t in tried]}); pass base=<model dir or Hub id> (--base)"
    )


# ------------------------------------------------------------------------------------------------ loading
def _load_processor(checkpoint: Path):
    """AutoProcessor from ``checkpoint``, else from its run dir (Trainer checkpoints save only the tokenizer)."""
    from transformers import AutoProcessor, ProcessorMixin

    for d in dict.fromkeys((checkpoint, _run_dir(checkpoint))):
        if (d / "processor_config.json").is_file() or (d / "preprocessor_config.json").is_file():
            processor = AutoProcessor.from_pretrained(d)
            if isinstance(processor, ProcessorMixin):
                return processor, d
    raise FileNotFoundError(f"{checkpoint}: no processor (processor_config.json) here or in {_run_dir(checkpoint)}")


def _merged_model(checkpoint: Path, base: str | None, dtype: torch.dtype):
    """Base model (16/32-bit, never quantized) + adapter, merged into plain weights."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base_path = resolve_base_model(checkpoint, base)
    logger.info("merging adapter %s into base model %s", checkpoint, base_path)
    model = AutoModelForImageTextToText.from_pretrained(base_path, dtype=dtype)
    if getattr(model.config, "quantization_config", None) is not None:
        raise ValueError(f"base model {base_path} is a quantized checkpoint; pass base=<its 16-bit checkpoint> to merge")
    model = PeftModel.from_pretrained(model, str(checkpoint), is_trainable=False)
    return model.merge_and_unload(), base_path


def _load_model(checkpoint: Path, base: str | None, dtype: torch.dtype):
    from transformers import AutoModelForImageTextToText

    if _is_adapter(checkpoint):
        model, base_path = _merged_model(checkpoint, base, dtype)
    else:
        model, base_path = AutoModelForImageTextToText.from_pretrained(checkpoint, dtype=dtype), None
    return model.to(dtype).eval(), base_path


# ------------------------------------------------------------------------------------------------ saving
def _metadata(checkpoint: Path, dtype: str, base_path: str | None) -> dict[str, Any]:
    """The run's training metadata plus an ``export`` record (for ``checkpoint-N``: the step it was saved at)."""
    meta = find_training_metadata(checkpoint) or {}
    export: dict[str, Any] = {"source": str(checkpoint.resolve()), "dtype": dtype}
    export["merged_adapter"] = base_path is not None
    if base_path is not None:
        export["merged_into"] = base_path
    state = checkpoint / "trainer_state.json"
    if _CHECKPOINT_RE.fullmatch(checkpoint.name) and state.is_file():
        trainer_state = json.loads(state.read_text())
        export["global_step"] = trainer_state.get("global_step")
        losses = [e["loss"] for e in trainer_state.get("log_history", []) if "loss" in e]
        meta["train_loss"] = losses[-1] if losses else None  # the run's final loss does not describe this step
    meta["export"] = export
    return meta


def _save(model, processor, processor_dir: Path, out: Path, meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    template = processor_dir / "chat_template.jinja"
    if not (out / "chat_template.jinja").is_file() and template.is_file():
        shutil.copy2(template, out / "chat_template.jinja")
    (out / TRAINING_METADATA).write_text(json.dumps(meta, indent=2, default=str))


def _saved_keys(out: Path) -> list[str]:
    from safetensors import safe_open

    keys: list[str] = []
    for f in sorted(out.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            keys.extend(st.keys())
    return keys


def _verify(out: Path, dtype: torch.dtype) -> None:
    """Reload ``out`` with the Auto class: loads cleanly, no PEFT leftovers in its keys, weights in ``dtype``."""
    from transformers import AutoModelForImageTextToText

    model, info = AutoModelForImageTextToText.from_pretrained(out, dtype=dtype, output_loading_info=True)
    keys = list(model.state_dict()) + _saved_keys(out)
    leftovers = sorted({k for k in keys if any(s in k for s in PEFT_LEFTOVERS)})
    load_issues = ("missing_keys", "unexpected_keys", "mismatched_keys")
    problems = {k: sorted(map(str, v)) for k, v in info.items() if k in load_issues and v}
    if leftovers:
        problems["peft_leftovers"] = leftovers[:20]
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes - {dtype}:
        problems["dtypes"] = sorted(map(str, dtypes))
    if problems:
        raise RuntimeError(f"export to {out} failed verification: {problems}")


# ------------------------------------------------------------------------------------------------ API
def export_model(checkpoint: str | Path, out: str | Path, *, dtype: str = "bfloat16", base: str | None = None) -> Path:
    """Export a training output dir (or a ``checkpoint-N`` in it) to a standalone checkpoint in ``out``.

    Args:
        checkpoint: ``train()``'s output dir, or a Trainer ``checkpoint-N`` dir inside it. A PEFT adapter there is
            merged into its base model; full weights are re-saved.
        out: destination directory (must not be ``checkpoint``).
        dtype: ``"bfloat16"`` (default), ``"float16"`` or ``"float32"``.
        base: base model dir or Hub id for an adapter; default: the one recorded by training.

    Returns the output directory, after reloading it with ``AutoModelForImageTextToText`` and checking it.
    """
    import hf_videollm  # noqa: F401  (registers the models with the Auto classes)

    torch_dtype = _dtype(dtype)
    checkpoint, out = Path(checkpoint), Path(out)
    _check_source(checkpoint)
    if out.resolve() == checkpoint.resolve():
        raise ValueError(f"out must differ from the checkpoint directory ({checkpoint})")
    if _is_adapter(out):
        raise ValueError(f"{out} holds a PEFT adapter ({ADAPTER_CONFIG}); export into a new or empty directory")
    processor, processor_dir = _load_processor(checkpoint)
    model, base_path = _load_model(checkpoint, base, torch_dtype)
    # crash-safe: written and verified in a staging dir next to ``out``, then swapped in whole (a killed export
    # leaves the old ``out`` or none, never a partial one; the next run removes the dead staging dir)
    from ..conversion.engine import _clean_stale_staging, _move_into_place

    out = out.expanduser().absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_staging(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.exporting-{os.getpid()}-", dir=out.parent))
    try:
        _save(model, processor, processor_dir, staging, _metadata(checkpoint, dtype, base_path))
        del model
        _verify(staging, torch_dtype)
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("exported %s to %s (%s)", checkpoint, out, dtype)
    return out
