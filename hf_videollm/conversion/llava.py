"""LLaVA converter: original haotian-liu releases (v1.5 merged, v1 delta) and transformers' llava-hf layout.

Key tables are declarative; the shared engine streams tensors through them and checks that every source key is
used once and every target key is filled.

Where the parts come from (as the original loader does it):
* the CLIP tower is NOT taken from the LLaVA checkpoint (v1.5 carries a frozen copy under
  ``model.vision_tower.vision_tower.vision_model.*`` that the original ignores); it is loaded from the Hub id in
  ``config.mm_vision_tower`` or from ``--vision-tower PATH``. A full CLIP checkpoint (text half included) works too.
* a delta release (v1) is added to its base LLaMA, given with ``--base`` (path or Hub id).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .engine import AddDelta, Drop, KeyTable, Rename, convert_checkpoint, expected_from_model
from .hub import copy_generation_config, resolve_local
from .sources import CheckpointSource, ConversionError

__all__ = ["convert_llava", "llava_original_table", "LLAVA_TRANSFORMERS_TABLE", "CLIP_TOWER_TABLE"]

# Delta releases whose base model the release README names (used when --base is not given).
KNOWN_DELTA_BASES = {
    "liuhaotian/LLaVA-Lightning-7B-delta-v1-1": "huggyllama/llama-7b",
    "liuhaotian/LLaVA-7b-delta-v0": "huggyllama/llama-7b",
    "liuhaotian/LLaVA-13b-delta-v0": "huggyllama/llama-13b",
    "liuhaotian/LLaVA-Lightning-MPT-7B-preview": None,
}

_PROJECTOR = [
    # mlp{N}x_gelu: nn.Sequential indices 0, 2, 4, ... are the Linear layers
    Rename(r"^model\.mm_projector\.0\.(weight|bias)$", r"multi_modal_projector.linear_1.\1"),
    Rename(r"^model\.mm_projector\.2\.(weight|bias)$", r"multi_modal_projector.linear_2.\1"),
    Rename(r"^model\.mm_projector\.4\.(weight|bias)$", r"multi_modal_projector.linear_3.\1"),
    Rename(r"^model\.mm_projector\.6\.(weight|bias)$", r"multi_modal_projector.linear_4.\1"),
    # linear (v1)
    Rename(r"^model\.mm_projector\.(weight|bias)$", r"multi_modal_projector.linear_1.\1"),
]


def llava_original_table(delta: bool = False) -> KeyTable:
    """Original LLaVA checkpoint (merged v1.5, or a v1 delta when ``delta``) -> hf_videollm LLaVA."""

    def llm(pattern: str, replacement: str):
        if delta:
            return AddDelta(pattern, base="base", replacement=replacement, reason="delta release: LLaVA = delta + base LLaMA")
        return Rename(pattern, replacement)

    return KeyTable(
        "llava-original" + ("-delta" if delta else ""),
        [
            Drop(r"\.rotary_emb\.inv_freq$", "rotary buffer, recomputed from the config"),
            Drop(
                r"^model\.vision_tower\.",
                "frozen CLIP copy saved with the LLM; the original loader ignores it and loads the tower from "
                "mm_vision_tower (use --vision-tower)",
            ),
            *_PROJECTOR,
            llm(r"^lm_head\.weight$", "language_model.lm_head.weight"),
            llm(r"^model\.(.+)$", r"language_model.model.\1"),
        ],
    )


CLIP_TOWER_TABLE = KeyTable(
    "clip-vision-tower",
    [
        Drop(r"position_ids$", "buffer re-created by the model"),
        Drop(r"^(text_model\.|text_projection\.|visual_projection\.|logit_scale$)", "text half of a full CLIP checkpoint"),
        Rename(r"^vision_model\.(.+)$", r"vision_tower.\1"),
        Rename(r"^(embeddings|encoder|pre_layrnorm|post_layernorm)\.(.+)$", r"vision_tower.\1.\2"),
    ],
)

LLAVA_TRANSFORMERS_TABLE = KeyTable(
    "llava-transformers",
    [
        Drop(r"position_ids$", "buffer re-created by the model"),
        Rename(r"^(?:model\.)?language_model\.lm_head\.(.+)$", r"language_model.lm_head.\1"),
        Rename(r"^lm_head\.(.+)$", r"language_model.lm_head.\1"),
        Rename(r"^(?:model\.)?language_model\.model\.(.+)$", r"language_model.model.\1"),
        Rename(r"^model\.language_model\.(.+)$", r"language_model.model.\1"),
        Rename(r"^(?:model\.)?vision_tower\.vision_model\.(.+)$", r"vision_tower.\1"),
        Rename(r"^(?:model\.)?vision_tower\.(.+)$", r"vision_tower.\1"),
        Rename(r"^(?:model\.)?multi_modal_projector\.(.+)$", r"multi_modal_projector.\1"),
    ],
)

_LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
    "bos_token_id", "eos_token_id", "pad_token_id", "attention_bias", "mlp_bias", "pretraining_tp",
)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"{path} not found")
    return json.loads(path.read_text())


def _text_config_from_flat(cfg: dict):
    from transformers import LlamaConfig

    kwargs = {k: cfg[k] for k in _LLAMA_FIELDS if k in cfg and cfg[k] is not None}
    if "max_position_embeddings" not in kwargs and "max_sequence_length" in cfg:
        kwargs["max_position_embeddings"] = cfg["max_sequence_length"]
    kwargs["tie_word_embeddings"] = bool(cfg.get("tie_word_embeddings", False))
    return LlamaConfig(**kwargs)


def _clip_preprocessing(tower_dir: Path) -> dict[str, Any]:
    p = tower_dir / "preprocessor_config.json"
    cfg = json.loads(p.read_text()) if p.is_file() else {}
    crop = cfg.get("crop_size", 336)
    crop = crop.get("height", crop.get("shortest_edge")) if isinstance(crop, dict) else crop
    resample = {0: "nearest", 2: "bilinear", 3: "bicubic", 1: "lanczos", 4: "box"}.get(cfg.get("resample", 3), "bicubic")
    out = {"image_size": int(crop), "resample": resample}
    if "image_mean" in cfg:
        out["image_mean"] = cfg["image_mean"]
    if "image_std" in cfg:
        out["image_std"] = cfg["image_std"]
    if "rescale_factor" in cfg:
        out["rescale_factor"] = cfg["rescale_factor"]
    return out


def _add_placeholder_tokens(tokenizer, *tokens: str) -> None:
    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)


def _token_id(tokenizer, token: str) -> int:
    return tokenizer.convert_tokens_to_ids(token)


def convert_llava(
    src: str | Path,
    out: str | Path,
    *,
    source_format: str = "original",
    vision_tower: str | None = None,
    base: str | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
    progress: bool = True,
):
    from transformers import AutoTokenizer, CLIPVisionConfig

    from ..modeling.llava import VideoLLMLlavaConfig, VideoLLMLlavaForConditionalGeneration
    from ..processors.chat_templates import LLAVA_V1_SYSTEM, VICUNA_V1_1_SYSTEM, vicuna_v1_template
    from ..processors.llava import VideoLLMLlavaProcessor

    src_id = str(src)
    src = resolve_local(src, what="LLaVA checkpoint")
    out = Path(out)
    if source_format == "transformers":
        return _convert_llava_transformers(
            src, out, src_id=src_id, dtype=dtype, max_shard_size=max_shard_size, progress=progress
        )
    if source_format != "original":
        raise ConversionError(f"unknown source format {source_format!r}; use 'original' or 'transformers'")

    orig = _read_json(src / "config.json")
    if "mm_vision_tower" not in orig and "mm_hidden_size" not in orig:
        raise ConversionError(
            f"{src}/config.json has no mm_* fields: not an original LLaVA release (for llava-hf checkpoints use --from transformers)"
        )
    delta = base is not None or "delta" in src_id.lower()
    if delta and base is None:
        base = KNOWN_DELTA_BASES.get(src_id)
        if base is None:
            raise ConversionError(
                f"{src_id} looks like a delta release (weights = LLaVA - base); pass --base PATH_OR_HUB_ID of its base LLaMA"
            )
    tower_id = vision_tower or orig.get("mm_vision_tower")
    if not tower_id:
        raise ConversionError("config.json names no mm_vision_tower; pass --vision-tower PATH_OR_HUB_ID")
    tower_dir = resolve_local(tower_id, what="CLIP vision tower")

    # ---- config
    text_config = _text_config_from_flat(orig)
    vision_config = CLIPVisionConfig.from_pretrained(str(tower_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # as LLaVA's training/eval code
    use_start_end = bool(orig.get("mm_use_im_start_end", False))
    if use_start_end:
        image_token_id = _token_id(tokenizer, "<im_patch>")
        if image_token_id is None or image_token_id == tokenizer.unk_token_id:
            raise ConversionError("mm_use_im_start_end is set but the tokenizer has no <im_patch> token")
        _add_placeholder_tokens(tokenizer, "<image>", "<video>")
    else:
        _add_placeholder_tokens(tokenizer, "<image>", "<video>")
        image_token_id = _token_id(tokenizer, "<image>")
    select = orig.get("mm_vision_select_feature", "patch")
    config = VideoLLMLlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=image_token_id,
        video_token_id=_token_id(tokenizer, "<video>"),
        vision_feature_layer=orig.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy={"patch": "default", "cls_patch": "full"}.get(select, select),
        projector_type=orig.get("mm_projector_type", "linear"),
    )

    # ---- weights
    with torch.device("meta"):
        skeleton = VideoLLMLlavaForConditionalGeneration(config)
    sources = [
        (CheckpointSource.open(src), llava_original_table(delta=delta)),
        (CheckpointSource.open(tower_dir), CLIP_TOWER_TABLE),
    ]
    extra = {"base": CheckpointSource.open(resolve_local(base, what="base LLaMA"))} if delta else None
    report = convert_checkpoint(
        sources,
        expected_from_model(skeleton),
        out,
        extra_sources=extra,
        dtype=dtype,
        max_shard_size=max_shard_size,
        progress=progress,
        metadata={"converted_from": src_id, "converter": "hf_videollm llava original"},
    )
    config.architectures = [VideoLLMLlavaForConditionalGeneration.__name__]
    if dtype is not None:
        config.dtype = dtype
    config.save_pretrained(out)
    copy_generation_config(src, out)

    # ---- processor: the tower's CLIP preprocessing, v1.5 pad-to-square, the release's chat template
    system = LLAVA_V1_SYSTEM if not delta else VICUNA_V1_1_SYSTEM
    processor = VideoLLMLlavaProcessor(
        tokenizer,
        chat_template=vicuna_v1_template(system),
        patch_size=vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        pad_to_square=orig.get("image_aspect_ratio", "square") == "pad",
        image_token="<image>",
        image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
        image_start_token="<im_start>" if use_start_end else None,
        image_end_token="<im_end>" if use_start_end else None,
        **_clip_preprocessing(tower_dir),
    )
    processor.save_pretrained(out)
    return report


def _convert_llava_transformers(src: Path, out: Path, *, src_id: str, dtype, max_shard_size, progress):
    """transformers' ``LlavaForConditionalGeneration`` checkpoint (llava-hf layout, any of its key variants)."""
    from transformers import AutoTokenizer

    from ..modeling.llava import VideoLLMLlavaConfig, VideoLLMLlavaForConditionalGeneration
    from ..processors.llava import VideoLLMLlavaProcessor

    hf = _read_json(src / "config.json")
    if hf.get("model_type") != "llava":
        raise ConversionError(f"{src}/config.json has model_type {hf.get('model_type')!r}, expected 'llava' (llava-hf)")
    if hf.get("projector_hidden_act", "gelu") != "gelu":
        raise ConversionError(f"projector_hidden_act {hf['projector_hidden_act']!r} is not supported (LLaVA uses gelu)")
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    image_token_id = hf.get("image_token_index", hf.get("image_token_id", 32000))
    _add_placeholder_tokens(tokenizer, "<video>")
    config = VideoLLMLlavaConfig(
        vision_config=hf["vision_config"],
        text_config=hf["text_config"],
        image_token_id=image_token_id,
        video_token_id=_token_id(tokenizer, "<video>"),
        vision_feature_layer=hf.get("vision_feature_layer", -2),
        vision_feature_select_strategy=hf.get("vision_feature_select_strategy", "default"),
        projector_type="mlp2x_gelu",
        projector_bias=hf.get("multimodal_projector_bias", True),
    )
    with torch.device("meta"):
        skeleton = VideoLLMLlavaForConditionalGeneration(config)
    report = convert_checkpoint(
        [(CheckpointSource.open(src), LLAVA_TRANSFORMERS_TABLE)],
        expected_from_model(skeleton),
        out,
        dtype=dtype,
        max_shard_size=max_shard_size,
        progress=progress,
        metadata={"converted_from": src_id, "converter": "hf_videollm llava transformers"},
    )
    config.architectures = [VideoLLMLlavaForConditionalGeneration.__name__]
    if dtype is not None:
        config.dtype = dtype
    config.save_pretrained(out)
    copy_generation_config(src, out)

    pc = {}
    pcf = src / "processor_config.json"
    if pcf.is_file():
        pc = json.loads(pcf.read_text())
    ip = pc.get("image_processor", {})
    if not ip and (src / "preprocessor_config.json").is_file():
        ip = json.loads((src / "preprocessor_config.json").read_text())
    crop = ip.get("crop_size", {"height": config.vision_config.image_size})
    crop = crop.get("height") if isinstance(crop, dict) else crop
    chat_template = None
    if (src / "chat_template.jinja").is_file():
        chat_template = (src / "chat_template.jinja").read_text()
    processor = VideoLLMLlavaProcessor(
        tokenizer,
        chat_template=chat_template,
        image_size=int(crop),
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        pad_to_square=bool(ip.get("do_pad", False)),
        image_mean=ip.get("image_mean", [0.48145466, 0.4578275, 0.40821073]),
        image_std=ip.get("image_std", [0.26862954, 0.26130258, 0.27577711]),
        image_token=pc.get("image_token", "<image>"),
        image_token_id=image_token_id,
        video_token_id=config.video_token_id,
        tokenization="whole",
    )
    processor.save_pretrained(out)
    return report
