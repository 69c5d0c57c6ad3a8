"""Tiny, randomly initialised models and an offline tokenizer: for tests, the demo and benchmarks.

Nothing here downloads anything. Each model's entry in :data:`hf_videollm.registry.MODELS` names its builder here;
the common test suite is parametrized over the registry, so a new model joins every shared test through its entry.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

__all__ = ["tiny_tokenizer", "tiny_media", "build_tiny", "tiny_llava", "tiny_videollama2", "tiny_videollama2_av", "BASE_WORDS", "tiny_qwen2vl", "tiny_longvlm", "tiny_qwen_vl", "tiny_video_llama"]

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


QWEN2VL_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")


def tiny_qwen2vl(tokenizer, seed: int = 0, *, processor: dict | None = None, **overrides):
    """A tiny Qwen2-VL: vision tower 2x32 (patch 4, temporal patch 2, merge 2: one token per 8x8 pixels per two
    frames) -> Qwen2 2x64 with M-RoPE sections (2, 3, 3). The ChatML / vision markers are added to ``tokenizer`` (in
    the LLM vocabulary); the ``<|image_pad|>`` / ``<|video_pad|>`` ids lie past it. ``overrides``: config fields
    (nested dicts update ``vision_config`` / ``text_config``); ``processor``: processor settings."""
    from .modeling.qwen2vl import VideoLLMQwen2VLConfig, VideoLLMQwen2VLForConditionalGeneration
    from .processors.qwen2vl import VideoLLMQwen2VLProcessor

    missing = [t for t in QWEN2VL_SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    vocab = len(tokenizer)
    text = _tiny_text_config(tokenizer, overrides.pop("text_config", {}), "qwen2_vl_text")
    text.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
    vision = _merge(
        dict(model_type="qwen2_vl_vision", depth=2, embed_dim=32, hidden_size=text.get("hidden_size", 64), num_heads=2,
             mlp_ratio=2, patch_size=4, temporal_patch_size=2, spatial_merge_size=2, in_channels=3),
        overrides.pop("vision_config", {}),
    )
    ids = tokenizer.convert_tokens_to_ids
    cfg = dict(vision_config=vision, text_config=text, image_token_id=vocab, video_token_id=vocab + 1,
               vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    torch.manual_seed(seed)
    config = VideoLLMQwen2VLConfig(**_merge(cfg, overrides))
    model = VideoLLMQwen2VLForConditionalGeneration(config)
    vc = config.vision_config
    factor = vc.patch_size * vc.spatial_merge_size
    settings = dict(
        patch_size=vc.patch_size, temporal_patch_size=vc.temporal_patch_size, merge_size=vc.spatial_merge_size,
        min_pixels=factor * factor, max_pixels=32 * 32, video_min_pixels=factor * factor, video_max_pixels=24 * 24,
        video_fps=2.0, min_frames=2, max_frames=16, max_visual_tokens=256, tokenization="chunks",
        image_token_id=config.image_token_id, video_token_id=config.video_token_id,
    )
    settings.update(processor or {})
    return _finish(model, tokenizer), VideoLLMQwen2VLProcessor(tokenizer, **settings)


def tiny_longvlm(tokenizer, seed: int = 0, *, processor: dict | None = None, **overrides):
    """A tiny LongVLM: CLIP 2x32 (28 px, 2x2 patches) -> 4 frames in 2 segments of 8 patch tokens merged to 3, plus 2
    global tokens (8 visual tokens per video) -> Linear -> LLaMA 2x64. CLIP runs up to 8 frames per call (the batch's
    frames in one call). ``overrides`` update the config; ``processor``: processor settings."""
    from .modeling.longvlm import VideoLLMLongVLMConfig, VideoLLMLongVLMForConditionalGeneration
    from .processors.longvlm import VideoLLMLongVLMProcessor

    image_size = overrides.pop("image_size", 28)
    patch_size = overrides.pop("patch_size", 14)
    cfg = dict(
        vision_config=_tiny_clip(image_size, patch_size),
        text_config=_tiny_text_config(tokenizer, overrides.pop("text_config", {}), "llama"),
        video_token_id=len(tokenizer),
        num_frames=4, num_segments=2, tokens_per_segment=3, num_global_tokens=2, vision_chunk_frames=8,
    )
    torch.manual_seed(seed)
    config = VideoLLMLongVLMConfig(**_merge(cfg, overrides))
    model = VideoLLMLongVLMForConditionalGeneration(config)
    settings = {
        "image_size": image_size, "patch_size": patch_size, "video_token_id": config.video_token_id, "frame_size": None,
        **{k: getattr(config, k) for k in VideoLLMLongVLMProcessor.model_settings},
        **(processor or {}),
    }
    return _finish(model, tokenizer), VideoLLMLongVLMProcessor(tokenizer, **settings)


def tiny_videollama3(tokenizer, seed: int = 0, *, processor: dict | None = None, **overrides):
    """A tiny VideoLLaMA 3 (ChatML markers added to ``tokenizer``): SigLIP-NaViT 2x32 (patch 4, 2D RoPE; images merge 1, videos merge 2 with DiffFP) ->
    MLP-GELU -> Qwen2 2x64; at most 64 visual tokens per image / per video (``max_tokens``). ``overrides``: config
    fields (nested dicts update ``vision_config`` / ``text_config``); ``processor``: processor settings."""
    from .modeling.videollama3 import VideoLLMVideoLlama3Config, VideoLLMVideoLlama3ForConditionalGeneration
    from .processors.videollama3 import VideoLLMVideoLlama3Processor

    missing = [t for t in ("<|im_start|>", "<|im_end|>") if t not in tokenizer.get_vocab()]  # ChatML markers
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    vocab = len(tokenizer)
    text = _tiny_text_config(tokenizer, overrides.pop("text_config", {}), "qwen2")
    vision = _merge(
        dict(model_type="video_llama_3_vision", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=2, patch_size=4),
        overrides.pop("vision_config", {}),
    )
    cfg = dict(vision_config=vision, text_config=text, image_token_id=vocab, video_token_id=vocab + 1)
    torch.manual_seed(seed)
    config = VideoLLMVideoLlama3Config(**_merge(cfg, overrides))
    model = VideoLLMVideoLlama3ForConditionalGeneration(config)
    settings = dict(
        patch_size=config.vision_config.patch_size, image_merge_size=config.image_merge_size,
        video_merge_size=config.video_merge_size, min_tokens=4, max_tokens=64, video_fps=2.0, max_frames=16,
        use_token_compression=config.use_token_compression, image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
    )
    settings.update(processor or {})
    return _finish(model, tokenizer), VideoLLMVideoLlama3Processor(tokenizer, **settings)


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


# ---------------------------------------------------------------------------------------------------- BLIP-2 family
def tiny_qformer_tokenizer(extra_words: Iterable[str] = ()):
    """A tiny offline BERT-style WordPiece tokenizer for the Q-Former (``[CLS] text [SEP]``, lower-cased, ``[DEC]``
    as BOS, as LAVIS' ``init_tokenizer``)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words: list[str] = []
    seen = set(specials)
    for w in [*BASE_WORDS, *extra_words, *PUNCT, *"abcdefghijklmnopqrstuvwxyz", *"0123456789"]:
        for piece in re.findall(r"\w+|[^\w\s]", w.lower()):
            if piece not in seen:
                seen.add(piece)
                words.append(piece)
    vocab = {tok: i for i, tok in enumerate([*specials, *words])}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", truncation_side="left",
    )
    out.add_special_tokens({"bos_token": "[DEC]"})
    return out


