"""LongVLM converter: the original release layout (ziplab/LongVLM) -> hf_videollm LongVLM.

What LongVLM's training writes (``LongVLMTrainer._save`` with ``tune_mm_mlp_adapter``) is ``mm_projector.bin``:
``model.mm_projector.{weight,bias}`` (the one Linear) and ``model.embed_tokens.weight``, the FULL input embedding
matrix including the rows of the three tokens it adds (``<vid_patch>``, ``<vid_start>``, ``<vid_end>``). Everything
else comes from the LLaVA-7B checkpoint it was trained on (``--base``, LLaVA v1 layout after ``apply_delta``): the
LLaMA layers and ``lm_head`` (LLaVA's own ``model.mm_projector`` and ``embed_tokens`` are superseded). The CLIP tower
is ``openai/clip-vit-large-patch14`` (224 px), which ``save_features.py`` loads by name (``--vision-tower``).

``lm_head`` has no rows for the three added tokens in any file: the original's inference creates them at random when
it resizes the embeddings. We fill them with the mean of the existing rows (what LLaVA's ``initialize_vision_tokenizer``
does when training with new tokens), so conversion is deterministic; they only score those three tokens.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .engine import Drop, KeyTable, Rename, Transform
from .hub import resolve_local
from .llava import _text_config_from_flat
from .release import Release, add_placeholder_tokens, load_tokenizer, read_json
from .sources import CheckpointSource, ConversionError
from .towers import (
    image_preprocessing,
    read_preprocessor_config,
    resolve_vision_tower,
    vision_tower_config,
    vision_tower_repo_table,
)

__all__ = ["read_longvlm", "LONGVLM_PROJECTOR_TABLE", "longvlm_base_table", "VIDEO_TOKENS"]

#: the tokens LongVLM adds to the LLaVA tokenizer, in the order it adds them (patch first, then start / end)
VIDEO_TOKENS = ("<vid_patch>", "<vid_start>", "<vid_end>")
CLIP_L14_224_ID = "openai/clip-vit-large-patch14"

# ---------------------------------------------------------------------------------------------------- key tables
LONGVLM_PROJECTOR_TABLE = KeyTable(
    "longvlm-mm_projector",
    [
        Rename(r"^model\.mm_projector\.(weight|bias)$", r"multi_modal_projector.linear_1.\1"),
        Rename(r"^model\.embed_tokens\.weight$", "language_model.model.embed_tokens.weight"),
    ],
)


def _pad_rows_with_mean(t: torch.Tensor, match=None, ctx=None) -> torch.Tensor:
    """``lm_head`` of the base (V_base, H) -> (V, H): the added tokens' rows are the mean of the existing rows."""
    shape = ctx.expected_shape() if ctx is not None else None
    if shape is None or shape[0] == t.shape[0]:
        return t
    if shape[0] < t.shape[0] or shape[1:] != t.shape[1:]:
        raise ConversionError(f"lm_head of the base is {tuple(t.shape)}, the converted model needs {tuple(shape)}")
    extra = t.float().mean(0, keepdim=True).to(t.dtype).expand(shape[0] - t.shape[0], -1)
    return torch.cat([t, extra], dim=0)


def longvlm_base_table() -> KeyTable:
    """The LLaVA-7B checkpoint under LongVLM -> the language model (its projector and embeddings superseded)."""
    return KeyTable(
        "longvlm-llava-base",
        [
            Drop(r"\.rotary_emb\.inv_freq$", "rotary buffer, recomputed from the config"),
            Drop(r"^model\.mm_projector\.", "LLaVA's projector: LongVLM trains its own (mm_projector.bin)"),
            Drop(r"^model\.vision_tower\.", "frozen CLIP copy of LLaVA; LongVLM loads CLIP-L/14-224 by name"),
            Drop(
                r"^model\.embed_tokens\.weight$",
                "superseded by the full embed_tokens of mm_projector.bin (base rows + LongVLM's 3 new tokens)",
            ),
            Transform(
                r"^lm_head\.weight$", ("language_model.lm_head.weight",), _pad_rows_with_mean,
                reason="rows of the 3 added tokens = mean of the existing rows (never saved by LongVLM)",
            ),
            Rename(r"^model\.(.+)$", r"language_model.model.\1"),
        ],
    )


# ---------------------------------------------------------------------------------------------------- reading
def _projector_file(src: Path) -> Path:
    if src.is_file():
        return src
    f = src / "mm_projector.bin"
    if not f.is_file():
        raise ConversionError(
            f"{src} holds no mm_projector.bin: LongVLM's release is the projector file its training writes "
            "(pass the file or its directory)"
        )
    return f


