"""Fine-tuning with transformers' Trainer on Accelerate: data, collator, stage recipes, LoRA/QLoRA, export, push."""

from .collator import VideoLLMCollator
from .data import InvalidDataError, VideoLLMDataset, load_records, normalize_record, validate_records
from .export import export_model
from .hub import model_card, push_to_hub
from .lora import default_lora_config, language_model_lora_targets
from .recipes import RECIPES, Stage, get_stage
from .train import TrainConfig, load_train_config, train
from .trainer import VideoLLMTrainer

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