def _tiny_blip2(tokenizer, seed, overrides, processor, *, instruct: bool, llm: str):
    from .modeling.blip2 import (
        VideoLLMBlip2Config,
        VideoLLMBlip2ForConditionalGeneration,
        VideoLLMInstructBlipConfig,
        VideoLLMInstructBlipForConditionalGeneration,
    )
    from .processors.blip2 import VideoLLMBlip2Processor, VideoLLMInstructBlipProcessor

    if llm not in ("opt", "t5", "llama"):
        raise ValueError(f"llm must be 'opt', 't5' or 'llama', got {llm!r}")
    image_size = overrides.pop("image_size", 28)
    num_query_tokens = overrides.pop("num_query_tokens", 4)
    text = {
        "opt": dict(model_type="opt", hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                    word_embed_proj_dim=64, max_position_embeddings=512, tie_word_embeddings=False),
        "t5": dict(model_type="t5", d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4,
                   feed_forward_proj="gated-gelu", decoder_start_token_id=tokenizer.pad_token_id,
                   relative_attention_num_buckets=8, relative_attention_max_distance=20),
        "llama": {},
    }[llm]
    text_config = _tiny_text_config(tokenizer, _merge(text, overrides.pop("text_config", {})), "llama")
    vocab = len(tokenizer)
    qformer = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                   encoder_hidden_size=32, max_position_embeddings=64, cross_attention_frequency=2)
    qtok = tiny_qformer_tokenizer() if instruct else None
    if instruct:
        qformer["vocab_size"] = len(qtok)
    else:
        qformer["use_qformer_text_input"] = False
    cfg = dict(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=14, initializer_range=0.02),
        qformer_config=qformer,
        text_config=text_config,
        num_query_tokens=num_query_tokens,
        image_token_id=vocab,
        video_token_id=vocab + 1,
    )
    config_cls, model_cls = ((VideoLLMInstructBlipConfig, VideoLLMInstructBlipForConditionalGeneration) if instruct
                             else (VideoLLMBlip2Config, VideoLLMBlip2ForConditionalGeneration))
    torch.manual_seed(seed)
    config = config_cls(**_merge(cfg, overrides))
    model = model_cls(config)
    settings = dict(
        num_query_tokens=num_query_tokens, image_token_id=config.image_token_id,
        video_token_id=config.video_token_id, lm="seq2seq" if llm == "t5" else "causal",
        answer_end={"t5": "", "opt": "\n", "llama": "</s>"}[llm],
        num_frames=2,
    )
    settings = {"image_size": image_size, **settings, **(processor or {})}
    proc = (VideoLLMInstructBlipProcessor(tokenizer, qtok, **settings) if instruct
            else VideoLLMBlip2Processor(tokenizer, **settings))
    return _finish(model, tokenizer), proc


