"""Tiny, randomly initialised models and an offline tokenizer: for tests, the demo and benchmarks.

Nothing here downloads anything. Each model's entry in :data:`hf_videollm.registry.MODELS` names its builder here;
the common test suite is parametrized over the registry, so a new model joins every shared test through its entry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

__all__ = ["tiny_tokenizer", "tiny_media", "build_tiny", "tiny_llava", "tiny_videollama2", "tiny_videollama2_av", "BASE_WORDS"]

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
BASE_WORDS = (
    "a chat between curious human user and an artificial intelligence assistant the gives helpful detailed polite "
    "answers to s questions USER ASSISTANT SYSTEM what is shown in this image video picture frame describe which "
    "object color shape direction moves move moving left right up down first second third appears appear how many "
    "times flash flashes tone beep beeps high low pitch red green blue yellow white black orange purple cyan "
    "circle square triangle bar star it there are of on from with one two three four five six seven eight nine ten "
    "zero yes no answer word only unknown none"
).split()
PUNCT = list(".,:;!?'\"()[]{}<>-_/\\*#=+%&|@$^~`")


def tiny_tokenizer(extra_words: Iterable[str] = (), *, padding_side: str = "left", bos: bool = True, eos: bool = False):
    """A lower-casing word-level fast tokenizer (LLaMA-style ids: ``<unk>``=0, ``<s>``=1, ``</s>``=2, ``<pad>``=3).

    Words outside the vocabulary become ``<unk>``; letters and digits are in the vocabulary so nothing is lost
    silently in tests that spell things out. ``bos`` / ``eos``: the special tokens added around a text (LLaMA adds
    ``<s>`` before; T5 adds ``</s>`` after).
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words: list[str] = []
    seen = set(SPECIALS)
    for w in [*BASE_WORDS, *extra_words, *PUNCT, *"abcdefghijklmnopqrstuvwxyz", *"0123456789"]:
        for piece in re.findall(r"\w+|[^\w\s]", w.lower()):
            if piece not in seen:
                seen.add(piece)
                words.append(piece)
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()  # case-insensitive words; special tokens are matched before this
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    before, after = ("<s> " if bos else ""), (" </s>" if eos else "")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{before}$A{after}", pair=f"{before}$A $B{after}", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side=padding_side,
    )


