"""The CLIP / SigLIP vision tower that LLaVA-family releases load by name (``mm_vision_tower``): where it is, its
config, its weights (when they are not in the release) and its image preprocessing.

One parser of ``preprocessor_config.json`` for every converter: :func:`image_preprocessing`, built on
:func:`hf_videollm.media.transforms.from_clip_preprocessor_config` (every field CLIP's and SigLIP's image
processors read, with their defaults).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .engine import Drop, KeyTable, Rename
from .hub import resolve_local
from .release import read_json
from .sources import ConversionError

__all__ = [
    "resolve_vision_tower",
    "vision_tower_config",
    "vision_tower_repo_table",
    "read_preprocessor_config",
    "image_preprocessing",
]


def resolve_vision_tower(vision_tower: str | None, release_config: dict, *, what: str = "vision tower") -> tuple[str, Path]:
    """``--vision-tower`` if given, else the release's ``mm_vision_tower`` -> (the id as given, local directory)."""
    tower_id = vision_tower or release_config.get("mm_vision_tower")
    if not tower_id:
        raise ConversionError("config.json names no mm_vision_tower; pass --vision-tower PATH_OR_HUB_ID")
    return tower_id, resolve_local(tower_id, what=what)


def vision_tower_config(tower_dir: Path, *, mm_hidden_size: int | None = None, tower_id: str | None = None):
    """The tower's vision config (the vision half of a full CLIP / SigLIP repo). ``mm_hidden_size``: the width the
    release's projector was trained on; a tower of another width is refused before anything is read."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(tower_dir))
    config = getattr(config, "vision_config", config)  # a full CLIP / SigLIP repo
    config._name_or_path = ""  # a path on the converting machine: not stored in the converted config
    if mm_hidden_size is not None and config.hidden_size != mm_hidden_size:
        raise ConversionError(
            f"the vision tower {tower_id or tower_dir} is {config.hidden_size} wide but the release's mm_hidden_size "
            f"is {mm_hidden_size}: pass the tower the release was trained with (--vision-tower)"
        )
    return config


def vision_tower_repo_table(*, siglip: bool = False) -> KeyTable:
    """A CLIP / SigLIP repo (vision half or full model) -> ``vision_tower.*``."""
    text_half = [r"text_model\.", r"text_projection\.", r"visual_projection\.", r"logit_scale$"]
    if siglip:
        text_half.append(r"logit_bias$")
    rules = [
        Drop(r"position_ids$", "buffer re-created by the model"),
        Drop(rf"^({'|'.join(text_half)})", "text half of a full CLIP / SigLIP checkpoint"),
    ]
    if siglip:
        rules.append(Drop(r"^(?:vision_model\.)?head\.", "SigLIP's pooling head: never used (patch features)"))
    rules += [
        Rename(r"^vision_model\.(.+)$", r"vision_tower.\1"),
        Rename(r"^(embeddings|encoder|pre_layrnorm|post_layernorm)\.(.+)$", r"vision_tower.\1.\2"),
    ]
    return KeyTable("vision-tower-repo", rules)


def read_preprocessor_config(directory: Path) -> dict[str, Any]:
    """``preprocessor_config.json`` of a tower repo (``processor_config.json``'s ``image_processor`` first, where a
    transformers processor saved one)."""
    pc = directory / "processor_config.json"
    if pc.is_file() and read_json(pc).get("image_processor"):
        return read_json(pc)["image_processor"]
    p = directory / "preprocessor_config.json"
    if not p.is_file():
        raise ConversionError(f"{p} not found: the image preprocessing of {directory} is needed (pass --vision-tower PATH)")
    return read_json(p)


def image_preprocessing(config: dict[str, Any], *, image_processor: str | None = None) -> dict[str, Any]:
    """An image processor config (CLIP / SigLIP / LLaVA ``preprocessor_config.json``) -> our processors' settings
    ``image_size``, ``resize_mode``, ``resample``, ``image_mean``, ``image_std``, ``rescale_factor``.

    ``image_processor``: the class the original instantiates with ``from_pretrained`` (``"CLIPImageProcessor"``,
    ``"SiglipImageProcessor"``); its defaults apply to the fields the file leaves out, whatever type the file names.
    Settings our processors cannot express (no resize, a crop other than the resized square, no normalisation) are
    refused rather than approximated.
    """
    from ..media.transforms import from_clip_preprocessor_config

    if image_processor is not None:
        config = {**config, "image_processor_type": image_processor}
    try:
        tf = from_clip_preprocessor_config(config)
    except ValueError as e:
        raise ConversionError(f"image preprocessing: {e}") from e
    if tf.resize_mode == "shortest_edge":
        size = tf.size
        if tf.crop_size != (size, size):
            raise ConversionError(
                f"image preprocessing resizes the shortest edge to {size} and crops {tf.crop_size}: only a centre "
                "crop of the resized size is supported"
            )
    elif tf.resize_mode == "exact":
        size = tf.size[0]
        if tf.size[0] != tf.size[1] or tf.crop_size not in (None, tf.size):
            raise ConversionError(f"image preprocessing resizes to {tf.size} (crop {tf.crop_size}): only squares are supported")
    else:
        raise ConversionError("image preprocessing without resizing (do_resize false) is not supported")
    if tf.mean is None:
        raise ConversionError("image preprocessing without normalisation (do_normalize false) is not supported")
    return {
        "image_size": int(size),
        "resize_mode": tf.resize_mode,
        "resample": tf.resample,
        "image_mean": list(tf.mean),
        "image_std": list(tf.std),
        "rescale_factor": tf.rescale_factor,
    }
