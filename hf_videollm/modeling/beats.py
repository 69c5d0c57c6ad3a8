"""BEATs audio encoder (Microsoft BEATs, arXiv:2212.09058) as used by VideoLLaMA 2.1-AV (``audio_visual`` branch).

Our own inference-only re-implementation of ``BEATs.extract_features(fbank, padding_mask, feature_only=True)[0]`` from
``videollama2/model/beats/{BEATs,backbone,weight_norm_fix}.py`` (itself microsoft/unilm ``beats/`` with the Kaldi fbank
step removed: the input is already a ``(B, T_frames, 128)`` log-mel fbank). Checked against the golden fixture
``videollama2/av_beats_qwen2`` (``expected["audio_features"]``) by ``tests/test_beats.py``.

Pipeline: ``(fbank - mean) / (2 * std)`` -> Conv2d patch embedding (16x16, no bias) -> LayerNorm(embed_dim) ->
``post_extract_proj`` (only when embed_dim != encoder_embed_dim) -> encoder: ``x + GELU(weight-normed grouped Conv1d(x))``
-> LayerNorm (post-LN variant) -> N post-LN layers with deep-norm residual scaling and a gated relative position bias.

Facts of the original that this code keeps on purpose:

* ``pos_conv`` weight norm is VideoLLaMA2's ``weight_norm_fix``: ``w = g * v * rsqrt(sum(v**2 over dims 0,1) + 1e-6)``
  (norm kept along dim 2, the kernel axis; note the eps, unlike ``torch.nn.utils.weight_norm``). ``weight_g`` and
  ``weight_v`` stay two parameters, so checkpoints load unchanged.
* Deep norm: residuals are multiplied by ``alpha = (2 * encoder_layers) ** 0.25`` before each post-LN.
* Attention scores are ``((q * scale / 32) @ k^T - rowmax) * 32``; softmax-invariant, kept for numerical parity.
* Relative position bias: one ``nn.Embedding(num_buckets, heads)`` owned by layer 0 (the original ties the others to
  it, and in fact computes the bias once in layer 0 and passes it on). Only
  ``encoder.layers.0.self_attn.relative_attention_bias.weight`` exists here; :func:`convert_beats_state_dict` drops the
  tied copies that a ``torch.save`` checkpoint repeats for layers >= 1.
* GRU gate per head and query: ``a, b = sigmoid(sum4(grep_linear(q_unscaled)))``; bias *= ``a * (b * grep_a - 1) + 2``.
* Padding-mask pooling (``forward_padding_mask``) groups frames into consecutive chunks of ``T // N`` frames, which
  does not follow the time-major patch order; reproduced as is. ``padding_mask=None`` equals an all-False mask.

Dropout/layer-drop/gradient-decay are training-only and omitted. The ``predictor.*`` head is unused (``feature_only``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

__all__ = ["BEATsConfig", "BEATsEncoder", "VideoLLMBEATsConfig", "beats_num_tokens", "convert_beats_state_dict", "init_beats_module"]

NUM_MEL_BINS = 128


class VideoLLMBEATsConfig(PreTrainedConfig):
    """Sizes of BEATs; defaults are VideoLLaMA2's ``BEATsConfig()`` (BEATs_iter3_plus_AS2M fine-tuned).

    A real transformers config: as ``audio_config`` of the VideoLLaMA 2.1-AV config it is saved in ``config.json``
    and listed in ``sub_configs``, so ``attn_implementation`` (``"eager"`` / ``"sdpa"``, or a dict per sub-config)
    reaches the encoder's attention, which looks the implementation up at call time.
    """

    model_type = "videollm_beats"

    input_patch_size: int = 16
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    layer_norm_first: bool = False
    deep_norm: bool = True
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True
    fbank_mean: float = 15.41663
    fbank_std: float = 6.55582

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ValueError(
                f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by encoder_attention_heads "
                f"{self.encoder_attention_heads}"
            )
        if self.deep_norm and self.layer_norm_first:
            raise ValueError("deep_norm and layer_norm_first cannot both be set (as in the original)")

    @property
    def hidden_size(self) -> int:
        return self.encoder_embed_dim

    def num_tokens(self, num_frames: int) -> int:
        """Tokens an fbank of ``num_frames`` frames becomes: (frames // 16) * (128 // 16); 30 s (2998) -> 1496."""
        p = self.input_patch_size
        return (num_frames // p) * (NUM_MEL_BINS // p)


#: the name used before BEATs became a transformers config (same fields)
BEATsConfig = VideoLLMBEATsConfig


class _WeightNormConv1d(nn.Conv1d):
    """Grouped Conv1d whose weight is ``g * v / ||v||`` (norm over dims 0 and 1, eps 1e-6) as ``weight_norm_fix``."""

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__(channels, channels, kernel, padding=kernel // 2, groups=groups)
        del self.weight
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel))
        nn.init.normal_(self.weight_v, std=math.sqrt(4 / (kernel * channels)))

    def reset_parameters(self) -> None:
        if "weight_v" not in self._parameters:  # nn.Conv1d.__init__ calls this before weight_g / weight_v exist
            return super().reset_parameters()
        kernel, channels = self.weight_v.shape[2], self.weight_v.shape[0]
        nn.init.normal_(self.weight_v, std=math.sqrt(4 / (kernel * channels)))
        nn.init.ones_(self.weight_g)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.weight_v.float()
        w = self.weight_g * (v * torch.rsqrt(v.pow(2).sum((0, 1), keepdim=True) + 1e-6)).to(self.weight_v.dtype)
        return self._conv_forward(x, w, self.bias)


class _PosConv(nn.Sequential):
    """``pos_conv``: index 0 is the weight-normed conv (key ``pos_conv.0.*``); SamePad drops the extra frame; GELU."""

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__(_WeightNormConv1d(channels, kernel, groups))
        self.trim = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, N)
        x = self[0](x)
        if self.trim:
            x = x[..., : -self.trim]
        return F.gelu(x)


