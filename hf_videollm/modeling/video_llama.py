"""Video-LLaMA (DAMO-NLP-SG/Video-LLaMA, 2023; the first one, not VideoLLaMA 2): BLIP-2's frozen image stack per
frame -> frame position embedding -> video Q-Former -> Linear -> LLaMA / Vicuna; optionally an ImageBind audio branch.

Reads top to bottom: config -> encoders (EVA ViT-g + ``ln_vision`` + image Q-Former, composed exactly as
:mod:`.blip2`; ImageBind-huge's audio path, :class:`ImageBindAudioEncoder`) -> connectors (video / audio Q-Former:
:class:`~.qformer.QFormerBridge` over transformers' ``Blip2QFormerModel``; ``Linear`` into the LLM) -> merge (shared
core) -> LLM.

* Vision-language branch, per video of ``T`` frames: every frame through EVA ViT (CLS kept) + ``ln_vision`` + the
  image Q-Former (``num_query_tokens`` queries, frozen, from BLIP-2's release); ``video_frame_position_embedding[t]``
  added to all queries of frame ``t``; the ``T * Q`` vectors are the cross-attention input of the 2-layer video
  Q-Former (cross-attention in every layer, ``num_video_query_tokens`` = 32 queries) -> ``multi_modal_projector``
  (the original ``llama_proj``). 32 tokens per video whatever ``T`` (``T <= max_frame_pos`` = 32). An image is a
  1-frame video (position 0), as the original's ``Chat.upload_img``.
* Audio-language branch (``audio_config`` set; the original ``equip_audio_branch``): 8 two-second clips per audio,
  each a ``(1, 128, 204)`` Kaldi fbank, through ImageBind's audio encoder (its normalised x20 embedding per clip,
  ``out_embed_dim`` = 1024) + ``audio_position_embedding[clip]`` -> audio Q-Former (2 layers, 8 queries) ->
  ``audio_projector`` (``audio_llama_proj``): 8 tokens per audio.
* The official AV demo puts the audio tokens and the video tokens in two separate slots of the prompt; here each has
  its own placeholder (``audio_token`` / ``video_token``), in the order the prompt gives them.
* The LLM keeps its vocabulary (the original never resizes it): placeholder ids lie past it and are never embedded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, GenerationMixin, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.models.blip_2.modeling_blip_2 import Blip2VisionModel

from .base import VideoLLMPreTrainedModel
from .blip2 import EVA_VIT_G
from .contract import InputSpec, Modality, ModelInputs
from .qformer import QFORMER_BERT_BASE, QFormerBridge

__all__ = [
    "ImageBindAudioEncoder",
    "VideoLLMImageBindAudioConfig",
    "VideoLLMVideoLlamaConfig",
    "VideoLLMVideoLlamaForConditionalGeneration",
    "VideoLLMVideoLlamaModel",
    "video_llama_input_spec",
]

#: The video / audio Q-Former: bert-base sizes, 2 layers, cross-attention in every layer (``init_video_Qformer``).
VIDEO_QFORMER = {**QFORMER_BERT_BASE, "num_hidden_layers": 2, "cross_attention_frequency": 1,
                 "encoder_hidden_size": 768, "use_qformer_text_input": False}
VICUNA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6, pad_token_id=0,
                 bos_token_id=1, eos_token_id=2)

# ------------------------------------------------------------------------------------------------------- inputs
_VISION = ("vision_tower", "qformer", "video_qformer", "video_frame_position_embedding", "multi_modal_projector")
_VL = ModelInputs(
    modalities=(Modality("image", _VISION), Modality("video", _VISION)),
    inputs=(
        InputSpec("pixel_values", modality="image"),  # (images, 3, S, S)
        InputSpec("pixel_values_videos", modality="video"),  # (videos, frames, 3, S, S) or a list of (T_i, 3, S, S)
    ),
)
_AV = ModelInputs(
    modalities=(*_VL.modalities,
                Modality("audio", ("audio_tower", "audio_position_embedding", "audio_qformer", "audio_projector"))),
    inputs=(*_VL.inputs, InputSpec("input_features", modality="audio")),  # (audios, clips, 1, 128, 204)
)


def video_llama_input_spec(audio: bool) -> ModelInputs:
    """The declaration of a vision-language (``audio=False``) or audio-visual Video-LLaMA (model and processor
    share the object)."""
    return _AV if audio else _VL


# ------------------------------------------------------------------------------------------------------- configs
class VideoLLMImageBindAudioConfig(PreTrainedConfig):
    """Sizes of ImageBind's audio path (defaults: ImageBind-huge, ``imagebind_huge()``): a ``(1, num_mel_bins,
    target_len)`` fbank -> Conv2d patches (``kernel_size`` / ``stride``, no bias) + LayerNorm -> CLS + learned
    positions -> ``num_blocks`` pre-norm blocks (``nn.MultiheadAttention`` with ``add_bias_kv``) -> LayerNorm(eps
    1e-6) on CLS -> Linear to ``out_embed_dim`` (no bias) -> L2 normalise x ``logit_scale``."""

    model_type = "videollm_imagebind_audio"

    embed_dim: int = 768
    num_blocks: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    kernel_size: int = 16
    stride: int = 10
    num_mel_bins: int = 128
    target_len: int = 204
    out_embed_dim: int = 1024
    logit_scale: float = 20.0
    drop_path: float = 0.1  # training-time stochastic depth of the original; the encoder is frozen (eval) here

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        self.grid()  # validates the fbank size against the patch stem

    def grid(self) -> tuple[int, int]:
        """Patch grid of one ``(num_mel_bins, target_len)`` fbank (ImageBind-huge: 12 x 19 = 228 patches)."""
        h = (self.num_mel_bins - self.kernel_size) // self.stride + 1
        w = (self.target_len - self.kernel_size) // self.stride + 1
        if h < 1 or w < 1:
            raise ValueError(
                f"a ({self.num_mel_bins}, {self.target_len}) fbank is smaller than one {self.kernel_size}-wide patch"
            )
        return h, w

    @property
    def hidden_size(self) -> int:
        return self.embed_dim


class VideoLLMVideoLlamaConfig(PreTrainedConfig):
    r"""Video-LLaMA configuration.

    Args:
        vision_config: EVA ViT-g (``Blip2VisionConfig``; 39 blocks used, 224 px).
        qformer_config: the frozen image Q-Former of BLIP-2 (query-only, bert-base, cross-attention every 2nd layer).
        video_qformer_config: the video Q-Former (query-only, 2 layers, cross-attention in each, ``encoder_hidden_size``
            = the image Q-Former's width).
        text_config: the LLM (default Vicuna-7B; Llama-2-Chat for the "Video-LLaMA-2" releases).
        audio_config: ImageBind's audio path (:class:`VideoLLMImageBindAudioConfig`; ``{}`` = ImageBind-huge), or
            ``None`` for the vision-language model.
        audio_qformer_config: the audio Q-Former (default with ``audio_config``: the video one's recipe,
            ``encoder_hidden_size`` = ``out_embed_dim``).
        num_query_tokens / num_video_query_tokens / num_audio_query_tokens: 32 / 32 / 8.
        max_frame_pos: frame positions of ``video_frame_position_embedding`` (frames per video at most; 32).
        num_audio_clips: positions of ``audio_position_embedding`` (clips per audio at most; 8).
        ln_vision_eps: epsilon of ``ln_vision`` (LAVIS: 1e-5).
        image_token_id / video_token_id / audio_token_id: placeholder ids (never embedded).
    """

    model_type = "videollm_video_llama"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(AutoConfig, model_type="blip_2_vision_model", init_kwargs=EVA_VIT_G),
        "qformer_config": SubConfigSpec(
            AutoConfig, model_type="blip_2_qformer", init_kwargs={**QFORMER_BERT_BASE, "use_qformer_text_input": False}
        ),
        "video_qformer_config": SubConfigSpec(AutoConfig, model_type="blip_2_qformer", init_kwargs=VIDEO_QFORMER),
        "text_config": SubConfigSpec(AutoConfig, model_type="llama", init_kwargs=VICUNA_7B),
        "audio_config": SubConfigSpec(VideoLLMImageBindAudioConfig, optional=True),
        "audio_qformer_config": SubConfigSpec(
            AutoConfig, model_type="blip_2_qformer", init_kwargs={**VIDEO_QFORMER, "encoder_hidden_size": 1024},
            optional=True,
        ),
    }

    vision_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    video_qformer_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    audio_config: dict | PreTrainedConfig | None = None
    audio_qformer_config: dict | PreTrainedConfig | None = None
    num_query_tokens: int = 32
    num_video_query_tokens: int = 32
    num_audio_query_tokens: int = 8
    max_frame_pos: int = 32
    num_audio_clips: int = 8
    ln_vision_eps: float = 1e-5
    image_token_id: int = 32002
    video_token_id: int | None = 32000
    audio_token_id: int | None = 32001
    image_token: str = "<image>"
    video_token: str = "<ImageHere>"
    audio_token: str = "<AudioHere>"
    initializer_range: float = 0.02
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name in ("num_query_tokens", "num_video_query_tokens", "num_audio_query_tokens", "max_frame_pos",
                     "num_audio_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        q, vq = self.qformer_config, self.video_qformer_config
        if q.encoder_hidden_size != self.vision_config.hidden_size:
            raise ValueError(
                f"qformer_config.encoder_hidden_size ({q.encoder_hidden_size}) must equal the ViT width "
                f"vision_config.hidden_size ({self.vision_config.hidden_size})"
            )
        if vq.encoder_hidden_size != q.hidden_size:
            raise ValueError(
                f"video_qformer_config.encoder_hidden_size ({vq.encoder_hidden_size}) must equal the image Q-Former "
                f"width qformer_config.hidden_size ({q.hidden_size}): the video queries cross-attend its outputs"
            )
        if self.audio_config is not None and self.audio_qformer_config is None:
            # the original's audio Q-Former: the video one's recipe, cross-attending ImageBind's embeddings
            from transformers import Blip2QFormerConfig

            self.audio_qformer_config = Blip2QFormerConfig(
                **{**VIDEO_QFORMER, "encoder_hidden_size": self.audio_config.out_embed_dim}
            )
        if self.audio_config is None and self.audio_qformer_config is not None:
            raise ValueError("audio_qformer_config needs audio_config (the ImageBind audio encoder it reads); set both "
                             "for an audio-visual model, neither for a vision-language one")
        if self.audio_config is not None and self.audio_qformer_config.encoder_hidden_size != self.audio_config.out_embed_dim:
            raise ValueError(
                f"audio_qformer_config.encoder_hidden_size ({self.audio_qformer_config.encoder_hidden_size}) must equal "
                f"audio_config.out_embed_dim ({self.audio_config.out_embed_dim})"
            )

    @property
    def has_audio(self) -> bool:
        return self.audio_config is not None

    @property
    def image_seq_length(self) -> int:
        return self.num_video_query_tokens

    def video_seq_length(self, frames: int) -> int:
        return self.num_video_query_tokens

    def audio_seq_length(self, clips: int | None = None) -> int:
        return self.num_audio_query_tokens


# ------------------------------------------------------------------------------------------------------- audio encoder
class _AudioBlock(nn.Module):
    """ImageBind ``BlockWithMasking`` (no layer scale): ``x + attn(norm_1(x))``, ``x + mlp(norm_2(x))``."""

    def __init__(self, config: VideoLLMImageBindAudioConfig):
        super().__init__()
        d = config.embed_dim
        self.norm_1 = nn.LayerNorm(d, eps=1e-6)
        self.attn = nn.MultiheadAttention(d, config.num_heads, bias=True, add_bias_kv=True, batch_first=True)
        self.norm_2 = nn.LayerNorm(d, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(d, int(d * config.mlp_ratio))
        self.mlp.fc2 = nn.Linear(int(d * config.mlp_ratio), d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm_2(x))))


class ImageBindAudioEncoder(nn.Module):
    """ImageBind's audio path (``modality_preprocessors/trunks/heads/postprocessors.audio``), under our names:
    ``stem`` (Conv2d + LayerNorm), ``cls_token``, ``pos_embed``, ``blocks``, ``head_norm``, ``head_proj``,
    ``log_logit_scale`` (a buffer, as the original's non-learnable ``LearnableLogitScaling``)."""

    def __init__(self, config: VideoLLMImageBindAudioConfig):
        super().__init__()
        self.config = config
        d = config.embed_dim
        h, w = config.grid()
        self.stem = nn.Module()
        self.stem.proj = nn.Conv2d(1, d, kernel_size=config.kernel_size, stride=config.stride, bias=False)
        self.stem.norm = nn.LayerNorm(d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + h * w, d))
        self.blocks = nn.ModuleList(_AudioBlock(config) for _ in range(config.num_blocks))
        self.head_norm = nn.LayerNorm(d, eps=1e-6)
        self.head_proj = nn.Linear(d, config.out_embed_dim, bias=False)
        self.register_buffer("log_logit_scale", torch.tensor(math.log(config.logit_scale)))

    def forward(self, fbank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 1, num_mel_bins, target_len)`` -> (CLS after the head LayerNorm ``(N, embed_dim)``, the ImageBind
        embedding ``(N, out_embed_dim)``: projected, L2-normalised, x ``exp(log_logit_scale)``)."""
        cfg = self.config
        if fbank.ndim != 4 or tuple(fbank.shape[1:]) != (1, cfg.num_mel_bins, cfg.target_len):
            raise ValueError(
                f"ImageBind audio input must be (clips, 1, {cfg.num_mel_bins}, {cfg.target_len}) fbanks, got "
                f"{tuple(fbank.shape)}; build them with the model's processor (8 clips of 2 s, 128 mel bins, 204 frames)"
            )
        x = self.stem.norm(self.stem.proj(fbank).flatten(2).transpose(1, 2))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        cls = self.head_norm(x)[:, 0]
        emb = F.normalize(self.head_proj(cls), dim=-1, p=2)
        return cls, torch.clip(self.log_logit_scale.exp(), max=100) * emb

    def init_weights(self, std: float) -> None:
        from transformers import initialization as init

        init.normal_(self.cls_token, std=std)
        init.normal_(self.pos_embed, std=std)
        init.copy_(self.log_logit_scale, torch.tensor(math.log(self.config.logit_scale)))
        for block in self.blocks:
            init.xavier_uniform_(block.attn.in_proj_weight)
            init.zeros_(block.attn.in_proj_bias)
            init.normal_(block.attn.bias_k, std=std)
            init.normal_(block.attn.bias_v, std=std)


# ------------------------------------------------------------------------------------------------------- model
class VideoLLMVideoLlamaModel(VideoLLMPreTrainedModel):
    """Video-LLaMA without the LM head (``AutoModel``)."""

    config_class = VideoLLMVideoLlamaConfig
    with_lm_head = False
    input_spec = _AV  # the class default (the family's inputs); each instance takes its own (see __init__)
    _parts = {
        "vision_tower": ("vision_tower",),
        "ln_vision": ("vision_tower.post_layernorm",),
        "qformer": ("qformer",),
        "video_qformer": ("video_qformer", "video_frame_position_embedding"),
        "connector": ("multi_modal_projector",),
        "audio_tower": ("audio_tower",),
        "audio_qformer": ("audio_qformer", "audio_position_embedding"),
        "audio_projector": ("audio_projector",),
        "language_model": ("language_model",),
    }
    _supports_flex_attn = False
    _no_split_modules = ["_AudioBlock"]  # with the towers' and the LLM's own (collected by transformers)

    def __init__(self, config: VideoLLMVideoLlamaConfig):
        super().__init__(config)
        self.input_spec = video_llama_input_spec(config.has_audio)
        self.vision_tower = Blip2VisionModel(config.vision_config)
        # LAVIS ``ln_vision``: its own epsilon (1e-5), not the ViT's 1e-6.
        self.vision_tower.post_layernorm = nn.LayerNorm(config.vision_config.hidden_size, eps=config.ln_vision_eps)
        self.qformer = QFormerBridge(config.qformer_config, config.num_query_tokens)
        self.video_frame_position_embedding = nn.Embedding(config.max_frame_pos, config.qformer_config.hidden_size)
        self.video_qformer = QFormerBridge(config.video_qformer_config, config.num_video_query_tokens)
        llm_width = config.text_config.hidden_size
        self.multi_modal_projector = nn.Linear(config.video_qformer_config.hidden_size, llm_width)
        if config.has_audio:
            self.audio_tower = ImageBindAudioEncoder(config.audio_config)
            self.audio_position_embedding = nn.Embedding(config.num_audio_clips, config.audio_config.out_embed_dim)
            self.audio_qformer = QFormerBridge(config.audio_qformer_config, config.num_audio_query_tokens)
            self.audio_projector = nn.Linear(config.audio_qformer_config.hidden_size, llm_width)
        self.language_model = self.build_language_model(config.text_config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, QFormerBridge):
            module.init_queries(module.config.initializer_range)
            return
        if isinstance(module, ImageBindAudioEncoder):
            module.init_weights(self.config.initializer_range)
            return
        super()._init_weights(module)

    #: encoders the original keeps in eval mode while they are frozen (LAVIS' ``disabled_train`` on the EVA ViT and
    #: the image Q-Former: no dropout in the frozen Q-Former during training); ImageBind likewise here
    _frozen_eval = ("vision_tower", "qformer", "audio_tower")

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for name in self._frozen_eval:
                module = getattr(self, name, None)
                if module is not None and not any(p.requires_grad for p in module.parameters()):
                    module.eval()
        return self

    # --------------------------------------------------------------------------------------------- vision
    def get_vision_features(self, pixel_values: torch.Tensor, output_hidden_states: bool = False):
        """``(N, 3, S, S)`` frames -> ``ln_vision(EVA(x))`` ``(N, 1 + (S/14)^2, C_vis)``; with
        ``output_hidden_states`` also the ViT output before ``ln_vision``."""
        if pixel_values.ndim != 4:
            raise ValueError(f"frames must be (N, 3, H, W), got shape {tuple(pixel_values.shape)}")
        out = self.vision_tower(self._cast_for(self.vision_tower, pixel_values), output_hidden_states=output_hidden_states)
        if output_hidden_states:
            return out.last_hidden_state, out.hidden_states[-1]
        return out.last_hidden_state

    def get_frame_queries(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The image Q-Former's query outputs per frame, ``(N, num_query_tokens, H_q)``."""
        return self.qformer.query_output(self.get_vision_features(pixel_values))

    def video_qformer_inputs(self, frame_queries: torch.Tensor) -> torch.Tensor:
        """``(V, T, Q, H_q)`` frame queries -> the video Q-Former's cross-attention input ``(V, T * Q, H_q)``:
        ``video_frame_position_embedding[t]`` added to every query of frame ``t``."""
        t = frame_queries.shape[1]
        if t > self.config.max_frame_pos:
            raise ValueError(
                f"a video has {t} frames but the model has {self.config.max_frame_pos} frame positions "
                "(max_frame_pos); sample at most that many frames"
            )
        ids = torch.arange(t, device=self.video_frame_position_embedding.weight.device)
        pos = self.video_frame_position_embedding(ids).to(device=frame_queries.device, dtype=frame_queries.dtype)
        return (frame_queries + pos[None, :, None]).flatten(1, 2)

    def _project(self, module: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return module(self._cast_for(module, hidden))

    def _encode_videos(self, videos: list[torch.Tensor]) -> list[torch.Tensor]:
        lengths = [v.shape[0] for v in videos]
        for n in lengths:
            if n < 1:
                raise ValueError("a video has no frames")
        frames = videos[0] if len(videos) == 1 else torch.cat(videos, dim=0)
        queries = self.get_frame_queries(frames).split(lengths, dim=0)
        out: list[torch.Tensor | None] = [None] * len(videos)
        for t in sorted(set(lengths)):  # the video Q-Former mixes a video's frames: one call per frame count
            idx = [i for i, n in enumerate(lengths) if n == t]
            enc = self.video_qformer_inputs(torch.stack([queries[i] for i in idx]))
            hidden = self.video_qformer.query_output(enc)
            tokens = self._project(self.multi_modal_projector, hidden)
            for i, tok in zip(idx, tokens):
                out[i] = tok
        return out  # type: ignore[return-value]

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` images -> ``(N, num_video_query_tokens, D_llm)``: each image is a 1-frame video."""
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be (num_images, 3, H, W), got shape {tuple(pixel_values.shape)}; "
                "pass videos as pixel_values_videos (num_videos, frames, 3, H, W)"
            )
        return torch.stack(self._encode_videos(list(pixel_values[:, None].unbind(0))))

    def get_video_features(self, pixel_values_videos: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``(V, T, 3, S, S)`` (or a list of ``(T_i, 3, S, S)``) -> one ``(num_video_query_tokens, D_llm)`` per video."""
        if isinstance(pixel_values_videos, (list, tuple)):
            videos = list(pixel_values_videos)
        elif pixel_values_videos.ndim == 5:
            videos = list(pixel_values_videos.unbind(0))
        else:
            raise ValueError(
                f"pixel_values_videos must be (num_videos, frames, 3, H, W), got {tuple(pixel_values_videos.shape)} "
                "(the original's (B, 3, T, H, W) layout is permuted by the processor)"
            )
        for v in videos:
            if v.ndim != 4 or v.shape[1] != 3:
                raise ValueError(f"each video must be (frames, 3, H, W), got {tuple(v.shape)}")
        return self._encode_videos(videos)

    # --------------------------------------------------------------------------------------------- audio
    def _audio_clips(self, input_features) -> torch.Tensor:
        if not self.config.has_audio:
            raise ValueError("this Video-LLaMA has no audio branch (audio_config is None): convert an AV release")
        x = torch.stack(list(input_features)) if isinstance(input_features, (list, tuple)) else input_features
        if x.ndim == 4:
            x = x[:, :, None]
        a = self.config.audio_config
        if x.ndim != 5 or tuple(x.shape[2:]) != (1, a.num_mel_bins, a.target_len):
            raise ValueError(
                f"input_features must be (num_audio, clips, 1, {a.num_mel_bins}, {a.target_len}) fbanks, got "
                f"{tuple(x.shape)}; build them with the model's processor"
            )
        if x.shape[1] > self.config.num_audio_clips:
            raise ValueError(
                f"an audio has {x.shape[1]} clips but the model has {self.config.num_audio_clips} clip positions "
                "(num_audio_clips)"
            )
        return x

    def get_audio_embeds(self, input_features) -> tuple[torch.Tensor, torch.Tensor]:
        """ImageBind per clip: (CLS after the head LayerNorm ``(A, S, embed_dim)``, embedding ``(A, S, out_dim)``)."""
        x = self._audio_clips(input_features)
        a, s = x.shape[:2]
        cls, emb = self.audio_tower(self._cast_for(self.audio_tower, x.flatten(0, 1)))
        return cls.unflatten(0, (a, s)), emb.unflatten(0, (a, s))

    def audio_qformer_inputs(self, audio_embeds: torch.Tensor) -> torch.Tensor:
        """``(A, S, out_dim)`` -> + ``audio_position_embedding[clip]`` (the audio Q-Former's cross-attention input)."""
        ids = torch.arange(audio_embeds.shape[1], device=self.audio_position_embedding.weight.device)
        pos = self.audio_position_embedding(ids).to(device=audio_embeds.device, dtype=audio_embeds.dtype)
        return audio_embeds + pos[None]

    def get_audio_features(self, input_features) -> torch.Tensor:
        """``(A, S, 1, 128, 204)`` fbanks -> ``(A, num_audio_query_tokens, D_llm)``."""
        _, emb = self.get_audio_embeds(input_features)
        hidden = self.audio_qformer.query_output(self.audio_qformer_inputs(emb))
        return self._project(self.audio_projector, hidden)

    def dummy_media_inputs(self, modality: str) -> dict[str, Any]:
        p = self.vision_tower.embeddings.patch_embedding.weight
        dtype = p.dtype if p.is_floating_point() else torch.float32
        if modality == "audio":
            a = self.config.audio_config
            return {"input_features": torch.zeros(1, 1, 1, a.num_mel_bins, a.target_len, device=p.device, dtype=dtype)}
        size = self.config.vision_config.image_size
        pixels = torch.zeros(1, 3, size, size, device=p.device, dtype=dtype)
        return {"pixel_values": pixels} if modality == "image" else {"pixel_values_videos": pixels[None]}


class VideoLLMVideoLlamaForConditionalGeneration(VideoLLMVideoLlamaModel, GenerationMixin):
    """Video-LLaMA with its LM head: loss, logits, ``generate``."""

    with_lm_head = True
