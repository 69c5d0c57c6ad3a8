"""LoRA on the language model only, by default, resolved on full module paths."""

from __future__ import annotations

import re

from torch import nn

__all__ = ["language_model_lora_targets", "default_lora_config"]


def _linear_leaf_names(module: nn.Module, exclude: tuple[str, ...] = ("lm_head",)) -> list[str]:
    names = set()
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear) and name:
            leaf = name.rsplit(".", 1)[-1]
            if leaf not in exclude:
                names.add(leaf)
    return sorted(names)


def language_model_lora_targets(model: nn.Module, *, vision_tower: bool = False) -> str:
    """A PEFT ``target_modules`` regex matching the Linear layers of ``language_model`` (not ``lm_head``).

    PEFT matches a string ``target_modules`` against full module names, so nothing in the vision tower or the
    connector can be caught by accident. ``vision_tower=True`` adds the tower's Linear layers too.
    """
    roots = {"language_model": model.get_submodule("language_model")}
    if vision_tower:
        roots["vision_tower"] = model.get_submodule("vision_tower")
    alternatives = []
    for root, module in roots.items():
        leaves = _linear_leaf_names(module)
        if not leaves:
            raise ValueError(f"no Linear layers found under {root!r}")
        alternatives.append(rf"{re.escape(root)}\..*\.(?:{'|'.join(map(re.escape, leaves))})")
    return rf"^(?:{'|'.join(alternatives)})$"


def default_lora_config(
    model: nn.Module,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    vision_tower: bool = False,
    modules_to_save: list[str] | None = None,
):
    """``peft.LoraConfig`` targeting the language model only (plus the vision tower if asked); the task type follows
    the declared language-model kind (``CAUSAL_LM`` or ``SEQ_2_SEQ_LM``)."""
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=language_model_lora_targets(model, vision_tower=vision_tower),
        modules_to_save=modules_to_save,
        task_type="SEQ_2_SEQ_LM" if model.input_spec.lm == "seq2seq" else "CAUSAL_LM",
    )
