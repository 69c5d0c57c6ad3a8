"""Video-LLaMA converter: the DAMO-NLP-SG release (several ``.pth`` files + the LLM folder) -> hf_videollm.

The original ``VideoLLAMA.from_config`` assembles the model from (all beside each other in ``src``, as the eval yamls
point at them):

1. ``eva_vit_g.pth`` (plain EVA state dict, fp16; one block more than built -- the last is dropped, as BLIP-2);
2. ``blip2_pretrained_flant5xxl.pth`` (LAVIS ``{"model": ...}``: ``query_tokens``, ``ln_vision``, the query-only image
   ``Qformer``; its ``t5_proj`` is unused by Video-LLaMA) -- the ``q_former_model`` of the yaml;
3. the vision-language branch checkpoint (``ckpt``: ``finetune-vicuna7b-v2.pth``, ``VL_LLaMA_2_7B_Finetuned.pth``,
   ...): ``video_Qformer``, ``video_query_tokens``, ``video_frame_position_embedding``, ``llama_proj`` + buffers;
4. optionally the audio-language branch checkpoint (``ckpt_2``: ``finetune_vicuna7b_audiobranch.pth``,
   ``AL_LLaMA_2_7B_Finetuned.pth``): ``audio_Qformer``, ``audio_query_tokens``, ``audio_position_embedding``,
   ``audio_llama_proj`` + buffers (the frozen ImageBind's, saved with it: its audio logit scale is loaded after
   ``imagebind_huge.pth``, so that copy wins, as in the original);
5. ``imagebind_huge.pth`` (ImageBind, all modalities, no prefix; only the audio path is kept) for the AV model;
6. the LLM folder (Vicuna / Llama-2-Chat, HF layout, its vocabulary unchanged) and ``bert-base-uncased/config.json``
   (the Q-Formers' sizes; bert-base when absent).

Which ``.pth`` is which is told by its keys (``video_Qformer.*`` / ``audio_Qformer.*`` / ``Qformer.*`` + ``ln_vision``),
not by its name. The EVA / ImageBind head counts are not in the weights: ``vision_num_heads`` (default width / 88,
EVA-g's 16) and ``audio_num_heads`` (default width / 64, ImageBind-huge's 12).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ..modeling.qformer import QFORMER_BERT_BASE
from .blip2 import _block_count, _vision_config, eva_vit_table, lavis_table, llm_table
from .engine import Drop, KeyTable, Rename
from .hub import resolve_local
from .release import Release, add_placeholder_tokens, read_json
from .sources import CheckpointSource, ConversionError

__all__ = ["read_video_llama", "branch_table", "imagebind_audio_table", "image_qformer_table", "PLACEHOLDERS"]

#: the tokens the original adds to the LLaMA tokenizer (``<ImageHere>`` = video / image, ``<AudioHere>``), in order,
#: then our image placeholder (the original uses ``<ImageHere>`` for images too; ours needs its own id).
PLACEHOLDERS = ("<ImageHere>", "<AudioHere>", "<image>")
_AUDIO_SCALE = "modality_postprocessors.audio.1.log_logit_scale"


# ---------------------------------------------------------------------------------------------------- key tables
def _qformer_rules(src: str, dst: str) -> list:
    """A query-only LAVIS Q-Former ``<src>.bert.*`` -> transformers' ``Blip2QFormerModel`` at ``<dst>.bert.*``."""
    s = re.escape(src)
    return [
        Drop(rf"^{s}\.bert\.embeddings\.position_ids$", "buffer of the deleted text embeddings"),
        Drop(rf"^{s}\.cls\.", "language-model head, deleted by the original (Qformer.cls = None)"),
        Drop(rf"^{s}\.bert\.embeddings\.(?:word|position)_embeddings\.",
             "text embeddings, deleted by the original (query-only Q-Former)"),
        Drop(rf"^{s}\.bert\.encoder\.layer\.\d+\.(?:intermediate|output)\.",
             "text FFN, deleted by the original (query-only Q-Former)"),
        Rename(rf"^{s}\.bert\.embeddings\.LayerNorm\.(weight|bias)$", rf"{dst}.bert.layernorm.\1"),
        Rename(rf"^{s}\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(.+)$",
               rf"{dst}.bert.encoder.layer.\1.\2.attention.\3"),
        Rename(rf"^{s}\.bert\.encoder\.(.+)$", rf"{dst}.bert.encoder.\1"),
    ]


