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

__all__ = ["read_videollama2", "read_videollama2_av", "videollama2_original_table", "LLM_TYPES"]

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
    "audio_tower_config_note", "tune_adapter_llm", "va",
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


def _tied_table(*tables: torch.Tensor) -> torch.Tensor:
    for i, t in enumerate(tables[1:], start=1):
        if not torch.equal(t, tables[0]):
            raise ConversionError(
                f"BEATs relative_attention_bias of layer {i} differs from layer 0's: the original ties every layer's "
                "table to layer 0 (this checkpoint is not what the original would load)"
            )
    return tables[0]


def videollama2_original_table(
    *, siglip: bool = False, num_experts: int = 0, audio: bool = False, audio_tied_copies: int = 0
) -> KeyTable:
    """Original VideoLLaMA 2 release -> hf_videollm VideoLLaMA 2. ``siglip``: the tower is SigLIP (its unused pooling
    head is dropped); ``num_experts``: Mixtral's experts per layer (0: a dense LLM); ``audio``: a 2.1-AV release
    (BEATs at ``model.audio_tower``, kept as the original loads it -- ``pos_conv`` keeps ``weight_g``/``weight_v``;
    ``mm_projector_a`` -> ``audio_projector``); ``audio_tied_copies``: layers after 0 whose tied
    ``relative_attention_bias`` the checkpoint repeats (``torch.save`` does; safetensors keeps layer 0 only): checked
    equal to layer 0's and merged into it."""
    tower = r"^model\.vision_tower\.vision_tower\.(?:vision_model\.)?"
    rules = [
        Drop(r"\.rotary_emb\.inv_freq$", "rotary buffer, recomputed from the config"),
        Drop(tower + r".*position_ids$", "buffer re-created by the model"),
    ]
    if siglip:
        rules.append(Drop(tower + r"head\.", "SigLIP's pooling head: the original never uses it (patch features)"))
    if audio:
        beats = r"^model\.audio_tower\."
        table = r"\.self_attn\.relative_attention_bias\.weight$"
        if audio_tied_copies:
            rules.append(Merge(
                tuple(rf"{beats}encoder\.layers\.{i}{table}" for i in range(audio_tied_copies + 1)),
                "audio_tower.encoder.layers.0.self_attn.relative_attention_bias.weight", _tied_table,
                "every layer's table is tied to layer 0's (checked equal)",
            ))
        rules += [
            Drop(beats + r"predictor\.", "BEATs' AudioSet classifier: the original extracts features only"),
            Rename(beats + r"(.+)$", r"audio_tower.\1"),
            Rename(r"^model\.mm_projector_a\.0\.(weight|bias)$", r"audio_projector.linear_1.\1"),
            Rename(r"^model\.mm_projector_a\.2\.(weight|bias)$", r"audio_projector.linear_2.\1"),
        ]
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
def _videollama2_processor(tokenizer, config, *, llm_type: str, preprocessing: dict, av: bool = False):
    """The tower's preprocessing (inference: no pad-to-square), the release's chat format."""
    from ..processors.chat_templates import QWEN2_SYSTEM, VICUNA_V1_1_SYSTEM, chatml_template, llama2_template
    from ..processors.videollama2 import VideoLLMVideoLlama2Processor

    if llm_type == "qwen2":
        template = chatml_template(QWEN2_SYSTEM)
    else:  # conv_mistral_instruct (LLaMA-2 style), the CLIP releases' training template
        template = llama2_template(VICUNA_V1_1_SYSTEM)
    cls, extra = VideoLLMVideoLlama2Processor, {}
    if av:
        from ..processors.videollama2_av import VideoLLMVideoLlama2AVProcessor

        cls = VideoLLMVideoLlama2AVProcessor
        extra = {"audio_token_id": config.audio_token_id, "audio_patch_size": config.audio_config.input_patch_size}
    return cls(
        tokenizer,
        chat_template=template,
        patch_size=config.vision_config.patch_size,
        projector_type=config.projector_type,
        model_num_frames=config.num_frames,
        num_frames=config.num_frames,
        image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
        **extra,
        **preprocessing,
    )


# ---------------------------------------------------------------------------------------------------- reading
def _beats_config(release: CheckpointSource, orig: dict, overrides: dict | None) -> dict:
    """BEATs sizes of a 2.1-AV release. The original builds ``BEATsConfig()`` from hard-coded defaults, so the sizes
    are read from the weights' shapes (every size but ``max_distance``, which keeps the released 800); ``overrides``
    (``--audio-config``) set any field explicitly."""
    from ..modeling.beats import VideoLLMBEATsConfig

    p = "model.audio_tower."
    need = [p + "patch_embedding.weight", p + "encoder.pos_conv.0.weight_v", p + "encoder.layers.0.fc1.weight"]
    missing = [k for k in need if k not in release]
    if missing:
        raise ConversionError(f"the release names an audio tower (mm_audio_tower) but lacks its weights: {missing}")
    keys = release.keys()
    layers = {int(k[len(p + "encoder.layers."):].split(".")[0]) for k in keys if k.startswith(p + "encoder.layers.")}
    patch = release.shape(p + "patch_embedding.weight")  # (embed_dim, 1, P, P)
    wv = release.shape(p + "encoder.pos_conv.0.weight_v")  # (C, C / groups, K)
    dim = wv[0]
    sizes = dict(
        input_patch_size=patch[-1], embed_dim=patch[0], conv_bias=p + "patch_embedding.bias" in release,
        encoder_layers=max(layers) + 1, encoder_embed_dim=dim,
        encoder_ffn_embed_dim=release.shape(p + "encoder.layers.0.fc1.weight")[0],
        conv_pos=wv[2], conv_pos_groups=dim // wv[1],
        gru_rel_pos=p + "encoder.layers.0.self_attn.grep_a" in release,
        relative_position_embedding=p + "encoder.layers.0.self_attn.relative_attention_bias.weight" in release,
    )
    if sizes["gru_rel_pos"]:
        sizes["encoder_attention_heads"] = release.shape(p + "encoder.layers.0.self_attn.grep_a")[1]
    if sizes["relative_position_embedding"]:
        table = release.shape(p + "encoder.layers.0.self_attn.relative_attention_bias.weight")
        sizes["num_buckets"], sizes["encoder_attention_heads"] = table[0], table[1]
    if orig.get("mm_hidden_size_a") not in (None, dim):
        raise ConversionError(f"config.json mm_hidden_size_a={orig['mm_hidden_size_a']} but the BEATs weights are {dim} wide")
    fields = set(VideoLLMBEATsConfig().to_dict())
    unknown = sorted(set(overrides or {}) - fields)
    if unknown:
        raise ConversionError(f"--audio-config fields {unknown} are not BEATs config fields; known: {sorted(fields)}")
    return {**sizes, **(overrides or {})}


