"""One table of the package's models, and their registration with transformers' Auto classes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    name: str  # CLI / registry name
    config_class: type
    model_class: type
    processor_class: type


def _entries() -> dict[str, ModelEntry]:
    from .modeling.llava import VideoLLMLlavaConfig, VideoLLMLlavaForConditionalGeneration
    from .modeling.videollama2 import VideoLLMVideoLlama2Config, VideoLLMVideoLlama2ForConditionalGeneration
    from .processors.llava import VideoLLMLlavaProcessor
    from .processors.videollama2 import VideoLLMVideoLlama2Processor

    return {
        "llava": ModelEntry("llava", VideoLLMLlavaConfig, VideoLLMLlavaForConditionalGeneration, VideoLLMLlavaProcessor),
        "videollama2": ModelEntry(
            "videollama2", VideoLLMVideoLlama2Config, VideoLLMVideoLlama2ForConditionalGeneration,
            VideoLLMVideoLlama2Processor,
        ),
    }


MODELS: dict[str, ModelEntry] = _entries()
_registered = False


def register_all() -> None:
    """Register every model with AutoConfig / AutoModelForImageTextToText / AutoProcessor (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    for entry in MODELS.values():
        AutoConfig.register(entry.config_class.model_type, entry.config_class, exist_ok=True)
        AutoModelForImageTextToText.register(entry.config_class, entry.model_class, exist_ok=True)
        AutoProcessor.register(entry.config_class, entry.processor_class, exist_ok=True)
    _registered = True
