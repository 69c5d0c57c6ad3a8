"""VideoLLaMA 3 (DAMO-NLP-SG/VideoLLaMA3): any-resolution SigLIP-NaViT (2D RoPE, attention inside each image / frame)
-> bilinear downsample by the item's merge size -> MLP-GELU projector -> [DiffFP pruning of video tokens] -> Qwen2.5.

Reads top to bottom: config -> encoder (transformers' ``VideoLlama3VisionModel``: Conv2d on flattened 14x14 patches,
axial 2D rotary, per-frame varlen attention, ``post_layernorm``, bilinear ``F.interpolate`` by ``merge_size``) ->
connector (:class:`~.connectors.MLPProjector`, the original ``mm_projector.readout``) -> DiffFP keep-mask
(:func:`difffp_keep_mask`) -> merge (shared core) -> LLM (transformers' Qwen2 via ``AutoModelForCausalLM``, plain 1-D
RoPE).

* Inputs are packed as in the original: ``pixel_values`` holds every image's patch rows (``sum(t*h*w)`` rows of
  ``3*14*14``, merge-window order), ``image_grid_thw`` each image's ``(t, h, w)`` patch grid and ``image_merge_sizes``
  its merge size (likewise ``pixel_values_videos`` / ``video_grid_thw`` / ``video_merge_sizes``). One item becomes
  ``t * (h/m) * (w/m)`` tokens, row-major per frame.
* DiffFP (the original ``_get_compression_mask``): a video token is kept when the mean absolute difference of its
  ``m*m`` normalised patches from the same tokens of the previous frame, times 255, exceeds ``threshold`` (0.1); the
  first frame is kept; a frame left with fewer than ``min_tokens`` (1) tokens keeps its first ones. The processor
  computes the mask from the very pixels it returns (``video_compression_mask``) and emits one placeholder per *kept*
  token; the model drops the other tokens. Without a mask nothing is pruned (transformers' convention). Unlike the
  original (batch size 1 only, an assert) any batch works: the mask is per video.
* The original uses one ``<image>`` id for image and video tokens; here videos have their own placeholder
  (``video_token_id``), which is never embedded, so logits are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoConfig, GenerationMixin, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.video_llama_3.modeling_video_llama_3 import VideoLlama3VisionModel

from .base import VideoLLMPreTrainedModel
from .connectors import MLPProjector, parse_projector_type
from .contract import InputSpec, Modality, ModelInputs

__all__ = [
    "VIDEOLLAMA3_INPUTS",
    "VideoLLMVideoLlama3Config",
    "VideoLLMVideoLlama3ForConditionalGeneration",
    "VideoLLMVideoLlama3Model",
    "difffp_keep_mask",
    "videollama3_num_tokens",
]

VIDEOLLAMA3_INPUTS = ModelInputs(
    modalities=(
        Modality("image", ("vision_tower", "multi_modal_projector")),
        Modality("video", ("vision_tower", "multi_modal_projector")),
    ),
    inputs=(
        # (sum over images of t*h*w, 3*14*14) patch rows in merge-window order; rows of each image from its grid
        InputSpec("pixel_values", modality="image", collate="packed", rows_from="image_grid_thw"),
        InputSpec("image_grid_thw", modality="image", layout=True),  # (images, 3) (t, h, w) in patches
        InputSpec("image_merge_sizes", modality="image", layout=True),  # (images,) spatial downsampling factor
        InputSpec("pixel_values_videos", modality="video", collate="packed", rows_from="video_grid_thw"),
        InputSpec("video_grid_thw", modality="video", layout=True),
        InputSpec("video_merge_sizes", modality="video", layout=True),
        # per video: (t*(h/m)*(w/m),) DiffFP keep-mask (1 = token kept); absent = nothing pruned
        InputSpec("video_compression_mask", modality="video", layout=True),
    ),
)


def videollama3_num_tokens(grid_thw: Sequence[int], merge_size: int) -> int:
    """Visual tokens of one item with patch grid ``(t, h, w)`` and ``merge_size`` before DiffFP pruning."""
    t, h, w = (int(x) for x in grid_thw)
    m = int(merge_size)
    return t * (h // m) * (w // m)


# --------------------------------------------------------------------------------------------------- DiffFP
def difffp_keep_mask(
    pixels: torch.Tensor, grid_thw: Sequence[int], merge_size: int, threshold: float = 0.1, min_tokens: int = 1,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """DiffFP keep-mask ``(t*(h/m)*(w/m),)`` (bool) of one video from its packed patch rows (merge-window order).

    As the original ``_get_compression_mask``: rows viewed as ``(t, tokens, m*m*row)``; per token
    ``mean(|x[f] - x[f-1]|) * 255`` (normalised pixels), frame 0 counts as ``threshold + 1``; kept where it exceeds
    ``threshold``; a frame with fewer than ``min_tokens`` kept tokens keeps its first ``min_tokens``. ``dtype``: compute
    in that precision (the original runs on the pixels it is given: bfloat16 in its inference example)."""
    t, h, w = (int(x) for x in grid_thw)
    m = int(merge_size)
    if h % m or w % m:
        raise ValueError(f"grid {h}x{w} is not a multiple of merge_size {m}")
    if pixels.shape[0] != t * h * w:
        raise ValueError(f"pixels hold {pixels.shape[0]} patch rows but the grid {t}x{h}x{w} needs {t * h * w}")
    n = (h // m) * (w // m)
    x = pixels.reshape(t, n, -1)
    if dtype is not None:
        x = x.to(dtype)
    first = torch.full((1, n), threshold + 1, dtype=x.dtype, device=x.device)
    diff = torch.cat([first, (x[1:] - x[:-1]).abs().mean(-1) * 255], dim=0)
    mask = diff > threshold
    short = mask.sum(-1) < min_tokens
    mask[short, :min_tokens] = True
    return mask.flatten()


# --------------------------------------------------------------------------------------------------- config
class VideoLLMVideoLlama3Config(PreTrainedConfig):
    r"""VideoLLaMA 3 configuration.

    Args:
        vision_config: ``video_llama_3_vision`` config (SigLIP-NaViT; the released encoder is SigLIP-so400m sized:
            width 1152, FFN 4304, 27 layers, 16 heads, patch 14; transformers' class default patch is 16).
        text_config: Qwen2 config (Qwen2.5-7B / 1.5B in the releases).
        image_token_id / video_token_id: placeholders, one id per visual token; ``image_token_id`` is the original's
            ``<image>`` (``image_token_index``), ``video_token_id`` ours (never embedded).
        projector_type: ``"mlp2x_gelu"`` (released) or ``"linear"``.
        image_merge_size / video_merge_size: default merge sizes when ``image_merge_sizes`` / ``video_merge_sizes``
            are not given (original processor defaults 1 / 2).
        use_token_compression / difffp_threshold / difffp_min_tokens: DiffFP settings the processor applies
            (original: on, 0.1, 1).
    """

    model_type = "videollm_videollama3"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(AutoConfig, model_type="video_llama_3_vision", init_kwargs={"patch_size": 14}),
        "text_config": SubConfigSpec(AutoConfig, model_type="qwen2"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 151665
    video_token_id: int | None = 151668
    image_token: str = "<image>"
    video_token: str = "<video>"
    projector_type: str = "mlp2x_gelu"
    image_merge_size: int = 1
    video_merge_size: int = 2
    use_token_compression: bool = True
    difffp_threshold: float = 0.1
    difffp_min_tokens: int = 1
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        parse_projector_type(self.projector_type)
        if self.image_merge_size < 1 or self.video_merge_size < 1:
            raise ValueError("image_merge_size and video_merge_size must be >= 1")


# --------------------------------------------------------------------------------------------------- model
def _per_video_masks(mask: Any, counts: list[int]) -> list[torch.Tensor]:
    """``video_compression_mask`` as one bool tensor per video: ours (``(V, N)`` or a list) or transformers' flat
    concatenation ``(sum N_i,)``."""
    if isinstance(mask, torch.Tensor) and mask.ndim == 1:
        if mask.numel() != sum(counts):
            raise ValueError(
                f"video_compression_mask has {mask.numel()} entries but the videos have {sum(counts)} tokens "
                f"({counts} per video); build it with the processor from the same pixels"
            )
        return [m.bool() for m in mask.split(counts)]
    masks = [torch.as_tensor(m).reshape(-1).bool() for m in mask]
    if len(masks) != len(counts) or any(m.numel() != c for m, c in zip(masks, counts)):
        raise ValueError(
            f"video_compression_mask holds masks of {[m.numel() for m in masks]} tokens but the videos have {counts} "
            f"tokens (t*(h/m)*(w/m)); build it with the processor from the same pixels"
        )
    return masks


class VideoLLMVideoLlama3Model(VideoLLMPreTrainedModel):
    """VideoLLaMA 3 without the LM head (``AutoModel``): hidden states of the language model and the media features."""

    config_class = VideoLLMVideoLlama3Config
    input_spec = VIDEOLLAMA3_INPUTS
    with_lm_head = False
    _parts = {
        "vision_tower": ("vision_tower",),
        "connector": ("multi_modal_projector",),
        "language_model": ("language_model",),
    }

    def __init__(self, config: VideoLLMVideoLlama3Config):
        super().__init__(config)
        self.vision_tower = VideoLlama3VisionModel._from_config(config.vision_config)
        depth, act = parse_projector_type(config.projector_type)
        self.multi_modal_projector = MLPProjector(config.vision_config.hidden_size, config.text_config.hidden_size, depth, act)
        self.language_model = self.build_language_model(config.text_config)
        self.post_init()

    # --------------------------------------------------------------------------------------------- encoders
    def _merge_sizes(self, merge_sizes, n: int, default: int, device) -> torch.Tensor:
        if merge_sizes is None:
            return torch.full((n,), default, dtype=torch.long, device=device)
        merge_sizes = torch.as_tensor(merge_sizes, device=device).reshape(-1).long()
        if merge_sizes.numel() != n:
            raise ValueError(f"{merge_sizes.numel()} merge sizes for {n} items; give one per grid row")
        return merge_sizes

    def encode_patches(self, pixels: torch.Tensor, grid_thw, merge_sizes, name: str) -> list[torch.Tensor]:
        """Packed patch rows -> per item ``(t*(h/m)*(w/m), D_llm)`` tokens (encoder, downsampling, projector)."""
        grid_thw = torch.as_tensor(grid_thw, device=pixels.device).reshape(-1, 3).long()
        vc = self.config.vision_config
        width = vc.num_channels * vc.patch_size**2
        rows = int(grid_thw.prod(-1).sum())
        if pixels.ndim != 2 or tuple(pixels.shape) != (rows, width):
            raise ValueError(
                f"{name} must be packed patch rows of shape (sum of t*h*w over the grids = {rows}, {width}), got "
                f"{tuple(pixels.shape)}; use the VideoLLaMA 3 processor"
            )
        if bool(((grid_thw[:, 1:] % merge_sizes[:, None]) != 0).any()):
            raise ValueError(
                f"every grid height and width must be a multiple of its merge size; grids {grid_thw.tolist()}, "
                f"merge sizes {merge_sizes.tolist()}"
            )
        out = self.vision_tower(self._cast_for(self.vision_tower, pixels), grid_thw=grid_thw, merge_sizes=merge_sizes)
        feats = out.last_hidden_state
        tokens = self.multi_modal_projector(self._cast_for(self.multi_modal_projector, feats))
        counts = [videollama3_num_tokens(g, m) for g, m in zip(grid_thw.tolist(), merge_sizes.tolist())]
        return list(tokens.split(counts))

    def get_image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor,
                           image_merge_sizes: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Packed patches + ``(images, 3)`` grids (+ merge sizes) -> one ``(t*(h/m)*(w/m), D_llm)`` per image."""
        n = torch.as_tensor(image_grid_thw).reshape(-1, 3).shape[0]
        merge = self._merge_sizes(image_merge_sizes, n, self.config.image_merge_size, pixel_values.device)
        return self.encode_patches(pixel_values, image_grid_thw, merge, "pixel_values")

    def get_video_features(self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor,
                           video_merge_sizes: torch.Tensor | None = None,
                           video_compression_mask: Any = None) -> list[torch.Tensor]:
        """Packed patches + ``(videos, 3)`` grids (+ merge sizes, + DiffFP keep-masks) -> one ``(kept, D_llm)`` per
        video (all ``t*(h/m)*(w/m)`` tokens without a mask)."""
        n = torch.as_tensor(video_grid_thw).reshape(-1, 3).shape[0]
        merge = self._merge_sizes(video_merge_sizes, n, self.config.video_merge_size, pixel_values_videos.device)
        tokens = self.encode_patches(pixel_values_videos, video_grid_thw, merge, "pixel_values_videos")
        if video_compression_mask is None:
            return tokens
        masks = _per_video_masks(video_compression_mask, [t.shape[0] for t in tokens])
        return [t[m.to(t.device)] for t, m in zip(tokens, masks)]

    def dummy_media_inputs(self, modality: str) -> dict[str, Any]:
        vc = self.config.vision_config
        p = next(self.vision_tower.parameters())
        m = self.config.image_merge_size if modality == "image" else self.config.video_merge_size
        pixels = torch.zeros(m * m, vc.num_channels * vc.patch_size**2, device=p.device, dtype=p.dtype)
        grid = torch.tensor([[1, m, m]], device=p.device)
        merge = torch.tensor([m], device=p.device)
        if modality == "image":
            return {"pixel_values": pixels, "image_grid_thw": grid, "image_merge_sizes": merge}
        return {"pixel_values_videos": pixels, "video_grid_thw": grid, "video_merge_sizes": merge}


class VideoLLMVideoLlama3ForConditionalGeneration(VideoLLMVideoLlama3Model, GenerationMixin):
    """VideoLLaMA 3 with its LM head: loss, logits, ``generate``."""

    with_lm_head = True
