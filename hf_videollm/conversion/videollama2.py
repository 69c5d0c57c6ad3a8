"""VideoLLaMA 2 / 2.1 converter: the DAMO-NLP-SG releases (merged HF checkpoints) -> hf_videollm VideoLLaMA 2.

The release is one ``*ForCausalLM`` checkpoint (``model_type`` ``videollama2_mistral`` / ``videollama2_qwen2`` /
``videollama2_mixtral``, legacy ``videollama2`` = Mistral) whose flat ``config.json`` holds the LLM fields and the
``mm_*`` fields. Where the parts come from (as the original loader does it):

* the LLM and the STC connector (``model.mm_projector.*``) from the release;
* the vision tower's *config* and *preprocessing* from the tower repo named by ``mm_vision_tower`` (or
  ``--vision-tower PATH``); its *weights* from the release (``model.vision_tower.vision_tower.vision_model.*``, saved
  with the LLM). "-Base" releases carry no tower weights: they are then read from the tower repo.

:func:`read_videollama2` reads a release into a :class:`~.release.Release` (key tables, config, processor);
:func:`~.release.write_converted` writes it, the same for every model. The key table is declarative; the shared engine
checks that every source key is used once and every target filled.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .engine import Drop, KeyTable, Merge, Rename
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

__all__ = ["read_videollama2", "videollama2_original_table", "LLM_TYPES"]

# ---------------------------------------------------------------------------------------------------- the releases
#: release ``model_type`` -> the LLM family transformers builds.
LLM_TYPES = {
    "videollama2": "mistral",
    "videollama2_mistral": "mistral",
    "videollama2_mixtral": "mixtral",
    "videollama2_qwen2": "qwen2",
    "videollama2_llama": "llama",
}

#: fields of the release config that are not the LLM's.
_NOT_LLM = {
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "_name_or_path", "num_frames",
    "image_aspect_ratio", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "use_mm_proj", "tokenizer_model_max_length",
    "tokenizer_padding_side", "hidden_size_a", "tune_mm_mlp_adapter_a", "tune_audio_tower", "freeze_mm_mlp_adapter_a",
}


# ---------------------------------------------------------------------------------------------------- key tables
def _mixtral_experts(num_experts: int) -> list[Merge]:
    """Mixtral's per-expert ``w1``/``w3``/``w2`` -> transformers' stacked ``gate_up_proj`` / ``down_proj``."""
    layer = r"^model\.layers\.(\d+)\.block_sparse_moe\.experts\."
    target = r"language_model.model.layers.\1.mlp.experts."
    w1 = tuple(rf"{layer}{e}\.w1\.weight$" for e in range(num_experts))
    w3 = tuple(rf"{layer}{e}\.w3\.weight$" for e in range(num_experts))
    w2 = tuple(rf"{layer}{e}\.w2\.weight$" for e in range(num_experts))

    def gate_up(*parts: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.cat([g, u]) for g, u in zip(parts[:num_experts], parts[num_experts:])])

    return [
        Rename(r"^model\.layers\.(\d+)\.block_sparse_moe\.gate\.weight$", r"language_model.model.layers.\1.mlp.gate.weight"),
        Merge(w1 + w3, target + "gate_up_proj", gate_up, "experts stacked, w1 (gate) and w3 (up) concatenated"),
        Merge(w2, target + "down_proj", lambda *p: torch.stack(p), "experts stacked"),
    ]


def videollama2_original_table(*, siglip: bool = False, num_experts: int = 0) -> KeyTable:
    """Original VideoLLaMA 2 release -> hf_videollm VideoLLaMA 2. ``siglip``: the tower is SigLIP (its unused pooling
    head is dropped); ``num_experts``: Mixtral's experts per layer (0: a dense LLM)."""
    tower = r"^model\.vision_tower\.vision_tower\.(?:vision_model\.)?"
    rules = [
        Drop(r"\.rotary_emb\.inv_freq$", "rotary buffer, recomputed from the config"),
        Drop(tower + r".*position_ids$", "buffer re-created by the model"),
    ]
    if siglip:
        rules.append(Drop(tower + r"head\.", "SigLIP's pooling head: the original never uses it (patch features)"))
    rules += [
        Rename(tower + r"(.+)$", r"vision_tower.\1"),
        Rename(r"^model\.mm_projector\.(.+)$", r"multi_modal_projector.\1"),
        *(_mixtral_experts(num_experts) if num_experts else []),
        Rename(r"^lm_head\.weight$", "language_model.lm_head.weight"),
        Rename(r"^model\.(.+)$", r"language_model.model.\1"),
    ]
    return KeyTable("videollama2-original", rules)


