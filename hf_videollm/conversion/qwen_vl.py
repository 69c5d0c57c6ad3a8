"""Qwen-VL / Qwen-VL-Chat converter: the Hub releases (``Qwen/Qwen-VL``, ``Qwen/Qwen-VL-Chat``; remote code
``QWenLMHeadModel``) -> hf_videollm Qwen-VL.

The release is one folder: ``config.json`` (Qwen-7B fields + ``visual``), ``generation_config.json``,
``qwen.tiktoken`` (the BPE ranks; the special tokens are appended by the remote tokenizer in a fixed order) and the
weights (``transformer.*``, ``lm_head.weight``; sharded safetensors or ``.bin``). Its Python files are never run:

* weights: the key table below (the ViT's per-head interleaved ``in_proj`` split into q/k/v, the LLM's contiguous
  ``c_attn`` thirds into q/k/v, ``w2`` -> ``gate_proj`` and ``w1`` -> ``up_proj`` since the original computes
  ``c_proj(w1(x) * silu(w2(x)))``);
* tokenizer: ``qwen.tiktoken`` read into a ``tokenizers`` BPE (transformers' ``TikTokenConverter``, with Qwen's
  split pattern, NFC normalisation and the special tokens at the original's ids), no ``tiktoken`` needed;
* config: ``visual`` -> the vision config, the Qwen fields -> a transformers ``qwen2`` config with the original's
  ``use_dynamic_ntk`` / ``use_logn_attn`` / ``seq_length``.

The GPTQ ``Qwen-VL-Chat-Int4`` release (``qweight`` / ``qzeros`` / ``scales``) is refused: convert the fp16 release
and quantize with ``load_in_4bit`` instead.
"""

from __future__ import annotations

import base64
from pathlib import Path

from .engine import Drop, KeyTable, Rename, Transform, split_fused, split_per_head
from .hub import resolve_local
from .release import Release, read_json
from .sources import CheckpointSource, ConversionError

__all__ = [
    "QWEN_PATTERN",
    "QWEN_SPECIAL_TOKENS",
    "load_qwen_tokenizer",
    "qwen_vl_configs",
    "qwen_vl_original_table",
    "read_qwen_vl",
]

#: the original tokenizer's pre-tokenization pattern (cl100k's, with single digits: ``\p{N}``, not ``\p{N}{1,3}``)
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
#: special tokens in the order the original appends them after the BPE ranks (``<|endoftext|>`` = n_ranks)
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", *(f"<|extra_{i}|>" for i in range(205)),
    "<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>", "<img>", "</img>", "<imgpad>",
)


# ---------------------------------------------------------------------------------------------------- key table
def qwen_vl_original_table(vision_heads: int) -> KeyTable:
    """Release keys -> ours. ``vision_heads``: heads of the ViT (the ``in_proj`` rows are ``[head][q,k,v][dim]``)."""
    vis = r"^transformer\.visual\."
    blk = vis + r"transformer\.resblocks\.(\d+)\."
    llm = r"^transformer\.h\.(\d+)\."
    out = r"language_model.model.layers.\1."
    return KeyTable(
        "qwen_vl-original",
        [
            Drop(r"\.rotary_emb\.inv_freq$|\.attn\.masked_bias$|\.attn\.bias$",
                 "buffers the original re-creates (rotary frequencies, causal mask)"),
            # vision transformer
            Rename(vis + r"conv1\.weight$", "vision_tower.conv1.weight"),
            Rename(vis + r"positional_embedding$", "vision_tower.positional_embedding"),
            Rename(vis + r"ln_pre\.(weight|bias)$", r"vision_tower.ln_pre.\1"),
            Transform(blk + r"attn\.in_proj\.(weight|bias)$",
                      (r"vision_tower.blocks.\1.attn.q_proj.\2", r"vision_tower.blocks.\1.attn.k_proj.\2",
                       r"vision_tower.blocks.\1.attn.v_proj.\2"),
                      split_per_head(vision_heads, 3), "per-head interleaved [h: q k v] rows (Megatron layout)"),
            Rename(blk + r"(ln_1|ln_2|attn\.out_proj|mlp\.c_fc|mlp\.c_proj)\.(weight|bias)$",
                   r"vision_tower.blocks.\1.\2.\3"),
            # resampler (attn_pool: query, pos_embed, kv_proj, attn = nn.MultiheadAttention, ln_q, ln_kv)
            Rename(vis + r"attn_pool\.(.+)$", r"multi_modal_projector.attn_pool.\1"),
            Rename(vis + r"ln_post\.(weight|bias)$", r"multi_modal_projector.ln_post.\1"),
            Rename(vis + r"proj$", "multi_modal_projector.proj.weight"),
            # Qwen-7B as transformers' Qwen2
            Rename(r"^transformer\.wte\.weight$", "language_model.model.embed_tokens.weight"),
            Rename(r"^transformer\.ln_f\.weight$", "language_model.model.norm.weight"),
            Rename(r"^lm_head\.weight$", "language_model.lm_head.weight"),
            Rename(llm + r"ln_1\.weight$", out + "input_layernorm.weight"),
            Rename(llm + r"ln_2\.weight$", out + "post_attention_layernorm.weight"),
            Transform(llm + r"attn\.c_attn\.(weight|bias)$",
                      (out + r"self_attn.q_proj.\2", out + r"self_attn.k_proj.\2", out + r"self_attn.v_proj.\2"),
                      split_fused(3), "contiguous [Q; K; V] thirds"),
            Rename(llm + r"attn\.c_proj\.weight$", out + "self_attn.o_proj.weight"),
            Rename(llm + r"mlp\.w1\.weight$", out + "mlp.up_proj.weight"),
            Rename(llm + r"mlp\.w2\.weight$", out + "mlp.gate_proj.weight"),
            Rename(llm + r"mlp\.c_proj\.weight$", out + "mlp.down_proj.weight"),
        ],
    )