def read_videollama2(src: str | Path, *, vision_tower: str | None = None, audio_config: dict | str | None = None) -> Release:
    """A VideoLLaMA 2 / 2.1 / 2.1-AV release (a merged checkpoint: no base; "-Base" releases take the tower's weights
    from the tower repo) -> the :class:`Release` to write. A release with ``mm_audio_tower`` becomes a
    :class:`~hf_videollm.modeling.videollama2_av.VideoLLMVideoLlama2AVForConditionalGeneration`;
    ``audio_config`` (a dict or a JSON string) overrides BEATs config fields read from the weights."""
    import json

    from ..modeling.videollama2 import VideoLLMVideoLlama2ForConditionalGeneration

    src_id = str(src)
    src = resolve_local(src, what="VideoLLaMA 2 checkpoint")
    orig = read_json(src / "config.json")
    if "mm_projector_type" not in orig:
        raise ConversionError(f"{src}/config.json has no mm_projector_type: not a VideoLLaMA 2 release")
    av = bool(orig.get("mm_audio_tower") or orig.get("mm_projector_a_type"))
    if audio_config is not None and not av:
        raise ConversionError("--audio-config applies to 2.1-AV releases (mm_audio_tower); this release has no audio tower")
    if isinstance(audio_config, str):
        try:
            audio_config = json.loads(audio_config)
        except json.JSONDecodeError as e:
            raise ConversionError(f"--audio-config must be a JSON object of BEATs config fields: {e}") from e
    if av and orig.get("mm_projector_a_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise ConversionError(f"mm_projector_a_type {orig['mm_projector_a_type']!r} is not supported (releases: mlp2x_gelu)")
    text_config = _text_config(orig)  # checks the model_type first
    tower_id, tower_dir = resolve_vision_tower(vision_tower, orig)
    vision_config = vision_tower_config(tower_dir, mm_hidden_size=orig.get("mm_hidden_size"), tower_id=tower_id)
    siglip = "siglip" in vision_config.model_type
    if siglip:
        vision_config.vision_use_head = False  # never used: the patch features of a hidden layer are taken
    placeholders = ("<image>", "<video>", "<audio>") if av else ("<image>", "<video>")
    tokenizer = load_tokenizer(src, placeholders=placeholders)
    config = _videollama2_config(orig, tokenizer, text_config, vision_config, siglip=siglip)
    release = CheckpointSource.open(src)
    model_class = VideoLLMVideoLlama2ForConditionalGeneration
    if av:
        from ..modeling.videollama2_av import VideoLLMVideoLlama2AVConfig, VideoLLMVideoLlama2AVForConditionalGeneration

        model_class = VideoLLMVideoLlama2AVForConditionalGeneration
        config = VideoLLMVideoLlama2AVConfig(
            **{k: v for k, v in config.to_dict().items() if k in _CONFIG_FIELDS},
            audio_config=_beats_config(release, orig, audio_config),
            audio_token_id=tokenizer.convert_tokens_to_ids("<audio>"),
        )
    llm_type = LLM_TYPES[orig.get("model_type", "videollama2")]
    processor = _videollama2_processor(
        tokenizer,
        config,
        llm_type=llm_type,
        preprocessing=image_preprocessing(
            read_preprocessor_config(tower_dir), image_processor="SiglipImageProcessor" if siglip else "CLIPImageProcessor"
        ),
        av=av,
    )

    num_experts = getattr(text_config, "num_local_experts", 0) if llm_type == "mixtral" else 0
    tied = 0
    if av:
        tied = sum(1 for k in release.keys() if k.startswith("model.audio_tower.encoder.layers.")
                   and k.endswith(".self_attn.relative_attention_bias.weight")
                   and not k.startswith("model.audio_tower.encoder.layers.0."))
    table = videollama2_original_table(siglip=siglip, num_experts=num_experts, audio=av, audio_tied_copies=tied)
    sources = [(release, table)]
    if not any(k.startswith("model.vision_tower.") for k in release.keys()):  # a "-Base" release
        sources.append((CheckpointSource.open(tower_dir), vision_tower_repo_table(siglip=siglip)))
    return Release(
        model_class,
        config,
        sources=sources,
        processor=processor,
        converted_from=src_id,
        converter="hf_videollm videollama2 original",
        generation_config_from=src,
    )


#: ``convert("videollama2_av", ...)``: the same reader (it tells the releases apart by ``mm_audio_tower``)
read_videollama2_av = read_videollama2
_CONFIG_FIELDS = (
    "vision_config", "text_config", "image_token_id", "video_token_id", "vision_feature_layer",
    "vision_feature_select_strategy", "projector_type", "num_frames",
)


#: ``convert("videollama2", src, out, ...)``
