from .base import VideoLLMCausalLMOutput, VideoLLMPreTrainedModel
from .llava import VideoLLMLlavaConfig, VideoLLMLlavaForConditionalGeneration
from .merge import MediaMismatchError, merge_media_embeddings

__all__ = [
    "MediaMismatchError",
    "VideoLLMCausalLMOutput",
    "VideoLLMLlavaConfig",
    "VideoLLMLlavaForConditionalGeneration",
    "VideoLLMPreTrainedModel",
    "merge_media_embeddings",
]
