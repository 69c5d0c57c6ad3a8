"""Image / video-frame transforms as pure torch ops that reproduce the original projects' preprocessing.

The originals (CLIPImageProcessor, LAVIS ``Blip*ImageEvalProcessor``, Qwen-VL's ``image_transform``, VideoLLaMA2/3
processors, ...) resize with Pillow.  Normalised pixels are compared at 1e-5, which only Pillow's own resampling
reaches, so :func:`resize` re-implements Pillow's algorithm instead of using ``torch.nn.functional.interpolate``:

* separable convolution: horizontal pass first, then vertical (Pillow >= 13 runs the vertical pass first when the
  height loses more than twice as many pixels as the width; see ``pass_order``);
* the filter support is multiplied by the downscale factor (antialiasing); bicubic uses ``a = -0.5``;
* for ``uint8`` the per-output weights are normalised in float64, converted to fixed point with
  ``PRECISION_BITS = 32 - 8 - 2`` (round half away from zero), accumulated from ``1 << (PRECISION_BITS - 1)``,
  shifted right and clipped to ``[0, 255]`` after *each* pass;
* ``nearest`` uses Pillow's pixel-centre rule (an affine scale whose source coordinate is accumulated step by step).

For ``uint8`` input the result is bit-identical to ``PIL.Image.resize``.  Accumulation runs as float64 matrix
products over bands of the (sparse, banded) weight matrix with the fixed-point weights scaled by 2**-22: every product
and partial sum is an exact float64 (integers times a power of two, far below 2**53 significant bits), so the result
does not depend on the summation order, and a batch of video frames is resized in a few large matrix products.  Float input uses the same weights without fixed-point rounding or clipping (Pillow's mode "F").

Every function takes ``(..., H, W)`` tensors: ``(C, H, W)`` images and ``(N, C, H, W)`` frame batches alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

import numpy as np
import torch

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "IMAGENET_STANDARD_MEAN",
    "IMAGENET_STANDARD_STD",
    "PIL_RESAMPLE_CODES",
    "ImageTransform",
    "center_crop",
    "from_clip_preprocessor_config",
    "merge_window_patches",
    "normalize",
    "pad_to_square",
    "rescale",
    "resize",
    "resize_shortest_edge",
    "resolve_resample",
    "shortest_edge_size",
    "smart_resize",
    "to_float",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_STANDARD_MEAN = (0.5, 0.5, 0.5)
IMAGENET_STANDARD_STD = (0.5, 0.5, 0.5)

# Pillow's integer resampling codes (PIL.Image.Resampling) -> names used here.
PIL_RESAMPLE_CODES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_RESAMPLE_ALIASES = {"linear": "bilinear", "cubic": "bicubic", "antialias": "lanczos", "torch_nearest": "torch-nearest"}
_RESAMPLE_NAMES = (*PIL_RESAMPLE_CODES.values(), "torch-nearest")

_PRECISION_BITS = 32 - 8 - 2  # Pillow: 8 bits of result, 2 bits of headroom for negative lobes / overshoot

# Elements (float64) processed per chunk of planes: bounds peak memory for long videos (~64 MiB per buffer).
_CHUNK_ELEMENTS = 1 << 23


# ----------------------------------------------------------------------------------------------------------------------
# Pillow's filters (src/libImaging/Resample.c), vectorised over float64 arrays with the same operation order.
# ----------------------------------------------------------------------------------------------------------------------


def _box(x: np.ndarray) -> np.ndarray:
    return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)


def _triangle(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _hamming(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    xp = x * math.pi
    with np.errstate(divide="ignore", invalid="ignore"):
        # Pillow writes the window constants as float literals (0.54f, 0.46f).
        w = np.sin(xp) / xp * (float(np.float32(0.54)) + float(np.float32(0.46)) * np.cos(xp))
    return np.where(x == 0.0, 1.0, np.where(x >= 1.0, 0.0, w))


def _cubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    outer = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


def _sinc(x: np.ndarray) -> np.ndarray:
    xp = x * math.pi
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sin(xp) / xp
    return np.where(x == 0.0, 1.0, s)


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3), 0.0)


_FILTERS = {
    "box": (_box, 0.5),
    "bilinear": (_triangle, 1.0),
    "hamming": (_hamming, 1.0),
    "bicubic": (_cubic, 2.0),
    "lanczos": (_lanczos, 3.0),
}


def resolve_resample(resample: str | int) -> str:
    """Normalise a resampling spec (name, Pillow code 0-5 or ``PIL.Image.Resampling`` member) to a name.

    Names: ``nearest``, ``bilinear``, ``bicubic``, ``box``, ``hamming``, ``lanczos`` (all Pillow) and
    ``torch-nearest`` (``torch.nn.functional.interpolate(mode="nearest")``: source index ``floor(dst * in / out)``,
    what LongVLM's frame loader uses).
    """
    if isinstance(resample, bool):
        raise ValueError(f"resample must be a name or a Pillow code, got {resample!r}")
    if isinstance(resample, int):  # also PIL.Image.Resampling (an IntEnum)
        if int(resample) not in PIL_RESAMPLE_CODES:
            raise ValueError(f"unknown Pillow resampling code {int(resample)}; expected one of {PIL_RESAMPLE_CODES}")
        return PIL_RESAMPLE_CODES[int(resample)]
    if isinstance(resample, str):
        name = resample.strip().lower()
        name = _RESAMPLE_ALIASES.get(name, name)
        if name in _RESAMPLE_NAMES:
            return name
    raise ValueError(f"unknown resample {resample!r}; expected one of {_RESAMPLE_NAMES} or a Pillow code 0-5")


@dataclass(frozen=True)
class _AxisPlan:
    """Resampling of one axis: ``out[o] = sum_j weight[o, j] * in[j]`` evaluated band by band."""

    in_size: int
    out_size: int
    # (o0, o1, lo, hi, w): outputs o0:o1 read inputs lo:hi with weights w of shape (o1 - o0, hi - lo), float64.
    bands: tuple[tuple[int, int, int, int, torch.Tensor], ...]
    fixed_point: bool


@lru_cache(maxsize=256)
def _axis_plan(
    in_size: int, out_size: int, resample: str, antialias: bool, fixed_point: bool, span_target: int
) -> _AxisPlan:
    filt, base_support = _FILTERS[resample]
    # Pillow: scale = (in1 - in0) / outSize with a float32 box; integer sizes are exact.
    scale = in_size / out_size
    filterscale = max(scale, 1.0) if antialias else 1.0
    support = base_support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1

    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    ss = 1.0 / filterscale
    # C's (int) cast truncates toward zero; the clamp to 0 makes trunc and floor agree.
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size)
    count = xmax - xmin

    taps = np.arange(ksize, dtype=np.int64)
    valid = taps[None, :] < count[:, None]
    pos = (taps[None, :] + xmin[:, None]).astype(np.float64)
    w = np.where(valid, filt((pos - center[:, None] + 0.5) * ss), 0.0)
    ww = np.zeros(out_size, dtype=np.float64)
    for t in range(ksize):  # sequential sum, as in C
        ww = ww + w[:, t]
    w = np.where(ww[:, None] != 0.0, w / np.where(ww == 0.0, 1.0, ww)[:, None], w)
    if fixed_point:
        scaled = w * (1 << _PRECISION_BITS)
        # Fixed-point weights, stored divided by 2**PRECISION_BITS: a power-of-two scaling, so every product with
        # a uint8 value and every partial sum stays exact in float64 (at most ~32 significant bits) and the
        # accumulator comes out already shifted.
        w = np.trunc(np.where(w < 0, -0.5 + scaled, 0.5 + scaled)) / (1 << _PRECISION_BITS)

    # Bands of consecutive outputs: each reads a contiguous input span (xmin and xmin + count are non-decreasing).
    band = out_size if in_size <= 2 * span_target else max(8, int(span_target / max(scale, 0.25)))
    bands = []
    for o0 in range(0, out_size, band):
        o1 = min(out_size, o0 + band)
        lo = int(xmin[o0:o1].min())
        hi = int((xmin[o0:o1] + count[o0:o1]).max())
        dense = np.zeros((o1 - o0, hi - lo), dtype=np.float64)
        rows = np.repeat(np.arange(o1 - o0), ksize).reshape(o1 - o0, ksize)
        cols = xmin[o0:o1, None] + taps[None, :] - lo
        keep = valid[o0:o1]
        dense[rows[keep], cols[keep]] = w[o0:o1][keep]
        bands.append((o0, o1, lo, hi, torch.from_numpy(dense)))
    return _AxisPlan(in_size, out_size, tuple(bands), fixed_point)


def _apply_last(x: torch.Tensor, plan: _AxisPlan) -> torch.Tensor:
    """Resample the last axis of a 2-D float64 tensor ``(R, in) -> (R, out)``."""
    if len(plan.bands) == 1:
        _, _, lo, hi, w = plan.bands[0]
        return torch.mm(x[:, lo:hi], w.to(x.device).T)
    out = x.new_empty((x.shape[0], plan.out_size))
    for o0, o1, lo, hi, w in plan.bands:
        out[:, o0:o1] = torch.mm(x[:, lo:hi], w.to(x.device).T)
    return out


def _apply_middle(x: torch.Tensor, plan: _AxisPlan) -> torch.Tensor:
    """Resample the middle axis of a 3-D float64 tensor ``(P, in, W) -> (P, out, W)`` (batched products)."""
    out = x.new_empty((x.shape[0], plan.out_size, x.shape[2]))
    for o0, o1, lo, hi, w in plan.bands:
        torch.matmul(w.to(x.device), x[:, lo:hi, :], out=out[:, o0:o1, :])
    return out


def _round_clip(acc: torch.Tensor, final_dtype: torch.dtype | None = None) -> torch.Tensor:
    # clip8((acc + 2**21) >> 22) with acc already divided by 2**22: add 0.5, clamp to [0, 255], floor.
    acc = acc.add_(0.5).clamp_(0.0, 255.0)
    if final_dtype is not None:
        return acc.to(final_dtype)  # truncation == floor for values >= 0
    if acc.numel() < (1 << 16):
        # floor_ goes multi-threaded even for small tensors, which is slow on a busy machine; the truncating int
        # round trip stays single-threaded there.
        return acc.to(torch.int32).to(torch.float64)
    return acc.floor_()


@lru_cache(maxsize=256)
def _pil_nearest_index(in_size: int, out_size: int) -> torch.Tensor:
    # Pillow resizes with NEAREST through an affine scale: the source coordinate starts at scale / 2 and is advanced
    # by `scale` per output pixel (accumulated, not multiplied), then truncated.
    scale = in_size / out_size
    steps = np.full(out_size, scale, dtype=np.float64)
    steps[0] = 0.0 + scale * 0.5
    coord = np.add.accumulate(steps)
    idx = np.where(coord < 0.0, -1, coord.astype(np.int64))
    if (idx < 0).any() or (idx >= in_size).any():  # cannot happen for in, out >= 1; guard the invariant
        raise AssertionError(f"nearest index out of range for {in_size} -> {out_size}")
    return torch.from_numpy(idx)


def _check_image(img: torch.Tensor, name: str = "img") -> None:
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor shaped (C, H, W) or (N, C, H, W), got {type(img).__name__}")
    if img.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dims (..., H, W), got shape {tuple(img.shape)}")
    if img.shape[-1] == 0 or img.shape[-2] == 0:
        raise ValueError(f"{name} has an empty spatial size {tuple(img.shape[-2:])}")


def _size_pair(size: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        pair = (int(size), int(size))
    elif isinstance(size, (tuple, list, torch.Size)) and len(size) == 2:
        pair = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"{name} must be an int or a (height, width) pair, got {size!r}")
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(f"{name} must be positive, got {pair}")
    return pair


def resize(
    img: torch.Tensor,
    size: int | Sequence[int],
    resample: str | int = "bicubic",
    antialias: bool = True,
    pass_order: str = "pillow",
) -> torch.Tensor:
    """Resize ``(..., H, W)`` to ``size = (height, width)`` exactly like ``PIL.Image.resize((width, height))``.

    ``uint8`` input gives bit-identical results to Pillow (fixed-point weights, rounding and clipping after each
    pass) and returns ``uint8``; floating input uses the same weights in float64 without rounding or clipping
    (Pillow's mode "F") and returns the input dtype.  ``nearest`` works for every dtype.  Channels are resampled
    independently (Pillow's behaviour for RGB/L images; Pillow premultiplies alpha for RGBA, this function does not).

    Args:
        img: ``(C, H, W)``, ``(N, C, H, W)`` or any ``(..., H, W)`` tensor; all leading dims are one batch.
        size: target ``(height, width)`` (an int means a square).
        resample: ``"bicubic"`` (default), ``"bilinear"``, ``"nearest"``, ``"box"``, ``"hamming"``, ``"lanczos"``,
            a Pillow code 0-5, or ``"torch-nearest"`` (``torch.nn.functional.interpolate`` nearest rule).
        antialias: Pillow always widens the filter by the downscale factor; ``False`` keeps the unscaled kernel
            (no Pillow equivalent; only for experiments).
        pass_order: which 1-D pass runs first when both axes change.  ``"pillow"`` (default) follows the installed
            Pillow: before 13 always horizontal first; from 13 on vertical first when the height shrinks by more than
            twice as many pixels as the width (``in_h - out_h > 2 * (in_w - out_w)``), horizontal first otherwise.
            ``"horizontal_first"`` (Pillow <= 12, what the original projects ran with) and ``"pillow13"`` force one
            rule.  Both orders round to uint8 in between, so they differ by at most a few levels in rare pixels.
    """
    _check_image(img)
    out_h, out_w = _size_pair(size)
    name = resolve_resample(resample)
    in_h, in_w = img.shape[-2:]
    lead = img.shape[:-2]

    if name == "torch-nearest":
        x = img.reshape(-1, 1, in_h, in_w)
        if not x.is_floating_point():
            x = x.to(torch.float32)  # exact for 8/16-bit values; nearest only copies them
        y = torch.nn.functional.interpolate(x, size=(out_h, out_w), mode="nearest")
        return y.to(img.dtype).reshape(*lead, out_h, out_w)

    if (out_h, out_w) == (in_h, in_w):
        return img.clone()

    if name == "nearest":
        out = img
        if out_w != in_w:
            out = out.index_select(-1, _pil_nearest_index(in_w, out_w).to(img.device))
        if out_h != in_h:
            out = out.index_select(-2, _pil_nearest_index(in_h, out_h).to(img.device))
        return out.contiguous()

    if img.dtype == torch.uint8:
        fixed_point = True
    elif img.is_floating_point():
        fixed_point = False
    else:
        raise TypeError(f"resize expects a uint8 or floating tensor, got {img.dtype}; convert it first")

    plan_w = _axis_plan(in_w, out_w, name, bool(antialias), fixed_point, 48) if out_w != in_w else None
    plan_h = _axis_plan(in_h, out_h, name, bool(antialias), fixed_point, 96) if out_h != in_h else None
    order = ("h", "w") if _vertical_first(in_h, in_w, out_h, out_w, pass_order) else ("w", "h")
    order = tuple(axis for axis in order if (plan_w if axis == "w" else plan_h) is not None)
    # Pillow's mode "F" stores the intermediate image as float32; mirror that for float32 input.
    inter_dtype = torch.float32 if img.dtype in (torch.float32, torch.float16, torch.bfloat16) else None

    planes = img.reshape(-1, in_h, in_w)
    chunk = max(1, _CHUNK_ELEMENTS // (max(in_h, out_h) * max(in_w, out_w)))
    results = []
    for p0 in range(0, planes.shape[0], chunk):
        part = planes[p0 : p0 + chunk]
        x = torch.empty(part.shape, dtype=torch.float64, device=part.device).copy_(part)  # (P, H, W)
        p = x.shape[0]
        for i, axis in enumerate(order):
            last = i + 1 == len(order)
            if axis == "w":
                x = _apply_last(x.reshape(-1, x.shape[-1]), plan_w).reshape(p, -1, out_w)
            else:
                x = _apply_middle(x, plan_h)
            if fixed_point:
                x = _round_clip(x, img.dtype if last else None)
            elif last:
                x = x.to(img.dtype)
            elif inter_dtype is not None:
                x = x.to(inter_dtype).to(torch.float64)
        results.append(x)
    out = results[0] if len(results) == 1 else torch.cat(results, dim=0)
    return out.contiguous().reshape(*lead, out_h, out_w)


def _pillow_major() -> int:
    try:
        import PIL

        return int(str(PIL.__version__).split(".")[0])
    except Exception:  # noqa: BLE001 - Pillow is a dependency; without it assume the current rule
        return 13


_PILLOW_MAJOR = _pillow_major()


def _vertical_first(in_h: int, in_w: int, out_h: int, out_w: int, pass_order: str) -> bool:
    if pass_order == "pillow":
        pass_order = "pillow13" if _PILLOW_MAJOR >= 13 else "horizontal_first"
    if pass_order == "horizontal_first":
        return False
    if pass_order == "pillow13":
        # Pillow 13 (python-pillow/Pillow#9549): shrink the height first if it loses far more rows than columns.
        return out_h < in_h and (in_h - out_h) > 2 * (in_w - out_w)
    raise ValueError(f"pass_order must be 'pillow', 'pillow13' or 'horizontal_first', got {pass_order!r}")


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Target ``(h, w)`` whose short side is ``size``: the long side is ``int(size * long / short)``.

    Same rule as transformers' ``get_resize_output_image_size(size=int, default_to_square=False)`` used by
    ``CLIPImageProcessor`` (ties, ``h == w``, count as "width is the short side").
    """
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = int(size), int(int(size) * long / short)
    return (new_long, new_short) if width <= height else (new_short, new_long)


def resize_shortest_edge(img: torch.Tensor, size: int, resample: str | int = "bicubic") -> torch.Tensor:
    """Resize so the shorter side equals ``size`` (CLIP rule, see :func:`shortest_edge_size`)."""
    _check_image(img)
    h, w = img.shape[-2:]
    return resize(img, shortest_edge_size(h, w, size), resample)


def center_crop(img: torch.Tensor, size: int | Sequence[int]) -> torch.Tensor:
    """Centre crop to ``size = (height, width)`` with transformers' offsets ``top = (H - h) // 2``, ``left = (W - w) // 2``.

    As transformers' ``center_crop``: if the image is smaller than the crop it is first zero-padded (image placed
    at ``ceil((h - H) / 2)``, ``ceil((w - W) / 2)``) so the result always has the requested size.
    """
    _check_image(img)
    ch, cw = _size_pair(size, "crop size")
    h, w = img.shape[-2:]
    if ch <= h and cw <= w:
        top, left = (h - ch) // 2, (w - cw) // 2
        return img[..., top : top + ch, left : left + cw].contiguous()
    new_h, new_w = max(ch, h), max(cw, w)
    canvas = img.new_zeros((*img.shape[:-2], new_h, new_w))
    top_pad, left_pad = math.ceil((new_h - h) / 2), math.ceil((new_w - w) / 2)
    canvas[..., top_pad : top_pad + h, left_pad : left_pad + w] = img
    top, left = (h - ch) // 2 + top_pad, (w - cw) // 2 + left_pad
    return canvas[..., max(0, top) : min(new_h, top + ch), max(0, left) : min(new_w, left + cw)].contiguous()


def pad_to_square(img: torch.Tensor, fill: Sequence[float] | float) -> torch.Tensor:
    """LLaVA's ``expand2square``: paste the image centred on a square canvas of side ``max(H, W)`` filled with ``fill``.

    The offset along the short side is ``(long - short) // 2``.  ``fill`` is one value per channel in the image's own
    units (``(122, 116, 104)`` for uint8 LLaVA-1.5, i.e. ``int(m * 255)`` of the CLIP mean); square input is returned
    unchanged (a copy).
    """
    _check_image(img)
    h, w = img.shape[-2:]
    if h == w:
        return img.clone()
    side = max(h, w)
    fill_t = torch.as_tensor(fill, dtype=torch.float64).flatten()
    channels = img.shape[-3] if img.ndim >= 3 else 1
    if fill_t.numel() == 1:
        fill_t = fill_t.expand(channels)
    if fill_t.numel() != channels:
        raise ValueError(f"fill has {fill_t.numel()} values but the image has {channels} channels")
    if img.dtype == torch.uint8 and ((fill_t < 0) | (fill_t > 255) | (fill_t != fill_t.round())).any():
        raise ValueError(f"fill for a uint8 image must be integers in [0, 255], got {fill_t.tolist()}")
    canvas = torch.empty((*img.shape[:-2], side, side), dtype=img.dtype, device=img.device)
    fill_view = fill_t.to(img.dtype).to(img.device)
    if img.ndim >= 3:
        canvas.copy_(fill_view.reshape(channels, 1, 1).expand_as(canvas))
    else:
        canvas.fill_(fill_view[0])
    top, left = (side - h) // 2, (side - w) // 2
    canvas[..., top : top + h, left : left + w] = img
    return canvas


def rescale(img: torch.Tensor, factor: float = 1 / 255, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``img * factor`` computed in float64 and cast to ``dtype`` (transformers' ``rescale``)."""
    _check_image(img)
    return (img.to(torch.float64) * float(factor)).to(dtype)


def to_float(img: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """torchvision ``ToTensor`` semantics: uint8 -> ``img.to(dtype) / 255``; floating input is only cast."""
    _check_image(img)
    if img.dtype == torch.uint8:
        return img.to(dtype).div_(255)
    if img.is_floating_point():
        return img.to(dtype)
    raise TypeError(f"to_float expects uint8 or floating input, got {img.dtype}")


def normalize(img: torch.Tensor, mean: Sequence[float] | float, std: Sequence[float] | float) -> torch.Tensor:
    """``(img - mean) / std`` per channel (channel axis = -3), in the image's float dtype.

    Same arithmetic as transformers' ``normalize`` and torchvision's ``Normalize``: mean/std cast to the image dtype.
    """
    _check_image(img)
    if not img.is_floating_point():
        raise TypeError(f"normalize expects a floating tensor (rescale uint8 first), got {img.dtype}")
    channels = img.shape[-3] if img.ndim >= 3 else 1
    m = torch.as_tensor(mean, dtype=img.dtype, device=img.device).flatten()
    s = torch.as_tensor(std, dtype=img.dtype, device=img.device).flatten()
    if m.numel() == 1:
        m = m.expand(channels)
    if s.numel() == 1:
        s = s.expand(channels)
    if m.numel() != channels or s.numel() != channels:
        raise ValueError(f"mean/std need {channels} values (one per channel), got {m.numel()} and {s.numel()}")
    if (s == 0).any():
        raise ValueError(f"std must be non-zero, got {s.tolist()}")
    if img.ndim >= 3:
        m, s = m.reshape(channels, 1, 1), s.reshape(channels, 1, 1)
    return (img - m) / s


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = 14 * 14 * 4 * 1280,
    *,
    rule: str = "qwen2_vl",
    max_ratio: float | None = None,
) -> tuple[int, int]:
    """Target ``(h, w)``, multiples of ``factor``, with ``h * w`` in ``[min_pixels, max_pixels]`` and the aspect kept.

    Both rules start from ``round(x / factor) * factor`` (Python's round: halves go to the even multiple).

    * ``rule="qwen2_vl"`` (Qwen2-VL / transformers ``smart_resize``): above ``max_pixels`` scale down by
      ``beta = sqrt(h * w / max_pixels)`` with ``max(factor, floor(x / beta / factor) * factor)``, *else* below
      ``min_pixels`` scale up with ``ceil(x * beta / factor) * factor``; aspect ratio limited to 200 by default.
    * ``rule="videollama3"`` (hub ``simple_batched_resize``; pass ``max_pixels = max_tokens * factor**2 //
      num_images`` and ``min_pixels = min_tokens * factor**2``): scale down with plain ``floor`` (no lower bound),
      then — as a separate check — scale up if still below ``min_pixels``; no aspect-ratio check.
    """
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    if rule not in ("qwen2_vl", "videollama3"):
        raise ValueError(f"rule must be 'qwen2_vl' or 'videollama3', got {rule!r}")
    if max_ratio is None and rule == "qwen2_vl":
        max_ratio = 200
    if max_ratio is not None and max(height, width) / min(height, width) > max_ratio:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {max_ratio}, got {max(height, width) / min(height, width)} "
            f"for {height}x{width}; crop or pad the image first"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if rule == "qwen2_vl":
        if h_bar * w_bar > max_pixels:
            beta = math.sqrt((height * width) / max_pixels)
            h_bar = max(factor, math.floor(height / beta / factor) * factor)
            w_bar = max(factor, math.floor(width / beta / factor) * factor)
        elif h_bar * w_bar < min_pixels:
            beta = math.sqrt(min_pixels / (height * width))
            h_bar = math.ceil(height * beta / factor) * factor
            w_bar = math.ceil(width * beta / factor) * factor
        return h_bar, w_bar
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    if h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def merge_window_patches(
    pixels: torch.Tensor, patch_size: int = 14, merge_size: int = 1
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Flatten ``(T, C, H, W)`` frames into patch rows in merge-window order (VideoLLaMA3's image processor).

    Returns ``(T * gh * gw, C * p * p)`` rows ordered per frame as ``(gh/m, gw/m, m, m)`` and the grid ``(T, gh, gw)``
    with ``gh = H // p``, ``gw = W // p``.  Each row is one patch laid out ``(C, p, p)``.
    """
    if pixels.ndim == 3:
        pixels = pixels.unsqueeze(0)
    if pixels.ndim != 4:
        raise ValueError(f"pixels must be (T, C, H, W) or (C, H, W), got shape {tuple(pixels.shape)}")
    t, c, h, w = pixels.shape
    p, m = int(patch_size), int(merge_size)
    gh, gw = h // p, w // p
    if gh * p != h or gw * p != w or gh % m or gw % m:
        raise ValueError(f"frame size {h}x{w} must be a multiple of patch_size * merge_size = {p * m}")
    x = pixels.reshape(t, c, gh // m, m, p, gw // m, m, p)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)
    return x.reshape(t * gh * gw, c * p * p), (t, gh, gw)


# ----------------------------------------------------------------------------------------------------------------------
# Composite transform
# ----------------------------------------------------------------------------------------------------------------------


def _pair_or_none(value: Any, name: str) -> tuple[int, int] | None:
    return None if value is None else _size_pair(value, name)


@dataclass(frozen=True)
class ImageTransform:
    """CLIP-style image pipeline: [pad to square] -> resize -> [centre crop] -> rescale -> normalize.

    Args:
        size: ``int`` for ``resize_mode="shortest_edge"``; ``int`` (square) or ``(height, width)`` for ``"exact"``;
            ``None`` with ``resize_mode="none"`` skips resizing.
        resize_mode: ``"shortest_edge"`` (CLIP rule), ``"exact"`` (resize to ``size`` ignoring the aspect ratio:
            BLIP-2/LAVIS, Qwen-VL, SigLIP) or ``"none"``.
        crop_size: centre crop ``(height, width)`` (int = square) or ``None``.
        pad_to_square: LLaVA-1.5 ``expand2square`` before resizing.
        fill: canvas colour (uint8 per channel) for ``pad_to_square``; ``None`` -> ``int(m * 255)`` of ``mean``.
        resample: resampling filter name (see :func:`resize`).
        mean, std: per-channel normalisation; ``None`` skips normalisation.
        rescale_factor: factor applied before normalisation (``None`` skips it).

    ``__call__`` takes uint8 ``(C, H, W)`` or ``(N, C, H, W)`` and returns float32 of the same rank.
    """

    size: int | tuple[int, int] | None
    resize_mode: str = "shortest_edge"
    crop_size: tuple[int, int] | None = None
    pad_to_square: bool = False
    fill: tuple[int, ...] | None = None
    resample: str = "bicubic"
    mean: tuple[float, ...] | None = OPENAI_CLIP_MEAN
    std: tuple[float, ...] | None = OPENAI_CLIP_STD
    rescale_factor: float | None = 1 / 255

    def __post_init__(self) -> None:
        mode = self.resize_mode
        if mode not in ("shortest_edge", "exact", "none"):
            raise ValueError(f"resize_mode must be 'shortest_edge', 'exact' or 'none', got {mode!r}")
        size = self.size
        if mode == "none":
            if size is not None:
                raise ValueError("resize_mode='none' takes size=None")
        elif mode == "shortest_edge":
            if isinstance(size, (list, tuple)) and len(size) == 1:
                size = size[0]
            if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
                raise ValueError(f"resize_mode='shortest_edge' needs a positive int size, got {size!r}")
            size = int(size)
        else:
            size = _size_pair(size)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "crop_size", _pair_or_none(self.crop_size, "crop_size"))
        object.__setattr__(self, "resample", resolve_resample(self.resample))
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must both be given or both be None")
        if self.mean is not None:
            object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
            object.__setattr__(self, "std", tuple(float(v) for v in self.std))
            if len(self.mean) != len(self.std):
                raise ValueError(f"mean and std lengths differ: {self.mean} vs {self.std}")
        if self.rescale_factor is not None:
            object.__setattr__(self, "rescale_factor", float(self.rescale_factor))
        object.__setattr__(self, "pad_to_square", bool(self.pad_to_square))
        fill = self.fill
        if self.pad_to_square and fill is None:
            if self.mean is None:
                raise ValueError("pad_to_square needs a fill colour (or a mean to derive it from)")
            fill = tuple(int(v * 255) for v in self.mean)
        if fill is not None:
            fill = tuple(int(v) for v in fill)
            if any(v < 0 or v > 255 for v in fill):
                raise ValueError(f"fill must be uint8 values, got {fill}")
        object.__setattr__(self, "fill", fill)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the result for an input of ``height x width``."""
        if self.pad_to_square:
            height = width = max(height, width)
        if self.resize_mode == "shortest_edge":
            height, width = shortest_edge_size(height, width, self.size)
        elif self.resize_mode == "exact":
            height, width = self.size
        return self.crop_size if self.crop_size is not None else (height, width)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        _check_image(img)
        if img.dtype != torch.uint8:
            raise TypeError(
                f"ImageTransform expects uint8 pixels (as load_image returns), got {img.dtype}; for float images in "
                "[0, 1] use (img * 255).round().to(torch.uint8) or call the individual transforms"
            )
        if img.ndim not in (3, 4):
            raise ValueError(f"expected (C, H, W) or (N, C, H, W), got shape {tuple(img.shape)}")
        if _pillow_path_applies(img, self.resample, self.resize_mode):
            fast = self._call_pillow(img)
            if fast is not None:
                return fast
        if self.pad_to_square:
            img = pad_to_square(img, self.fill)
        if self.resize_mode == "shortest_edge":
            img = resize_shortest_edge(img, self.size, self.resample)
        elif self.resize_mode == "exact":
            img = resize(img, self.size, self.resample)
        if self.crop_size is not None:
            img = center_crop(img, self.crop_size)
        out = rescale(img, self.rescale_factor) if self.rescale_factor is not None else img.to(torch.float32)
        if self.mean is not None:
            out = normalize(out, self.mean, self.std)
        return out

    def _finish(self, img: torch.Tensor) -> torch.Tensor:
        """Rescale + normalise (uint8 -> float32), the reference arithmetic."""
        out = rescale(img, self.rescale_factor) if self.rescale_factor is not None else img.to(torch.float32)
        if self.mean is not None:
            out = normalize(out, self.mean, self.std)
        return out

    def _lookup_table(self, channels: int) -> np.ndarray:
        """``(C, 256)`` float32: :meth:`_finish` of every uint8 value per channel (same element-wise ops, so equal)."""
        levels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 256).expand(channels, 1, 256).contiguous()
        return self._finish(levels).reshape(channels, 256).numpy()

    def _call_pillow(self, img: torch.Tensor) -> torch.Tensor | None:
        """uint8 fast path, bit-identical to the torch path: Pillow (the reference the torch path mirrors) resizes each
        channel plane as an "L" image on worker threads (it releases the GIL); pad-to-square, the crop and rescale +
        normalise (a 256-entry lookup per channel: the same element-wise ops on every uint8 value) run there too.
        Returns ``None`` when the crop is larger than the resized image (the torch path zero-pads)."""
        frames = img if img.ndim == 4 else img.unsqueeze(0)
        n, c, in_h, in_w = frames.shape
        side = max(in_h, in_w)
        ph, pw = (side, side) if self.pad_to_square else (in_h, in_w)
        size = shortest_edge_size(ph, pw, self.size) if self.resize_mode == "shortest_edge" else self.size
        crop = self.crop_size
        if crop is not None and (crop[0] > size[0] or crop[1] > size[1]):
            return None
        top, left = (0, 0) if crop is None else ((size[0] - crop[0]) // 2, (size[1] - crop[1]) // 2)
        oh, ow = size if crop is None else crop
        lut = self._lookup_table(c)
        out = np.empty((n, c, oh, ow), dtype=np.float32)
        pad = None
        if self.pad_to_square and in_h != in_w:
            pad = ((side - in_h) // 2, (side - in_w) // 2, self.fill)
        fill = None if pad is None else np.array([pad[2][k] if len(pad[2]) > 1 else pad[2][0] for k in range(c)], np.uint8)
        hwc = frames.permute(0, 2, 3, 1)
        if c == 3 and hwc.is_contiguous():  # decoded frames are (T, H, W, C) underneath: one RGB image per frame
            src = hwc.numpy()

            def item(i: int) -> None:
                x = src[i]
                if pad is None:
                    res = _pillow_resize(x, size, self.resample)
                else:
                    res = _pillow_resize_padded(x, pad[0], pad[1], side, fill, size, self.resample)
                res = res[top : top + oh, left : left + ow]
                for k in range(c):
                    np.take(lut[k], res[..., k], out=out[i, k])

            items = [(i,) for i in range(n)]
        else:  # channels-first planes: each an "L" image (Pillow resamples RGB channels exactly as L planes)
            src = frames.numpy()

            def item(i: int, k: int) -> None:
                x = src[i, k]
                if pad is None:
                    res = _pillow_resize(x, size, self.resample)
                else:
                    res = _pillow_resize_padded(x, pad[0], pad[1], side, fill[k], size, self.resample)
                np.take(lut[k], res[top : top + oh, left : left + ow], out=out[i, k])

            items = [(i, k) for i in range(n) for k in range(c)]
        _run_parallel(item, items)
        result = torch.from_numpy(out)
        return result if img.ndim == 4 else result[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples as lists); :meth:`from_dict` inverts it."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageTransform:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ImageTransform fields {unknown}; known: {sorted(known)}")
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
        return cls(**kwargs)

    @classmethod
    def from_clip_preprocessor_config(cls, config: dict[str, Any], **overrides: Any) -> ImageTransform:
        return from_clip_preprocessor_config(config, **overrides)


# ----------------------------------------------------------------------------------------------------------------------
# Pillow on worker threads (the uint8 fast path of ImageTransform)
# ----------------------------------------------------------------------------------------------------------------------

_PILLOW_FILTERS = ("bicubic", "bilinear", "box", "hamming", "lanczos", "nearest")
_PILLOW_CODES = {name: code for code, name in PIL_RESAMPLE_CODES.items()}
_POOL: Any = None


def _pillow_path_applies(img: torch.Tensor, resample: str, resize_mode: str) -> bool:
    # Pillow resamples an "L" plane with the same fixed-point code the torch path mirrors (and RGB channels exactly as
    # L planes), and the torch path's default pass order *is* the installed Pillow's, so both give the same bytes.
    return (
        img.dtype == torch.uint8
        and img.device.type == "cpu"
        and img.ndim in (3, 4)
        and img.shape[-3] in (1, 3)
        and resample in _PILLOW_FILTERS
        and resize_mode in ("shortest_edge", "exact")
    )


def _pillow_resize(plane: np.ndarray, size: tuple[int, int], resample: str) -> np.ndarray:
    """Resize one uint8 ``(H, W)`` plane (mode "L") or ``(H, W, 3)`` image (mode "RGB") to ``size = (h, w)`` with Pillow."""
    from PIL import Image

    if plane.shape[:2] == tuple(size):
        return plane
    pil = Image.fromarray(np.ascontiguousarray(plane), "L" if plane.ndim == 2 else "RGB")
    return np.asarray(pil.resize((size[1], size[0]), _PILLOW_CODES[resample]))


def _pillow_resize_padded(
    x: np.ndarray, top: int, left: int, side: int, fill: np.ndarray | int, size: tuple[int, int], resample: str
) -> np.ndarray:
    """Pillow's resize of ``x`` pasted at ``(top, left)`` on a ``side x side`` canvas of ``fill``, without resampling the
    canvas' bands horizontally when they are whole rows (a wide image) and the resize runs horizontal-first.

    Pillow resizes in two 8-bit passes (horizontal into an 8-bit intermediate, then vertical), and a constant row
    stays exactly constant through the horizontal pass (its fixed-point weights sum to 1 within far less than the
    rounding half-unit). So the intermediate is: the image's rows resized horizontally, between rows of ``fill``; the
    vertical pass then runs on it as Pillow would. Bit-identical to resizing the canvas (tests compare both); it
    skips ``1 - h / side`` of the horizontal pass (44 % for 720p) and the canvas."""
    h, w = x.shape[:2]
    out_h, out_w = size
    if left or w != side or resample == "nearest" or _vertical_first(side, side, out_h, out_w, "pillow"):
        canvas = np.empty((side, side, *x.shape[2:]), dtype=np.uint8)
        canvas[...] = fill
        canvas[top : top + h, left : left + w] = x
        return _pillow_resize(canvas, size, resample)
    rows = _pillow_resize(x, (h, out_w), resample)  # horizontal pass only (same width in, same weights)
    mid = np.empty((side, out_w, *x.shape[2:]), dtype=np.uint8)
    mid[...] = fill
    mid[top : top + h] = rows
    return _pillow_resize(mid, size, resample)  # vertical pass only


def _run_parallel(fn: Any, items: list[tuple]) -> None:
    """``fn(*item)`` for every item, on up to ``torch.get_num_threads()`` (<= 8) worker threads."""
    global _POOL
    workers = max(1, min(torch.get_num_threads(), len(items), 8))
    if workers == 1:
        for item in items:
            fn(*item)
        return
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor

        _POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="hf_videollm_resize")

    def share(k: int) -> None:  # one task per worker: items k, k + workers, ...
        for item in items[k::workers]:
            fn(*item)

    for fut in [_POOL.submit(share, k) for k in range(workers)]:
        fut.result()


def from_clip_preprocessor_config(
    config: dict[str, Any], *, pad_to_square: bool = False, fill: Sequence[int] | None = None
) -> ImageTransform:
    """Build an :class:`ImageTransform` from an original ``preprocessor_config.json`` (CLIP / SigLIP image processor).

    Reads ``do_resize``, ``size`` (int or ``{"shortest_edge"}`` / ``{"height", "width"}``), ``do_center_crop``,
    ``crop_size`` (int or ``{"height", "width"}``), ``resample`` (Pillow code), ``do_rescale``, ``rescale_factor``,
    ``do_normalize``, ``image_mean``, ``image_std``.  Defaults follow ``CLIPImageProcessor`` (SigLIP processors:
    ``SiglipImageProcessor`` — an int ``size`` is a square and the mean/std default to 0.5); ``do_center_crop``
    defaults to whether a ``crop_size`` is present.  ``pad_to_square`` adds LLaVA's ``expand2square`` (fill
    ``int(m * 255)`` of the mean unless given).
    """
    kind = str(config.get("image_processor_type") or config.get("feature_extractor_type") or "")
    siglip = kind.lower().startswith("siglip")
    size_cfg = config.get("size", {"height": 224, "width": 224} if siglip else {"shortest_edge": 224})
    if not config.get("do_resize", True):
        size, mode = None, "none"
    elif isinstance(size_cfg, dict):
        if "shortest_edge" in size_cfg and size_cfg.get("longest_edge") is None:
            size, mode = int(size_cfg["shortest_edge"]), "shortest_edge"
        elif "height" in size_cfg and "width" in size_cfg:
            size, mode = (int(size_cfg["height"]), int(size_cfg["width"])), "exact"
        else:
            raise ValueError(f"unsupported size {size_cfg!r}: expected {{'shortest_edge'}} or {{'height', 'width'}}")
    elif isinstance(size_cfg, (int, float)):
        size, mode = (int(size_cfg), "exact") if siglip else (int(size_cfg), "shortest_edge")
    elif isinstance(size_cfg, (list, tuple)) and len(size_cfg) == 2:
        size, mode = (int(size_cfg[0]), int(size_cfg[1])), "exact"
    else:
        raise ValueError(f"unsupported size {size_cfg!r}")

    crop_size = None
    if config.get("do_center_crop", "crop_size" in config):
        crop_cfg = config.get("crop_size", 224)
        if isinstance(crop_cfg, dict):
            crop_size = (int(crop_cfg["height"]), int(crop_cfg["width"]))
        else:
            crop_size = _size_pair(crop_cfg, "crop_size")

    default_mean = IMAGENET_STANDARD_MEAN if siglip else OPENAI_CLIP_MEAN
    default_std = IMAGENET_STANDARD_STD if siglip else OPENAI_CLIP_STD
    if config.get("do_normalize", True):
        mean = tuple(config.get("image_mean") or default_mean)
        std = tuple(config.get("image_std") or default_std)
    else:
        mean = std = None
    rescale_factor = float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else None
    if pad_to_square and fill is None and mean is None:
        fill = tuple(int(v * 255) for v in OPENAI_CLIP_MEAN)
    return ImageTransform(
        size=size,
        resize_mode=mode,
        crop_size=crop_size,
        pad_to_square=pad_to_square,
        fill=None if fill is None else tuple(fill),
        resample=resolve_resample(config.get("resample", 3)),
        mean=mean,
        std=std,
        rescale_factor=rescale_factor,
    )
