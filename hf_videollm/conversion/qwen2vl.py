"""Qwen2-VL converter: transformers' ``Qwen2VLForConditionalGeneration`` checkpoints (the layout Qwen released
Qwen2-VL in) -> hf_videollm.

The release's own implementation is transformers', so conversion is a renaming: the vision transformer (patch
embedding, blocks, merger) moves under ``vision_tower``, the Qwen2 decoder under ``language_model.model`` and the
head under ``language_model.lm_head``. Both on-disk layouts are read: the one ``save_pretrained`` writes (and the
Hub releases hold: ``visual.*``, ``model.layers.*``, ``lm_head``) and the in-memory one of transformers >= 4.52
(``model.visual.*``, ``model.language_model.*``). Configs in the flat 4.45 form (text fields at the top,
``rope_scaling.mrope_section``) and in the nested 5.x form are both read. Qwen2.5-VL (window attention, RMSNorm
vision blocks) is a different tower and is refused.
"""

from __future__ import annotations

from pathlib import Path

from .engine import Drop, KeyTable, Rename
from .hub import resolve_local
from .release import Release, load_tokenizer, read_json
from .sources import CheckpointSource, ConversionError

__all__ = ["QWEN2VL_TRANSFORMERS_TABLE", "read_qwen2vl_hf", "qwen2vl_configs"]

QWEN2VL_TRANSFORMERS_TABLE = KeyTable(
    "qwen2_vl-transformers",
    [
        Drop(r"rotary_pos_emb\.inv_freq$|rotary_emb\.inv_freq$", "rotary buffer re-created by the model"),
        Rename(r"^(?:model\.)?visual\.(.+)$", r"vision_tower.\1"),
        Rename(r"^lm_head\.(.+)$", r"language_model.lm_head.\1"),
        Rename(r"^model\.language_model\.(.+)$", r"language_model.model.\1"),
        Rename(r"^model\.(.+)$", r"language_model.model.\1"),
    ],
)

_TEXT_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "hidden_act", "max_position_embeddings", "rms_norm_eps", "use_sliding_window", "sliding_window",
    "max_window_layers", "attention_dropout", "initializer_range", "bos_token_id", "eos_token_id", "pad_token_id",
)


def qwen2vl_configs(hf: dict) -> tuple[dict, dict]:
    """``(vision_config, text_config)`` dicts of a Qwen2-VL ``config.json`` (flat 4.45 form or nested 5.x form)."""
    vision = dict(hf.get("vision_config") or {})
    if "in_chans" in vision:
        vision["in_channels"] = vision.pop("in_chans")
    vision.pop("spatial_patch_size", None)  # 4.45 duplicate of patch_size
    vision["model_type"] = "qwen2_vl_vision"
    if "text_config" in hf:
        text = dict(hf["text_config"])
    else:
        text = {k: hf[k] for k in _TEXT_FIELDS if k in hf}
    rope = dict(text.get("rope_parameters") or {})
    legacy = dict(hf.get("rope_scaling") or text.get("rope_scaling") or {})
    section = rope.get("mrope_section") or legacy.get("mrope_section")
    if section is None:
        raise ConversionError("config.json gives no mrope_section (rope_parameters / rope_scaling): not a Qwen2-VL config")
    theta = rope.get("rope_theta", text.get("rope_theta", hf.get("rope_theta", 1000000.0)))
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": theta, "mrope_section": list(section)}
    text.pop("rope_scaling", None)
    text.pop("rope_theta", None)
    text["model_type"] = "qwen2_vl_text"
    text["tie_word_embeddings"] = bool(hf.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    if "hidden_size" not in vision:
        vision["hidden_size"] = text["hidden_size"]
    return vision, text


def _preprocessing(pre: dict) -> dict:
    """Processor settings from ``preprocessor_config.json`` (legacy ``min_pixels``/``max_pixels`` or ``size``)."""
    size = pre.get("size") or {}
    out = {
        "min_pixels": pre.get("min_pixels", size.get("shortest_edge", 56 * 56)),
        "max_pixels": pre.get("max_pixels", size.get("longest_edge", 28 * 28 * 1280)),
    }
    for key in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std", "rescale_factor"):
        if key in pre:
            out[key] = pre[key]
    if pre.get("resample", 3) != 3:
        from ..media.transforms import PIL_RESAMPLE_CODES

        out["resample"] = PIL_RESAMPLE_CODES[pre["resample"]]
    return out


def read_qwen2vl_hf(src: str | Path) -> Release:
    """A transformers ``Qwen2VLForConditionalGeneration`` checkpoint (Qwen's releases) -> the :class:`Release`."""
    from ..modeling.qwen2vl import VideoLLMQwen2VLConfig, VideoLLMQwen2VLForConditionalGeneration
    from ..processors.qwen2vl import VideoLLMQwen2VLProcessor

    src_id = str(src)
    src = resolve_local(src, what="Qwen2-VL checkpoint")
    hf = read_json(src / "config.json")
    if hf.get("model_type") == "qwen2_5_vl":
        raise ConversionError(
            f"{src}/config.json is Qwen2.5-VL (window-attention vision tower with RMSNorm blocks), which this converter "
            "does not build; convert Qwen2-VL checkpoints (model_type 'qwen2_vl')"
        )
    if hf.get("model_type") != "qwen2_vl":
        raise ConversionError(f"{src}/config.json has model_type {hf.get('model_type')!r}, expected 'qwen2_vl'")
    vision, text = qwen2vl_configs(hf)
    tokenizer = load_tokenizer(src, placeholders=(), pad_with_unk=False)
    vocab = tokenizer.get_vocab()
    ids = {}
    for field, token, default in (
        ("image_token_id", "<|image_pad|>", 151655), ("video_token_id", "<|video_pad|>", 151656),
        ("vision_start_token_id", "<|vision_start|>", 151652), ("vision_end_token_id", "<|vision_end|>", 151653),
    ):
        ids[field] = hf.get(field, vocab.get(token, default))
        if vocab.get(token) != ids[field]:
            raise ConversionError(
                f"config.json says {field}={ids[field]} but the tokenizer has {token} = {vocab.get(token)}; the "
                "tokenizer does not belong to this checkpoint"
            )
    config = VideoLLMQwen2VLConfig(vision_config=vision, text_config=text,
                                   tie_word_embeddings=text["tie_word_embeddings"], **ids)
    pre = read_json(src / "preprocessor_config.json") if (src / "preprocessor_config.json").is_file() else {}
    processor = VideoLLMQwen2VLProcessor(
        tokenizer, image_token_id=ids["image_token_id"], video_token_id=ids["video_token_id"], **_preprocessing(pre)
    )
    return Release(
        VideoLLMQwen2VLForConditionalGeneration,
        config,
        sources=[(CheckpointSource.open(src), QWEN2VL_TRANSFORMERS_TABLE)],
        processor=processor,
        converted_from=src_id,
        converter="hf_videollm qwen2_vl transformers",
        generation_config_from=src,
    )
