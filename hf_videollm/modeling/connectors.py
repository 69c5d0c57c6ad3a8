"""Connectors: small reusable blocks that map encoder features into the language model's width.

Only what no library has is written here. Models pick a connector by name in their config.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers.activations import ACT2FN

__all__ = ["MLPProjector", "parse_projector_type", "spatial_pool"]


def parse_projector_type(projector_type: str) -> tuple[int, str]:
    """``"linear"`` -> (1, ""), ``"mlp2x_gelu"`` -> (2, "gelu"), as LLaVA's ``build_vision_projector`` names them."""
    if projector_type == "linear":
        return 1, "gelu"
    m = re.fullmatch(r"mlp(\d+)x_(\w+)", projector_type)
    if not m:
        raise ValueError(f"unknown projector_type {projector_type!r}; use 'linear' or 'mlp<N>x_<act>' (e.g. 'mlp2x_gelu')")
    return int(m.group(1)), m.group(2)


class MLPProjector(nn.Module):
    """``depth`` Linear layers with an activation between them: ``linear_1 -> act -> linear_2 -> ...``.

    ``depth=1`` is LLaVA v1's linear projector, ``depth=2`` with GELU is LLaVA v1.5's ``mlp2x_gelu`` (exact GELU).
    Its Linear layers keep PyTorch's default initialisation, as the original ``build_vision_projector`` does (a
    stage-1 projector trained from scratch starts from it), not transformers' ``normal(0, 0.02)``.
    """

    def __init__(self, in_features: int, out_features: int, depth: int = 2, act: str = "gelu", bias: bool = True):
        super().__init__()
        if depth < 1:
            raise ValueError("projector depth must be >= 1")
        self.depth = depth
        self.linear_1 = nn.Linear(in_features, out_features, bias=bias)
        for i in range(2, depth + 1):
            setattr(self, f"linear_{i}", nn.Linear(out_features, out_features, bias=bias))
        self.act = ACT2FN[act] if depth > 1 else nn.Identity()
        for m in self.children():
            if isinstance(m, nn.Linear):
                m._keep_default_init = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear_1(x)
        for i in range(2, self.depth + 1):
            x = getattr(self, f"linear_{i}")(self.act(x))
        return x


def spatial_pool(tokens: torch.Tensor, stride: int, mode: str = "average") -> torch.Tensor:
    """Pool ``(N, g*g, C)`` patch tokens on their square grid with ``stride`` -> ``(N, ceil(g/s)^2, C)``."""
    if stride == 1:
        return tokens
    n, p, c = tokens.shape
    g = int(round(p**0.5))
    if g * g != p:
        raise ValueError(f"spatial pooling needs a square patch grid, got {p} tokens")
    grid = tokens.transpose(1, 2).reshape(n, c, g, g)
    if mode == "average":
        grid = nn.functional.avg_pool2d(grid, stride, stride, ceil_mode=True)
    elif mode == "max":
        grid = nn.functional.max_pool2d(grid, stride, stride, ceil_mode=True)
    else:
        raise ValueError(f"unknown pooling mode {mode!r}; use 'average' or 'max'")
    return grid.flatten(2).transpose(1, 2)


def pooled_grid_side(grid: int, stride: int) -> int:
    return -(-grid // stride)