def image_qformer_table() -> KeyTable:
    """BLIP-2's stage-2 LAVIS checkpoint (``q_former_model``) -> the frozen image Q-Former, queries and ``ln_vision``."""
    return KeyTable("video-llama-blip2", [
        Drop(r"^(?:t5|opt|llm)_proj\.", "BLIP-2's projection into its own LLM; Video-LLaMA does not use it"),
        *lavis_table(False).rules,
    ])


def branch_table(keep_audio_scale: bool) -> KeyTable:
    """A branch checkpoint (VL ``ckpt`` or AL ``ckpt_2``; one table serves both) -> ours.
    ``keep_audio_scale``: this checkpoint's copy of ImageBind's audio logit scale wins over ``imagebind_huge.pth``'s."""
    rules: list = [
        Drop(r"^(?:video_|audio_)?Qformer\.bert\.embeddings\.position_ids$",
             "buffer of a Q-Former's deleted text embeddings (every branch checkpoint saves all of them)"),
        Drop(r"^llama_model\.", "LLM buffers (rotary inv_freq) saved with the branch; the LLM is read from its folder"),
    ]
    if keep_audio_scale:
        rules.append(Rename(rf"^audio_encoder\.{re.escape(_AUDIO_SCALE)}$", "audio_tower.log_logit_scale"))
    rules += [
        Drop(r"^audio_encoder\.", "buffers of the frozen ImageBind saved with the branch (other modalities' masks and "
                                  "logit scales); the audio path is read from imagebind_huge.pth"),
        Rename(r"^video_query_tokens$", "video_qformer.query_tokens"),
        Rename(r"^video_frame_position_embedding\.weight$", "video_frame_position_embedding.weight"),
        Rename(r"^llama_proj\.(weight|bias)$", r"multi_modal_projector.\1"),
        *_qformer_rules("video_Qformer", "video_qformer"),
        Rename(r"^audio_query_tokens$", "audio_qformer.query_tokens"),
        Rename(r"^audio_position_embedding\.weight$", "audio_position_embedding.weight"),
        Rename(r"^audio_llama_proj\.(weight|bias)$", r"audio_projector.\1"),
        *_qformer_rules("audio_Qformer", "audio_qformer"),
    ]
    return KeyTable("video-llama-branch", rules)


def imagebind_audio_table(keep_audio_scale: bool = True) -> KeyTable:
    """``imagebind_huge.pth`` -> ``audio_tower.*`` (:class:`~..modeling.video_llama.ImageBindAudioEncoder`)."""
    pre, trunk = r"^modality_preprocessors\.audio\.", r"^modality_trunks\.audio\."
    rules: list = []
    if not keep_audio_scale:
        rules.append(Drop(rf"^{re.escape(_AUDIO_SCALE)}$", "the branch checkpoint's copy is loaded after it and wins"))
    rules += [
        Rename(rf"{pre}cls_token$", "audio_tower.cls_token"),
        Rename(rf"{pre}rgbt_stem\.proj\.weight$", "audio_tower.stem.proj.weight"),
        Rename(rf"{pre}rgbt_stem\.norm_layer\.(weight|bias)$", r"audio_tower.stem.norm.\1"),
        Rename(rf"{pre}pos_embedding_helper\.pos_embed$", "audio_tower.pos_embed"),
        Rename(rf"{trunk}blocks\.(\d+)\.(.+)$", r"audio_tower.blocks.\1.\2"),
        Rename(r"^modality_heads\.audio\.0\.(weight|bias)$", r"audio_tower.head_norm.\1"),
        Rename(r"^modality_heads\.audio\.2\.weight$", "audio_tower.head_proj.weight"),
        Rename(rf"^{re.escape(_AUDIO_SCALE)}$", "audio_tower.log_logit_scale"),
        Drop(r"^modality_(?:preprocessors|trunks|heads|postprocessors)\.(?:vision|text|depth|thermal|imu)\.",
             "ImageBind's other modalities: Video-LLaMA uses only the audio path"),
    ]
    return KeyTable("imagebind-audio", rules)


