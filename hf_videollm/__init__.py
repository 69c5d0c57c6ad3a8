"""hf_videollm: Hugging Face-native video LLMs.

``import hf_videollm`` registers every model with ``AutoConfig``, ``AutoModelForImageTextToText`` and
``AutoProcessor``, so checkpoints saved by this package load with the Auto classes.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .modeling import (  # noqa: E402
    MediaMismatchError,
    VideoLLMLlavaConfig,
    VideoLLMLlavaForConditionalGeneration,
    VideoLLMPreTrainedModel,
)
from .processors.llava import VideoLLMLlavaProcessor  # noqa: E402
from .registry import MODELS, register_all  # noqa: E402

register_all()

__all__ = [
    "MODELS",
    "MediaMismatchError",
    "VideoLLMLlavaConfig",
    "VideoLLMLlavaForConditionalGeneration",
    "VideoLLMLlavaProcessor",
    "VideoLLMPreTrainedModel",
]
