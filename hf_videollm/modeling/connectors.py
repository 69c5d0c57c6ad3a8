"""Connectors: small reusable blocks that map encoder features into the language model's width.

Only what no library has is written here. Models pick a connector by name in their config.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from transformers.activations import ACT2FN

__all__ = [
    "MLPProjector", "parse_projector_type", "spatial_pool", "LayerNorm2d", "RegNetBlock", "RegStage", "STCConnector",
    "STC_CONNECTORS", "stc_output_grid",
]


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


# ----------------------------------------------------------------------------------------------------------------------
# Spatial-temporal convolution connector (VideoLLaMA 2): RegNet stages around a 3D down-sampler
# ----------------------------------------------------------------------------------------------------------------------


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an ``(N, C, H, W)`` map (timm's ``LayerNorm2d``), optionally followed by an
    activation (timm's ``LayerNormAct2d``)."""

    def __init__(self, channels: int, eps: float = 1e-5, act: nn.Module | None = None):
        super().__init__(channels, eps=eps)
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return self.act(x.permute(0, 3, 1, 2))


class ConvNorm(nn.Module):
    """``conv`` (no bias) + ``bn`` (a channel LayerNorm, SiLU unless ``act=False``): timm's ``ConvNormAct`` names."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, groups=groups, bias=False)
        self.bn = LayerNorm2d(out_chs, act=nn.SiLU() if act else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class SqueezeExcite(nn.Module):
    """Channel gate: global mean -> 1x1 conv ``fc1`` -> SiLU -> 1x1 conv ``fc2`` -> sigmoid, times the input."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = nn.SiLU()
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * gate.sigmoid()


class RegNetBlock(nn.Module):
    """A RegNet bottleneck with bottleneck ratio 1 and a depthwise 3x3 (timm ``regnet.Bottleneck`` with
    ``group_size=1``, ``se_ratio=0.25`` of the *input* width, SiLU, channel LayerNorms, stride 1)."""

    def __init__(self, in_chs: int, out_chs: int, se_ratio: float = 0.25):
        super().__init__()
        self.conv1 = ConvNorm(in_chs, out_chs, 1)
        self.conv2 = ConvNorm(out_chs, out_chs, 3, groups=out_chs)
        self.se = SqueezeExcite(out_chs, int(round(in_chs * se_ratio)))
        self.conv3 = ConvNorm(out_chs, out_chs, 1, act=False)
        self.downsample = ConvNorm(in_chs, out_chs, 1, act=False) if in_chs != out_chs else nn.Identity()
        self.act3 = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.se(self.conv2(self.conv1(x))))
        return self.act3(y + self.downsample(x))


class RegStage(nn.Module):
    """``depth`` :class:`RegNetBlock` s named ``b1 .. b<depth>`` (timm's ``RegStage`` layout); the first changes width."""

    def __init__(self, depth: int, in_chs: int, out_chs: int):
        super().__init__()
        self.depth = depth
        for i in range(depth):
            self.add_module(f"b{i + 1}", RegNetBlock(in_chs if i == 0 else out_chs, out_chs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.depth):
            x = getattr(self, f"b{i + 1}")(x)
        return x


#: VideoLLaMA 2 ``mm_projector_type`` -> (sampler, (t, h, w) down-sampling, sampler padding, RegStage depth).
STC_CONNECTORS: dict[str, tuple[str, tuple[int, int, int], int, int]] = {
    "stc_connector": ("conv", (2, 2, 2), 1, 4),
    "stc_connector_v35": ("conv", (2, 2, 2), 0, 4),
    "stp_connector": ("pool", (2, 2, 2), 0, 4),
    "spatial_conv": ("conv", (1, 2, 2), 1, 0),
    "spatial_pool": ("pool", (1, 2, 2), 0, 0),
}


def stc_output_grid(connector_type: str, frames: int, grid: int) -> tuple[int, int, int]:
    """``(t', h', w')`` the connector turns ``frames`` frames of a ``grid x grid`` patch map into."""
    sampler, down, pad, _ = STC_CONNECTORS[connector_type]
    if sampler == "pool":
        pad = 0
    out = tuple((n + 2 * pad - k) // k + 1 for n, k in zip((frames, grid, grid), down))
    if min(out) < 1:
        raise ValueError(
            f"{connector_type} needs at least {down[0]} frame(s) and a {down[1]}x{down[2]} patch grid; got {frames} "
            f"frame(s) of {grid}x{grid} patches"
        )
    return out  # type: ignore[return-value]


class STCConnector(nn.Module):
    """Spatial-temporal convolution connector (VideoLLaMA 2): per frame a RegNet stage ``s1`` (encoder width ->
    hidden), a 3D ``sampler`` over (time, height, width) -- Conv3d + SiLU, or average pooling + SiLU --, per output
    frame a second stage ``s2``, then an MLP ``readout`` (Linear, GELU, Linear) to the language model's width.
    ``depth``: RegNet blocks per stage (``None``: the type's own, 4 as in the original's ``STCConnector(depth=4)``).

    ``(B, T, N, C)`` frame features (``N`` a square patch grid) -> ``(B, T' * h' * w', D)`` tokens in (t, h, w) order.
    Neighbouring frames are mixed by the sampler: this is where the model sees motion.
    """

    def __init__(
        self, connector_type: str, in_features: int, hidden_size: int, out_features: int, mlp_depth: int = 2,
        depth: int | None = None,
    ):
        super().__init__()
        if connector_type not in STC_CONNECTORS:
            raise ValueError(f"unknown STC connector {connector_type!r}; use one of {sorted(STC_CONNECTORS)}")
        self.connector_type = connector_type
        sampler, down, pad, table_depth = STC_CONNECTORS[connector_type]
        if depth is not None and (depth < 1 or not table_depth):
            raise ValueError(
                f"depth={depth}: RegNet stages have at least 1 block, and {connector_type} has none to size"
            )
        depth = table_depth if depth is None else depth
        self.s1 = RegStage(depth, in_features, hidden_size) if depth else nn.Identity()
        if sampler == "conv":
            down_layer = nn.Conv3d(hidden_size, hidden_size, kernel_size=down, stride=down, padding=pad, bias=True)
        else:
            down_layer = nn.AvgPool3d(down)
        self.sampler = nn.Sequential(down_layer, nn.SiLU())
        self.s2 = RegStage(depth, hidden_size, hidden_size) if depth else nn.Identity()
        layers: list[nn.Module] = [nn.Linear(hidden_size, out_features)]
        for _ in range(1, mlp_depth):
            layers += [nn.GELU(), nn.Linear(out_features, out_features)]
        self.readout = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d, nn.LayerNorm)):
                m._keep_default_init = True  # the original builds every layer with PyTorch's default init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, n, c = x.shape
        g = int(round(n**0.5))
        if g * g != n:
            raise ValueError(f"the STC connector needs a square patch grid per frame, got {n} tokens")
        x = x.reshape(b * t, g, g, c).permute(0, 3, 1, 2)  # (B*T, C, h, w)
        x = self.s1(x)
        d = x.shape[1]
        x = x.reshape(b, t, d, g, g).transpose(1, 2)  # (B, D, T, h, w)
        x = self.sampler(x)
        _, _, t2, h2, w2 = x.shape
        x = x.transpose(1, 2).reshape(b * t2, d, h2, w2)
        x = self.s2(x)
        x = x.reshape(b, t2, d, h2 * w2).permute(0, 1, 3, 2).reshape(b, t2 * h2 * w2, d)
        return self.readout(x)