# ---------------------------------------------------------------------------------------------------- config
def qwen_vl_configs(orig: dict) -> tuple[dict, dict]:
    """``(vision_config, text_config)`` dicts of a Qwen-VL ``config.json``."""
    if orig.get("model_type") != "qwen" or "visual" not in orig:
        raise ConversionError(
            f"config.json has model_type {orig.get('model_type')!r} and {'a' if 'visual' in orig else 'no'} 'visual' "
            "section; a Qwen-VL release has model_type 'qwen' and 'visual'"
        )
    if float(orig.get("rotary_pct", 1.0)) != 1.0:
        raise ConversionError(f"rotary_pct {orig['rotary_pct']} is not supported (every Qwen-VL release uses 1.0)")
    if not orig.get("no_bias", True):
        raise ConversionError("no_bias=false is not supported (every Qwen-VL release has bias-free c_proj / MLP)")
    visual = orig["visual"]
    vision = {
        "hidden_size": visual["width"], "num_hidden_layers": visual["layers"], "num_attention_heads": visual["heads"],
        "mlp_ratio": visual["mlp_ratio"], "image_size": visual["image_size"], "patch_size": visual["patch_size"],
        "output_dim": visual["output_dim"], "n_queries": visual.get("n_queries", 256),
    }
    heads = orig["num_attention_heads"]
    head_dim = orig.get("kv_channels", orig["hidden_size"] // heads)
    if head_dim * heads != orig["hidden_size"]:
        raise ConversionError(
            f"kv_channels {head_dim} x num_attention_heads {heads} != hidden_size {orig['hidden_size']}: c_attn's "
            "thirds would not be hidden_size wide"
        )
    text = {
        "model_type": "qwen2",
        "vocab_size": orig["vocab_size"],
        "hidden_size": orig["hidden_size"],
        "intermediate_size": orig["intermediate_size"] // 2,  # w1 / w2 are intermediate_size // 2 wide
        "num_hidden_layers": orig["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": head_dim,
        "max_position_embeddings": orig.get("max_position_embeddings", 8192),
        "rms_norm_eps": orig.get("layer_norm_epsilon", 1e-6),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(orig.get("rotary_emb_base", 10000))},
        "initializer_range": orig.get("initializer_range", 0.02),
        "tie_word_embeddings": bool(orig.get("tie_word_embeddings", False)),
        "use_dynamic_ntk": bool(orig.get("use_dynamic_ntk", True)),
        "use_logn_attn": bool(orig.get("use_logn_attn", True)),
        "seq_length": orig.get("seq_length", 2048),
    }
    return vision, text


# ---------------------------------------------------------------------------------------------------- tokenizer
def _read_tiktoken(path: str | Path) -> dict[bytes, int]:
    """``qwen.tiktoken``: one ``base64(token) rank`` per line (read as data, no tiktoken needed)."""
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(Path(path).read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as e:
            raise ConversionError(f"{path}:{n} is not a 'base64 rank' line of a tiktoken file ({e})") from e
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ConversionError(f"{path}: the ranks are not 0..{len(ranks) - 1} without gaps; the special token ids would shift")
    return ranks


def load_qwen_tokenizer(path: str | Path, *, model_max_length: int = 8192):
    """The original ``QWenTokenizer`` as a fast tokenizer: same ids for text and special tokens (special tokens are
    recognised in text, as the original's ``allowed_special="all"``; ``skip_special_tokens`` drops every one of them,
    as the original's ``_decode``); ``<|endoftext|>`` is eos and pad."""
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = Path(path)
    vocab = path / "qwen.tiktoken" if path.is_dir() else path
    if not vocab.is_file():
        raise ConversionError(f"{vocab} not found: a Qwen-VL release ships its BPE ranks as qwen.tiktoken")
    ranks = _read_tiktoken(vocab)

    class _Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(_url):
            return ranks

    backend = _Converter(vocab_file=str(vocab), pattern=QWEN_PATTERN, extra_special_tokens=QWEN_SPECIAL_TOKENS).converted()
    backend.normalizer = normalizers.NFC()  # the original normalises text to NFC before encoding
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token=None,
        extra_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),  # special, as the original's (decode skips them all)
        model_max_length=model_max_length, clean_up_tokenization_spaces=False,
    )
    got = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if got != len(ranks) or tokenizer.convert_tokens_to_ids("<imgpad>") != len(ranks) + len(QWEN_SPECIAL_TOKENS) - 1:
        raise ConversionError(f"special token ids do not follow the {len(ranks)} BPE ranks of {vocab} (got {got})")
    return tokenizer


