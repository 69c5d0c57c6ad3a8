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
    wanted = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    hidden = _run_to_layers(tower, pixel_values, wanted)
    if hidden is None:  # a tower whose layer list is not found: run it whole
        out = tower(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states
    feats = hidden[wanted[0]] if len(wanted) == 1 else torch.cat([hidden[i] for i in wanted], dim=-1)
    if strategy in _DROP_CLS:
        feats = feats[:, 1:]
    return feats


def _encoder(tower: nn.Module) -> nn.Module | None:
    for owner in (getattr(tower, "vision_model", None), tower):
        encoder = getattr(owner, "encoder", None)
        if isinstance(getattr(encoder, "layers", None), nn.ModuleList) and len(encoder.layers):
            return encoder
    return None


def _encoder_layers(tower: nn.Module) -> nn.ModuleList | None:
    encoder = _encoder(tower)
    return None if encoder is None else encoder.layers


def _run_to_layers(tower: nn.Module, pixel_values: torch.Tensor, wanted: list[int]) -> dict[int, torch.Tensor] | None:
    """``{index: hidden_states[index]}`` for the ``wanted`` indices (negative ones as in ``hidden_states``), running
    the tower only up to the deepest of them and keeping no other hidden state; ``None`` when the whole run is needed
    (the last layer or the embeddings selected) or the tower's layer list is not found.

    ``hidden_states[k]`` is the output of encoder layer ``k - 1``: caught with hooks on those layers while the
    encoder's layer list is cut after the deepest one for this call (the tower's forward runs as usual otherwise:
    same modules, same arithmetic, its own hooks fire)."""
    encoder = _encoder(tower)
    if encoder is None:
        return None
    layers = encoder.layers
    n = len(layers)
    if any(not -(n + 1) <= w <= n for w in wanted):
        raise IndexError(f"vision feature layer out of range for a {n}-layer tower: {wanted}")
    index = {w: w % (n + 1) for w in wanted}
    deepest = max(index.values())
    if deepest == n or min(index.values()) == 0:
        return None
    caught: dict[int, torch.Tensor] = {}

    def hook(k: int):
        def fn(module, args, output):
            caught[k] = output[0] if isinstance(output, (tuple, list)) else output

        return fn

    handles = [layers[k - 1].register_forward_hook(hook(k)) for k in sorted(set(index.values()))]
    try:
        encoder._modules["layers"] = nn.ModuleList(list(layers)[:deepest])
        tower(pixel_values=pixel_values, output_hidden_states=False, return_dict=True)
    finally:
        encoder._modules["layers"] = layers
        for h in handles:
            h.remove()
    return {w: caught[k] for w, k in index.items()}


def unused_tower_prefixes(tower_config, feature_layer: int | list[int], prefix: str = "vision_tower.") -> list[str]:
    """Module prefixes of a CLIP/SigLIP tower that the selected feature layer never reaches: the layers after it,
    ``post_layernorm`` and SigLIP's pooling ``head``."""
    deepest = max(feature_layer) if isinstance(feature_layer, list) else feature_layer
    n = tower_config.num_hidden_layers
    used = deepest % (n + 1)  # hidden_states has n + 1 entries; entry k is the output of layer k - 1
    return [*(f"{prefix}encoder.layers.{i}." for i in range(used, n)), f"{prefix}post_layernorm.", f"{prefix}head."]
