"""Vision-tower helpers shared by the models that compose transformers' CLIP / SigLIP towers."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CLIP_L14_336", "select_hidden_features", "unused_tower_prefixes"]

#: openai/clip-vit-large-patch14-336 vision config (LLaVA v1.5, VideoLLaMA 2).
CLIP_L14_336 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 336,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}


_DROP_CLS = {"default", "patch"}
_KEEP_ALL = {"full", "cls_patch"}


def select_hidden_features(
    tower: nn.Module,
    pixel_values: torch.Tensor,
    feature_layer: int | list[int] = -2,
    strategy: str = "default",
) -> torch.Tensor:
    """Run ``tower`` and return the hidden states of ``feature_layer`` (list: concatenated on channels).

    ``hidden_states[0]`` is the embedding output (after CLIP's ``pre_layrnorm``), ``[-1]`` the last layer before
    ``post_layernorm``; ``-2`` is LLaVA's penultimate layer. ``strategy`` ``"default"``/``"patch"`` drops the CLS
    token, ``"full"``/``"cls_patch"`` keeps it.
    """
    if strategy not in _DROP_CLS | _KEEP_ALL:
        raise ValueError(f"unknown vision feature strategy {strategy!r}; use 'default' (drop CLS) or 'full'")
    out = tower(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
    hidden = out.hidden_states
    if isinstance(feature_layer, int):
        feats = hidden[feature_layer]
    else:
        feats = torch.cat([hidden[i] for i in feature_layer], dim=-1)
    if strategy in _DROP_CLS:
        feats = feats[:, 1:]
    return feats


def unused_tower_prefixes(tower_config, feature_layer: int | list[int], prefix: str = "vision_tower.") -> list[str]:
    """Module prefixes of a CLIP/SigLIP tower that the selected feature layer never reaches: the layers after it,
    ``post_layernorm`` and SigLIP's pooling ``head``."""
    deepest = max(feature_layer) if isinstance(feature_layer, list) else feature_layer
    n = tower_config.num_hidden_layers
    used = deepest % (n + 1)  # hidden_states has n + 1 entries; entry k is the output of layer k - 1
    return [*(f"{prefix}encoder.layers.{i}." for i in range(used, n)), f"{prefix}post_layernorm.", f"{prefix}head."]
