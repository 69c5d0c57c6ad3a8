"""VideoLLaMA 2 processor: the tower's image preprocessing, segment-midpoint frame sampling, ``<image>``/``<video>``."""

from __future__ import annotations

from ..modeling.base import TOWER_INPUTS
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

    input_spec = TOWER_INPUTS
    settings = {
        "projector_type": "stc_connector",
        "model_num_frames": 8,  # frames an image is repeated to (the model's num_frames)
        "pad_to_square": False,  # the original's inference default (training used "pad")
        "max_frames": 32,
        "frame_sampling": "index_midpoints",
        "image_token_id": 32000,
        "video_token_id": 32001,
    }

    def default_chat_template(self) -> str:
        return llama2_template(VICUNA_V1_1_SYSTEM, self.image_token, self.video_token)

    def _check_settings(self) -> None:
        super()._check_settings()
        videollama2_num_tokens(self.projector_type, self.model_num_frames, self.image_size, self.patch_size)

    def image_tokens(self) -> int:
        return self.video_tokens(self.model_num_frames)

    def video_tokens(self, num_frames: int) -> int:
        return videollama2_num_tokens(self.projector_type, num_frames, self.image_size, self.patch_size)