# ---------------------------------------------------------------------------------------------------- config
def _text_config(orig: dict):
    from transformers import AutoConfig

    mt = orig.get("model_type", "videollama2")
    if mt not in LLM_TYPES:
        raise ConversionError(
            f"config.json has model_type {mt!r}: not a VideoLLaMA 2 release (expected one of {sorted(LLM_TYPES)})"
        )
    fields = {k: v for k, v in orig.items() if k not in _NOT_LLM and not k.startswith("mm_")}
    return AutoConfig.for_model(LLM_TYPES[mt], **fields)


def _videollama2_config(orig: dict, tokenizer, text_config, vision_config, *, siglip: bool):
    """The release's flat config (LLM fields + ``mm_*`` fields) + the tower's -> ours."""
    from ..modeling.videollama2 import VideoLLMVideoLlama2Config

    select = orig.get("mm_vision_select_feature", "patch")
    if select != "patch":
        raise ConversionError(f"mm_vision_select_feature {select!r} is not supported (the releases use 'patch')")
    return VideoLLMVideoLlama2Config(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=orig.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="full" if siglip else "default",
        projector_type=orig["mm_projector_type"],
        num_frames=orig.get("num_frames", 8),
    )


# ---------------------------------------------------------------------------------------------------- processor
def _videollama2_processor(tokenizer, config, *, llm_type: str, preprocessing: dict):
    """The tower's preprocessing (inference: no pad-to-square), the release's chat format."""
    from ..processors.chat_templates import QWEN2_SYSTEM, VICUNA_V1_1_SYSTEM, chatml_template, llama2_template
    from ..processors.videollama2 import VideoLLMVideoLlama2Processor

    if llm_type == "qwen2":
        template = chatml_template(QWEN2_SYSTEM)
    else:  # conv_mistral_instruct (LLaMA-2 style), the CLIP releases' training template
        template = llama2_template(VICUNA_V1_1_SYSTEM)
    return VideoLLMVideoLlama2Processor(
        tokenizer,
        chat_template=template,
        patch_size=config.vision_config.patch_size,
        projector_type=config.projector_type,
        model_num_frames=config.num_frames,
        num_frames=config.num_frames,
        image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
        **preprocessing,
    )


# ---------------------------------------------------------------------------------------------------- reading
def read_videollama2(src: str | Path, *, vision_tower: str | None = None) -> Release:
    """A VideoLLaMA 2 / 2.1 release (a merged checkpoint: no base; "-Base" releases take the tower's weights from the
    tower repo) -> the :class:`Release` to write."""
    from ..modeling.videollama2 import VideoLLMVideoLlama2ForConditionalGeneration

    src_id = str(src)
    src = resolve_local(src, what="VideoLLaMA 2 checkpoint")
    orig = read_json(src / "config.json")
    if "mm_projector_type" not in orig:
        raise ConversionError(f"{src}/config.json has no mm_projector_type: not a VideoLLaMA 2 release")
    if orig.get("mm_audio_tower") or orig.get("mm_projector_a_type"):
        raise ConversionError(
            "this is an audio-visual VideoLLaMA 2.1-AV release (mm_audio_tower); its BEATs audio branch is not "
            "supported yet: convert the vision-only VideoLLaMA2.1-7B-16F instead"
        )
    text_config = _text_config(orig)  # checks the model_type first
    tower_id, tower_dir = resolve_vision_tower(vision_tower, orig)
    vision_config = vision_tower_config(tower_dir, mm_hidden_size=orig.get("mm_hidden_size"), tower_id=tower_id)
    siglip = "siglip" in vision_config.model_type
    if siglip:
        vision_config.vision_use_head = False  # never used: the patch features of a hidden layer are taken
    tokenizer = load_tokenizer(src)
    config = _videollama2_config(orig, tokenizer, text_config, vision_config, siglip=siglip)
    llm_type = LLM_TYPES[orig.get("model_type", "videollama2")]
    processor = _videollama2_processor(
        tokenizer,
        config,
        llm_type=llm_type,
        preprocessing=image_preprocessing(
            read_preprocessor_config(tower_dir), image_processor="SiglipImageProcessor" if siglip else "CLIPImageProcessor"
        ),
    )

    release = CheckpointSource.open(src)
    num_experts = getattr(text_config, "num_local_experts", 0) if llm_type == "mixtral" else 0
    sources = [(release, videollama2_original_table(siglip=siglip, num_experts=num_experts))]
    if not any(k.startswith("model.vision_tower.") for k in release.keys()):  # a "-Base" release
        sources.append((CheckpointSource.open(tower_dir), vision_tower_repo_table(siglip=siglip)))
    return Release(
        VideoLLMVideoLlama2ForConditionalGeneration,
        config,
        sources=sources,
        processor=processor,
        converted_from=src_id,
        converter="hf_videollm videollama2 original",
        generation_config_from=src,
    )


#: ``convert("videollama2", src, out, ...)``
