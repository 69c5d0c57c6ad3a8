"""Tiny, randomly initialised models and an offline tokenizer: for tests, the demo and benchmarks.

Nothing here downloads anything. Each registered model adds one entry to :data:`TINY_BUILDERS`; the common test
suite is parametrized over it, so a new model joins every shared test by adding a tiny config here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

__all__ = ["tiny_tokenizer", "TinySpec", "TINY_BUILDERS", "build_tiny", "BASE_WORDS"]

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


def tiny_tokenizer(extra_words: Iterable[str] = (), *, padding_side: str = "left"):
    """A lower-casing word-level fast tokenizer (LLaMA-style ids: ``<unk>``=0, ``<s>``=1, ``</s>``=2, ``<pad>``=3).

    Words outside the vocabulary become ``<unk>``; letters and digits are in the vocabulary so nothing is lost
    silently in tests that spell things out.
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
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side=padding_side,
    )


@dataclass
class TinySpec:
    """How to build one tiny model + processor."""

    name: str
    build: Callable[..., tuple]  # (tokenizer, seed) -> (model, processor)
    modalities: tuple[str, ...]


def _tiny_llava(tokenizer, seed: int = 0, **overrides):
    from .modeling.llava import VideoLLMLlavaConfig, VideoLLMLlavaForConditionalGeneration
    from .processors.llava import VideoLLMLlavaProcessor

    vocab = len(tokenizer)
    image_size = overrides.pop("image_size", 28)
    cfg = dict(
        vision_config=dict(
            model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=image_size, patch_size=14, hidden_act="quick_gelu",
        ),
        text_config=dict(
            model_type="llama", vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, max_position_embeddings=2048,
            tie_word_embeddings=False,
        ),
        image_token_id=vocab,
        video_token_id=vocab + 1,
        projector_type="mlp2x_gelu",
    )
    cfg.update(overrides)
    torch.manual_seed(seed)
    config = VideoLLMLlavaConfig(**cfg)
    model = VideoLLMLlavaForConditionalGeneration(config)
    processor = VideoLLMLlavaProcessor(
        tokenizer,
        image_size=image_size,
        patch_size=14,
        image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
        video_pool_stride=config.video_pool_stride,
        num_frames=4,
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, processor


TINY_BUILDERS: dict[str, TinySpec] = {
    "llava": TinySpec("llava", _tiny_llava, ("image", "video")),
}


def build_tiny(name: str, seed: int = 0, tokenizer=None, **overrides):
    """Build a tiny random model and its processor by registry name (``hf_videollm.tiny.TINY_BUILDERS``)."""
    if name not in TINY_BUILDERS:
        raise KeyError(f"no tiny model named {name!r}; available: {sorted(TINY_BUILDERS)}")
    tokenizer = tokenizer or tiny_tokenizer()
    return TINY_BUILDERS[name].build(tokenizer, seed, **overrides)