# ---------------------------------------------------------------------------------------------------- reading
def _classify(root: Path, extra: tuple[Path, ...] = ()) -> dict[str, tuple[Path, CheckpointSource]]:
    """The release's ``.pth`` files (those in ``root`` and ``extra``) by role, told by their keys."""
    found: dict[str, list[tuple[Path, CheckpointSource]]] = {}
    for p in dict.fromkeys(q.resolve() for q in [*sorted(root.glob("*.pth")), *extra]):
        src = CheckpointSource.open(p)
        keys = set(src.keys())
        if any(k.startswith("audio_Qformer.") for k in keys):  # before VL: it also holds video_Qformer buffers
            role = "al"
        elif any(k.startswith("video_Qformer.") and not k.endswith("position_ids") for k in keys):
            role = "vl"
        elif "query_tokens" in keys and "ln_vision.weight" in keys:
            role = "blip2"
        elif "cls_token" in keys and "pos_embed" in keys and any(k.startswith("blocks.") for k in keys):
            role = "eva"
        elif any(k.startswith("modality_trunks.audio.") for k in keys):
            role = "imagebind"
        else:
            raise ConversionError(
                f"{p} is none of the files a Video-LLaMA release holds (EVA ViT, BLIP-2 Q-Former, VL / AL branch "
                "checkpoint, ImageBind); move it out of the folder"
            )
        found.setdefault(role, []).append((p, src))
    for role, items in found.items():
        if len(items) > 1:
            raise ConversionError(f"several {role} checkpoints in {root}: {[p.name for p, _ in items]}; keep one")
    what = {"vl": "the vision-language branch checkpoint (video_Qformer.*, e.g. finetune-vicuna7b-v2.pth)",
            "blip2": "BLIP-2's Q-Former checkpoint (blip2_pretrained_flant5xxl.pth)",
            "eva": "the EVA ViT-g weights (eva_vit_g.pth; or pass --vision-tower PATH/eva_vit_g.pth)"}
    missing = [w for r, w in what.items() if r not in found]
    if missing:
        raise ConversionError(f"{root} lacks {'; '.join(missing)}")
    if "al" in found and "imagebind" not in found:
        raise ConversionError(f"{root} holds an audio branch checkpoint but not imagebind_huge.pth (its encoder)")
    return {r: items[0] for r, items in found.items()}


def _find_llm(root: Path, base: str | None) -> Path:
    if base is not None:
        return resolve_local(base, what="LLM folder (Vicuna / Llama-2-Chat)")
    cands = [d for d in sorted(root.iterdir()) if d.is_dir() and (d / "config.json").is_file()
             and read_json(d / "config.json").get("model_type") == "llama"]
    if len(cands) != 1:
        raise ConversionError(
            f"cannot tell which folder in {root} holds the LLM (found {[d.name for d in cands] or 'none'}); pass "
            "--base PATH (the Vicuna / Llama-2-Chat folder the eval yaml's llama_model names)"
        )
    return cands[0]


def _branch_qformer(bert: dict, src: CheckpointSource, prefix: str, encoder_width: int) -> dict:
    layers = {int(m.group(1)) for k in src.keys() if (m := re.match(rf"^{prefix}\.bert\.encoder\.layer\.(\d+)\.", k))}
    return {**bert, "num_hidden_layers": max(layers) + 1 if layers else 2, "cross_attention_frequency": 1,
            "encoder_hidden_size": encoder_width, "use_qformer_text_input": False}


