"""LLaVA processor: CLIP preprocessing (v1.5 pad-to-square), Vicuna-v1 chat template, ``<image>``/``<video>``."""

from __future__ import annotations

from ..modeling.llava import llava_tokens_per_frame
from .base import ProcessorInputError, VideoLLMProcessor
from .chat_templates import LLAVA_V1_SYSTEM, vicuna_v1_template
from .media import FramePixelsMixin
from .transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

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

    modalities = ("image", "video")

    def __init__(
        self,
        tokenizer=None,
        chat_template: str | None = None,
        image_size: int = 336,
        patch_size: int = 14,
        vision_feature_select_strategy: str = "default",
        video_pool_stride: int = 1,
        pad_to_square: bool = True,
        pad_fill: list[int] | None = None,
        resample: str = "bicubic",
        image_mean: list[float] = OPENAI_CLIP_MEAN,
        image_std: list[float] = OPENAI_CLIP_STD,
        rescale_factor: float = 1 / 255,
        image_token: str = "<image>",
        video_token: str = "<video>",
        image_token_id: int = 32000,
        video_token_id: int | None = 32001,
        image_start_token: str | None = None,
        image_end_token: str | None = None,
        num_frames: int | None = 8,
        video_fps: float | None = None,
        max_frames: int = 64,
        max_image_pixels: int = 178_956_970,
        max_aspect_ratio: float = 200.0,
        max_visual_tokens: int | None = None,
        tokenization: str = "chunks",
    ):
        if chat_template is None:
            chat_template = vicuna_v1_template(LLAVA_V1_SYSTEM, image_token, video_token)
        super().__init__(tokenizer, chat_template=chat_template)
        self.image_size = image_size
        self.patch_size = patch_size
        self.vision_feature_select_strategy = vision_feature_select_strategy
        self.video_pool_stride = video_pool_stride
        self.pad_to_square = pad_to_square
        self.pad_fill = list(pad_fill) if pad_fill is not None else [int(255 * m) for m in image_mean]
        self.resample = resample
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.rescale_factor = rescale_factor
        self.image_token = image_token
        self.video_token = video_token
        self.image_token_id = image_token_id
        self.video_token_id = video_token_id
        self.image_start_token = image_start_token
        self.image_end_token = image_end_token
        self.num_frames = num_frames
        self.video_fps = video_fps
        self.max_frames = max_frames
        self.max_image_pixels = max_image_pixels
        self.max_aspect_ratio = max_aspect_ratio
        self.max_visual_tokens = max_visual_tokens
        if tokenization not in ("chunks", "whole"):
            raise ValueError("tokenization must be 'chunks' (original LLaVA) or 'whole' (transformers' processors)")
        self.tokenization = tokenization

    # ------------------------------------------------------------------------------------------ pixels
    @property
    def transform(self):
        from .transforms import ImageTransform

        return ImageTransform(
            size=self.image_size,
            resize_mode="shortest_edge",
            crop_size=(self.image_size, self.image_size),
            pad_to_square=self.pad_to_square,
            fill=tuple(self.pad_fill),
            resample=self.resample,
            mean=tuple(self.image_mean),
            std=tuple(self.image_std),
            rescale_factor=self.rescale_factor,
        )

    def image_tokens(self) -> int:
        return llava_tokens_per_frame(self.image_size, self.patch_size, self.vision_feature_select_strategy)

    def video_tokens(self, num_frames: int) -> int:
        per_frame = llava_tokens_per_frame(
            self.image_size, self.patch_size, self.vision_feature_select_strategy, self.video_pool_stride
        )
        return num_frames * per_frame

    # ------------------------------------------------------------------------------------------ tokens
    def _expand(self, modality: str, num_tokens: int) -> list[int]:
        ids = super()._expand(modality, num_tokens)
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
