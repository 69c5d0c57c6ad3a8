"""The one place a model is added: its entry names every piece, and everything else reads the entry.

An entry holds the classes transformers' Auto classes need (config, ``ForConditionalGeneration``, the bare
``Model`` for ``AutoModel``, processor) and references, as ``"module:attribute"`` resolved on first use so that
``import hf_videollm`` stays light, to the tiny builder (tests, demo, benchmarks), the demo preset, the readers of
the original (and transformers') releases and the training stage recipes. Every lookup of those elsewhere in the
package goes through :data:`MODELS`; the common test suite is parametrized over it.

What a model consumes is not repeated here: it is ``model_class.input_spec`` (:mod:`hf_videollm.modeling.contract`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelEntry", "MODELS", "get_entry", "register_all"]


def _resolve(ref: str | None) -> Any:
    if ref is None:
        return None
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class ModelEntry:
    """Everything about one model family. ``tiny``, ``demo``, ``readers`` and ``recipes`` are ``"module:attr"``."""

    name: str  # CLI / registry name (``hf-videollm convert NAME``, ``tiny:NAME``, ``--model NAME``)
    config_class: type
    model_class: type  # ForConditionalGeneration: AutoModelForImageTextToText
    base_model_class: type  # the bare model: AutoModel
    processor_class: type
    tiny: str  # (tokenizer, seed, **overrides) -> (model, processor): a tiny random model
    # source format ("original" | "transformers") -> "module:attr" of its reader ``read(src, **options) -> Release``
    # (hf_videollm.conversion.release); ``hf-videollm convert`` writes what it returns
    readers: dict[str, str] = field(default_factory=dict)
    recipes: str | None = None  # {stage name: training.recipes.Stage}
    demo: str | None = None  # () -> demo_presets.DemoPreset (hf-videollm demo / bench-synthetic)

    @property
    def input_spec(self):
        return self.model_class.input_spec

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.model_class.input_spec.modality_names

    def build_tiny(self, tokenizer, seed: int = 0, **overrides):
        return _resolve(self.tiny)(tokenizer, seed, **overrides)

    def get_reader(self, source_format: str):
        return _resolve(self.readers[source_format])

    def get_recipes(self) -> dict:
        return _resolve(self.recipes) or {}

    def get_demo_preset(self):
        factory = _resolve(self.demo)
        return factory() if factory is not None else None


def _entries() -> dict[str, ModelEntry]:
    from .modeling.blip2 import (
        VideoLLMBlip2Config,
        VideoLLMBlip2ForConditionalGeneration,
        VideoLLMBlip2Model,
        VideoLLMInstructBlipConfig,
        VideoLLMInstructBlipForConditionalGeneration,
        VideoLLMInstructBlipModel,
    )
    from .modeling.llava import VideoLLMLlavaConfig, VideoLLMLlavaForConditionalGeneration, VideoLLMLlavaModel
    from .modeling.longvlm import VideoLLMLongVLMConfig, VideoLLMLongVLMForConditionalGeneration, VideoLLMLongVLMModel
    from .modeling.qwen2vl import (
        VideoLLMQwen2VLConfig,
        VideoLLMQwen2VLForConditionalGeneration,
        VideoLLMQwen2VLModel,
    )
    from .modeling.qwen_vl import VideoLLMQwenVLConfig, VideoLLMQwenVLForConditionalGeneration, VideoLLMQwenVLModel
    from .modeling.video_llama import (
        VideoLLMVideoLlamaConfig,
        VideoLLMVideoLlamaForConditionalGeneration,
        VideoLLMVideoLlamaModel,
    )
    from .modeling.videollama2 import (
        VideoLLMVideoLlama2Config,
        VideoLLMVideoLlama2ForConditionalGeneration,
        VideoLLMVideoLlama2Model,
    )
    from .modeling.videollama2_av import (
        VideoLLMVideoLlama2AVConfig,
        VideoLLMVideoLlama2AVForConditionalGeneration,
        VideoLLMVideoLlama2AVModel,
    )
    from .modeling.videollama3 import (
        VideoLLMVideoLlama3Config,
        VideoLLMVideoLlama3ForConditionalGeneration,
        VideoLLMVideoLlama3Model,
    )
    from .processors.blip2 import VideoLLMBlip2Processor, VideoLLMInstructBlipProcessor
    from .processors.llava import VideoLLMLlavaProcessor
    from .processors.longvlm import VideoLLMLongVLMProcessor
    from .processors.qwen2vl import VideoLLMQwen2VLProcessor
    from .processors.qwen_vl import VideoLLMQwenVLProcessor
    from .processors.video_llama import VideoLLMVideoLlamaProcessor
    from .processors.videollama2 import VideoLLMVideoLlama2Processor
    from .processors.videollama2_av import VideoLLMVideoLlama2AVProcessor
    from .processors.videollama3 import VideoLLMVideoLlama3Processor

    entries = [
        ModelEntry(
            "llava", VideoLLMLlavaConfig, VideoLLMLlavaForConditionalGeneration, VideoLLMLlavaModel,
            VideoLLMLlavaProcessor,
            tiny="hf_videollm.tiny:tiny_llava",
            readers={
                "original": "hf_videollm.conversion.llava:read_llava",
                "transformers": "hf_videollm.conversion.llava:read_llava_hf",
            },
            recipes="hf_videollm.training.recipes:LLAVA_STAGES",
            demo="hf_videollm.demo_presets:llava_demo_preset",
        ),
        ModelEntry(
            "videollama2", VideoLLMVideoLlama2Config, VideoLLMVideoLlama2ForConditionalGeneration,
            VideoLLMVideoLlama2Model, VideoLLMVideoLlama2Processor,
            tiny="hf_videollm.tiny:tiny_videollama2",
            readers={"original": "hf_videollm.conversion.videollama2:read_videollama2"},
            recipes="hf_videollm.training.recipes:VIDEOLLAMA2_STAGES",
            demo="hf_videollm.demo_presets:videollama2_demo_preset",
        ),
        ModelEntry(
            "videollama2_av", VideoLLMVideoLlama2AVConfig, VideoLLMVideoLlama2AVForConditionalGeneration,
            VideoLLMVideoLlama2AVModel, VideoLLMVideoLlama2AVProcessor,
            tiny="hf_videollm.tiny:tiny_videollama2_av",
            readers={"original": "hf_videollm.conversion.videollama2:read_videollama2_av"},
            recipes="hf_videollm.training.recipes:VIDEOLLAMA2_AV_STAGES",
            demo="hf_videollm.demo_presets:videollama2_av_demo_preset",
        ),
        ModelEntry(
            "blip2", VideoLLMBlip2Config, VideoLLMBlip2ForConditionalGeneration, VideoLLMBlip2Model,
            VideoLLMBlip2Processor,
            tiny="hf_videollm.tiny:tiny_blip2",
            readers={
                "original": "hf_videollm.conversion.blip2:read_blip2",
                "transformers": "hf_videollm.conversion.blip2:read_blip2_hf",
            },
            recipes="hf_videollm.training.recipes:BLIP2_STAGES",
            demo="hf_videollm.demo_presets:blip2_demo_preset",
        ),
        ModelEntry(
            "instructblip", VideoLLMInstructBlipConfig, VideoLLMInstructBlipForConditionalGeneration,
            VideoLLMInstructBlipModel, VideoLLMInstructBlipProcessor,
            tiny="hf_videollm.tiny:tiny_instructblip",
            readers={
                "original": "hf_videollm.conversion.blip2:read_instructblip",
                "transformers": "hf_videollm.conversion.blip2:read_instructblip_hf",
            },
            recipes="hf_videollm.training.recipes:BLIP2_STAGES",
            demo="hf_videollm.demo_presets:instructblip_demo_preset",
        ),
        # the Flan-T5 (encoder-decoder) variants: same classes, a tiny T5 so the common suite covers them
        ModelEntry(
            "blip2_t5", VideoLLMBlip2Config, VideoLLMBlip2ForConditionalGeneration, VideoLLMBlip2Model,
            VideoLLMBlip2Processor, tiny="hf_videollm.tiny:tiny_blip2_t5",
            recipes="hf_videollm.training.recipes:BLIP2_STAGES",
        ),
        ModelEntry(
            "instructblip_t5", VideoLLMInstructBlipConfig, VideoLLMInstructBlipForConditionalGeneration,
            VideoLLMInstructBlipModel, VideoLLMInstructBlipProcessor, tiny="hf_videollm.tiny:tiny_instructblip_t5",
            recipes="hf_videollm.training.recipes:BLIP2_STAGES",
        ),
        ModelEntry(
            "qwen2_vl", VideoLLMQwen2VLConfig, VideoLLMQwen2VLForConditionalGeneration, VideoLLMQwen2VLModel,
            VideoLLMQwen2VLProcessor,
            tiny="hf_videollm.tiny:tiny_qwen2vl",
            readers={"transformers": "hf_videollm.conversion.qwen2vl:read_qwen2vl_hf"},
            recipes="hf_videollm.training.recipes:QWEN2VL_STAGES",
            demo="hf_videollm.demo_presets:qwen2vl_demo_preset",
        ),
        ModelEntry(
            "longvlm", VideoLLMLongVLMConfig, VideoLLMLongVLMForConditionalGeneration, VideoLLMLongVLMModel,
            VideoLLMLongVLMProcessor,
            tiny="hf_videollm.tiny:tiny_longvlm",
            readers={"original": "hf_videollm.conversion.longvlm:read_longvlm"},
            recipes="hf_videollm.training.recipes:LONGVLM_STAGES",
            demo="hf_videollm.demo_presets:longvlm_demo_preset",
        ),
        ModelEntry(
            "qwen_vl", VideoLLMQwenVLConfig, VideoLLMQwenVLForConditionalGeneration, VideoLLMQwenVLModel,
            VideoLLMQwenVLProcessor,
            tiny="hf_videollm.tiny:tiny_qwen_vl",
            readers={"original": "hf_videollm.conversion.qwen_vl:read_qwen_vl"},
            recipes="hf_videollm.training.recipes:QWEN_VL_STAGES",
            demo="hf_videollm.demo_presets:qwen_vl_demo_preset",
        ),
        ModelEntry(
            "videollama3", VideoLLMVideoLlama3Config, VideoLLMVideoLlama3ForConditionalGeneration,
            VideoLLMVideoLlama3Model, VideoLLMVideoLlama3Processor,
            tiny="hf_videollm.tiny:tiny_videollama3",
            readers={
                "original": "hf_videollm.conversion.videollama3:read_videollama3",
                "transformers": "hf_videollm.conversion.videollama3:read_videollama3_hf",
            },
            recipes="hf_videollm.training.recipes:VIDEOLLAMA3_STAGES",
        ),
        ModelEntry(
            "video_llama", VideoLLMVideoLlamaConfig, VideoLLMVideoLlamaForConditionalGeneration,
            VideoLLMVideoLlamaModel, VideoLLMVideoLlamaProcessor,
            tiny="hf_videollm.tiny:tiny_video_llama",
            readers={"original": "hf_videollm.conversion.video_llama:read_video_llama"},
            recipes="hf_videollm.training.recipes:VIDEO_LLAMA_STAGES",
            demo="hf_videollm.demo_presets:video_llama_demo_preset",
        ),
    ]
    return {e.name: e for e in entries}


MODELS: dict[str, ModelEntry] = _entries()
_registered = False


def get_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise KeyError(f"no model named {name!r}; registered: {sorted(MODELS)}")
    return MODELS[name]


def entry_for_config(config) -> ModelEntry:
    """The entry of an hf_videollm config instance (its own class first: a variant's config may subclass another's)."""
    for entry in MODELS.values():
        if type(config) is entry.config_class:
            return entry
    for entry in MODELS.values():
        if isinstance(config, entry.config_class):
            return entry
    raise ValueError(f"{type(config).__name__} is not an hf_videollm model config; registered: {sorted(MODELS)}")


def register_all() -> None:
    """Register every model with AutoConfig / AutoModel / AutoModelForImageTextToText / AutoProcessor (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

    for entry in MODELS.values():
        AutoConfig.register(entry.config_class.model_type, entry.config_class, exist_ok=True)
        AutoModel.register(entry.config_class, entry.base_model_class, exist_ok=True)
        AutoModelForImageTextToText.register(entry.config_class, entry.model_class, exist_ok=True)
        AutoProcessor.register(entry.config_class, entry.processor_class, exist_ok=True)
    _registered = True
