"""VideoLLaMA 2.1-AV (DAMO-NLP-SG/VideoLLaMA2, ``audio_visual`` branch): VideoLLaMA 2.1 + a BEATs audio branch.

Reads top to bottom: config (VideoLLaMA 2's + ``audio_config``, a real BEATs sub-config) -> encoders (the vision path
of :mod:`.videollama2`; BEATs, :mod:`.beats`) -> audio projector (``mlp2x_gelu``, the original ``mm_projector_a``)
-> merge (shared core) -> LLM.

* Audio alone: its own ``<audio>`` placeholder run, ``(frames // 16) * 8`` tokens (30 s -> 2998 fbank frames -> 1496).
* A video with its audio: the original concatenates the video's tokens and then its audio's tokens and puts both in
  the single ``<video>`` slot. Here the processor expands that slot to the video's placeholder ids followed by the
  audio's placeholder ids, so the shared merge fills them in order -- no special case in the model.
* Images, videos without audio, audio clips and videos with audio mix freely in one batch.

The audio tower's attention follows ``config.audio_config._attn_implementation`` at call time (``eager``: the
original's arithmetic; ``sdpa``: the same bias through ``torch.nn.functional.scaled_dot_product_attention``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import GenerationMixin, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .base import TOWER_INPUTS
from .beats import NUM_MEL_BINS, BEATsEncoder, VideoLLMBEATsConfig, beats_num_tokens, init_beats_module
from .connectors import MLPProjector
from .contract import InputSpec, Modality, ModelInputs
from .videollama2 import VideoLLMVideoLlama2Config, VideoLLMVideoLlama2Model

__all__ = [
    "AV_INPUTS",
    "VideoLLMVideoLlama2AVConfig",
    "VideoLLMVideoLlama2AVForConditionalGeneration",
    "VideoLLMVideoLlama2AVModel",
]

#: image / video through the vision path, audio (a log-mel fbank per clip) through BEATs.
AV_INPUTS = ModelInputs(
    modalities=(*TOWER_INPUTS.modalities, Modality("audio", ("audio_tower", "audio_projector"))),
    inputs=(
        *TOWER_INPUTS.inputs,
        InputSpec("input_features", modality="audio"),  # (clips, fbank frames, 128), or a list of (F_i, 128)
    ),
)


class VideoLLMVideoLlama2AVConfig(VideoLLMVideoLlama2Config):
    r"""VideoLLaMA 2.1-AV configuration: VideoLLaMA 2's fields plus

    Args:
        audio_config: BEATs sizes (:class:`~.beats.VideoLLMBEATsConfig`; default the released BEATs_iter3+ AS2M).
        audio_token_id: placeholder id of an audio clip's tokens (alone, or after a video's tokens in its slot).
        audio_projector_type: the original ``mm_projector_a_type``; only ``mlp2x_gelu`` exists in the releases.
    """

    model_type = "videollm_videollama2_av"
    sub_configs_defaults = {
        **VideoLLMVideoLlama2Config.sub_configs_defaults,
        "audio_config": SubConfigSpec(VideoLLMBEATsConfig),
    }

    audio_config: dict | PreTrainedConfig | None = None
    audio_token_id: int | None = 32002
    audio_token: str = "<audio>"
    audio_projector_type: str = "mlp2x_gelu"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.audio_projector_type != "mlp2x_gelu":
            raise ValueError(
                f"audio_projector_type must be 'mlp2x_gelu' (the original mm_projector_a_type), got "
                f"{self.audio_projector_type!r}"
            )

    def audio_seq_length(self, fbank_frames: int) -> int:
        """Tokens of one audio clip whose fbank has ``fbank_frames`` frames (30 s: 2998 -> 1496)."""
        return beats_num_tokens(fbank_frames, self.audio_config.input_patch_size)


class VideoLLMVideoLlama2AVModel(VideoLLMVideoLlama2Model):
    """VideoLLaMA 2.1-AV without the LM head (``AutoModel``)."""

    config_class = VideoLLMVideoLlama2AVConfig
    input_spec = AV_INPUTS
    _parts = {
        "vision_tower": ("vision_tower",),
        "connector": ("multi_modal_projector",),
        "audio_tower": ("audio_tower",),
        "audio_projector": ("audio_projector",),
        "language_model": ("language_model",),
    }
    _no_split_modules = ["_EncoderLayer"]

    def _build_extra_encoders(self, config: VideoLLMVideoLlama2AVConfig) -> None:
        self.audio_tower = BEATsEncoder(config.audio_config)
        self.audio_projector = MLPProjector(
            config.audio_config.encoder_embed_dim, config.text_config.hidden_size, depth=2, act="gelu"
        )

    def _init_weights(self, module) -> None:
        if init_beats_module(module):
            return
        super()._init_weights(module)

    # --------------------------------------------------------------------------------------------- audio
    def get_audio_features(self, input_features: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``(A, F, 128)`` fbanks (or a list of ``(F_i, 128)`` / ``(1, F_i, 128)``) -> one ``(tokens_i, D_llm)`` per
        clip. Clips of equal length run through BEATs together (no padding mask: the original pads the waveform to
        30 s and passes an all-valid mask)."""
        if isinstance(input_features, torch.Tensor):
            if input_features.ndim != 3 or input_features.shape[-1] != NUM_MEL_BINS:
                raise ValueError(
                    f"input_features must be (num_audio, fbank_frames, {NUM_MEL_BINS}) log-mel fbanks, got "
                    f"{tuple(input_features.shape)}; build them with the model's processor"
                )
            clips = list(input_features.unbind(0))
        else:
            clips = [c[0] if c.ndim == 3 and c.shape[0] == 1 else c for c in input_features]
        lengths = [c.shape[0] for c in clips]
        out: list[torch.Tensor | None] = [None] * len(clips)
        for n in sorted(set(lengths)):
            idx = [i for i, m in enumerate(lengths) if m == n]
            fbank = self._cast_for(self.audio_tower, torch.stack([clips[i] for i in idx]))
            feats = self.audio_tower(fbank)
            tokens = self.audio_projector(self._cast_for(self.audio_projector, feats))
            for i, tok in zip(idx, tokens):
                out[i] = tok
        return out  # type: ignore[return-value]

    def dummy_media_inputs(self, modality: str) -> dict[str, Any]:
        if modality != "audio":
            return super().dummy_media_inputs(modality)
        p = next(self.audio_tower.parameters())
        frames = self.config.audio_config.input_patch_size
        return {"input_features": torch.zeros(1, frames, NUM_MEL_BINS, device=p.device, dtype=p.dtype)}


class VideoLLMVideoLlama2AVForConditionalGeneration(VideoLLMVideoLlama2AVModel, GenerationMixin):
    """VideoLLaMA 2.1-AV with its LM head: loss, logits, ``generate``."""

    with_lm_head = True