def tiny_blip2(tokenizer, seed: int = 0, *, llm: str = "opt", processor: dict | None = None, **overrides):
    """A tiny BLIP-2: ViT 2x32 -> Q-Former 2x32 (4 queries) -> OPT 2x64 (``llm="t5"``: Flan-T5-style 2x64,
    encoder-decoder). ``overrides``: config fields (nested dicts update the sub-configs); ``processor``: settings."""
    return _tiny_blip2(tokenizer, seed, overrides, processor, instruct=False, llm=llm)


def tiny_blip2_t5(tokenizer, seed: int = 0, **kwargs):
    return tiny_blip2(tokenizer, seed, llm="t5", **kwargs)


def tiny_instructblip(tokenizer, seed: int = 0, *, llm: str = "llama", processor: dict | None = None, **overrides):
    """A tiny InstructBLIP: as :func:`tiny_blip2` with a Q-Former that reads the instruction (tiny BERT tokenizer)
    and a LLaMA (Vicuna) 2x64 LLM (``llm="t5"``: Flan-T5-style)."""
    return _tiny_blip2(tokenizer, seed, overrides, processor, instruct=True, llm=llm)


def tiny_instructblip_t5(tokenizer, seed: int = 0, **kwargs):
    return tiny_instructblip(tokenizer, seed, llm="t5", **kwargs)


QWEN_VL_SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<ref>", "</ref>", "<box>", "</box>", "<img>", "</img>")


