"""VideoLLaMA 3 converter: the original release (``DAMO-NLP-SG/VideoLLaMA3-*``, ``Videollama3Qwen2ForCausalLM``
saved by transformers 4.46 with remote code) and transformers' ``VideoLlama3ForConditionalGeneration`` -> hf_videollm.

Facts about the original release (spec ``videollama3.md`` section 2): one merged checkpoint; Qwen2 at ``model.*`` /
``lm_head``; the vision encoder at ``model.vision_encoder.*`` (the training code's own checkpoints wrap it once more:
``model.vision_encoder.vision_encoder.*``) with exactly transformers' ``VideoLlama3VisionModel`` names (no absolute
position embedding; the rotary ``inv_freq`` is a non-persistent buffer, not saved); the projector at
``model.mm_projector.readout.{0,2}`` (Linear-GELU-Linear). ``config.json`` holds the Qwen2 fields at the top level,
``vision_encoder_config``, ``mm_projector_type``, ``use_token_compression`` and ``image_token_index`` (the added
``<image>`` token); ``processor_config.json`` the merge sizes, fps and max_frames; ``preprocessor_config.json`` the
pixel settings (0.5 mean/std in the releases).
"""

from __future__ import annotations

from pathlib import Path

from .engine import Drop, KeyTable, Rename
from .hub import resolve_local
from .release import Release, load_tokenizer, read_json
from .sources import CheckpointSource, ConversionError

__all__ = ["VIDEOLLAMA3_ORIGINAL_TABLE", "VIDEOLLAMA3_TRANSFORMERS_TABLE", "read_videollama3", "read_videollama3_hf"]

VIDEOLLAMA3_ORIGINAL_TABLE = KeyTable(
    "videollama3-original",
    [
        Drop(r"rotary_pos_emb\.inv_freq$", "rotary buffer re-created by the model"),
        Rename(r"^model\.vision_encoder\.(?:vision_encoder\.)?(.+)$", r"vision_tower.\1"),
        Rename(r"^model\.mm_projector\.readout\.0\.(weight|bias)$", r"multi_modal_projector.linear_1.\1"),
        Rename(r"^model\.mm_projector\.readout\.2\.(weight|bias)$", r"multi_modal_projector.linear_2.\1"),
        Rename(r"^lm_head\.(.+)$", r"language_model.lm_head.\1"),
        Rename(r"^model\.(.+)$", r"language_model.model.\1"),
    ],
)

VIDEOLLAMA3_TRANSFORMERS_TABLE = KeyTable(
    "videollama3-transformers",
    [
        Drop(r"rotary_pos_emb\.(?:original_)?inv_freq$", "rotary buffer re-created by the model"),
        Rename(r"^model\.vision_model\.(.+)$", r"vision_tower.\1"),
        Rename(r"^model\.projector\.readout\.0\.(weight|bias)$", r"multi_modal_projector.linear_1.\1"),
        Rename(r"^model\.projector\.readout\.2\.(weight|bias)$", r"multi_modal_projector.linear_2.\1"),
        Rename(r"^lm_head\.(.+)$", r"language_model.lm_head.\1"),
        Rename(r"^model\.language_model\.(.+)$", r"language_model.model.\1"),
    ],
)

#: config.json keys of the original that are not Qwen2 fields
_NOT_TEXT = {
    "architectures", "auto_map", "vision_encoder", "vision_encoder_config", "mm_projector_type", "use_token_compression",
    "image_token_index", "torch_dtype", "dtype", "transformers_version", "model_type", "_name_or_path",
}
_VISION_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                  "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout")
_PIXELS = ("patch_size", "min_tokens", "max_tokens", "image_mean", "image_std", "rescale_factor")


def _configs(hf: dict, src: Path) -> tuple[dict, dict]:
    enc = hf.get("vision_encoder_config")
    if not enc:
        raise ConversionError(
            f"{src}/config.json has no vision_encoder_config: a VideoLLaMA 3 release stores the encoder's config there "
            "(a training-code checkpoint naming a separate encoder repo in 'vision_encoder' is not a release)"
        )
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size") if k not in enc]
    if missing:
        raise ConversionError(f"{src}/config.json vision_encoder_config lacks {missing}")
    vision = {k: enc[k] for k in _VISION_FIELDS if k in enc}
    vision["model_type"] = "video_llama_3_vision"
    text = {k: v for k, v in hf.items() if k not in _NOT_TEXT}
    theta = text.pop("rope_theta", 1000000.0)
    if text.get("rope_scaling"):
        raise ConversionError(f"{src}/config.json sets rope_scaling {text['rope_scaling']}, which the releases do not use")
    text.pop("rope_scaling", None)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    text["model_type"] = "qwen2"
    return vision, text


def _processor(tokenizer, pre: dict, proc: dict, image_token_id: int, video_token_id: int, compression: bool):
    from ..processors.videollama3 import VideoLLMVideoLlama3Processor

    kwargs = {k: pre[k] for k in _PIXELS if k in pre}
    if pre.get("resample", 3) != 3:
        from ..media.transforms import PIL_RESAMPLE_CODES

        kwargs["resample"] = PIL_RESAMPLE_CODES[pre["resample"]]
    for ours, theirs in (("image_merge_size", "image_merge_size"), ("video_merge_size", "video_merge_size"),
                         ("video_fps", "fps"), ("max_frames", "max_frames")):
        if theirs in proc:
            kwargs[ours] = proc[theirs]
    return VideoLLMVideoLlama3Processor(
        tokenizer, image_token="<image>", video_token="<video>", image_token_id=image_token_id,
        video_token_id=video_token_id, use_token_compression=compression, **kwargs,
    )


