"""BLIP-2 / InstructBLIP converter: LAVIS releases and transformers' ``Blip2`` / ``InstructBlip`` layouts.

A LAVIS model is assembled from three places (as ``load_model`` does it):

1. the LAVIS ``.pth`` (``{"model": state_dict}``, trainable parameters + buffers only): ``query_tokens``,
   ``ln_vision``, ``Qformer.bert.*``, ``opt_proj`` / ``t5_proj`` / ``llm_proj`` -- and, for checkpoints whose ViT was
   fine-tuned (``caption_coco_*``), ``visual_encoder.*`` too; LLM alias keys that survived LAVIS' save rule
   (``opt_model.lm_head.weight``, LLaMA ``inv_freq``) are dropped: the LLM comes from its own folder;
2. ``eva_vit_g.pth`` (plain state dict, fp16): LAVIS builds one block fewer than the file holds (39 of 40), so the
   last block is dropped; ``q_bias`` / ``v_bias`` become ``qkv.bias = cat(q_bias, 0, v_bias)``;
3. the LLM folder (``facebook/opt-*``, ``google/flan-t5-*`` with LAVIS' ``dense_act_fn="gelu"``, Vicuna v1.1 with
   BOS/EOS/UNK remapped to ``</s>`` and ``[PAD]`` appended -- its embedding row is the mean of the others, as
   ``resize_token_embeddings(mean_resizing=True)``; LAVIS' row is random and in no file).

``src`` is the directory holding the ``.pth`` (or the ``.pth`` itself); ``vision_tower`` the EVA file (default
``src/eva_vit_g.pth``), ``base`` the LLM folder (default: the one sub-directory of ``src`` with an LLM
``config.json``). The Q-Former's sizes come from ``bert-base-uncased/config.json`` beside the ``.pth`` when present
(otherwise bert-base), its tokenizer (InstructBLIP) from that folder's ``vocab.txt``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..modeling.qformer import QFORMER_BERT_BASE
from .engine import Drop, KeyTable, Merge, Rename, Transform
from .hub import resolve_local
from .release import Release, add_placeholder_tokens, read_json
from .sources import CheckpointSource, ConversionError

__all__ = [
    "read_blip2", "read_instructblip", "read_blip2_hf", "read_instructblip_hf", "lavis_table", "eva_vit_table",
    "llm_table", "TRANSFORMERS_TABLE",
]

_LLM_TYPES = ("opt", "t5", "llama")
_EVA_HEAD_DIM = 88  # EVA ViT-g: 1408 wide, 16 heads (LAVIS hard-codes num_heads = 1408 // 88)
_LLM_PREFIX = {"opt": "opt", "t5": "t5", "llama": "llm"}


# ---------------------------------------------------------------------------------------------------- key tables
def _qkv_bias(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.cat([q, torch.zeros_like(q), v])


def eva_vit_table(prefix: str, drop_from_block: int | None) -> KeyTable:
    """EVA ViT (``eva_vit_g.pth`` without prefix, or ``visual_encoder.`` inside a LAVIS ``.pth``) ->
    ``vision_tower.*`` (transformers' ``Blip2VisionModel`` names). ``drop_from_block``: blocks from this index on
    are not built by LAVIS (the released file holds one more than the model uses)."""
    p = re.escape(prefix)
    rules = []
    if drop_from_block is not None:
        rules.append(Drop(
            rf"^{p}blocks\.(?:{'|'.join(str(i) for i in range(drop_from_block, drop_from_block + 64))})\.",
            f"LAVIS builds the ViT with {drop_from_block} blocks (load_state_dict(strict=False) skips the rest)",
        ))
    rules += [
        Drop(rf"^{p}(?:norm|fc_norm|head|lm_head)\.", "final norm / head of EVA-CLIP: LAVIS builds neither"),
        Rename(rf"^{p}cls_token$", "vision_tower.embeddings.class_embedding"),
        Rename(rf"^{p}pos_embed$", "vision_tower.embeddings.position_embedding"),
        Rename(rf"^{p}patch_embed\.proj\.(weight|bias)$", r"vision_tower.embeddings.patch_embedding.\1"),
        Rename(rf"^{p}blocks\.(\d+)\.norm([12])\.(weight|bias)$", r"vision_tower.encoder.layers.\1.layer_norm\2.\3"),
        Rename(rf"^{p}blocks\.(\d+)\.attn\.qkv\.weight$", r"vision_tower.encoder.layers.\1.self_attn.qkv.weight"),
        Merge(
            (rf"^{p}blocks\.(\d+)\.attn\.q_bias$", rf"^{p}blocks\.(\d+)\.attn\.v_bias$"),
            r"vision_tower.encoder.layers.\1.self_attn.qkv.bias", _qkv_bias,
            reason="EVA's qkv bias is cat(q_bias, 0, v_bias) (k has none)",
        ),
        Rename(rf"^{p}blocks\.(\d+)\.attn\.proj\.(weight|bias)$", r"vision_tower.encoder.layers.\1.self_attn.projection.\2"),
        Rename(rf"^{p}blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)$", r"vision_tower.encoder.layers.\1.mlp.\2.\3"),
    ]
    return KeyTable(f"eva-vit{'-' + prefix.rstrip('.') if prefix else ''}", rules)


def lavis_table(text_input: bool, drop_from_block: int | None = None) -> KeyTable:
    """LAVIS ``.pth`` -> ours. ``text_input``: InstructBLIP's Q-Former (text embeddings + text FFN kept); a
    query-only BLIP-2 Q-Former drops a stage-1 checkpoint's text branch and heads."""
    rules: list = [
        Drop(r"^Qformer\.bert\.embeddings\.position_ids$", "buffer, re-created by the model"),
        Drop(r"^(?:opt_model|t5_model|llm_model)\.",
             "LLM alias / buffer that survived LAVIS' save rule; the LLM is read from its own folder"),
        Drop(r"^Qformer\.cls\.", "stage-1 language-model head (LAVIS sets Qformer.cls = None)"),
        Drop(r"^(?:vision_proj|text_proj|itm_head|temp)\b", "stage-1 contrastive / matching heads, unused in stage 2"),
        Rename(r"^query_tokens$", "qformer.query_tokens"),
        Rename(r"^ln_vision\.(weight|bias)$", r"vision_tower.post_layernorm.\1"),
        Rename(r"^(?:opt|t5|llm)_proj\.(weight|bias)$", r"multi_modal_projector.\1"),
        Rename(r"^Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(.+)$",
               r"qformer.bert.encoder.layer.\1.\2.attention.\3"),
    ]
    if text_input:
        rules += [
            Rename(r"^Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)$", r"qformer.bert.embeddings.layernorm.\1"),
            Rename(r"^Qformer\.bert\.embeddings\.(word|position)_embeddings\.weight$",
                   r"qformer.bert.embeddings.\1_embeddings.weight"),
        ]
    else:
        rules += [
            Drop(r"^Qformer\.bert\.embeddings\.(?:word|position)_embeddings\.",
                 "text embeddings of a stage-1 checkpoint; BLIP-2's Q-Former reads no text (deleted by LAVIS)"),
            Drop(r"^Qformer\.bert\.encoder\.layer\.\d+\.(?:intermediate|output)\.",
                 "text FFN of a stage-1 checkpoint; BLIP-2's Q-Former reads no text (deleted by LAVIS)"),
            Rename(r"^Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)$", r"qformer.bert.layernorm.\1"),
        ]
    rules.append(Rename(r"^Qformer\.bert\.encoder\.(.+)$", r"qformer.bert.encoder.\1"))
    rules += eva_vit_table("visual_encoder.", drop_from_block).rules
    return KeyTable("lavis-" + ("instructblip" if text_input else "blip2"), rules)


def _pad_rows(rows: int):
    """Append rows (mean of the existing ones) up to ``rows``: LAVIS' ``resize_token_embeddings`` for ``[PAD]``."""

    def fn(t: torch.Tensor, match=None, ctx=None):
        extra = rows - t.shape[0]
        if extra <= 0:
            return t
        mean = t.float().mean(0, keepdim=True).to(t.dtype)
        return torch.cat([t, mean.expand(extra, -1)])

    return fn


def llm_table(model_type: str, *, tied: bool, vocab_rows: int | None = None) -> KeyTable:
    """The LLM folder -> ``language_model.*`` (``vocab_rows``: resize the embeddings / head to this many rows)."""
    rules: list = [Drop(r"\.rotary_emb\.inv_freq$", "rotary buffer, recomputed from the config")]
    if tied:
        rules.append(Drop(r"^lm_head\.weight$", "tied to the input embeddings"))
    if model_type == "t5":
        if tied:
            rules.append(Drop(r"^(?:encoder|decoder)\.embed_tokens\.weight$", "tied to shared.weight"))
        rules += [
            Rename(r"^(shared|encoder|decoder|lm_head)\.(.+)$", r"language_model.\1.\2"),
        ]
    elif model_type == "opt":
        rules += [
            Rename(r"^model\.decoder\.(.+)$", r"language_model.model.decoder.\1"),
            Rename(r"^decoder\.(.+)$", r"language_model.model.decoder.\1"),
            Rename(r"^lm_head\.weight$", "language_model.lm_head.weight"),
        ]
    else:
        if vocab_rows is not None:
            resize = _pad_rows(vocab_rows)
            rules += [
                Transform(r"^model\.embed_tokens\.weight$", ("language_model.model.embed_tokens.weight",), resize,
                          reason="[PAD] appended by LAVIS (resize_token_embeddings)"),
                Transform(r"^lm_head\.weight$", ("language_model.lm_head.weight",), resize,
                          reason="[PAD] appended by LAVIS (resize_token_embeddings)"),
            ]
        rules += [
            Rename(r"^model\.(.+)$", r"language_model.model.\1"),
            Rename(r"^lm_head\.weight$", "language_model.lm_head.weight"),
        ]
    return KeyTable(f"llm-{model_type}", rules)


#: transformers' ``Blip2ForConditionalGeneration`` / ``InstructBlipForConditionalGeneration`` (any of its key
#: variants) -> ours
TRANSFORMERS_TABLE = KeyTable(
    "blip2-transformers",
    [
        Drop(r"position_ids$", "buffer re-created by the model"),
        Rename(r"^(?:model\.)?vision_model\.(.+)$", r"vision_tower.\1"),
        Rename(r"^(?:model\.)?query_tokens$", "qformer.query_tokens"),
        Rename(r"^(?:model\.)?qformer\.(.+)$", r"qformer.bert.\1"),
        Rename(r"^(?:model\.)?language_projection\.(.+)$", r"multi_modal_projector.\1"),
        Rename(r"^lm_head\.(.+)$", r"language_model.lm_head.\1"),
        Rename(r"^(?:model\.)?language_model\.(.+)$", r"language_model.\1"),
    ],
)


# ---------------------------------------------------------------------------------------------------- reading
def _find_pth(src: Path) -> Path:
    if src.is_file():
        return src
    cands = sorted(p for p in src.glob("*.pth") if p.name != "eva_vit_g.pth")
    if len(cands) != 1:
        raise ConversionError(
            f"expected exactly one LAVIS checkpoint (*.pth other than eva_vit_g.pth) in {src}, found "
            f"{[p.name for p in cands] or 'none'}; pass the .pth file itself"
        )
    return cands[0]


def _find_llm(root: Path, base: str | None) -> Path:
    if base is not None:
        return resolve_local(base, what="LLM (OPT / Flan-T5 / Vicuna folder)")
    cands = [d for d in sorted(root.iterdir()) if (d / "config.json").is_file()
             and read_json(d / "config.json").get("model_type") in _LLM_TYPES]
    if len(cands) != 1:
        raise ConversionError(
            f"cannot tell which folder in {root} holds the LLM (found {[d.name for d in cands] or 'none'}); pass "
            "--base PATH (facebook/opt-*, google/flan-t5-*, or the Vicuna v1.1 folder LAVIS loads)"
        )
    return cands[0]


def _vision_config(eva: dict[str, torch.Tensor], prefix: str, blocks: int, num_heads: int | None) -> dict:
    width = eva[prefix + "cls_token"].shape[-1]
    positions = eva[prefix + "pos_embed"].shape[1] - 1
    patch = eva[prefix + "patch_embed.proj.weight"].shape[-1]
    side = int(round(positions ** 0.5))
    if side * side != positions:
        raise ConversionError(f"pos_embed holds {positions} patch positions, not a square grid")
    heads = num_heads or max(1, width // _EVA_HEAD_DIM)
    if width % heads:
        raise ConversionError(f"ViT width {width} is not divisible by {heads} heads; pass vision_num_heads")
    return dict(
        hidden_size=width, intermediate_size=eva[prefix + "blocks.0.mlp.fc1.weight"].shape[0], num_hidden_layers=blocks,
        num_attention_heads=heads, image_size=side * patch, patch_size=patch, hidden_act="gelu",
        layer_norm_eps=1e-6, qkv_bias=True,
    )


def _block_count(keys, prefix: str) -> int:
    idx = {int(m.group(1)) for k in keys if (m := re.match(rf"^{re.escape(prefix)}blocks\.(\d+)\.", k))}
    return max(idx) + 1 if idx else 0


def _llm_config(llm_dir: Path, model_type: str, vocab: int | None):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(llm_dir))
    if model_type == "t5":
        cfg.dense_act_fn = "gelu"  # LAVIS: t5_config.dense_act_fn = "gelu" (overrides gated-gelu_new)
    if vocab is not None:
        cfg.vocab_size = vocab
    return cfg


def _bert_dir(root: Path) -> Path | None:
    d = root / "bert-base-uncased"
    return d if d.is_dir() else None


def _qformer_tokenizer(root: Path):
    from transformers import AutoTokenizer

    d = _bert_dir(root)
    if d is None or not (d / "vocab.txt").is_file():
        raise ConversionError(
            f"InstructBLIP's Q-Former tokenizer (bert-base-uncased vocab.txt) not found in {root}/bert-base-uncased; "
            "put the bert-base-uncased tokenizer files there"
        )
    tok = AutoTokenizer.from_pretrained(str(d), trust_remote_code=False)
    tok.truncation_side = "left"
    tok.add_special_tokens({"bos_token": "[DEC]"})  # LAVIS init_tokenizer
    return tok


def _llm_tokenizer(llm_dir: Path, model_type: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(llm_dir), trust_remote_code=False)
    if model_type == "llama":  # LAVIS Blip2VicunaInstruct
        tok.add_special_tokens({"pad_token": "[PAD]", "bos_token": "</s>", "eos_token": "</s>", "unk_token": "</s>"})
        if hasattr(tok, "update_post_processor"):  # the fast tokenizer's template still holds the old BOS
            tok.update_post_processor()
        tok.padding_side = "left"
        tok.truncation_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    add_placeholder_tokens(tok, "<image>", "<video>")
    return tok


def _processor(text_input: bool, tokenizer, qformer_tokenizer, config, model_type: str, **settings):
    from ..processors.blip2 import VideoLLMBlip2Processor, VideoLLMInstructBlipProcessor

    ends = {"opt": "\n", "t5": "", "llama": "</s>"}
    common = dict(
        image_size=settings.pop("image_size", config.vision_config.image_size),
        patch_size=config.vision_config.patch_size,
        num_query_tokens=config.num_query_tokens,
        lm="seq2seq" if model_type == "t5" else "causal",
        answer_end=ends[model_type],
        image_token_id=config.image_token_id,
        video_token_id=config.video_token_id,
        **settings,
    )
    if text_input:
        return VideoLLMInstructBlipProcessor(tokenizer, qformer_tokenizer, **common)
    return VideoLLMBlip2Processor(tokenizer, **common)


def _read_lavis(src, *, text_input: bool, vision_tower, base, vision_num_heads, image_size=None) -> Release:
    from ..modeling.blip2 import (
        VideoLLMBlip2Config,
        VideoLLMBlip2ForConditionalGeneration,
        VideoLLMInstructBlipConfig,
        VideoLLMInstructBlipForConditionalGeneration,
    )

    src_id = str(src)
    src = Path(src).expanduser()
    if not src.exists():
        raise ConversionError(f"{src} does not exist")
    pth = _find_pth(src)
    root = pth.parent
    ckpt = CheckpointSource.open(pth)
    keys = list(ckpt.keys())
    proj = [k for k in keys if re.match(r"^(?:opt|t5|llm)_proj\.weight$", k)]
    if not proj or "query_tokens" not in keys:
        raise ConversionError(f"{pth} has no query_tokens / *_proj: not a LAVIS BLIP-2 / InstructBLIP stage-2 checkpoint")
    has_text = any(k.startswith("Qformer.bert.embeddings.word_embeddings") for k in keys)
    if text_input and not has_text:
        raise ConversionError(f"{pth} has no Q-Former text embeddings: a BLIP-2 checkpoint; convert it as blip2")
    llm_dir = _find_llm(root, base)
    model_type = read_json(llm_dir / "config.json")["model_type"]
    expect = proj[0].split("_proj")[0]
    if _LLM_PREFIX[model_type] != expect:
        raise ConversionError(f"{pth} projects to {expect}_proj but the LLM folder {llm_dir} is {model_type!r}")

    # the ViT: fine-tuned inside the .pth (all its blocks used), or eva_vit_g.pth (its last block is not built)
    if any(k.startswith("visual_encoder.") for k in keys):
        vit_source, prefix = ckpt, "visual_encoder."
        blocks, drop_from = _block_count(keys, prefix), None
        eva_keys = {k: ckpt.get(k) for k in (f"{prefix}cls_token", f"{prefix}pos_embed",
                                             f"{prefix}patch_embed.proj.weight", f"{prefix}blocks.0.mlp.fc1.weight")}
        vit_sources = []
    else:
        eva_path = Path(vision_tower).expanduser() if vision_tower else root / "eva_vit_g.pth"
        if not eva_path.is_file():
            raise ConversionError(
                f"EVA ViT-g weights not found at {eva_path}: the LAVIS checkpoint does not hold the frozen ViT; pass "
                "--vision-tower PATH/eva_vit_g.pth"
            )
        vit_source, prefix = CheckpointSource.open(eva_path), ""
        stored = _block_count(list(vit_source.keys()), "")
        blocks, drop_from = stored - 1, stored - 1
        eva_keys = {k: vit_source.get(k) for k in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")}
        vit_sources = [(vit_source, eva_vit_table("", drop_from))]
    vision = _vision_config(eva_keys, prefix, blocks, vision_num_heads)
    if image_size is not None and image_size != vision["image_size"]:
        raise ConversionError(
            f"the ViT's position embeddings are for {vision['image_size']} px, not {image_size}; interpolation is not "
            "supported by this converter"
        )

    bert = read_json(_bert_dir(root) / "config.json") if _bert_dir(root) else {}
    qformer = {k: bert.get(k, v) for k, v in QFORMER_BERT_BASE.items()}
    qformer["encoder_hidden_size"] = vision["hidden_size"]
    qformer["cross_attention_frequency"] = 2  # LAVIS cross_attention_freq
    query = ckpt.get("query_tokens")
    tokenizer = _llm_tokenizer(llm_dir, model_type)
    qtok = None
    if text_input:
        qtok = _qformer_tokenizer(root)
        qformer["vocab_size"] = ckpt.get("Qformer.bert.embeddings.word_embeddings.weight").shape[0]
        if len(qtok) != qformer["vocab_size"]:
            raise ConversionError(
                f"the Q-Former tokenizer has {len(qtok)} tokens but the checkpoint's Q-Former vocabulary is "
                f"{qformer['vocab_size']} (bert-base-uncased + [DEC])"
            )
    llm_vocab = read_json(llm_dir / "config.json")["vocab_size"]
    new_vocab = None
    if model_type == "llama":  # [PAD] appended by LAVIS
        pad_id = tokenizer.convert_tokens_to_ids("[PAD]")
        new_vocab = max(llm_vocab, pad_id + 1)
    text_config = _llm_config(llm_dir, model_type, new_vocab)
    vocab = max(len(tokenizer), text_config.vocab_size)
    config_cls = VideoLLMInstructBlipConfig if text_input else VideoLLMBlip2Config
    config = config_cls(
        vision_config=vision,
        qformer_config={**qformer, **({} if text_input else {"use_qformer_text_input": False})},
        text_config=text_config.to_dict(),
        num_query_tokens=query.shape[1],
        ln_vision_eps=1e-5,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
    )
    del vocab
    raw_llm = read_json(llm_dir / "config.json")
    tied = bool(raw_llm.get("tie_word_embeddings", model_type != "llama"))
    if model_type == "t5" and not tied:
        # transformers 5 forces T5Config.tie_word_embeddings=True (it only keeps the no-rescaling flag); Flan-T5's
        # lm_head is its own matrix, so the skeleton must hold it (on load, differing weights are never tied).
        config.text_config.tie_word_embeddings = False
    processor = _processor(text_input, tokenizer, qtok, config, model_type)
    model_class = VideoLLMInstructBlipForConditionalGeneration if text_input else VideoLLMBlip2ForConditionalGeneration
    return Release(
        model_class,
        config,
        sources=[
            (ckpt, lavis_table(text_input)),
            *vit_sources,
            (CheckpointSource.open(llm_dir), llm_table(model_type, tied=tied, vocab_rows=new_vocab)),
        ],
        processor=processor,
        converted_from=src_id,
        converter=f"hf_videollm {'instructblip' if text_input else 'blip2'} original (LAVIS)",
        generation_config_from=_generation_config_dir(llm_dir, model_type, tokenizer, text_config),
    )


def _generation_config_dir(llm_dir: Path, model_type: str, tokenizer, text_config) -> Path | None:
    """LAVIS' generate defaults that differ from the LLM folder's: Blip2OPT stops at ``"\\n"`` (its
    ``eos_token_id``). Written to a temporary folder that :func:`write_converted` copies from."""
    if model_type != "opt":
        return llm_dir if (llm_dir / "generation_config.json").is_file() else None
    import tempfile

    from transformers import GenerationConfig

    gen = (GenerationConfig.from_pretrained(str(llm_dir)) if (llm_dir / "generation_config.json").is_file()
           else GenerationConfig.from_model_config(text_config))
    gen.eos_token_id = tokenizer("\n", add_special_tokens=False)["input_ids"][0]
    gen.pad_token_id = tokenizer.pad_token_id
    out = Path(tempfile.mkdtemp(prefix="blip2_generation_"))
    gen.save_pretrained(out)
    return out


def read_blip2(src: str | Path, *, vision_tower: str | None = None, base: str | None = None,
               vision_num_heads: int | None = None) -> Release:
    """A LAVIS BLIP-2 release (``blip2_opt`` / ``blip2_t5``) -> the :class:`Release` to write.
    ``vision_num_heads``: heads of the EVA ViT when not 16 per 1408 (not recoverable from the weights)."""
    return _read_lavis(src, text_input=False, vision_tower=vision_tower, base=base, vision_num_heads=vision_num_heads)


def read_instructblip(src: str | Path, *, vision_tower: str | None = None, base: str | None = None,
                      vision_num_heads: int | None = None) -> Release:
    """A LAVIS InstructBLIP release (``blip2_vicuna_instruct`` / ``blip2_t5_instruct``) -> the :class:`Release`."""
    return _read_lavis(src, text_input=True, vision_tower=vision_tower, base=base, vision_num_heads=vision_num_heads)


def _read_hf(src, *, text_input: bool) -> Release:
    from transformers import AutoTokenizer

    from ..modeling.blip2 import (
        VideoLLMBlip2Config,
        VideoLLMBlip2ForConditionalGeneration,
        VideoLLMInstructBlipConfig,
        VideoLLMInstructBlipForConditionalGeneration,
    )

    src_id = str(src)
    src = resolve_local(src, what="BLIP-2 checkpoint")
    hf = read_json(src / "config.json")
    want = ("instructblip", "instructblipvideo") if text_input else ("blip-2",)
    if hf.get("model_type") not in want:
        raise ConversionError(f"{src}/config.json has model_type {hf.get('model_type')!r}, expected one of {want}")
    video = hf["model_type"] == "instructblipvideo"  # InstructBLIP weights; the placeholder is the video token
    tokenizer = AutoTokenizer.from_pretrained(str(src), trust_remote_code=False)
    if video:
        video_token_id = hf.get("video_token_index", hf.get("video_token_id"))
        if video_token_id is None:
            raise ConversionError(f"{src}/config.json has no video_token_index; add it")
        add_placeholder_tokens(tokenizer, "<image>")
        image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    else:
        image_token_id = hf.get("image_token_index", hf.get("image_token_id"))
        if image_token_id is None:
            raise ConversionError(f"{src}/config.json has no image_token_index (old BLIP-2 configs); add it")
        add_placeholder_tokens(tokenizer, "<video>")
        video_token_id = tokenizer.convert_tokens_to_ids("<video>")
    vision = dict(hf["vision_config"])
    vision["model_type"] = "blip_2_vision_model"
    qformer = dict(hf["qformer_config"])
    if text_input:
        qformer["model_type"] = "instructblip_qformer"
    else:
        qformer["use_qformer_text_input"] = False
    text_config = hf["text_config"]
    model_type = text_config.get("model_type", "opt")
    config_cls = VideoLLMInstructBlipConfig if text_input else VideoLLMBlip2Config
    config = config_cls(
        vision_config=vision, qformer_config=qformer, text_config=text_config,
        num_query_tokens=hf.get("num_query_tokens", 32),
        ln_vision_eps=vision.get("layer_norm_eps", 1e-6),  # transformers' post_layernorm uses the ViT's epsilon
        image_token_id=image_token_id, video_token_id=video_token_id,
    )
    qtok = AutoTokenizer.from_pretrained(str(src / "qformer_tokenizer"), trust_remote_code=False) if text_input else None
    pc = read_json(src / "processor_config.json") if (src / "processor_config.json").is_file() else {}
    ip = pc.get("image_processor", {})
    settings = {}
    if ip.get("size"):
        settings["image_size"] = ip["size"].get("height", config.vision_config.image_size)
    processor = _processor(text_input, tokenizer, qtok, config, {"t5": "t5", "llama": "llama"}.get(model_type, "opt"),
                           tokenization="whole", **settings)
    model_class = VideoLLMInstructBlipForConditionalGeneration if text_input else VideoLLMBlip2ForConditionalGeneration
    return Release(
        model_class, config,
        sources=[(CheckpointSource.open(src), TRANSFORMERS_TABLE)],
        processor=processor, converted_from=src_id,
        converter=f"hf_videollm {'instructblip' if text_input else 'blip2'} transformers",
        generation_config_from=src if (src / "generation_config.json").is_file() else None,
    )


def read_blip2_hf(src: str | Path) -> Release:
    """transformers' ``Blip2ForConditionalGeneration`` checkpoint -> the :class:`Release` to write."""
    return _read_hf(src, text_input=False)


def read_instructblip_hf(src: str | Path) -> Release:
    """transformers' ``InstructBlipForConditionalGeneration`` checkpoint -> the :class:`Release` to write."""
    return _read_hf(src, text_input=True)