# ---------------------------------------------------------------------------------------------------- generation
def _generation_config_dir(src: Path, tokenizer) -> Path | None:
    """The release's generation config with the original's stop words as ``eos_token_id``: ChatML (Qwen-VL-Chat)
    stops at ``<|im_end|>`` / ``<|im_start|>`` (``get_stop_words_ids("chatml")``; the original then emits
    ``<|endoftext|>``, here generation ends at the stop word itself) besides ``<|endoftext|>``. The raw format (Qwen-VL)
    keeps ``<|endoftext|>`` (its other stop word, the string ``"Human:"``, is ``stop_strings`` territory). Written to a
    temporary folder that :func:`write_converted` copies from."""
    if not (src / "generation_config.json").is_file():
        return None
    import tempfile

    from transformers import GenerationConfig

    gen = GenerationConfig.from_pretrained(str(src))
    if getattr(gen, "chat_format", "chatml") == "chatml":
        eod, im_end, im_start = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>", "<|im_start|>"])
        gen.eos_token_id = [eod, im_end, im_start]
        gen.pad_token_id = eod if gen.pad_token_id is None else gen.pad_token_id
    out = Path(tempfile.mkdtemp(prefix="qwen_vl_generation_"))
    gen.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------------- reader
def read_qwen_vl(src: str | Path) -> Release:
    """A Qwen-VL / Qwen-VL-Chat Hub folder -> the :class:`Release` to write."""
    from ..modeling.qwen_vl import VideoLLMQwenVLConfig, VideoLLMQwenVLForConditionalGeneration
    from ..processors.qwen_vl import VideoLLMQwenVLProcessor
    from .release import add_placeholder_tokens

    src_id = str(src)
    src = resolve_local(src, what="Qwen-VL checkpoint")
    orig = read_json(src / "config.json")
    vision, text = qwen_vl_configs(orig)
    checkpoint = CheckpointSource.open(src)
    if any(k.endswith(".qweight") for k in checkpoint.keys()):
        raise ConversionError(
            f"{src} is a GPTQ release (qweight/qzeros/scales, e.g. Qwen-VL-Chat-Int4): convert the fp16 release "
            "(Qwen/Qwen-VL-Chat) and quantize the converted model with load_in_4bit instead"
        )
    tok_cfg = read_json(src / "tokenizer_config.json") if (src / "tokenizer_config.json").is_file() else {}
    tokenizer = load_qwen_tokenizer(src, model_max_length=tok_cfg.get("model_max_length", 8192))
    add_placeholder_tokens(tokenizer, "<video>")
    ids = {name: tokenizer.convert_tokens_to_ids(tok) for name, tok in (
        ("image_start_token_id", "<img>"), ("image_end_token_id", "</img>"), ("image_token_id", "<imgpad>"),
        ("video_token_id", "<video>"),
    )}
    start = orig["visual"].get("image_start_id")
    if start is not None and start != ids["image_start_token_id"]:
        raise ConversionError(
            f"config.json visual.image_start_id={start} but qwen.tiktoken puts <img> at {ids['image_start_token_id']}; "
            "the tokenizer file does not belong to this checkpoint"
        )
    gen = read_json(src / "generation_config.json") if (src / "generation_config.json").is_file() else {}
    eos = gen.get("eos_token_id", tokenizer.eos_token_id)
    text.update(eos_token_id=eos, pad_token_id=gen.get("pad_token_id", eos), bos_token_id=None)
    config = VideoLLMQwenVLConfig(vision_config=vision, text_config=text,
                                  tie_word_embeddings=text["tie_word_embeddings"], **ids)
    processor = VideoLLMQwenVLProcessor(
        tokenizer, image_size=vision["image_size"], patch_size=vision["patch_size"],
        image_tokens_per_item=vision["n_queries"],
        image_token_id=ids["image_token_id"], video_token_id=ids["video_token_id"],
    )
    return Release(
        VideoLLMQwenVLForConditionalGeneration,
        config,
        sources=[(checkpoint, qwen_vl_original_table(vision["num_attention_heads"]))],
        processor=processor,
        converted_from=src_id,
        converter="hf_videollm qwen_vl original",
        generation_config_from=_generation_config_dir(src, tokenizer),
    )
