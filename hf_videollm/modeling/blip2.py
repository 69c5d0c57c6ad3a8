"""BLIP-2 and InstructBLIP (salesforce/LAVIS): EVA ViT-g -> ``ln_vision`` -> Q-Former -> Linear -> OPT / Flan-T5 /
Vicuna.

Reads top to bottom: config -> encoder (transformers' ``Blip2VisionModel`` run as LAVIS runs EVA ViT-g) -> bridge
(:class:`~.qformer.QFormerBridge`: learned queries + Q-Former; InstructBLIP's reads the instruction too) ->
projection (``nn.Linear``) -> merge (shared core) -> LLM (causal OPT / Vicuna, or encoder-decoder Flan-T5).

* Vision: LAVIS keeps every EVA output token, CLS included, of the second-to-last block of the released 40 (the last
  is dropped at conversion: ``num_hidden_layers`` = blocks used), then ``ln_vision`` -- a LayerNorm with eps 1e-5
  (``ln_vision_eps``), not the 1e-6 of the ViT's own norms (transformers' port uses 1e-6 there; a checkpoint read
  from transformers' layout keeps its 1e-6 so it reproduces transformers).
* ``num_query_tokens`` tokens per image; a video is every frame through ViT + Q-Former (InstructBLIP: with the
  instruction), the frames' tokens concatenated in time order -- any frame count.
* Placement: media tokens go before the text, BOS included (``placement="prefix"``); the processor emits the
  placeholder run first. Encoder-decoder LLMs get them at the start of the encoder input.
* One class body serves both LLM kinds: the instance's ``input_spec`` is the causal or the seq2seq declaration,
  chosen from ``text_config`` (T5 -> seq2seq), and the processor carries the same object.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, GenerationMixin, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.blip_2.modeling_blip_2 import Blip2VisionModel

from .base import VideoLLMPreTrainedModel
from .contract import InputSpec, Modality, ModelInputs
from .qformer import QFORMER_BERT_BASE, QFormerBridge

__all__ = [
    "VideoLLMBlip2Config",
    "VideoLLMBlip2ForConditionalGeneration",
    "VideoLLMBlip2Model",
    "VideoLLMInstructBlipConfig",
    "VideoLLMInstructBlipForConditionalGeneration",
    "VideoLLMInstructBlipModel",
    "blip2_input_spec",
    "EVA_VIT_G",
]

#: EVA ViT-g/14 as BLIP-2 uses it (39 of the 40 released blocks; MLP int(1408 * 4.3637) = 6144).
EVA_VIT_G = dict(
    hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16, image_size=224,
    patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True, attention_dropout=0.0,
    initializer_range=0.02,  # transformers' Blip2VisionConfig default is 1e-10 (a fresh tower would see nothing)
)
OPT_2_7B = dict(
    vocab_size=50272, hidden_size=2560, ffn_dim=10240, num_hidden_layers=32, num_attention_heads=32,
    word_embed_proj_dim=2560, max_position_embeddings=2048, bos_token_id=2, eos_token_id=2, pad_token_id=1,
)

# ------------------------------------------------------------------------------------------------------- inputs
_MODALITIES = (
    Modality("image", ("vision_tower", "qformer", "multi_modal_projector")),
    Modality("video", ("vision_tower", "qformer", "multi_modal_projector")),
)
_PIXELS = (
    InputSpec("pixel_values", modality="image"),  # (images, 3, S, S)
    InputSpec("pixel_values_videos", modality="video"),  # (videos, frames, 3, S, S) or a list of (T_i, 3, S, S)
)
# InstructBLIP: the instruction, tokenized by the Q-Former's tokenizer, once per media item (its sample's prompt).
_QFORMER_TEXT = (
    InputSpec("qformer_input_ids", modality="image", text=True, collate="pad"),
    InputSpec("qformer_attention_mask", modality="image", text=True, collate="pad"),
    InputSpec("qformer_video_input_ids", modality="video", text=True, collate="pad"),
    InputSpec("qformer_video_attention_mask", modality="video", text=True, collate="pad"),
)
_SPECS = {
    (text, lm): ModelInputs(_MODALITIES, _PIXELS + (_QFORMER_TEXT if text else ()), lm=lm, placement="prefix")
    for text in (False, True)
    for lm in ("causal", "seq2seq")
}


def blip2_input_spec(qformer_text_input: bool, lm: str) -> ModelInputs:
    """The declaration of a BLIP-2 (``qformer_text_input=False``) / InstructBLIP model with a causal or seq2seq LLM
    (one object per combination: model and processor share it)."""
    return _SPECS[(bool(qformer_text_input), lm)]


def _lm_kind(text_config) -> str:
    return "seq2seq" if getattr(text_config, "is_encoder_decoder", False) else "causal"


# ------------------------------------------------------------------------------------------------------- config
class VideoLLMBlip2Config(PreTrainedConfig):
    r"""BLIP-2 configuration.

    Args:
        vision_config: ``Blip2VisionConfig`` of the EVA ViT (default EVA ViT-g/14 at 224 px, 39 blocks).
        qformer_config: Q-Former config (default bert-base sizes, ``encoder_hidden_size`` = ViT width).
        text_config: the LLM (default OPT-2.7B; ``t5`` for Flan-T5, which makes the model encoder-decoder).
        num_query_tokens: learned queries = visual tokens per image / per video frame (32).
        ln_vision_eps: epsilon of ``ln_vision`` (LAVIS: 1e-5, PyTorch's default; transformers' port: 1e-6).
        image_token_id / video_token_id: placeholder ids (may lie outside the LLM vocabulary; never embedded).
    """

    model_type = "videollm_blip2"
    qformer_model_type = "blip_2_qformer"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(AutoConfig, model_type="blip_2_vision_model", init_kwargs=EVA_VIT_G),
        "qformer_config": SubConfigSpec(
            AutoConfig, model_type="blip_2_qformer", init_kwargs={**QFORMER_BERT_BASE, "use_qformer_text_input": False}
        ),
        "text_config": SubConfigSpec(AutoConfig, model_type="opt", init_kwargs=OPT_2_7B),
    }

    vision_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    num_query_tokens: int = 32
    ln_vision_eps: float = 1e-5
    image_token_id: int = 50265
    video_token_id: int | None = 50266
    image_token: str = "<image>"
    video_token: str = "<video>"
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.num_query_tokens < 1:
            raise ValueError(f"num_query_tokens must be >= 1, got {self.num_query_tokens}")
        if self.qformer_config.model_type != self.qformer_model_type:
            raise ValueError(
                f"{type(self).__name__} needs a {self.qformer_model_type!r} Q-Former config, got "
                f"{self.qformer_config.model_type!r}"
            )
        if self.qformer_config.encoder_hidden_size != self.vision_config.hidden_size:
            raise ValueError(
                f"qformer_config.encoder_hidden_size ({self.qformer_config.encoder_hidden_size}) must equal the ViT "
                f"width vision_config.hidden_size ({self.vision_config.hidden_size}): the queries cross-attend its tokens"
            )

    @property
    def image_seq_length(self) -> int:
        return self.num_query_tokens

    def video_seq_length(self, frames: int) -> int:
        return frames * self.num_query_tokens


class VideoLLMInstructBlipConfig(VideoLLMBlip2Config):
    r"""InstructBLIP configuration: as BLIP-2, with a Q-Former that reads the instruction (``qformer_config`` of
    type ``instructblip_qformer``: word + position embeddings and the text FFN; vocabulary bert-base-uncased +
    ``[DEC]`` = 30523). Default LLM: Vicuna-7B (LLaMA, vocabulary 32001 with LAVIS' ``[PAD]``)."""

    model_type = "videollm_instructblip"
    qformer_model_type = "instructblip_qformer"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(AutoConfig, model_type="blip_2_vision_model", init_kwargs=EVA_VIT_G),
        "qformer_config": SubConfigSpec(
            AutoConfig, model_type="instructblip_qformer", init_kwargs={**QFORMER_BERT_BASE, "vocab_size": 30523}
        ),
        "text_config": SubConfigSpec(AutoConfig, model_type="llama", init_kwargs={"vocab_size": 32001}),
    }
    image_token_id: int = 32001
    video_token_id: int | None = 32002


