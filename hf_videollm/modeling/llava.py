"""LLaVA v1 / v1.5 (haotian-liu/LLaVA): CLIP tower -> linear (v1) or MLP-GELU (v1.5) projector -> LLaMA/Vicuna.

Reads top to bottom: config -> encoder (transformers' CLIP) -> connector -> merge (shared core) -> LLM.

* Images: one CLIP pass per image, hidden state of ``vision_feature_layer`` (-2), CLS dropped -> (S/14)^2 tokens.
* Several images per prompt: one placeholder run per image, in order.
* Video: a frame sequence; each frame is encoded like an image, optionally average-pooled on its patch grid
  (``video_pool_stride``), and the frames' tokens are concatenated in time order.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModel, GenerationMixin, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .base import VisionTowerModel
from .connectors import MLPProjector, parse_projector_type, pooled_grid_side, spatial_pool
from .vision import CLIP_L14_336

__all__ = [
    "VideoLLMLlavaConfig", "VideoLLMLlavaForConditionalGeneration", "VideoLLMLlavaModel", "llava_tokens_per_frame",
]

def llava_tokens_per_frame(image_size: int, patch_size: int, strategy: str = "default", pool_stride: int = 1) -> int:
    """Visual tokens one image (or one video frame) becomes. The processor and the model both use this."""
    grid = image_size // patch_size
    if pool_stride > 1:
        if strategy not in ("default", "patch"):
            raise ValueError("video pooling needs the CLS token dropped (vision_feature_select_strategy='default')")
        return pooled_grid_side(grid, pool_stride) ** 2
    return grid * grid + (0 if strategy in ("default", "patch") else 1)


class VideoLLMLlavaConfig(PreTrainedConfig):
    r"""LLaVA configuration.

    Args:
        vision_config: CLIP vision config (default CLIP-L/14-336, as LLaVA v1.5).
        text_config: language model config (default LLaMA).
        image_token_id / video_token_id: placeholder ids; each expands to one id per visual token. They may lie
            outside the language model's vocabulary (they are never embedded). LLaVA v1 uses the in-vocabulary
            ``<im_patch>`` id as image placeholder.
        vision_feature_layer: CLIP hidden state used (-2 = penultimate layer).
        vision_feature_select_strategy: ``"default"`` drops CLS, ``"full"`` keeps it.
        projector_type: ``"linear"`` (v1) or ``"mlp2x_gelu"`` (v1.5).
        video_pool_stride / video_pool_mode: spatial pooling of each frame's patch grid for video (1 = none).
    """

    model_type = "videollm_llava"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(AutoConfig, model_type="clip_vision_model", init_kwargs=CLIP_L14_336),
        "text_config": SubConfigSpec(AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 32000
    video_token_id: int | None = 32001
    image_token: str = "<image>"
    video_token: str = "<video>"
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: str = "default"
    projector_type: str = "mlp2x_gelu"
    projector_bias: bool = True
    video_pool_stride: int = 1
    video_pool_mode: str = "average"
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        parse_projector_type(self.projector_type)  # fail early on a bad name
        if self.vision_feature_select_strategy not in ("default", "full", "patch", "cls_patch"):
            raise ValueError(
                f"vision_feature_select_strategy must be 'default' or 'full', got {self.vision_feature_select_strategy!r}"
            )
        if self.video_pool_stride < 1:
            raise ValueError("video_pool_stride must be >= 1")

    @property
    def image_seq_length(self) -> int:
        return llava_tokens_per_frame(
            self.vision_config.image_size, self.vision_config.patch_size, self.vision_feature_select_strategy
        )

    @property
    def video_tokens_per_frame(self) -> int:
        return llava_tokens_per_frame(
            self.vision_config.image_size,
            self.vision_config.patch_size,
            self.vision_feature_select_strategy,
            self.video_pool_stride,
        )


class VideoLLMLlavaModel(VisionTowerModel):
    """LLaVA without the LM head (``AutoModel``): hidden states of the language model and the media features."""

    config_class = VideoLLMLlavaConfig
    with_lm_head = False

    def __init__(self, config: VideoLLMLlavaConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        depth, act = parse_projector_type(config.projector_type)
        layers = 1 if isinstance(config.vision_feature_layer, int) else len(config.vision_feature_layer)
        self.multi_modal_projector = MLPProjector(
            config.vision_config.hidden_size * layers, config.text_config.hidden_size, depth, act, config.projector_bias
        )
        self.language_model = self.build_language_model(config.text_config)
        self.post_init()

    # --------------------------------------------------------------------------------------------- encoders
    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` images -> ``(N, tokens, D_llm)`` visual tokens."""
        self._check_images(pixel_values)
        feats = self.get_vision_features(pixel_values)
        return self.multi_modal_projector(self._cast_for(self.multi_modal_projector, feats))

    def get_video_features(self, pixel_values_videos: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
        """``(V, T, 3, H, W)`` (or a list of ``(T_i, 3, H, W)``) -> one ``(T_i * tokens_per_frame, D_llm)`` per video."""
        frames, lengths = self._video_frames(pixel_values_videos)
        feats = self.get_vision_features(frames)
        feats = spatial_pool(feats, self.config.video_pool_stride, self.config.video_pool_mode)
        tokens = self.multi_modal_projector(self._cast_for(self.multi_modal_projector, feats))
        return [t.flatten(0, 1) for t in tokens.split(lengths, dim=0)]


class VideoLLMLlavaForConditionalGeneration(VideoLLMLlavaModel, GenerationMixin):
    """LLaVA with its LM head: loss, logits, ``generate``."""

    with_lm_head = True