def _longvlm_tokenizer(base: Path, vocab: int):
    """The base tokenizer with LongVLM's three tokens (ids must be the last rows of its embed_tokens)."""
    tokenizer = load_tokenizer(base, placeholders=())
    add_placeholder_tokens(tokenizer, VIDEO_TOKENS[0])
    add_placeholder_tokens(tokenizer, *VIDEO_TOKENS[1:])
    if len(tokenizer) != vocab:
        raise ConversionError(
            f"mm_projector.bin's embed_tokens has {vocab} rows but the base tokenizer + {list(VIDEO_TOKENS)} has "
            f"{len(tokenizer)} tokens: pass the LLaVA-7B checkpoint this projector was trained on (--base)"
        )
    add_placeholder_tokens(tokenizer, "<video>")  # the text placeholder; expands to <vid_patch> ids, never embedded
    return tokenizer


def read_longvlm(src: str | Path, *, base: str | None = None, vision_tower: str | None = None) -> Release:
    """LongVLM's ``mm_projector.bin`` (file or directory) + its LLaVA-7B ``base`` (+ the CLIP-L/14-224 tower) ->
    the :class:`Release` to write (paper configuration: 305 visual tokens)."""
    from ..modeling.longvlm import VideoLLMLongVLMConfig, VideoLLMLongVLMForConditionalGeneration
    from ..processors.chat_templates import vicuna_v1_template
    from ..processors.longvlm import LONGVLM_SYSTEM, VideoLLMLongVLMProcessor

    src_id = str(src)
    projector = _projector_file(resolve_local(src, what="LongVLM mm_projector.bin"))
    if base is None:
        raise ConversionError(
            "LongVLM's release holds only the projector and embeddings: pass --base PATH_OR_HUB_ID of the LLaVA-7B "
            "checkpoint it was trained on"
        )
    base_dir = resolve_local(base, what="LLaVA-7B base")
    orig = read_json(base_dir / "config.json")
    proj_src = CheckpointSource.open(projector)
    for key in ("model.mm_projector.weight", "model.embed_tokens.weight"):
        if key not in proj_src:
            raise ConversionError(f"{projector} has no {key}: not a LongVLM mm_projector.bin (keys: {proj_src.keys()[:8]})")
    llm_width, vis_width = proj_src.shape("model.mm_projector.weight")
    vocab, emb_width = proj_src.shape("model.embed_tokens.weight")
    if emb_width != llm_width or orig.get("hidden_size", llm_width) != llm_width:
        raise ConversionError(
            f"mm_projector.bin maps into width {llm_width} (embed_tokens {emb_width}) but the base is "
            f"{orig.get('hidden_size')} wide: pass the matching LLaVA-7B base"
        )
    tower_id, tower_dir = resolve_vision_tower(vision_tower, {"mm_vision_tower": CLIP_L14_224_ID}, what="CLIP vision tower")
    vision_config = vision_tower_config(tower_dir, mm_hidden_size=vis_width, tower_id=tower_id)
    tokenizer = _longvlm_tokenizer(base_dir, vocab)
    text_config = _text_config_from_flat({**orig, "vocab_size": vocab})
    config = VideoLLMLongVLMConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        video_token_id=tokenizer.convert_tokens_to_ids(VIDEO_TOKENS[0]),
        variant="paper",
    )
    preprocessing = image_preprocessing(read_preprocessor_config(tower_dir), image_processor="CLIPImageProcessor")
    if preprocessing.pop("resize_mode") != "shortest_edge":
        raise ConversionError("LongVLM's frame preprocessing is CLIP's: resize of the shortest edge, then a centre crop")
    processor = VideoLLMLongVLMProcessor(
        tokenizer,
        chat_template=vicuna_v1_template(LONGVLM_SYSTEM, video_token="<video>"),
        patch_size=config.vision_config.patch_size,
        video_token="<video>",
        video_token_id=config.video_token_id,
        video_start_token=VIDEO_TOKENS[1],
        video_end_token=VIDEO_TOKENS[2],
        **{k: getattr(config, k) for k in VideoLLMLongVLMProcessor.model_settings},
        **preprocessing,
    )
    return Release(
        VideoLLMLongVLMForConditionalGeneration,
        config,
        sources=[
            (proj_src, LONGVLM_PROJECTOR_TABLE),
            (CheckpointSource.open(base_dir), longvlm_base_table()),
            (CheckpointSource.open(tower_dir), vision_tower_repo_table()),
        ],
        processor=processor,
        converted_from=src_id,
        converter="hf_videollm longvlm original",
        generation_config_from=base_dir if (base_dir / "generation_config.json").is_file() else None,
    )