def _relative_position_bucket(rel: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bidirectional T5-style buckets exactly as BEATs computes them (half the buckets for keys after the query)."""
    half = num_buckets // 2
    buckets = (rel > 0).long() * half
    rel = rel.abs()
    max_exact = half // 2
    is_small = rel < max_exact
    large = max_exact + (
        torch.log(rel.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).long()
    large = large.clamp(max=half - 1)
    return buckets + torch.where(is_small, rel, large)


class _SelfAttention(nn.Module):
    def __init__(self, cfg: BEATsConfig, has_bias_table: bool):
        super().__init__()
        dim, self.num_heads = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        if dim % self.num_heads:
            raise ValueError(f"encoder_embed_dim {dim} is not divisible by encoder_attention_heads {self.num_heads}")
        self.head_dim = dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.gru_rel_pos = cfg.gru_rel_pos
        self.config = cfg  # read at call time: the attention implementation can change at runtime
        self.is_causal = False
        if cfg.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, self.num_heads, 1, 1))
        if has_bias_table:
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, self.num_heads)

    def forward(self, x: torch.Tensor, pos_bias: torch.Tensor | None, key_padding_mask: torch.Tensor | None):
        b, n, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, N, D)

        q_raw = heads(self.q_proj(x))
        k, v = heads(self.k_proj(x)), heads(self.v_proj(x))
        bias = None
        if pos_bias is not None:  # (H, N, N)
            bias = pos_bias.unsqueeze(0)
            if self.gru_rel_pos:
                gates = torch.sigmoid(self.grep_linear(q_raw).view(b, self.num_heads, n, 2, 4).sum(-1))
                gate_a, gate_b = gates.chunk(2, dim=-1)  # (B, H, N, 1) each
                bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias
        mask = bias
        if key_padding_mask is not None:
            pad = torch.zeros(key_padding_mask.shape, dtype=q_raw.dtype, device=q_raw.device)
            pad = pad.masked_fill(key_padding_mask, float("-inf"))[:, None, None, :]
            mask = pad if mask is None else mask + pad
        if mask is not None:
            mask = mask.to(q_raw.dtype).expand(b, self.num_heads, n, n)
        impl = getattr(self.config, "_attn_implementation", None) or "eager"
        if impl.startswith("flash"):
            raise ValueError(
                f"BEATs attention cannot run with attn_implementation={impl!r}: its gated relative position bias is "
                "an additive attention bias, which flash attention cannot take; use 'eager' or 'sdpa' for the audio "
                "tower, e.g. attn_implementation={'audio_config': 'sdpa', ...}"
            )
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(impl, beats_eager_attention)
        out, _ = attention(self, q_raw, k, v, mask, dropout=0.0, scaling=self.scaling, is_causal=False)
        return self.out_proj(out.reshape(b, n, -1))


def beats_eager_attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """The original's arithmetic: ``((q * scale / 32) @ k^T - rowmax) * 32`` (softmax-invariant) + the additive mask
    (gated relative position bias, -inf on padded keys). Returns ``(B, N, H, D)`` like transformers' functions."""
    alpha = 32.0
    scores = (query * scaling * (1 / alpha)) @ key.transpose(-1, -2)
    scores = (scores - scores.amax(dim=-1, keepdim=True)) * alpha
    if attention_mask is not None:
        scores = scores + attention_mask
    return (scores.softmax(dim=-1) @ value).transpose(1, 2), None


class _EncoderLayer(nn.Module):
    def __init__(self, cfg: BEATsConfig, has_bias_table: bool):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.self_attn = _SelfAttention(cfg, has_bias_table)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.layer_norm_first = cfg.layer_norm_first
        self.alpha = (2 * cfg.encoder_layers) ** 0.25 if cfg.deep_norm else 1.0

    def forward(self, x, pos_bias, key_padding_mask):
        if self.layer_norm_first:  # pre-LN (no deep-norm scaling: the original forbids both)
            x = x + self.self_attn(self.self_attn_layer_norm(x), pos_bias, key_padding_mask)
            return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))
        x = self.self_attn_layer_norm(x * self.alpha + self.self_attn(x, pos_bias, key_padding_mask))
        return self.final_layer_norm(x * self.alpha + self.fc2(F.gelu(self.fc1(x))))


