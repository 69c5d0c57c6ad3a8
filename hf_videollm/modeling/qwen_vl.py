"""Qwen-VL / Qwen-VL-Chat (first generation): ViT-bigG -> 1-layer cross-attention resampler (256 queries) -> Qwen-7B.

Reads top to bottom: config -> encoder (ours, :class:`VideoLLMQwenVLVisionModel`: the original's
``VisionTransformer`` without its resampler) -> connector (ours, :class:`QwenVLResampler`: ``attn_pool`` +
``ln_post`` + ``proj``) -> merge (shared core) -> LLM (transformers' Qwen2 with two inference-time options of the
original, :class:`VideoLLMQwenForCausalLM`).

* Vision: ``conv1`` (patch 14, no bias) -> + the learned 16x16 position table bicubically resized to the patch grid
  (``get_abs_pos``, in float32) -> ``ln_pre`` -> pre-LN blocks (exact GELU MLP). The original's fused ``in_proj`` is
  per-head interleaved (``[h0: q k v, h1: q k v, ...]``); the converter splits it into ``q_proj`` / ``k_proj`` /
  ``v_proj``. No CLS token. ``(N, 3, S, S)`` -> ``(N, (S/14)^2, width)``.
* Resampler: 256 learned queries (``ln_q(query) + pos``, pos = the fixed 2-D sin-cos table of the 16x16 query grid)
  attend once (``nn.MultiheadAttention``, ``output_dim // 128`` heads) to ``ln_kv(kv_proj(vit))``; the keys get the
  sin-cos table bicubically resized to the patch grid, the values none. Then ``ln_post`` and ``x @ proj``. Every
  image becomes 256 tokens of the LLM width. The sin-cos table is a saved buffer (the release stores it; its stored,
  rounded values are what the original uses).
* LLM: Qwen-7B is a Qwen2 (q/k/v with bias, no o_proj bias, SwiGLU, RMSNorm, rotate-half RoPE); the converter splits
  ``c_attn`` into q/k/v and maps ``w2`` -> gate, ``w1`` -> up. ``use_dynamic_ntk`` / ``use_logn_attn`` (``text_config``,
  with the original's ``seq_length``) reproduce the original's inference-only long-context tricks: RoPE base
  ``theta * alpha^(d/(d-2))`` with ``alpha = max(2^ceil(log2(L/seq_length) + 1) - 1, 1)`` chosen at prefill and kept
  while decoding, and queries at 1-based positions ``i > seq_length`` scaled by ``log(i) / log(seq_length)``. Both are
  no-ops up to ``seq_length`` tokens (2048 in the release) and off in training mode, as in the original.
  Padding: the original takes RoPE / logN positions and the NTK length from the padded row (it ignores
  ``position_ids``), so a left-padded sample's output depends on its padding; here positions follow the attention
  mask and alpha each row's real length (a padded sample equals itself alone; identical without padding).
* Placement: each image is ``<img>`` + 256 ``<imgpad>`` + ``</img>`` in the text; the 256 ``<imgpad>`` slots are the
  placeholder (the original writes the image path's bytes there and overwrites them; the processor writes pads).
* Video (not in the original, which is image-only): a video is its sampled frames, each encoded as an image (256
  tokens, wrapped in ``<img>``/``</img>`` like an image); the processor marks the frames' slots with ``video_token_id``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, DynamicCache, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2Attention,
    Qwen2ForCausalLM,
    Qwen2Model,
    Qwen2PreTrainedModel,
    Qwen2RotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from .base import TOWER_INPUTS, VideoLLMPreTrainedModel

__all__ = [
    "QWENVL_INPUTS",
    "QWEN_7B",
    "QwenVLResampler",
    "VideoLLMQwenForCausalLM",
    "VideoLLMQwenTextModel",
    "VideoLLMQwenVLConfig",
    "VideoLLMQwenVLForConditionalGeneration",
    "VideoLLMQwenVLModel",
    "VideoLLMQwenVLVisionConfig",
    "VideoLLMQwenVLVisionModel",
    "qwen_logn_scale",
    "qwen_ntk_alpha",
    "sincos_2d_table",
]

#: Qwen-7B (Qwen-VL's LLM) as a transformers Qwen2 config; ``intermediate_size`` is the original's
#: ``intermediate_size // 2`` (22016 // 2: the width of ``w1`` / ``w2``).
QWEN_7B = {
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
    "tie_word_embeddings": False,
    "use_dynamic_ntk": True,
    "use_logn_attn": True,
    "seq_length": 2048,
}

#: Images and video frames through one vision tower + connector: the shared declaration (a video is its frames).
QWENVL_INPUTS = TOWER_INPUTS


# --------------------------------------------------------------------------------------------------- helpers
def sincos_2d_table(embed_dim: int, grid: int) -> torch.Tensor:
    """The resampler's fixed ``(grid*grid, embed_dim)`` table (MAE recipe, float32 numpy arithmetic as the original):
    the first half of the channels encodes the column, the second half the row; each half is ``[sin(p w), cos(p w)]``
    with ``w_k = 1 / 10000^(k / (embed_dim/4))``."""
    if embed_dim % 4:
        raise ValueError(f"the sin-cos table needs embed_dim divisible by 4, got {embed_dim}")
    coords = np.arange(grid, dtype=np.float32)
    col, row = np.meshgrid(coords, coords)  # col varies along a row of the grid

    def one_dim(pos: np.ndarray) -> np.ndarray:
        omega = np.arange(embed_dim // 4, dtype=np.float32)
        omega /= embed_dim / 4.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return torch.from_numpy(np.concatenate([one_dim(col), one_dim(row)], axis=1)).float()


def resize_abs_pos(table: torch.Tensor, tokens: int) -> torch.Tensor:
    """A square ``(n*n, C)`` position table bicubically resized (float32, ``align_corners=False``) to ``tokens``
    positions (a square grid); unchanged when the sizes agree (the original's ``get_abs_pos``)."""
    src, tgt = math.isqrt(table.shape[0]), math.isqrt(tokens)
    if tgt * tgt != tokens:
        raise ValueError(f"{tokens} patch tokens are not a square grid; Qwen-VL takes square images")
    if src == tgt:
        return table
    grid = table.float().reshape(1, src, src, -1).permute(0, 3, 1, 2)
    out = F.interpolate(grid, size=(tgt, tgt), mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).flatten(0, 2).to(table.dtype)


def qwen_ntk_alpha(length: int, seq_length: int) -> int:
    """The original's dynamic-NTK factor for a prefill of ``length`` tokens: ``max(2^ceil(log2(L/seq)+1) - 1, 1)``."""
    if length <= 0:
        return 1
    return max(2 ** math.ceil(math.log(length / seq_length, 2) + 1) - 1, 1)


def qwen_logn_scale(position_ids: torch.Tensor, seq_length: int) -> torch.Tensor:
    """Query scale per position (0-based ``position_ids``): ``log(i) / log(seq_length)`` for 1-based ``i >
    seq_length``, else 1 (the original's ``logn_tensor``, computed in float64 and returned as float32)."""
    i = position_ids.to(torch.float64) + 1
    scale = torch.where(i > seq_length, torch.log(i) / math.log(seq_length), torch.ones_like(i))
    return scale.float()


# --------------------------------------------------------------------------------------------------- config
class VideoLLMQwenVLVisionConfig(PreTrainedConfig):
    """Sizes of Qwen-VL's visual encoder (the original ``config.visual``; defaults = the release, ViT-bigG/14 at 448).

    ``hidden_size`` / ``num_hidden_layers`` / ``num_attention_heads`` are the original's ``width`` / ``layers`` /
    ``heads``; ``output_dim`` is the resampler width (= the LLM width); ``n_queries`` the visual tokens per image;
    ``resampler_num_heads`` ``None`` = ``output_dim // 128`` (the original's rule; 32 for Qwen-7B).
    """

    model_type = "videollm_qwen_vl_vision"

    hidden_size: int = 1664
    num_hidden_layers: int = 48
    num_attention_heads: int = 16
    mlp_ratio: float = 4.9231
    image_size: int = 448
    patch_size: int = 14
    output_dim: int = 4096
    n_queries: int = 256
    resampler_num_heads: int | None = None
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"vision hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if math.isqrt(self.n_queries) ** 2 != self.n_queries:
            raise ValueError(f"n_queries must be a square (the queries form a grid), got {self.n_queries}")
        if self.resampler_num_heads is None:
            self.resampler_num_heads = self.output_dim // 128  # the original's rule
        if self.resampler_num_heads < 1 or self.output_dim % self.resampler_num_heads or self.output_dim % 4:
            raise ValueError(
                f"output_dim {self.output_dim} must be a multiple of 4 and of resampler_num_heads "
                f"{self.resampler_num_heads} (default output_dim // 128, as the original)"
            )
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def intermediate_size(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)


class VideoLLMQwenVLConfig(PreTrainedConfig):
    r"""Qwen-VL configuration.

    Args:
        vision_config: :class:`VideoLLMQwenVLVisionConfig` (ViT-bigG/14 at 448 px + resampler sizes).
        text_config: a transformers ``qwen2`` config (default Qwen-7B). Extra fields read by our LLM class:
            ``use_dynamic_ntk``, ``use_logn_attn`` (the original's inference-time options, default on as released)
            and ``seq_length`` (the length they refer to, 2048).
        image_token_id: ``<imgpad>``: the 256 slots between ``<img>`` and ``</img>`` of each image.
        image_start_token_id / image_end_token_id: ``<img>`` / ``</img>``.
        video_token_id: placeholder of a video frame's slots (frames are wrapped like images); an added token.
    """

    model_type = "videollm_qwen_vl"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(VideoLLMQwenVLVisionConfig),
        "text_config": SubConfigSpec(AutoConfig, model_type="qwen2", init_kwargs=QWEN_7B),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 151859
    image_start_token_id: int = 151857
    image_end_token_id: int = 151858
    video_token_id: int | None = 151860
    image_token: str = "<imgpad>"
    video_token: str = "<video>"
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.vision_config.output_dim != self.text_config.hidden_size:
            raise ValueError(
                f"vision_config.output_dim ({self.vision_config.output_dim}) is the resampler's width and must equal "
                f"text_config.hidden_size ({self.text_config.hidden_size})"
            )

    @property
    def image_seq_length(self) -> int:
        return self.vision_config.n_queries


# --------------------------------------------------------------------------------------------------- encoder
class QwenVLVisionAttention(nn.Module):
    """Self-attention of a ViT block (q/k/v split from the original's per-head interleaved ``in_proj``)."""

    def __init__(self, config: VideoLLMQwenVLVisionConfig):
        super().__init__()
        dim = config.hidden_size
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        impl = getattr(self.config, "_attn_implementation", None) or "eager"
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(impl, _vision_eager_attention)
        out, _ = attention(self, q, k, v, None, dropout=0.0, scaling=self.scaling, is_causal=False)
        return self.out_proj(out.reshape(b, n, -1))


def _vision_eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """The original's arithmetic: ``softmax((q * scale) @ k^T) @ v``; returns ``(B, N, H, D)``."""
    scores = (query * scaling) @ key.transpose(-1, -2)
    if attention_mask is not None:
        scores = scores + attention_mask
    return (scores.softmax(dim=-1) @ value).transpose(1, 2), None


class QwenVLVisionMLP(nn.Module):
    def __init__(self, config: VideoLLMQwenVLVisionConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.hidden_size, config.intermediate_size)
        self.c_proj = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class QwenVLVisionBlock(GradientCheckpointingLayer):
    """Pre-LN block: ``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))`` (checkpointed with the model's gradient checkpointing:
    stages 1-2 train the 48 ViT-bigG blocks)."""

    def __init__(self, config: VideoLLMQwenVLVisionConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = QwenVLVisionAttention(config)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = QwenVLVisionMLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class VideoLLMQwenVLVisionModel(PreTrainedModel):
    """Qwen-VL's ViT without the resampler: ``(N, 3, S, S)`` -> ``(N, (S/patch)^2, hidden_size)``.

    A transformers model of its config, so the composite's ``set_attn_implementation`` reaches its attention."""

    config_class = VideoLLMQwenVLVisionConfig
    base_model_prefix = "vision_tower"
    main_input_name = "pixel_values"
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    supports_gradient_checkpointing = True
    _no_split_modules = ["QwenVLVisionBlock"]

    def __init__(self, config: VideoLLMQwenVLVisionConfig):
        super().__init__(config)
        width, p = config.hidden_size, config.patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=p, stride=p, bias=False)
        self.positional_embedding = nn.Parameter(torch.empty(256, width))  # the 16x16 grid of the 224-px CLIP
        self.ln_pre = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.blocks = nn.ModuleList(QwenVLVisionBlock(config) for _ in range(config.num_hidden_layers))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, VideoLLMQwenVLVisionModel):
            init.normal_(module.positional_embedding, std=module.config.hidden_size**-0.5)
            return
        super()._init_weights(module)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3 or pixel_values.shape[-1] != pixel_values.shape[-2]:
            raise ValueError(
                f"pixel_values must be square RGB images (N, 3, S, S), got shape {tuple(pixel_values.shape)}; "
                f"use the Qwen-VL processor (S = {self.config.image_size})"
            )
        x = self.conv1(pixel_values).flatten(2).transpose(1, 2)  # (N, grid^2, width)
        x = x + resize_abs_pos(self.positional_embedding, x.shape[1])
        x = self.ln_pre(x)
        for block in self.blocks:
            x = block(x)
        return x