def tiny_qwen_vl(tokenizer, seed: int = 0, *, processor: dict | None = None, **overrides):
    """A tiny Qwen-VL: ViT 2x32 (28 px, patch 14: 2x2 patches) -> resampler with 4 queries (2 heads) -> Qwen2 2x64
    with the original's dynamic-NTK / logN options on (no-ops below ``seq_length`` 2048, as released). The ChatML and
    ``<img>`` / ``<box>`` markers are added to ``tokenizer``; the ``<imgpad>`` / video placeholder ids lie past it.
    ``overrides``: config fields (nested dicts update ``vision_config`` / ``text_config``); ``processor``: settings."""
    from .modeling.qwen_vl import VideoLLMQwenVLConfig, VideoLLMQwenVLForConditionalGeneration
    from .processors.qwen_vl import VideoLLMQwenVLProcessor

    missing = [t for t in QWEN_VL_SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    vocab = len(tokenizer)
    text = _tiny_text_config(tokenizer, overrides.pop("text_config", {}), "qwen2")
    text = {"use_dynamic_ntk": True, "use_logn_attn": True, "seq_length": 2048, **text}
    vision = _merge(
        dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14,
             output_dim=text.get("hidden_size", 64), n_queries=4, resampler_num_heads=2),
        overrides.pop("vision_config", {}),
    )
    ids = tokenizer.convert_tokens_to_ids
    cfg = dict(vision_config=vision, text_config=text, image_token_id=vocab, video_token_id=vocab + 1,
               image_start_token_id=ids("<img>"), image_end_token_id=ids("</img>"))
    torch.manual_seed(seed)
    config = VideoLLMQwenVLConfig(**_merge(cfg, overrides))
    model = VideoLLMQwenVLForConditionalGeneration(config)
    vc = config.vision_config
    settings = dict(image_size=vc.image_size, patch_size=vc.patch_size, image_tokens_per_item=vc.n_queries,
                    num_frames=2, image_token_id=config.image_token_id, video_token_id=config.video_token_id)
    settings.update(processor or {})
    return _finish(model, tokenizer), VideoLLMQwenVLProcessor(tokenizer, **settings)


def tiny_video_llama(tokenizer, seed: int = 0, *, processor: dict | None = None, audio: bool = True, **overrides):
    """A tiny Video-LLaMA: ViT 2x32 -> image Q-Former 2x32 (4 queries) -> frame positions -> video Q-Former 2x32
    (4 queries) -> LLaMA 2x64; with ``audio`` an ImageBind audio path 1x32 (8 clips of (1, 128, 204)) -> audio
    Q-Former 2x32 (2 queries). ``overrides``: config fields; ``processor``: settings."""
    from .modeling.video_llama import VideoLLMVideoLlamaConfig, VideoLLMVideoLlamaForConditionalGeneration
    from .processors.video_llama import VideoLLMVideoLlamaProcessor

    image_size = overrides.pop("image_size", 28)
    text_config = _tiny_text_config(tokenizer, overrides.pop("text_config", {}), "llama")
    vocab = len(tokenizer)
    bert = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=64, use_qformer_text_input=False)
    cfg = dict(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=14, initializer_range=0.02),
        qformer_config={**bert, "encoder_hidden_size": 32, "cross_attention_frequency": 2},
        video_qformer_config={**bert, "encoder_hidden_size": 32, "cross_attention_frequency": 1},
        text_config=text_config,
        num_query_tokens=4, num_video_query_tokens=4, num_audio_query_tokens=2, max_frame_pos=8,
        image_token_id=vocab, video_token_id=vocab + 1, audio_token_id=vocab + 2,
        image_token="<image>", video_token="<video>", audio_token="<audio>",
    )
    if audio:
        cfg["audio_config"] = dict(embed_dim=32, num_blocks=1, num_heads=2, out_embed_dim=24)
        cfg["audio_qformer_config"] = {**bert, "encoder_hidden_size": 24, "cross_attention_frequency": 1}
    torch.manual_seed(seed)
    config = VideoLLMVideoLlamaConfig(**_merge(cfg, overrides))
    model = VideoLLMVideoLlamaForConditionalGeneration(config)
    settings = dict(
        image_size=image_size, num_frames=2, max_frames=config.max_frame_pos,
        num_video_query_tokens=config.num_video_query_tokens, num_audio_query_tokens=config.num_audio_query_tokens,
        audio_branch=config.has_audio, image_token=config.image_token, video_token=config.video_token,
        audio_token=config.audio_token, image_token_id=config.image_token_id, video_token_id=config.video_token_id,
        audio_token_id=config.audio_token_id,
    )
    return _finish(model, tokenizer), VideoLLMVideoLlamaProcessor(tokenizer, **{**settings, **(processor or {})})
