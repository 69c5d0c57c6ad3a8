"""LLaVA processor: CLIP preprocessing (v1.5 pad-to-square), Vicuna-v1 chat template, ``<image>``/``<video>``."""

from __future__ import annotations

from ..modeling.base import TOWER_INPUTS
from ..modeling.llava import llava_tokens_per_frame
from .base import ProcessorInputError, VideoLLMProcessor
from .chat_templates import LLAVA_V1_SYSTEM, vicuna_v1_template
from .pixels import FramePixelsMixin

__all__ = ["VideoLLMLlavaProcessor"]


class VideoLLMLlavaProcessor(FramePixelsMixin, VideoLLMProcessor):
    """Turns text + images/videos into LLaVA inputs.

    Image pipeline (as ``llava.mm_utils.process_images``): optional pad-to-square with the mean colour
    (v1.5 ``image_aspect_ratio="pad"``), CLIP resize of the shortest edge (bicubic), centre crop, rescale, normalize.
    Video frames go through the same pipeline; ``num_frames`` (or ``video_fps``) frames are sampled by timestamp.
    Every setting is saved in ``processor_config.json`` so a pushed checkpoint preprocesses identically everywhere.

    ``tokenization="chunks"`` tokenizes the text between placeholders separately, as the original
    ``tokenizer_image_token`` does (a SentencePiece tokenizer then starts each chunk with a word boundary);
    ``"whole"`` tokenizes the prompt in one piece with the placeholder tokens in it, as transformers' processors do.
    """

    input_spec = TOWER_INPUTS
    settings = {
        "vision_feature_select_strategy": "default",
        "video_pool_stride": 1,
        "image_start_token": None,  # LLaVA v1 ``mm_use_im_start_end``: <im_start> <im_patch> x N <im_end>
        "image_end_token": None,
        "pad_to_square": True,  # v1.5 ``image_aspect_ratio="pad"``
        "image_token_id": 32000,
        "video_token_id": 32001,
    }

    def default_chat_template(self) -> str:
        return vicuna_v1_template(LLAVA_V1_SYSTEM, self.image_token, self.video_token)

    def image_tokens(self) -> int:
        return llava_tokens_per_frame(self.image_size, self.patch_size, self.vision_feature_select_strategy)

    def video_tokens(self, num_frames: int) -> int:
        per_frame = llava_tokens_per_frame(
            self.image_size, self.patch_size, self.vision_feature_select_strategy, self.video_pool_stride
        )
        return num_frames * per_frame

    # ------------------------------------------------------------------------------------------ tokens
    def _expand(self, modality: str, tokens) -> list[int]:
        ids = super()._expand(modality, tokens)
        if modality == "image" and (self.image_start_token or self.image_end_token):
            # LLaVA v1 ``mm_use_im_start_end``: <im_start> <im_patch> x N <im_end>
            start = self._token_id(self.image_start_token) if self.image_start_token else []
            end = self._token_id(self.image_end_token) if self.image_end_token else []
            ids = start + ids + end
        return ids

    def _token_id(self, token: str) -> list[int]:
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == self.tokenizer.unk_token_id:
            raise ProcessorInputError(f"the tokenizer has no token {token!r}; add it or unset image_start/end_token")
        return [tid]