# ------------------------------------------------------------------------------------------------------- model
class _Blip2Body(VideoLLMPreTrainedModel):
    """BLIP-2 / InstructBLIP: ``vision_tower`` (EVA ViT + ``ln_vision``), ``qformer`` (queries + Q-Former),
    ``multi_modal_projector`` (Linear), ``language_model``."""

    input_spec = blip2_input_spec(False, "causal")  # the class default; each instance takes its own (see __init__)
    _parts = {
        "vision_tower": ("vision_tower",),
        "ln_vision": ("vision_tower.post_layernorm",),  # LAVIS trains it with the Q-Former (the ViT stays frozen)
        "qformer": ("qformer",),
        "connector": ("multi_modal_projector",),
        "language_model": ("language_model",),
    }
    _supports_flex_attn = False

    def __init__(self, config: VideoLLMBlip2Config):
        super().__init__(config)
        text_input = config.qformer_config.model_type == "instructblip_qformer"
        self.input_spec = blip2_input_spec(text_input, _lm_kind(config.text_config))
        self.vision_tower = Blip2VisionModel(config.vision_config)
        # LAVIS ``ln_vision``: its own epsilon (1e-5), not the ViT's 1e-6 (transformers' post_layernorm).
        self.vision_tower.post_layernorm = nn.LayerNorm(config.vision_config.hidden_size, eps=config.ln_vision_eps)
        self.qformer = QFormerBridge(config.qformer_config, config.num_query_tokens)
        self.multi_modal_projector = nn.Linear(config.qformer_config.hidden_size, config.text_config.hidden_size)
        self.language_model = self.build_language_model(config.text_config)
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        if not cls.with_lm_head and "key_mapping" not in kwargs:
            config = kwargs.get("config")
            if not isinstance(config, cls.config_class):
                config = cls.config_class.from_pretrained(pretrained_model_name_or_path)
            if _lm_kind(config.text_config) == "seq2seq":
                kwargs["key_mapping"] = {}  # T5Model and T5ForConditionalGeneration share their key names
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, QFormerBridge):
            module.init_queries(self.config.qformer_config.initializer_range)
            return
        super()._init_weights(module)

    # --------------------------------------------------------------------------------------------- encoders
    def get_vision_features(self, pixel_values: torch.Tensor, output_hidden_states: bool = False):
        """``(N, 3, S, S)`` -> ``ln_vision(EVA(x))`` ``(N, 1 + (S/14)^2, C_vis)`` (CLS kept), the Q-Former's
        cross-attention input. ``output_hidden_states``: also the ViT output before ``ln_vision``."""
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be (num_images, 3, H, W), got shape {tuple(pixel_values.shape)}; "
                "pass videos as pixel_values_videos (num_videos, frames, 3, H, W)"
            )
        out = self.vision_tower(self._cast_for(self.vision_tower, pixel_values), output_hidden_states=output_hidden_states)
        if output_hidden_states:
            return out.last_hidden_state, out.hidden_states[-1]
        return out.last_hidden_state

    def get_qformer_features(
        self, pixel_values: torch.Tensor, qformer_input_ids=None, qformer_attention_mask=None,
    ) -> torch.Tensor:
        """The Q-Former's last hidden state over ``[queries; instruction]`` for ``(N, 3, S, S)`` images."""
        image_embeds = self.get_vision_features(pixel_values)
        self._check_text(qformer_input_ids, pixel_values.shape[0])
        return self.qformer(image_embeds, input_ids=qformer_input_ids, attention_mask=qformer_attention_mask).last_hidden_state

    def _check_text(self, ids, items: int) -> None:
        if self.qformer.text_input and ids is None:
            raise ValueError(
                "InstructBLIP's Q-Former reads the instruction: pass qformer_input_ids (and qformer_attention_mask), "
                "one row per image / video, as the processor emits them"
            )
        if ids is not None and ids.shape[0] != items:
            raise ValueError(f"qformer input ids have {ids.shape[0]} rows for {items} media items; give one row per item")

    def _project(self, query_output: torch.Tensor) -> torch.Tensor:
        return self.multi_modal_projector(self._cast_for(self.multi_modal_projector, query_output))

    def get_image_features(self, pixel_values, qformer_input_ids=None, qformer_attention_mask=None) -> torch.Tensor:
        """``(N, 3, S, S)`` -> ``(N, num_query_tokens, D_llm)``."""
        hidden = self.get_qformer_features(pixel_values, qformer_input_ids, qformer_attention_mask)
        return self._project(hidden[:, : self.config.num_query_tokens])

    def get_video_features(
        self, pixel_values_videos, qformer_video_input_ids=None, qformer_video_attention_mask=None,
    ) -> list[torch.Tensor]:
        """``(V, T, 3, S, S)`` (or a list of ``(T_i, 3, S, S)``) -> one ``(T_i * num_query_tokens, D_llm)`` per
        video: every frame through ViT + Q-Former (with its video's instruction), frames in time order."""
        if isinstance(pixel_values_videos, (list, tuple)):
            videos = list(pixel_values_videos)
        elif pixel_values_videos.ndim == 5:
            videos = list(pixel_values_videos.unbind(0))
        else:
            raise ValueError(
                f"pixel_values_videos must be (num_videos, frames, 3, H, W), got {tuple(pixel_values_videos.shape)}"
            )
        lengths = [v.shape[0] for v in videos]
        ids = mask = None
        if qformer_video_input_ids is not None:
            self._check_text(qformer_video_input_ids, len(videos))
            ids = torch.as_tensor(qformer_video_input_ids).repeat_interleave(torch.tensor(lengths, device=qformer_video_input_ids.device), dim=0)
            if qformer_video_attention_mask is not None:
                mask = qformer_video_attention_mask.repeat_interleave(torch.tensor(lengths, device=qformer_video_attention_mask.device), dim=0)
        tokens = self.get_image_features(torch.cat(videos, dim=0), ids, mask)
        return [t.reshape(-1, t.shape[-1]) for t in tokens.split(lengths, dim=0)]

    def dummy_media_inputs(self, modality: str) -> dict[str, Any]:
        p = self.vision_tower.embeddings.patch_embedding.weight
        size = self.config.vision_config.image_size
        pixels = torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype if p.is_floating_point() else torch.float32)
        text = {}
        if self.qformer.text_input:
            ids = torch.zeros(1, 1, dtype=torch.long, device=p.device)
            text = {"qformer_input_ids": ids, "qformer_attention_mask": torch.ones_like(ids)}
        if modality == "image":
            return {"pixel_values": pixels, **text}
        return {"pixel_values_videos": pixels[None], **{k.replace("qformer_", "qformer_video_"): v for k, v in text.items()}}


class VideoLLMBlip2Model(_Blip2Body):
    """BLIP-2 without the LM head (``AutoModel``)."""

    config_class = VideoLLMBlip2Config
    with_lm_head = False


class VideoLLMBlip2ForConditionalGeneration(VideoLLMBlip2Model, GenerationMixin):
    """BLIP-2 with its LM head: loss, logits, ``generate`` (OPT: causal; Flan-T5: encoder-decoder)."""

    with_lm_head = True


class VideoLLMInstructBlipModel(_Blip2Body):
    """InstructBLIP without the LM head (``AutoModel``)."""

    config_class = VideoLLMInstructBlipConfig
    input_spec = blip2_input_spec(True, "causal")
    with_lm_head = False


class VideoLLMInstructBlipForConditionalGeneration(VideoLLMInstructBlipModel, GenerationMixin):
    """InstructBLIP with its LM head: loss, logits, ``generate`` (Vicuna: causal; Flan-T5: encoder-decoder)."""

    with_lm_head = True