def _merge(base: dict, overrides: dict) -> dict:
    """``base`` updated with ``overrides``, recursing into nested dicts (``vision_config``...)."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _tiny_text_config(tokenizer, overrides: dict, model_type: str) -> dict:
    """A 2-layer ``model_type`` LLM config (64 wide) with the tokenizer's vocabulary and special ids; ``overrides``
    update it (another ``model_type`` replaces it, keeping the ids)."""
    ids = dict(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if overrides.get("model_type", model_type) != model_type:  # another LLM family: its own field names
        return {**ids, **overrides}
    base = dict(
        model_type=model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False, **ids,
    )
    return _merge(base, overrides)


def _tiny_clip(image_size: int, patch_size: int) -> dict:
    return dict(
        model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, image_size=image_size, patch_size=patch_size, hidden_act="quick_gelu",
    )


def _finish(model, tokenizer):
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def _tiny_tower_model(tokenizer, seed, overrides, processor, *, classes, llm_type, defaults, processor_defaults):
    """Shared body of the builders of models with one CLIP tower: config (``defaults`` + tiny CLIP + tiny
    ``llm_type`` LLM, updated by ``overrides``), model, processor (``processor_defaults(config)`` + ``processor``)."""
    config_cls, model_cls, processor_cls = classes
    vocab = len(tokenizer)
    image_size = overrides.pop("image_size", 28)
    patch_size = overrides.pop("patch_size", 14)
    cfg = dict(
        vision_config=_tiny_clip(image_size, patch_size),
        text_config=_tiny_text_config(tokenizer, overrides.pop("text_config", {}), llm_type),
        image_token_id=vocab,
        video_token_id=vocab + 1,
        **defaults,
    )
    torch.manual_seed(seed)
    config = config_cls(**_merge(cfg, overrides))
    model = model_cls(config)
    settings = {
        "image_size": image_size,
        "patch_size": patch_size,
        "image_token_id": config.image_token_id,
        "video_token_id": config.video_token_id,
        **processor_defaults(config),
        **(processor or {}),
    }
    return _finish(model, tokenizer), processor_cls(tokenizer, **settings)


def tiny_llava(tokenizer, seed: int = 0, *, processor: dict | None = None, **overrides):
    """``overrides``: config fields (nested dicts update ``vision_config`` / ``text_config``); ``processor``:
    processor settings. ``image_size`` / ``patch_size`` reach both."""
    from .modeling.llava import VideoLLMLlavaConfig, VideoLLMLlavaForConditionalGeneration
    from .processors.llava import VideoLLMLlavaProcessor

    return _tiny_tower_model(
        tokenizer, seed, overrides, processor,
        classes=(VideoLLMLlavaConfig, VideoLLMLlavaForConditionalGeneration, VideoLLMLlavaProcessor),
        llm_type="llama", defaults={"projector_type": "mlp2x_gelu"},
        processor_defaults=lambda c: {"video_pool_stride": c.video_pool_stride, "num_frames": 4},
    )


def tiny_videollama2(tokenizer, seed: int = 0, *, processor: dict | None = None, **overrides):
    """A tiny VideoLLaMA 2: CLIP 2x32 -> STC connector -> Mistral 2x64. Same ``overrides`` / ``processor`` rules as
    the LLaVA builder; ``num_frames`` (frames an image is repeated to, default 4) reaches both."""
    from .modeling.videollama2 import VideoLLMVideoLlama2Config, VideoLLMVideoLlama2ForConditionalGeneration
    from .processors.videollama2 import VideoLLMVideoLlama2Processor

    return _tiny_tower_model(
        tokenizer, seed, overrides, processor,
        classes=(VideoLLMVideoLlama2Config, VideoLLMVideoLlama2ForConditionalGeneration, VideoLLMVideoLlama2Processor),
        llm_type="mistral", defaults={"projector_type": "stc_connector", "num_frames": 4},
        processor_defaults=lambda c: {
            "projector_type": c.projector_type, "model_num_frames": c.num_frames, "num_frames": c.num_frames,
        },
    )


#: BEATs of the golden fixture's size (videollama2/av_beats_qwen2)
TINY_BEATS = dict(
    embed_dim=32, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2,
    conv_pos=16, conv_pos_groups=4, num_buckets=32, max_distance=64,
)


def tiny_videollama2_av(tokenizer, seed: int = 0, *, processor: dict | None = None, **overrides):
    """A tiny VideoLLaMA 2.1-AV: the tiny VideoLLaMA 2 (Qwen2 LLM) + BEATs 2x32 + audio projector. Audio clips are
    cut / padded to 1 s (``audio_seconds``; the release uses 30 s) so a clip is 48 tokens."""
    from .modeling.videollama2_av import VideoLLMVideoLlama2AVConfig, VideoLLMVideoLlama2AVForConditionalGeneration
    from .processors.chat_templates import VICUNA_V1_1_SYSTEM, llama2_template
    from .processors.videollama2_av import VideoLLMVideoLlama2AVProcessor

    vocab = len(tokenizer)
    overrides = _merge({"audio_config": dict(TINY_BEATS), "audio_token_id": vocab + 2, "image_size": 56}, overrides)
    return _tiny_tower_model(
        tokenizer, seed, overrides, processor,
        classes=(VideoLLMVideoLlama2AVConfig, VideoLLMVideoLlama2AVForConditionalGeneration,
                 VideoLLMVideoLlama2AVProcessor),
        llm_type="qwen2", defaults={"projector_type": "stc_connector_v35", "num_frames": 4, "connector_depth": 1},
        processor_defaults=lambda c: {
            "projector_type": c.projector_type, "model_num_frames": c.num_frames, "num_frames": c.num_frames,
            "audio_token_id": c.audio_token_id, "audio_seconds": 1.0,
            "chat_template": llama2_template(VICUNA_V1_1_SYSTEM),  # the word-level tiny tokenizer has no ChatML tokens
        },
    )


def build_tiny(name: str, seed: int = 0, tokenizer=None, **overrides):
    """Build a tiny random model and its processor by registry name (``hf_videollm.registry.MODELS``)."""
    from .registry import get_entry

    entry = get_entry(name)
    return entry.build_tiny(tokenizer or tiny_tokenizer(), seed, **overrides)


def tiny_media(modality: str, seed: int = 0, *, frames: int = 4, height: int | None = None, width: int | None = None):
    """A small synthetic media item of ``modality`` in the form processors take: an image as uint8 ``(3, H, W)``, a
    video as uint8 ``(T, H, W, 3)`` frames, audio as ``{"array": float32 waveform, "sampling_rate": 16000}`` (the
    ``datasets`` Audio convention). Deterministic in ``seed``; used by the common test suite for every model."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if modality == "image":
        h, w = height or 40, width or 52
        return torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8))
    if modality == "video":
        h, w = height or 32, width or 40
        return rng.integers(0, 256, (frames, h, w, 3), dtype=np.uint8)
    if modality == "audio":
        rate = 16000
        t = np.arange(rate, dtype=np.float32) / rate
        tone = np.sin(2 * np.pi * (220 + 40 * (seed % 7)) * t) * 0.3
        return {"array": (tone + rng.normal(0, 0.01, rate)).astype(np.float32), "sampling_rate": rate}
    raise ValueError(f"unknown modality {modality!r}")
