"""Conversion from the original releases (and transformers' layouts) into hf_videollm checkpoints."""

from __future__ import annotations

import inspect
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
from .release import Release, write_converted
from .sources import CheckpointSource

__all__ = [
    "AddDelta",
    "CheckpointSource",
    "ConversionError",
    "ConversionReport",
    "Drop",
    "KeyTable",
    "Merge",
    "Release",
    "Rename",
    "Transform",
    "convert",
    "convert_checkpoint",
    "expected_from_model",
    "write_converted",
]


_FLAGS = {"vision_tower": "--vision-tower", "base": "--base", "audio_config": "--audio-config"}


def _reader(model: str, source_format: str):
    """The reader of ``model``'s ``source_format`` release, named by the model's registry entry (``readers``)."""
    from ..registry import MODELS

    available = sorted(n for n, e in MODELS.items() if e.readers)
    if model not in available:
        raise ConversionError(f"no converter for {model!r}; available: {available}")
    formats = MODELS[model].readers
    if source_format not in formats:
        raise ConversionError(
            f"unknown source format {source_format!r} for {model}; use {' or '.join(map(repr, formats))}"
        )
    return MODELS[model].get_reader(source_format)


def convert(
    model: str,
    src: str | Path,
    out: str | Path,
    *,
    source_format: str = "original",
    vision_tower: str | None = None,
    base: str | None = None,
    audio_config: dict | str | None = None,
    dtype: str | torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
    progress: bool = True,
) -> ConversionReport:
    """Convert a checkpoint of ``model`` (e.g. ``"llava"``) from ``src`` into ``out`` (hf_videollm format).

    ``source_format``: ``"original"`` (the authors' release) or ``"transformers"`` (transformers' own layout);
    ``vision_tower``: the tower the release names, given locally or by another id; ``base``: what the release is
    added to (a delta release's base LLM); ``audio_config``: BEATs config fields of an audio-visual release
    (dict or JSON) where its weights do not tell them. Options that do not apply to the release are refused.
    """
    read = _reader(model, source_format)
    if isinstance(dtype, str):
        if dtype not in ("float32", "float16", "bfloat16"):
            raise ConversionError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
        dtype = getattr(torch, dtype)
    options = {k: v for k, v in {"vision_tower": vision_tower, "base": base, "audio_config": audio_config}.items()
               if v is not None}
    taken = [k for k in inspect.signature(read).parameters if k in _FLAGS]
    refused = [_FLAGS[k] for k in options if k not in taken]
    if refused:
        raise ConversionError(
            f"{' and '.join(refused)} does not apply to {model} ({source_format} release; "
            f"{read.__name__} takes {', '.join(_FLAGS[k] for k in taken) or 'no options'})"
        )
    release = read(src, **options)
    return write_converted(release, out, dtype=dtype, max_shard_size=max_shard_size, progress=progress)