# --------------------------------------------------------------------------------------------------- connector
class QwenVLAttnPool(nn.Module):
    """The original's ``Resampler``: learned queries, one ``nn.MultiheadAttention`` over the ViT tokens."""

    def __init__(self, n_queries: int, embed_dim: int, kv_dim: int, eps: float, num_heads: int):
        super().__init__()
        self.grid = math.isqrt(n_queries)
        self.query = nn.Parameter(torch.zeros(n_queries, embed_dim))
        self.register_buffer("pos_embed", sincos_2d_table(embed_dim, self.grid), persistent=True)
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False) if kv_dim != embed_dim else nn.Identity()
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.ln_q = nn.LayerNorm(embed_dim, eps=eps)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.pos_embed.to(self.query.dtype)  # a buffer keeps float32 when the model is cast; the original's is a parameter
        key_pos = resize_abs_pos(pos, x.shape[1])
        x = self.ln_kv(self.kv_proj(x))
        q = (self.ln_q(self.query) + pos).unsqueeze(0).expand(x.shape[0], -1, -1)
        return self.attn(q, x + key_pos, x, need_weights=False)[0]


class QwenVLOutputProjection(nn.Module):
    """``x @ weight`` (the original's raw ``proj`` parameter, no bias, not transposed)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class QwenVLResampler(nn.Module):
    """``attn_pool`` (256 queries, cross-attention) -> ``ln_post`` -> ``proj``: ``(N, P, width)`` -> ``(N, 256, D)``."""

    def __init__(self, config: VideoLLMQwenVLVisionConfig):
        super().__init__()
        d = config.output_dim
        self.attn_pool = QwenVLAttnPool(
            config.n_queries, d, config.hidden_size, config.layer_norm_eps, config.resampler_num_heads
        )
        self.ln_post = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.proj = QwenVLOutputProjection(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.ln_post(self.attn_pool(x)))


# --------------------------------------------------------------------------------------------------- LLM
_NTK_ALPHA = "_videollm_qwen_ntk_alpha"  # attribute of a KV cache: the per-row alpha chosen at its prefill


class VideoLLMQwenRotaryEmbedding(Qwen2RotaryEmbedding):
    """Qwen2's default RoPE; with ``ntk_alpha`` set (per row, by :class:`VideoLLMQwenTextModel` for the duration of
    one forward) the original's dynamic-NTK base ``theta * alpha^(d/(d-2))``."""

    ntk_alpha: torch.Tensor | None = None

    def forward(self, x, position_ids):
        alpha = self.ntk_alpha
        if alpha is None or bool((alpha == 1).all()):
            return super().forward(x, position_ids)
        dim = self.inv_freq.shape[0] * 2
        theta = self.config.rope_parameters["rope_theta"]
        exponents = torch.arange(0, dim, 2, dtype=torch.float, device=x.device) / dim
        inv = torch.stack([1.0 / ((theta * float(a) ** (dim / (dim - 2))) ** exponents) for a in alpha.tolist()])
        pos = position_ids.to(x.device).float()
        if pos.shape[0] != inv.shape[0]:
            pos = pos.expand(inv.shape[0], -1)
        freqs = pos[..., None] * inv[:, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


class VideoLLMQwenAttention(Qwen2Attention):
    """Qwen2 attention + the original's logN query scaling (``use_logn_attn``, inference only): after RoPE, the
    query at 1-based position ``i > seq_length`` is multiplied by ``log(i) / log(seq_length)``."""

    def forward(self, hidden_states, position_embeddings, attention_mask, cache=None, position_ids=None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        query_states = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        cos, sin = position_embeddings
        query_states, key_states = apply_rotary_pos_emb(query_states, key_states, cos, sin)
        seq_length = getattr(self.config, "seq_length", None)
        if getattr(self.config, "use_logn_attn", False) and not self.training and seq_length and position_ids is not None:
            if bool((position_ids >= seq_length).any()):
                scale = qwen_logn_scale(position_ids, seq_length).to(query_states)
                query_states = query_states * scale[:, None, :, None]
        if cache is not None:
            key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self, query_states, key_states, value_states, attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling,
            sliding_window=self.sliding_window, position_ids=position_ids, **kwargs,
        )
        attn_output = attn_output.reshape(*input_shape, -1).contiguous()
        return self.o_proj(attn_output), attn_weights


class VideoLLMQwenTextModel(Qwen2Model):
    """transformers' ``Qwen2Model`` with the original Qwen's dynamic NTK (``config.use_dynamic_ntk``) and logN
    attention (``config.use_logn_attn``) at inference. Same parameters and keys as ``Qwen2Model``.

    NTK alpha: chosen per row from its real length (attention mask) when the cache is empty (prefill, or every call
    without a cache) and kept on the cache for the decoding steps, as the original keeps its prefill alpha."""

    def __init__(self, config):
        super().__init__(config)
        self.rotary_emb = VideoLLMQwenRotaryEmbedding(config=config)
        for layer in self.layers:
            layer.self_attn.__class__ = VideoLLMQwenAttention  # same parameters; forward adds the logN scaling

    def _ntk_alpha(self, attention_mask, cache, length: int, batch: int) -> torch.Tensor | None:
        cfg = self.config
        if not getattr(cfg, "use_dynamic_ntk", False) or self.training or not getattr(cfg, "seq_length", None):
            return None
        past = cache.get_seq_length() if cache is not None else 0
        if past > 0:
            stored = getattr(cache, _NTK_ALPHA, None)
            if stored is not None and stored.shape[0] == batch:
                return stored
            return torch.full((batch,), qwen_ntk_alpha(past, cfg.seq_length), dtype=torch.long)
        if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2:
            lengths = attention_mask.sum(-1).tolist()
        else:
            lengths = [length] * batch
        alpha = torch.tensor([qwen_ntk_alpha(int(n), cfg.seq_length) for n in lengths], dtype=torch.long)
        if cache is not None:
            setattr(cache, _NTK_ALPHA, alpha)
        return alpha

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, **kwargs):
        ref = inputs_embeds if inputs_embeds is not None else input_ids
        if ref is None:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if use_cache and cache is None and not self.training:
            cache = DynamicCache(config=self.config)
        alpha = self._ntk_alpha(attention_mask, cache, ref.shape[1], ref.shape[0])
        self.rotary_emb.ntk_alpha = alpha
        try:
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        finally:
            self.rotary_emb.ntk_alpha = None