class _Encoder(nn.Module):
    def __init__(self, cfg: BEATsConfig):
        super().__init__()
        self.pos_conv = _PosConv(cfg.encoder_embed_dim, cfg.conv_pos, cfg.conv_pos_groups)
        self.layers = nn.ModuleList(
            _EncoderLayer(cfg, has_bias_table=cfg.relative_position_embedding and i == 0)
            for i in range(cfg.encoder_layers)
        )
        self.layer_norm = nn.LayerNorm(cfg.encoder_embed_dim)
        self.cfg = cfg

    def position_bias(self, n: int) -> torch.Tensor:
        """(H, N, N) bias from layer 0's table, shared by every layer."""
        table = self.layers[0].self_attn.relative_attention_bias
        pos = torch.arange(n, device=table.weight.device)
        buckets = _relative_position_bucket(pos[None, :] - pos[:, None], self.cfg.num_buckets, self.cfg.max_distance)
        return table(buckets).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.cfg.layer_norm_first:
            x = self.layer_norm(x)
        pos_bias = self.position_bias(x.shape[1]) if self.cfg.relative_position_embedding else None
        for layer in self.layers:
            x = layer(x, pos_bias, padding_mask)
        return self.layer_norm(x) if self.cfg.layer_norm_first else x


def _pool_padding_mask(padding_mask: torch.Tensor, n: int) -> torch.Tensor:
    """BEATs ``forward_padding_mask``: drop the remainder, group into ``n`` consecutive chunks, pad if all padded."""
    extra = padding_mask.shape[1] % n
    if extra:
        padding_mask = padding_mask[:, :-extra]
    return padding_mask.reshape(padding_mask.shape[0], n, -1).all(-1)