def _audio_config(ib: CheckpointSource, num_heads: int | None) -> dict:
    pre = "modality_preprocessors.audio."
    width = ib.get(pre + "cls_token").shape[-1]
    kernel = ib.get(pre + "rgbt_stem.proj.weight").shape[-1]
    positions = ib.get(pre + "pos_embedding_helper.pos_embed").shape[1] - 1
    mels, frames = 128, 204  # ImageBind's audio input (load_and_transform_audio_data)
    strides = [s for s in range(1, kernel + 1)
               if ((mels - kernel) // s + 1) * ((frames - kernel) // s + 1) == positions]
    if not strides:
        raise ConversionError(f"ImageBind's audio pos_embed holds {positions} patches: no stride fits a 128 x 204 fbank")
    heads = num_heads or max(1, width // 64)
    if width % heads:
        raise ConversionError(f"ImageBind audio width {width} is not divisible by {heads} heads; pass audio_num_heads")
    fc1 = ib.get("modality_trunks.audio.blocks.0.mlp.fc1.weight").shape[0]
    return dict(
        embed_dim=width, num_blocks=_block_count(ib.keys(), "modality_trunks.audio."), num_heads=heads,
        mlp_ratio=fc1 / width, kernel_size=kernel, stride=10 if 10 in strides else strides[-1], num_mel_bins=mels,
        target_len=frames, out_embed_dim=ib.get("modality_heads.audio.2.weight").shape[0],
        logit_scale=float(math.exp(float(ib.get(_AUDIO_SCALE)))),
    )


def read_video_llama(src: str | Path, *, base: str | None = None, vision_tower: str | None = None,
                     audio_config: dict | str | None = None, vision_num_heads: int | None = None,
                     audio_num_heads: int | None = None, audio: bool | None = None,
                     conversation: str | None = None) -> Release:
    """A Video-LLaMA release folder -> the :class:`Release` to write.

    ``base``: the LLM folder when it is not a sub-folder of ``src``; ``vision_tower``: ``eva_vit_g.pth`` when it is
    not in ``src``; ``audio_config``: ImageBind audio fields (dict or JSON, e.g. ``{"num_heads": 12}``) that the
    weights do not tell; ``audio``: build the AV model (default: when the folder holds an audio branch
    checkpoint), ``False`` converts only the vision-language branch; ``conversation``: ``"vicuna"`` or ``"llama_2"``
    (default: ``"llama_2"`` when the LLM folder is a Llama-2-Chat one, as the "Video-LLaMA-2" releases)."""
    from ..modeling.video_llama import VideoLLMVideoLlamaConfig, VideoLLMVideoLlamaForConditionalGeneration
    from ..processors.video_llama import VideoLLMVideoLlamaProcessor

    src_id = str(src)
    root = Path(src).expanduser()
    if not root.is_dir():
        raise ConversionError(f"{root} is not a folder: pass the folder holding the release's .pth files and LLM")
    extra = ()
    if vision_tower is not None:
        eva_path = Path(vision_tower).expanduser()
        if not eva_path.is_file():
            raise ConversionError(f"--vision-tower {eva_path}: not a file (expected the EVA ViT-g eva_vit_g.pth)")
        extra = (eva_path,)
    files = _classify(root, extra)
    if audio is None:
        audio = "al" in files
    if audio_config is not None and not audio:
        raise ConversionError("--audio-config applies to an audio-visual release (an audio branch checkpoint + "
                              "imagebind_huge.pth); this conversion has no audio branch")
    if audio and "al" not in files:
        raise ConversionError(f"audio=True but {root} holds no audio branch checkpoint (audio_Qformer.*)")
    llm_dir = _find_llm(root, base)
    blip2, vl, eva = files["blip2"][1], files["vl"][1], files["eva"][1]

    stored = _block_count(list(eva.keys()), "")
    eva_keys = {k: eva.get(k) for k in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight")}
    vision = _vision_config(eva_keys, "", stored - 1, vision_num_heads)
    bert_cfg = root / "bert-base-uncased" / "config.json"
    bert = read_json(bert_cfg) if bert_cfg.is_file() else {}
    bert = {k: bert.get(k, v) for k, v in QFORMER_BERT_BASE.items() if k not in ("encoder_hidden_size",
                                                                                    "cross_attention_frequency")}
    qformer = {**bert, "encoder_hidden_size": vision["hidden_size"], "cross_attention_frequency": 2,
               "use_qformer_text_input": False}
    video_qformer = _branch_qformer(bert, vl, "video_Qformer", bert["hidden_size"])
    text_config = read_json(llm_dir / "config.json")

    tokenizer = _tokenizer(llm_dir)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in PLACEHOLDERS}
    fields = dict(
        vision_config=vision, qformer_config=qformer, video_qformer_config=video_qformer, text_config=text_config,
        num_query_tokens=blip2.get("query_tokens").shape[1],
        num_video_query_tokens=vl.get("video_query_tokens").shape[1],
        max_frame_pos=vl.get("video_frame_position_embedding.weight").shape[0],
        ln_vision_eps=1e-5,
        image_token_id=ids["<image>"], video_token_id=ids["<ImageHere>"], audio_token_id=ids["<AudioHere>"],
    )
    sources = [
        (blip2, image_qformer_table()),
        (eva, eva_vit_table("", stored - 1)),
        (vl, branch_table(keep_audio_scale=False)),
    ]
    if audio:
        al, ib = files["al"][1], files["imagebind"][1]
        overrides = json.loads(audio_config) if isinstance(audio_config, str) else dict(audio_config or {})
        audio_cfg = _audio_config(ib, overrides.pop("num_heads", audio_num_heads))
        al_scale = "audio_encoder." + _AUDIO_SCALE in set(al.keys())
        if al_scale:
            audio_cfg["logit_scale"] = float(math.exp(float(al.get("audio_encoder." + _AUDIO_SCALE))))
        audio_cfg.update(overrides)
        fields.update(
            audio_config=audio_cfg,
            audio_qformer_config=_branch_qformer(bert, al, "audio_Qformer", audio_cfg["out_embed_dim"]),
            num_audio_query_tokens=al.get("audio_query_tokens").shape[1],
            num_audio_clips=al.get("audio_position_embedding.weight").shape[0],
        )
        sources += [(al, branch_table(keep_audio_scale=al_scale)), (ib, imagebind_audio_table(not al_scale))]
    config = VideoLLMVideoLlamaConfig(**fields)
    sources.append((CheckpointSource.open(llm_dir), llm_table("llama", tied=False)))
    conversation = _conversation(llm_dir, conversation)
    processor = VideoLLMVideoLlamaProcessor(
        tokenizer,
        conversation=conversation,
        audio_branch=bool(audio),
        image_size=vision["image_size"],
        max_frames=config.max_frame_pos,
        num_video_query_tokens=config.num_video_query_tokens,
        num_audio_query_tokens=config.num_audio_query_tokens,
        image_token_id=config.image_token_id, video_token_id=config.video_token_id,
        audio_token_id=config.audio_token_id,
    )
    return Release(
        VideoLLMVideoLlamaForConditionalGeneration, config, sources=sources, processor=processor,
        converted_from=src_id, converter="hf_videollm video_llama original (DAMO-NLP-SG/Video-LLaMA)",
        generation_config_from=_generation_config_dir(llm_dir, tokenizer, conversation),
    )


def _conversation(llm_dir: Path, given: str | None) -> str:
    """The prompt format: Llama-2-Chat releases (``llama-2-*-chat*`` folders, the "Video-LLaMA-2" models) use
    ``conv_llava_llama_2``, the others Vicuna's ``default_conversation``."""
    if given is not None:
        if given not in ("vicuna", "llama_2"):
            raise ConversionError(f"conversation must be 'vicuna' or 'llama_2', got {given!r}")
        return given
    name = llm_dir.resolve().name.lower().replace("_", "-")
    return "llama_2" if "llama-2" in name and "chat" in name else "vicuna"


def _generation_config_dir(llm_dir: Path, tokenizer, conversation: str) -> Path:
    """The LLM folder's generation config, plus the original Chat's stop on ``"###"`` for the Vicuna format
    (``StoppingCriteriaSub``: id 835 in LLaMA's vocabulary -- its other spelling ``"##" "#"`` is two tokens, which
    ``eos_token_id`` cannot express). Written to a temporary folder that :func:`write_converted` copies from."""
    import tempfile

    from transformers import GenerationConfig

    if (llm_dir / "generation_config.json").is_file():
        gen = GenerationConfig.from_pretrained(str(llm_dir))
    else:
        cfg = read_json(llm_dir / "config.json")
        gen = GenerationConfig(bos_token_id=cfg.get("bos_token_id"), eos_token_id=cfg.get("eos_token_id"),
                               pad_token_id=cfg.get("pad_token_id"))
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    stop = tokenizer.convert_tokens_to_ids("###")
    if conversation == "vicuna" and stop is not None and stop != tokenizer.unk_token_id and stop not in eos:
        gen.eos_token_id = [*[e for e in eos if e is not None], stop]
    gen.pad_token_id = tokenizer.pad_token_id
    out = Path(tempfile.mkdtemp(prefix="video_llama_generation_"))
    gen.save_pretrained(out)
    return out


def _tokenizer(llm_dir: Path):
    """The LLaMA tokenizer as the original sets it up: pad = unk when missing, ``<ImageHere>`` then ``<AudioHere>``
    added as special tokens (ids past the vocabulary: the embeddings are not resized), then our ``<image>``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(llm_dir))
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token
    for t in PLACEHOLDERS:
        add_placeholder_tokens(tok, t)
    return tok