def read_videollama3(src: str | Path) -> Release:
    """An original VideoLLaMA 3 release directory (or Hub id) -> the :class:`Release`."""
    from ..modeling.videollama3 import VideoLLMVideoLlama3Config, VideoLLMVideoLlama3ForConditionalGeneration

    src_id = str(src)
    src = resolve_local(src, what="VideoLLaMA 3 checkpoint")
    hf = read_json(src / "config.json")
    if hf.get("model_type") != "videollama3_qwen2":
        raise ConversionError(
            f"{src}/config.json has model_type {hf.get('model_type')!r}, expected 'videollama3_qwen2' (for transformers' "
            "'video_llama_3' checkpoints use --from transformers)"
        )
    vision, text = _configs(hf, src)
    tokenizer = load_tokenizer(src, placeholders=("<image>", "<video>"), pad_with_unk=False)
    vocab = tokenizer.get_vocab()
    image_id = hf.get("image_token_index", vocab.get("<image>"))
    if vocab.get("<image>") != image_id:
        raise ConversionError(
            f"config.json says image_token_index={image_id} but the tokenizer has <image> = {vocab.get('<image>')}; the "
            "tokenizer does not belong to this checkpoint"
        )
    compression = bool(hf.get("use_token_compression", True))
    config = VideoLLMVideoLlama3Config(
        vision_config=vision, text_config=text, image_token_id=image_id, video_token_id=vocab["<video>"],
        projector_type=hf.get("mm_projector_type", "mlp2x_gelu"), use_token_compression=compression,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    pre = read_json(src / "preprocessor_config.json") if (src / "preprocessor_config.json").is_file() else {}
    proc = read_json(src / "processor_config.json") if (src / "processor_config.json").is_file() else {}
    processor = _processor(tokenizer, pre, proc, image_id, vocab["<video>"], compression)
    config.image_merge_size, config.video_merge_size = processor.image_merge_size, processor.video_merge_size
    return Release(
        VideoLLMVideoLlama3ForConditionalGeneration,
        config,
        sources=[(CheckpointSource.open(src), VIDEOLLAMA3_ORIGINAL_TABLE)],
        processor=processor,
        converted_from=src_id,
        converter="hf_videollm videollama3 original",
        generation_config_from=src,
    )


def read_videollama3_hf(src: str | Path) -> Release:
    """A transformers ``VideoLlama3ForConditionalGeneration`` checkpoint -> the :class:`Release` (its placeholders
    ``<|image_pad|>`` / ``<|video_pad|>`` kept)."""
    from ..modeling.videollama3 import VideoLLMVideoLlama3Config, VideoLLMVideoLlama3ForConditionalGeneration

    src_id = str(src)
    src = resolve_local(src, what="VideoLLaMA 3 checkpoint")
    hf = read_json(src / "config.json")
    if hf.get("model_type") != "video_llama_3":
        raise ConversionError(f"{src}/config.json has model_type {hf.get('model_type')!r}, expected 'video_llama_3'")
    vision = dict(hf.get("vision_config") or {})
    vision["model_type"] = "video_llama_3_vision"
    vision.setdefault("patch_size", 16)  # transformers' class default
    text = dict(hf.get("text_config") or {})
    text["model_type"] = "qwen2"
    tokenizer = load_tokenizer(src, placeholders=("<|image_pad|>", "<|video_pad|>"), pad_with_unk=False)
    vocab = tokenizer.get_vocab()
    image_id, video_id = hf.get("image_token_id", 151655), hf.get("video_token_id", 151656)
    for token, tid in (("<|image_pad|>", image_id), ("<|video_pad|>", video_id)):
        if vocab.get(token) != tid:
            raise ConversionError(f"config.json gives {token} id {tid} but the tokenizer has {vocab.get(token)}")
    config = VideoLLMVideoLlama3Config(
        vision_config=vision, text_config=text, image_token_id=image_id, video_token_id=video_id,
        image_token="<|image_pad|>", video_token="<|video_pad|>",
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )
    pre = read_json(src / "preprocessor_config.json") if (src / "preprocessor_config.json").is_file() else {}
    from ..processors.videollama3 import VideoLLMVideoLlama3Processor

    kwargs = {k: pre[k] for k in ("patch_size", "image_mean", "image_std", "rescale_factor") if k in pre}
    processor = VideoLLMVideoLlama3Processor(
        tokenizer, image_token="<|image_pad|>", video_token="<|video_pad|>", image_token_id=image_id,
        video_token_id=video_id, hub_pil_size_quirk=False, **kwargs,
    )
    return Release(
        VideoLLMVideoLlama3ForConditionalGeneration,
        config,
        sources=[(CheckpointSource.open(src), VIDEOLLAMA3_TRANSFORMERS_TABLE)],
        processor=processor,
        converted_from=src_id,
        converter="hf_videollm videollama3 transformers",
        generation_config_from=src,
    )
