"""Fine-tuning with transformers' Trainer on Accelerate: data, collator, stage recipes, LoRA/QLoRA, export, push."""

import importlib

# Light (torch + recipes): imported now, which also binds `train` to the function, not the submodule of that name.
from .recipes import RECIPES, Stage, get_stage
from .train import TrainConfig, load_train_config, train

# Lazy (PEP 562): `hf-videollm --help` and `import hf_videollm.training.recipes` do not pay for Trainer / PEFT.
_WHERE = {
    "VideoLLMCollator": "collator",
    "InvalidDataError": "data", "VideoLLMDataset": "data", "load_records": "data", "normalize_record": "data",
    "validate_records": "data",
    "export_model": "export",
    "model_card": "hub", "push_to_hub": "hub",
    "default_lora_config": "lora", "language_model_lora_targets": "lora",
    "VideoLLMTrainer": "trainer",
}


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_WHERE})


__all__ = [
    "RECIPES",
    "InvalidDataError",
    "Stage",
    "TrainConfig",
    "VideoLLMCollator",
    "VideoLLMDataset",
    "VideoLLMTrainer",
    "default_lora_config",
    "export_model",
    "model_card",
    "push_to_hub",
    "get_stage",
    "language_model_lora_targets",
    "load_records",
    "load_train_config",
    "normalize_record",
    "train",
    "validate_records",
]
