"""VideoLLaMA 2 / 2.1 converter: the DAMO-NLP-SG releases (merged HF checkpoints) -> hf_videollm VideoLLaMA 2.

The release is one ``*ForCausalLM`` checkpoint (``model_type`` ``videollama2_mistral`` / ``videollama2_qwen2`` /
``videollama2_mixtral``, legacy ``videollama2`` = Mistral) whose flat ``config.json`` holds the LLM fields and the
``mm_*`` fields. Where the parts come from (as the original loader does it):

* the LLM and the STC connector (``model.mm_projector.*``) from the release;
* the vision tower's *config* and *preprocessing* from the tower repo named by ``mm_vision_tower`` (or
  ``--vision-tower PATH``); its *weights* from the release (``model.vision_tower.vision_tower.vision_model.*``, saved
  with the LLM). "-Base" releases carry no tower weights: they are then read from the tower repo.

The key table is declarative; the shared engine checks that every source key is used once and every target filled.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .engine import Drop, KeyTable, Merge, Rename, convert_checkpoint, expected_from_model
from .hub import copy_generation_config, resolve_local
from .sources import CheckpointSource, ConversionError

__all__ = ["convert_videollama2", "videollama2_original_table", "LLM_TYPES"]

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


def tower_repo_table() -> KeyTable:
    """A CLIP/SigLIP repo (vision half or full model) -> ``vision_tower.*`` (for releases without tower weights)."""
    rules = [
        Drop(r"position_ids$", "buffer re-created by the model"),
        Drop(r"^(text_model\.|text_projection\.|visual_projection\.|logit_scale$|logit_bias$)", "text half"),
    ]
    rules += [
        Drop(r"^(?:vision_model\.)?head\.", "SigLIP's pooling head: never used (patch features)"),
        Rename(r"^vision_model\.(.+)$", r"vision_tower.\1"),
        Rename(r"^(embeddings|encoder|pre_layrnorm|post_layernorm)\.(.+)$", r"vision_tower.\1.\2"),
    ]
    return KeyTable("videollama2-vision-tower", rules)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ConversionError(f"{path} not found")
    return json.loads(path.read_text())


def _text_config(orig: dict):
    from transformers import AutoConfig

    mt = orig.get("model_type", "videollama2")
    if mt not in LLM_TYPES:
        raise ConversionError(
            f"config.json has model_type {mt!r}: not a VideoLLaMA 2 release (expected one of {sorted(LLM_TYPES)})"
        )
    fields = {k: v for k, v in orig.items() if k not in _NOT_LLM and not k.startswith("mm_")}
    return AutoConfig.for_model(LLM_TYPES[mt], **fields)


def _tower_preprocessing(tower_dir: Path, siglip: bool) -> dict:
    """The tower repo's image processor -> our processor settings (CLIP: shortest edge + crop; SigLIP: exact)."""
    from ..processors.transforms import from_clip_preprocessor_config

    p = tower_dir / "preprocessor_config.json"
    cfg = json.loads(p.read_text()) if p.is_file() else {}
    if siglip and cfg:
        cfg.setdefault("image_processor_type", "SiglipImageProcessor")
    if not cfg:
        raise ConversionError(f"{p} not found: the tower repo's preprocessing is needed (pass --vision-tower PATH)")
    tf = from_clip_preprocessor_config(cfg)
    size = tf.crop_size[0] if tf.crop_size else tf.size[0] if isinstance(tf.size, tuple) else tf.size
    return {
        "image_size": int(size),
        "resize_mode": tf.resize_mode,
        "resample": tf.resample,
        "image_mean": list(tf.mean),
        "image_std": list(tf.std),
        "rescale_factor": tf.rescale_factor,
    }


