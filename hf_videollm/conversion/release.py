"""What every release converter shares: a :class:`Release` (what to build, from which parts) and
:func:`write_converted`, which writes it.

A model's converter (``conversion/<model>.py``) reads top to bottom as: facts about the release -> key tables
(declarative) -> config -> processor, and its ``read_<model>(src, *, source_format, vision_tower, base)`` returns a
:class:`Release`. :func:`write_converted` then does the same for every model, in this order:

1. a meta-device skeleton of ``model_class(config)`` gives the expected keys and shapes (no memory used);
2. :func:`~.engine.convert_checkpoint` plans (every unused source key, unfilled target and shape problem listed,
   nothing written), then streams the weights shard by shard through the key tables into safetensors;
3. ``config.json`` (with ``architectures`` and the cast dtype), the release's ``generation_config.json``, the
   processor (tokenizer, chat template, preprocessing).

Everything that depends on the release's contents -- config fields, tokenizer, preprocessing, the key tables' plan --
fails before anything is written: the processor is built while the release is read, not after the weights.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .engine import ConversionReport, KeyTable, convert_checkpoint, expected_from_model
from .hub import copy_generation_config
from .sources import CheckpointSource, ConversionError

__all__ = ["Release", "write_converted", "read_json", "load_tokenizer", "add_placeholder_tokens"]


@dataclass
class Release:
    """One release, read and checked: the model to build and where each of its parts comes from.

    ``sources``: (checkpoint, key table) pairs that together fill every weight of ``model_class(config)``;
    ``extra_sources``: named sources that rules look up (``AddDelta(base=...)``, ``ctx.lookup``);
    ``allow_missing``: regexes of weights the model creates itself (see :func:`~.engine.convert_checkpoint`);
    ``processor``: built already (tokenizer with its placeholders, chat template, preprocessing);
    ``converted_from``: the path or Hub id the user gave, and ``converter``: which converter ran -- both stored in
    every shard's metadata; ``generation_config_from``: the directory whose ``generation_config.json`` is carried
    over (``None``: the release has none).
    """

    model_class: type
    config: Any
    sources: list[tuple[CheckpointSource, KeyTable]]
    processor: Any
    converted_from: str
    converter: str
    generation_config_from: Path | None = None
    extra_sources: dict[str, CheckpointSource] | None = None
    allow_missing: Sequence[str] = ()


def write_converted(
    release: Release,
    out: str | Path,
    *,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
    progress: bool = True,
) -> ConversionReport:
    """Write ``release`` to ``out`` in hf_videollm format: weights, config, generation config, processor."""
    out = Path(out)
    with torch.device("meta"):
        skeleton = release.model_class(release.config)
    config = release.config
    config.architectures = [release.model_class.__name__]
    if dtype is not None:
        config.dtype = dtype

    def finalize(staging: Path) -> None:
        # config, generation config and processor go next to the weights before the output is swapped in
        config.save_pretrained(staging)
        if release.generation_config_from is not None:
            copy_generation_config(release.generation_config_from, staging)
        release.processor.save_pretrained(staging)

    return convert_checkpoint(
        release.sources,
        expected_from_model(skeleton),
        out,
        extra_sources=release.extra_sources,
        dtype=dtype,
        max_shard_size=max_shard_size,
        allow_missing=release.allow_missing,
        progress=progress,
        metadata={"converted_from": release.converted_from, "converter": release.converter},
        finalize=finalize,
    )


# ---------------------------------------------------------------------------------------------------------------------
# reading a release's files
# ---------------------------------------------------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    """A JSON file of the release; a missing one is a :class:`ConversionError` naming it."""
    if not path.is_file():
        raise ConversionError(f"{path} not found")
    return json.loads(path.read_text())


def add_placeholder_tokens(tokenizer, *tokens: str) -> None:
    """Add the ``tokens`` the tokenizer lacks as special tokens. Placeholders are never embedded (the model masks
    them), so their ids may lie past the LLM's vocabulary and the converted model keeps the original's logits."""
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)


def load_tokenizer(path: str | Path, *, placeholders: Sequence[str] = ("<image>", "<video>"), pad_with_unk: bool = True):
    """The release's tokenizer with the ``placeholders`` added where missing; ``pad_with_unk``: a tokenizer without
    a pad token pads with its unk token, as the LLaVA-family training and inference code sets it. A release's own
    Python code is never run (``trust_remote_code=False``: a ``config.json`` with an ``auto_map`` would otherwise make
    ``AutoTokenizer`` ask whether to run it); a tokenizer that exists only as such code is a :class:`ConversionError`."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        raise ConversionError(
            f"the tokenizer in {path} is defined only by the release's own Python code (an auto_map in its "
            "tokenizer_config.json / config.json, no tokenizer.json or tokenizer.model transformers can read); "
            "hf_videollm never runs a release's code: convert a release whose tokenizer has a tokenizer.json / tokenizer.model, or convert the tokenizer "
            "once to the fast format and place its files beside the checkpoint") from e
    if pad_with_unk and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    add_placeholder_tokens(tokenizer, *placeholders)
    return tokenizer
