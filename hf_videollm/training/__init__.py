"""Fine-tuning: LoRA/QLoRA defaults (and, as they land, data, collator, Trainer path and stage recipes)."""

from .lora import default_lora_config, language_model_lora_targets

__all__ = ["default_lora_config", "language_model_lora_targets"]