def convert_videollama2(
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
    from transformers import AutoConfig, AutoTokenizer

    from ..modeling.videollama2 import VideoLLMVideoLlama2Config, VideoLLMVideoLlama2ForConditionalGeneration
    from ..processors.chat_templates import QWEN2_SYSTEM, VICUNA_V1_1_SYSTEM, chatml_template, llama2_template
    from ..processors.videollama2 import VideoLLMVideoLlama2Processor

    if source_format != "original":
        raise ConversionError(f"unknown source format {source_format!r} for videollama2; use 'original'")
    if base is not None:
        raise ConversionError("VideoLLaMA 2 releases are merged checkpoints: --base does not apply")
    src_id = str(src)
    src = resolve_local(src, what="VideoLLaMA 2 checkpoint")
    out = Path(out)
    orig = _read_json(src / "config.json")
    if "mm_projector_type" not in orig:
        raise ConversionError(f"{src}/config.json has no mm_projector_type: not a VideoLLaMA 2 release")
    if orig.get("mm_audio_tower") or orig.get("mm_projector_a_type"):
        raise ConversionError(
            "this is an audio-visual VideoLLaMA 2.1-AV release (mm_audio_tower); its BEATs audio branch is not "
            "supported yet: convert the vision-only VideoLLaMA2.1-7B-16F instead"
        )

    # ---- config
    text_config = _text_config(orig)
    tower_id = vision_tower or orig.get("mm_vision_tower")
    if not tower_id:
        raise ConversionError("config.json names no mm_vision_tower; pass --vision-tower PATH_OR_HUB_ID")
    tower_dir = resolve_local(tower_id, what="vision tower")
    vision_config = AutoConfig.from_pretrained(str(tower_dir))
    vision_config = getattr(vision_config, "vision_config", vision_config)  # a full CLIP/SigLIP repo
    vision_config._name_or_path = ""  # a path on the converting machine; LLaVA's converter does not store it either
    siglip = "siglip" in vision_config.model_type
    if siglip:
        vision_config.vision_use_head = False  # never used: the patch features of a hidden layer are taken
    select = orig.get("mm_vision_select_feature", "patch")
    if select != "patch":
        raise ConversionError(f"mm_vision_select_feature {select!r} is not supported (the releases use 'patch')")
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # as the original's training / inference code
    missing = [t for t in ("<image>", "<video>") if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)  # placeholders only: never embedded
    config = VideoLLMVideoLlama2Config(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=orig.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="full" if siglip else "default",
        projector_type=orig["mm_projector_type"],
        num_frames=orig.get("num_frames", 8),
    )
    if config.vision_config.hidden_size != orig.get("mm_hidden_size", config.vision_config.hidden_size):
        raise ConversionError(
            f"the vision tower {tower_id} is {config.vision_config.hidden_size} wide but the release's mm_hidden_size "
            f"is {orig['mm_hidden_size']}: pass the tower the release was trained with (--vision-tower)"
        )

    # ---- weights
    with torch.device("meta"):
        skeleton = VideoLLMVideoLlama2ForConditionalGeneration(config)
    release = CheckpointSource.open(src)
    num_experts = getattr(text_config, "num_local_experts", 0) if LLM_TYPES[orig["model_type"]] == "mixtral" else 0
    sources = [(release, videollama2_original_table(siglip=siglip, num_experts=num_experts))]
    if not any(k.startswith("model.vision_tower.") for k in release.keys()):
        sources.append((CheckpointSource.open(tower_dir), tower_repo_table()))  # a "-Base" release
    report = convert_checkpoint(
        sources,
        expected_from_model(skeleton),
        out,
        dtype=dtype,
        max_shard_size=max_shard_size,
        progress=progress,
        metadata={"converted_from": src_id, "converter": "hf_videollm videollama2 original"},
    )
    config.architectures = [VideoLLMVideoLlama2ForConditionalGeneration.__name__]
    if dtype is not None:
        config.dtype = dtype
    config.save_pretrained(out)
    copy_generation_config(src, out)

    # ---- processor: the tower's preprocessing (inference: no pad-to-square), the release's chat format
    if LLM_TYPES[orig["model_type"]] == "qwen2":
        template = chatml_template(QWEN2_SYSTEM)
    else:  # conv_mistral_instruct (LLaMA-2 style), the CLIP releases' training template
        template = llama2_template(VICUNA_V1_1_SYSTEM)
    processor = VideoLLMVideoLlama2Processor(
        tokenizer,
        chat_template=template,
        patch_size=config.vision_config.patch_size,
        projector_type=config.projector_type,
        model_num_frames=config.num_frames,
        num_frames=config.num_frames,
        image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
        **_tower_preprocessing(tower_dir, siglip),
    )
    processor.save_pretrained(out)
    return report