class BEATsEncoder(PreTrainedModel):
    """``forward(fbank (B, T_frames, 128)) -> (B, (T_frames // 16) * 8, encoder_embed_dim)``.

    Parameter names equal the original checkpoint's keys under ``model.audio_tower.`` (``predictor.*`` omitted).
    A transformers model of its config, so a composite model's ``set_attn_implementation`` reaches it.
    """

    config_class = VideoLLMBEATsConfig
    base_model_prefix = "audio_tower"
    main_input_name = "fbank"
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_attention_backend = True
    _no_split_modules = ["_EncoderLayer"]

    def __init__(self, config: BEATsConfig | None = None, **kwargs):
        if config is not None and kwargs:
            raise ValueError("pass either a BEATsConfig or keyword sizes, not both")
        cfg = config or BEATsConfig(**kwargs)
        super().__init__(cfg)
        p = cfg.input_patch_size
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=p, stride=p, bias=cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.post_extract_proj = (
            nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim) if cfg.embed_dim != cfg.encoder_embed_dim else None
        )
        self.encoder = _Encoder(cfg)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if not init_beats_module(module):
            super()._init_weights(module)

    def forward(self, fbank: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        p = self.config.input_patch_size
        if fbank.dim() != 3 or fbank.shape[-1] != NUM_MEL_BINS or fbank.shape[1] < p:
            raise ValueError(
                f"BEATs expects an fbank of shape (B, T_frames, {NUM_MEL_BINS}) with T_frames >= {p}, "
                f"got {tuple(fbank.shape)}"
            )
        if padding_mask is not None and padding_mask.shape != fbank.shape[:2]:
            raise ValueError(f"padding_mask must have shape (B, T_frames) = {tuple(fbank.shape[:2])}, "
                             f"got {tuple(padding_mask.shape)}")
        x = (fbank - self.config.fbank_mean) / (2 * self.config.fbank_std)
        x = self.patch_embedding(x.unsqueeze(1))  # (B, C, T/16, 8)
        x = self.layer_norm(x.flatten(2).transpose(1, 2))  # (B, N, C), time-major patches
        mask = _pool_padding_mask(padding_mask.bool(), x.shape[1]) if padding_mask is not None else None
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)
        return self.encoder(x, mask)


def beats_num_tokens(num_frames: int, patch_size: int = 16) -> int:
    """Tokens BEATs makes of an fbank of ``num_frames`` frames: ``(num_frames // 16) * 8`` (30 s, 2998 -> 1496)."""
    return (num_frames // patch_size) * (NUM_MEL_BINS // patch_size)


def init_beats_module(module: nn.Module) -> bool:
    """Initialise BEATs' own parameter holders (weight-normed conv, GRU gate scale); ``False`` for other modules."""
    if isinstance(module, _WeightNormConv1d):
        module.reset_parameters()
        return True
    if isinstance(module, _SelfAttention) and module.gru_rel_pos:
        nn.init.ones_(module.grep_a)  # its Linear children are initialised as any Linear
    return False


def convert_beats_state_dict(state_dict: dict[str, torch.Tensor], prefix: str = "model.audio_tower.") -> dict:
    """Original BEATs keys (under ``prefix``) -> :class:`BEATsEncoder` keys.

    Drops ``predictor.*`` (unused) and the tied ``relative_attention_bias`` copies of layers >= 1 that ``torch.save``
    checkpoints repeat (safetensors files keep only layer 0); a copy that differs from layer 0 is an error.
    """
    out = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    tied = "self_attn.relative_attention_bias.weight"
    ref = out.get(f"encoder.layers.0.{tied}")
    for key in list(out):
        if key.startswith("predictor."):
            del out[key]
        elif key.endswith(tied) and not key.startswith("encoder.layers.0."):
            if ref is None or not torch.equal(out[key], ref):
                raise ValueError(f"{key} is not tied to encoder.layers.0.{tied}")
            del out[key]
    return out
