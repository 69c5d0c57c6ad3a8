"""VideoLLaMA 2 processor: the tower's image preprocessing, segment-midpoint frame sampling, ``<image>``/``<video>``."""

from __future__ import annotations

from ..media.transforms import OPENAI_CLIP_MEAN as CLIP_MEAN
from ..media.transforms import OPENAI_CLIP_STD as CLIP_STD
from ..modeling.videollama2 import videollama2_num_tokens
from .base import VideoLLMProcessor
from .chat_templates import VICUNA_V1_1_SYSTEM, llama2_template
from .pixels import FramePixelsMixin

__all__ = ["VideoLLMVideoLlama2Processor"]

class VideoLLMVideoLlama2Processor(FramePixelsMixin, VideoLLMProcessor):
    """Turns text + images/videos into VideoLLaMA 2 inputs.

    Pixels as ``videollama2.mm_utils.process_image`` / ``process_video``: the tower's image processor -- CLIP-336:
    resize the shortest edge (bicubic) + centre crop (``resize_mode="shortest_edge"``); SigLIP-384: resize to the
    square (``resize_mode="exact"``) --, with the original's inference default ``pad_to_square=False``
    (``aspect_ratio=None``; training used ``"pad"``: pad to a square with the mean colour first). Video frames:
    ``num_frames`` midpoints of equal segments of the frame range, rounded to the nearest frame (``frame_sample``),
    or one frame per second with ``video_fps=1``.

    A video of ``T`` frames becomes ``t' * h' * w'`` tokens after the STC connector; an image the tokens of a still
    video of ``model_num_frames`` frames (the model repeats it). The counts use the model's formula.
    """

    modalities = ("image", "video")

    def __init__(
        self,
        tokenizer=None,
        chat_template: str | None = None,
        image_size: int = 336,
        patch_size: int = 14,
        resize_mode: str = "shortest_edge",
        projector_type: str = "stc_connector",
        model_num_frames: int = 8,
        pad_to_square: bool = False,
        pad_fill: list[int] | None = None,
        resample: str = "bicubic",
        image_mean: list[float] = CLIP_MEAN,
        image_std: list[float] = CLIP_STD,
        rescale_factor: float = 1 / 255,
        image_token: str = "<image>",
        video_token: str = "<video>",
        image_token_id: int = 32000,
        video_token_id: int | None = 32001,
        num_frames: int | None = 8,
        video_fps: float | None = None,
        max_frames: int = 32,
        frame_sampling: str = "index_midpoints",
        max_image_pixels: int = 178_956_970,
        max_aspect_ratio: float = 200.0,
        max_visual_tokens: int | None = None,
    ):
        if chat_template is None:
            chat_template = llama2_template(VICUNA_V1_1_SYSTEM, image_token, video_token)
        super().__init__(tokenizer, chat_template=chat_template)
        if resize_mode not in ("shortest_edge", "exact"):
            raise ValueError(f"resize_mode must be 'shortest_edge' (CLIP) or 'exact' (SigLIP), got {resize_mode!r}")
        videollama2_num_tokens(projector_type, model_num_frames, image_size, patch_size)  # fail early on bad settings
        self.image_size = image_size
        self.patch_size = patch_size
        self.resize_mode = resize_mode
        self.projector_type = projector_type
        self.model_num_frames = model_num_frames
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
        self.num_frames = num_frames
        self.video_fps = video_fps
        self.max_frames = max_frames
        self.frame_sampling = frame_sampling
        self.max_image_pixels = max_image_pixels
        self.max_aspect_ratio = max_aspect_ratio
        self.max_visual_tokens = max_visual_tokens

    @property
    def transform(self):
        from ..media.transforms import ImageTransform

        size = self.image_size if self.resize_mode == "shortest_edge" else (self.image_size, self.image_size)
        return ImageTransform(
            size=size,
            resize_mode=self.resize_mode,
            crop_size=(self.image_size, self.image_size) if self.resize_mode == "shortest_edge" else None,
            pad_to_square=self.pad_to_square,
            fill=tuple(self.pad_fill),
            resample=self.resample,
            mean=tuple(self.image_mean),
            std=tuple(self.image_std),
            rescale_factor=self.rescale_factor,
        )

    def image_tokens(self) -> int:
        return self.video_tokens(self.model_num_frames)

    def video_tokens(self, num_frames: int) -> int:
        return videollama2_num_tokens(self.projector_type, num_frames, self.image_size, self.patch_size)
