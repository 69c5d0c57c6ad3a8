"""VideoLLaMA 2 / 2.1 (DAMO-NLP-SG/VideoLLaMA2): CLIP or SigLIP tower -> STC connector -> Mistral / Qwen2 / Mixtral.

Reads top to bottom: config -> encoder (transformers' CLIP / SigLIP) -> connector (:class:`STCConnector`: RegNet
stage, Conv3d over neighbouring frames, RegNet stage, MLP) -> merge (shared core) -> LLM.

* Video: every frame through the tower (hidden state of ``vision_feature_layer``, CLIP's CLS dropped), then the
  connector down-samples time and space by 2: ``num_frames`` frames of a ``g x g`` patch grid become
  ``t' * h' * w'`` tokens (``stc_connector``: (8, 24x24) -> 5x13x13 = 845; ``stc_connector_v35``: (16, 27x27) ->
  8x13x13 = 1352).
* Image: a still video of ``num_frames`` identical frames, as the original (``expand`` to ``num_frames``); the tower
  runs once per image and its features are repeated, which gives the same tokens for less compute.
* Several images / videos per prompt: one placeholder run per item, in order. Videos of different lengths in one
  batch are fine (the original needs equal lengths).
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModel, GenerationMixin, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .base import VisionTowerModel
from .connectors import STC_CONNECTORS, STCConnector, stc_output_grid
from .vision import CLIP_L14_336

__all__ = [
    "VideoLLMVideoLlama2Config",
    "VideoLLMVideoLlama2ForConditionalGeneration",
    "VideoLLMVideoLlama2Model",
    "videollama2_num_tokens",
]

MISTRAL_7B_INSTRUCT_V02 = {
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "sliding_window": None,
}


def videollama2_num_tokens(connector_type: str, frames: int, image_size: int, patch_size: int) -> int:
    """Visual tokens one video of ``frames`` frames (or one image, with ``frames = num_frames``) becomes."""
    t, h, w = stc_output_grid(connector_type, frames, image_size // patch_size)
    return t * h * w


class VideoLLMVideoLlama2Config(PreTrainedConfig):
    r"""VideoLLaMA 2 configuration.

    Args:
        vision_config: CLIP or SigLIP vision config (default CLIP-L/14-336, as VideoLLaMA2-7B; VideoLLaMA2.1 uses
            SigLIP so400m-14-384).
        text_config: language model config (default Mistral-7B-Instruct-v0.2; Qwen2 for 2.1, Mixtral for 8x7B).
        image_token_id / video_token_id: placeholder ids; each expands to one id per visual token. They may lie
            outside the language model's vocabulary (they are never embedded).
        vision_feature_layer: tower hidden state used (-2 = penultimate layer, as the original).
        vision_feature_select_strategy: ``"default"`` drops the first token (CLIP's CLS), ``"full"`` keeps every
            token (SigLIP has no CLS). ``None`` picks by tower: ``"full"`` for SigLIP, ``"default"`` otherwise.
        projector_type: the original ``mm_projector_type``: ``stc_connector`` (VideoLLaMA 2, Conv3d padding 1),
            ``stc_connector_v35`` (2.1, padding 0), ``stp_connector`` (average pooling), ``spatial_conv`` /
            ``spatial_pool`` (no temporal down-sampling, no RegNet stages).
        connector_depth: RegNet blocks in each of the connector's two stages; ``None`` = 4, the original's
            ``STCConnector(depth=4)`` (every released checkpoint). Smaller values are for tiny models.
        num_frames: frames per video the model was trained with; images are repeated to this many frames.
    """

    model_type = "videollm_videollama2"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(AutoConfig, model_type="clip_vision_model", init_kwargs=CLIP_L14_336),
        "text_config": SubConfigSpec(AutoConfig, model_type="mistral", init_kwargs=MISTRAL_7B_INSTRUCT_V02),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 32000
    video_token_id: int | None = 32001
    image_token: str = "<image>"
    video_token: str = "<video>"
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str | None = None
    projector_type: str = "stc_connector"
    connector_depth: int | None = None
    num_frames: int = 8
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.projector_type not in STC_CONNECTORS:
            raise ValueError(
                f"projector_type must be one of {sorted(STC_CONNECTORS)} (VideoLLaMA 2's mm_projector_type), "
                f"got {self.projector_type!r}"
            )
        if self.vision_feature_select_strategy is None:
            siglip = "siglip" in getattr(self.vision_config, "model_type", "")
            self.vision_feature_select_strategy = "full" if siglip else "default"
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"vision_feature_select_strategy must be 'default' or 'full', got {self.vision_feature_select_strategy!r}"
            )
        if self.connector_depth is not None and (self.connector_depth < 1 or not STC_CONNECTORS[self.projector_type][3]):
            raise ValueError(
                f"connector_depth must be >= 1 (RegNet blocks per stage) and {self.projector_type} must have RegNet "
                f"stages; got {self.connector_depth}. Leave it None for the original's 4"
            )
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        stc_output_grid(self.projector_type, self.num_frames, self.vision_config.image_size // self.vision_config.patch_size)

    @property
    def image_seq_length(self) -> int:
        return self.video_seq_length(self.num_frames)

    def video_seq_length(self, frames: int) -> int:
        return videollama2_num_tokens(
            self.projector_type, frames, self.vision_config.image_size, self.vision_config.patch_size
        )


class VideoLLMVideoLlama2Model(VisionTowerModel):
    """VideoLLaMA 2 without the LM head (``AutoModel``): hidden states of the language model and the media features."""

    config_class = VideoLLMVideoLlama2Config
    with_lm_head = False

    def __init__(self, config: VideoLLMVideoLlama2Config):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        llm_width = config.text_config.hidden_size
        self.multi_modal_projector = STCConnector(
            config.projector_type, config.vision_config.hidden_size, llm_width, llm_width, depth=config.connector_depth
        )
        self.language_model = self.build_language_model(config.text_config)
        self._build_extra_encoders(config)
        self.post_init()

    def _build_extra_encoders(self, config) -> None:
        """Hook for variants with more encoders (2.1-AV adds the audio tower and its projector) before ``post_init``."""

    # --------------------------------------------------------------------------------------------- encoders
    def _connect(self, frame_features: torch.Tensor) -> torch.Tensor:
        """``(B, T, P, C_vis)`` -> ``(B, tokens, D_llm)``."""
        return self.multi_modal_projector(self._cast_for(self.multi_modal_projector, frame_features))

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` images -> ``(N, tokens, D_llm)``: each image is a still video of ``num_frames`` frames."""
        self._check_images(pixel_values)
        feats = self.get_vision_features(pixel_values)  # once per image; the repeated frames are identical
        return self._connect(feats[:, None].expand(-1, self.config.num_frames, -1, -1))

    def get_video_features(self, pixel_values_videos: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
        """``(V, T, 3, H, W)`` (or a list of ``(T_i, 3, H, W)``) -> one ``(tokens_i, D_llm)`` per video."""
        frames, lengths = self._video_frames(pixel_values_videos)
        feats = self.get_vision_features(frames)
        if len(set(lengths)) == 1:  # equal lengths (any (V, T, ...) tensor): one connector call on a view
            return list(self._connect(feats.unflatten(0, (len(lengths), lengths[0]))).unbind(0))
        feats = feats.split(lengths, dim=0)
        out: list[torch.Tensor | None] = [None] * len(lengths)
        for t in sorted(set(lengths)):  # the connector mixes frames: one batched call per video length
            idx = [i for i, n in enumerate(lengths) if n == t]
            tokens = self._connect(torch.stack([feats[i] for i in idx]))
            for i, tok in zip(idx, tokens):
                out[i] = tok
        return out  # type: ignore[return-value]


class VideoLLMVideoLlama2ForConditionalGeneration(VideoLLMVideoLlama2Model, GenerationMixin):
    """VideoLLaMA 2 with its LM head: loss, logits, ``generate``."""

    with_lm_head = True
