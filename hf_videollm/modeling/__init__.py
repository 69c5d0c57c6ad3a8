from .base import (
    VideoLLMCausalLMOutput,
    VideoLLMModelOutput,
    VideoLLMPreTrainedModel,
    VideoLLMSeq2SeqLMOutput,
    VideoLLMSeq2SeqModelOutput,
)
from .contract import InputSpec, Modality, ModelInputs
from .merge import MediaMismatchError, merge_media_embeddings

__all__ = [
    "InputSpec",
    "MediaMismatchError",
    "Modality",
    "ModelInputs",
    "VideoLLMCausalLMOutput",
    "VideoLLMModelOutput",
    "VideoLLMPreTrainedModel",
    "VideoLLMSeq2SeqLMOutput",
    "VideoLLMSeq2SeqModelOutput",
    "merge_media_embeddings",
]
