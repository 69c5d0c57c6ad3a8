"""LLaVA converter: original haotian-liu releases (v1.5 merged, v1 delta) and transformers' llava-hf layout.

:func:`read_llava` reads a release into a :class:`~.release.Release` (key tables, config, processor);
:func:`~.release.write_converted` writes it, the same for every model. Key tables are declarative; the shared engine
streams tensors through them and checks that every source key is used once and every target key is filled.

Where the parts come from (as the original loader does it):
* the CLIP tower is NOT taken from the LLaVA checkpoint (v1.5 carries a frozen copy under
  ``model.vision_tower.vision_tower.vision_model.*`` that the original ignores); it is loaded from the Hub id in
  ``config.mm_vision_tower`` or from ``--vision-tower PATH``. A full CLIP checkpoint (text half included) works too.
* a delta release (v1) is added to its base LLaMA, given with ``--base`` (path or Hub id).
"""

from __future__ import annotations

from pathlib import Path

from .engine import AddDelta, Drop, KeyTable, Rename
from .hub import resolve_local
from .release import Release, load_tokenizer, read_json
from .sources import CheckpointSource, ConversionError
from .towers import (
    image_preprocessing,
    read_preprocessor_config,
    resolve_vision_tower,
    vision_tower_config,
    vision_tower_repo_table,
)

__all__ = ["read_llava", "read_llava_hf", "llava_original_table", "LLAVA_TRANSFORMERS_TABLE", "CLIP_TOWER_TABLE"]

# ---------------------------------------------------------------------------------------------------- the releases

# Delta releases whose base model the release README names (used when --base is not given).
KNOWN_DELTA_BASES = {
    "liuhaotian/LLaVA-Lightning-7B-delta-v1-1": "huggyllama/llama-7b",
    "liuhaotian/LLaVA-7b-delta-v0": "huggyllama/llama-7b",
    "liuhaotian/LLaVA-13b-delta-v0": "huggyllama/llama-13b",
    "liuhaotian/LLaVA-Lightning-MPT-7B-preview": None,
}

# ---------------------------------------------------------------------------------------------------- key tables
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


#: the CLIP repo named by ``mm_vision_tower`` (vision half or full CLIP) -> ``vision_tower.*``
CLIP_TOWER_TABLE = vision_tower_repo_table()

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

# ---------------------------------------------------------------------------------------------------- config
_LLAMA_FIELDS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
    "bos_token_id", "eos_token_id", "pad_token_id", "attention_bias", "mlp_bias", "pretraining_tp",
)


def _text_config_from_flat(cfg: dict):
    from transformers import LlamaConfig

    kwargs = {k: cfg[k] for k in _LLAMA_FIELDS if k in cfg and cfg[k] is not None}
    if "max_position_embeddings" not in kwargs and "max_sequence_length" in cfg:
        kwargs["max_position_embeddings"] = cfg["max_sequence_length"]
    kwargs["tie_word_embeddings"] = bool(cfg.get("tie_word_embeddings", False))
    return LlamaConfig(**kwargs)


def _llava_config(orig: dict, tokenizer, vision_config):
    """The release's flat config (LlamaConfig + ``mm_*`` fields) + the tower's -> ours."""
    from ..modeling.llava import VideoLLMLlavaConfig

    if orig.get("mm_use_im_start_end", False):  # v1: images are <im_start> <im_patch> x N <im_end>
        image_token_id = tokenizer.convert_tokens_to_ids("<im_patch>")
        if image_token_id is None or image_token_id == tokenizer.unk_token_id:
            raise ConversionError("mm_use_im_start_end is set but the tokenizer has no <im_patch> token")
    else:
        image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    select = orig.get("mm_vision_select_feature", "patch")
    return VideoLLMLlavaConfig(
        vision_config=vision_config.to_dict(),
        text_config=_text_config_from_flat(orig).to_dict(),
        image_token_id=image_token_id,
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=orig.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy={"patch": "default", "cls_patch": "full"}.get(select, select),
        projector_type=orig.get("mm_projector_type", "linear"),
    )


# ---------------------------------------------------------------------------------------------------- processor
def _llava_processor(tokenizer, config, *, chat_template, preprocessing: dict, **settings):
    """The processor of a converted LLaVA: CLIP's resize of the shortest edge + centre crop, the release's template."""
    from ..processors.llava import VideoLLMLlavaProcessor

    preprocessing = dict(preprocessing)
    if preprocessing.pop("resize_mode") != "shortest_edge":
        raise ConversionError("LLaVA's image processor is CLIP's: resize of the shortest edge, then a centre crop")
    return VideoLLMLlavaProcessor(
        tokenizer,
        chat_template=chat_template,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
        **preprocessing,
        **settings,
    )