class VideoLLMQwenForCausalLM(Qwen2ForCausalLM):
    """``Qwen2ForCausalLM`` over :class:`VideoLLMQwenTextModel` (same keys: ``model.*``, ``lm_head``)."""

    def __init__(self, config):
        Qwen2PreTrainedModel.__init__(self, config)
        self.model = VideoLLMQwenTextModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


# --------------------------------------------------------------------------------------------------- model
class VideoLLMQwenVLModel(VideoLLMPreTrainedModel):
    """Qwen-VL without the LM head (``AutoModel``): hidden states of the language model and the media features."""

    config_class = VideoLLMQwenVLConfig
    input_spec = QWENVL_INPUTS
    with_lm_head = False
    _parts = {
        "vision_tower": ("vision_tower",),
        # the original's ``attn_pool`` (what ``fix_vit`` fine-tuning still trains)
        "connector": ("multi_modal_projector.attn_pool",),
        # ``ln_post`` + ``proj``: frozen with the ViT by the original's ``fix_vit``
        "vision_projection": ("multi_modal_projector.ln_post", "multi_modal_projector.proj"),
        "language_model": ("language_model",),
        # inside language_model: the token embeddings and the LM head, which the original's LoRA fine-tuning trains
        # fully (modules_to_save ["wte", "lm_head"]); the bare model has no lm_head
        "embeddings": ("language_model.model.embed_tokens", "language_model.embed_tokens", "language_model.lm_head"),
    }

    def __init__(self, config: VideoLLMQwenVLConfig):
        super().__init__(config)
        self.vision_tower = VideoLLMQwenVLVisionModel._from_config(config.vision_config)
        self.multi_modal_projector = QwenVLResampler(config.vision_config)
        self.language_model = self.build_language_model(config.text_config)
        self.post_init()

    def build_language_model(self, text_config) -> nn.Module:
        if not self.with_lm_head:
            return VideoLLMQwenTextModel._from_config(text_config)
        return VideoLLMQwenForCausalLM._from_config(text_config)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, QwenVLAttnPool):
            init.trunc_normal_(module.query, std=0.02)
            init.copy_(module.pos_embed, sincos_2d_table(module.query.shape[1], module.grid))
            return
        if isinstance(module, QwenVLOutputProjection):
            init.normal_(module.weight, std=module.weight.shape[0] ** -0.5)
            return
        if isinstance(module, VideoLLMQwenVLVisionModel):
            init.normal_(module.positional_embedding, std=module.config.hidden_size**-0.5)
            return
        super()._init_weights(module)

    # --------------------------------------------------------------------------------------------- encoders
    def get_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """ViT output before the resampler, ``(N, (S/patch)^2, width)``."""
        return self.vision_tower(self._cast_for(self.vision_tower, pixel_values))

    def _encode(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feats = self.get_vision_features(pixel_values)
        return self.multi_modal_projector(self._cast_for(self.multi_modal_projector, feats))

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` images -> ``(N, 256, D_llm)``."""
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be (num_images, 3, H, W), got shape {tuple(pixel_values.shape)}; "
                "pass videos as pixel_values_videos (num_videos, frames, 3, H, W)"
            )
        return self._encode(pixel_values)

    def get_video_features(self, pixel_values_videos: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
        """``(V, T, 3, S, S)`` (or a list of ``(T_i, 3, S, S)``) -> one ``(T_i * 256, D_llm)`` per video: every frame
        encoded as an image, frames in order."""
        if isinstance(pixel_values_videos, torch.Tensor):
            if pixel_values_videos.ndim != 5:
                raise ValueError(
                    f"pixel_values_videos must be (num_videos, frames, 3, H, W), got {tuple(pixel_values_videos.shape)}"
                )
            videos = list(pixel_values_videos.unbind(0))
        else:
            videos = list(pixel_values_videos)
        lengths = [v.shape[0] for v in videos]
        tokens = self._encode(torch.cat(videos) if len(videos) > 1 else videos[0])
        return [t.flatten(0, 1) for t in tokens.split(lengths)]

    def dummy_media_inputs(self, modality: str) -> dict[str, Any]:
        p = next(self.vision_tower.parameters())
        size = self.config.vision_config.image_size
        pixels = torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype)
        if modality == "image":
            return {"pixel_values": pixels}
        return {"pixel_values_videos": pixels[None]}


class VideoLLMQwenVLForConditionalGeneration(VideoLLMQwenVLModel, GenerationMixin):
    """Qwen-VL with its LM head: loss, logits, ``generate``."""

    with_lm_head = True
