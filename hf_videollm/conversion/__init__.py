"""Conversion from the original releases (and transformers' layouts) into hf_videollm checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch

from .engine import (
    AddDelta,
    ConversionError,
    ConversionReport,
    Drop,
    KeyTable,
    Merge,
    Rename,
    Transform,
    convert_checkpoint,
    expected_from_model,
)
from .sources import CheckpointSource

__all__ = [
    "AddDelta",
    "CheckpointSource",
    "ConversionError",
    "ConversionReport",
    "Drop",
    "KeyTable",
    "Merge",
    "Rename",
    "Transform",
    "convert",
    "convert_checkpoint",
    "expected_from_model",
]


def convert(
    model: str,
    src: str | Path,
    out: str | Path,
    *,
    source_format: str = "original",
    vision_tower: str | None = None,
    base: str | None = None,
    dtype: str | torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
    progress: bool = True,
) -> ConversionReport:
    """Convert a checkpoint of ``model`` (e.g. ``"llava"``) from ``src`` into ``out`` (hf_videollm format)."""
    from ..registry import MODELS

    available = sorted(n for n, e in MODELS.items() if e.converter is not None)
    if model not in available:
        raise ConversionError(f"no converter for {model!r}; available: {available}")
    if isinstance(dtype, str):
        if dtype not in ("float32", "float16", "bfloat16"):
            raise ConversionError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
        dtype = getattr(torch, dtype)
    return MODELS[model].get_converter()(
        src, out, source_format=source_format, vision_tower=vision_tower, base=base, dtype=dtype,
        max_shard_size=max_shard_size, progress=progress,
    )