# ---------------------------------------------------------------------------------------------------- reading
def read_llava(src: str | Path, *, vision_tower: str | None = None, base: str | None = None) -> Release:
    """An original LLaVA release (merged v1.5, or a v1 delta + its ``base`` LLaMA) -> the :class:`Release` to write."""
    from ..modeling.llava import VideoLLMLlavaForConditionalGeneration
    from ..processors.chat_templates import LLAVA_V1_SYSTEM, VICUNA_V1_1_SYSTEM, vicuna_v1_template

    src_id = str(src)
    src = resolve_local(src, what="LLaVA checkpoint")
    orig = read_json(src / "config.json")
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
    tower_id, tower_dir = resolve_vision_tower(vision_tower, orig, what="CLIP vision tower")
    vision_config = vision_tower_config(tower_dir, mm_hidden_size=orig.get("mm_hidden_size"), tower_id=tower_id)
    tokenizer = load_tokenizer(src)
    config = _llava_config(orig, tokenizer, vision_config)
    use_start_end = bool(orig.get("mm_use_im_start_end", False))
    # the tower's CLIP preprocessing, v1.5 pad-to-square, the release's chat template
    processor = _llava_processor(
        tokenizer,
        config,
        chat_template=vicuna_v1_template(VICUNA_V1_1_SYSTEM if delta else LLAVA_V1_SYSTEM),
        preprocessing=image_preprocessing(read_preprocessor_config(tower_dir), image_processor="CLIPImageProcessor"),
        pad_to_square=orig.get("image_aspect_ratio", "square") == "pad",
        image_token="<image>",
        image_start_token="<im_start>" if use_start_end else None,
        image_end_token="<im_end>" if use_start_end else None,
    )
    return Release(
        VideoLLMLlavaForConditionalGeneration,
        config,
        sources=[
            (CheckpointSource.open(src), llava_original_table(delta=delta)),
            (CheckpointSource.open(tower_dir), CLIP_TOWER_TABLE),
        ],
        extra_sources={"base": CheckpointSource.open(resolve_local(base, what="base LLaMA"))} if delta else None,
        processor=processor,
        converted_from=src_id,
        converter="hf_videollm llava original",
        generation_config_from=src,
    )


def read_llava_hf(src: str | Path) -> Release:
    """transformers' ``LlavaForConditionalGeneration`` checkpoint (llava-hf layout, any of its key variants; tower
    and LLM inside) -> the :class:`Release` to write."""
    from ..modeling.llava import VideoLLMLlavaConfig, VideoLLMLlavaForConditionalGeneration

    src_id = str(src)
    src = resolve_local(src, what="LLaVA checkpoint")
    hf = read_json(src / "config.json")
    if hf.get("model_type") != "llava":
        raise ConversionError(f"{src}/config.json has model_type {hf.get('model_type')!r}, expected 'llava' (llava-hf)")
    if hf.get("projector_hidden_act", "gelu") != "gelu":
        raise ConversionError(f"projector_hidden_act {hf['projector_hidden_act']!r} is not supported (LLaVA uses gelu)")
    tokenizer = load_tokenizer(src, placeholders=("<video>",), pad_with_unk=False)  # <image> is the release's own
    config = VideoLLMLlavaConfig(
        vision_config=hf["vision_config"],
        text_config=hf["text_config"],
        image_token_id=hf.get("image_token_index", hf.get("image_token_id", 32000)),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=hf.get("vision_feature_layer", -2),
        vision_feature_select_strategy=hf.get("vision_feature_select_strategy", "default"),
        projector_type="mlp2x_gelu",
        projector_bias=hf.get("multimodal_projector_bias", True),
    )
    image_processor = read_preprocessor_config(src)
    pc = read_json(src / "processor_config.json") if (src / "processor_config.json").is_file() else {}
    template = src / "chat_template.jinja"
    processor = _llava_processor(
        tokenizer,
        config,
        chat_template=template.read_text() if template.is_file() else None,
        preprocessing=image_preprocessing(image_processor),
        pad_to_square=bool(image_processor.get("do_pad", False)),
        image_token=pc.get("image_token", "<image>"),
        tokenization="whole",
    )
    return Release(
        VideoLLMLlavaForConditionalGeneration,
        config,
        sources=[(CheckpointSource.open(src), LLAVA_TRANSFORMERS_TABLE)],
        processor=processor,
        converted_from=src_id,
        converter="hf_videollm llava transformers",
        generation_config_from=src,
    )


#: ``convert("llava", src, out, ...)``
