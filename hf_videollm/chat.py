"""``hf-videollm chat``: ask a converted model about images, videos and audio (one question or an interactive session)."""

from __future__ import annotations

import argparse
import os

import torch


def load_for_inference(model_id: str, *, dtype: str = "float32", load_in_4bit: bool = False, attn: str | None = None):
    """Load any registered model + processor with the Auto classes (local directory or Hub id)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import hf_videollm  # noqa: F401  (registers the Auto classes)
    from hf_videollm.training.export import _looks_like_hub_id

    if not os.path.isdir(model_id) and not _looks_like_hub_id(str(model_id)):
        raise FileNotFoundError(
            f"{model_id}: no such model directory (and not a Hub id such as 'org/name'); pass the directory that "
            "`hf-videollm convert`, `train` or `export` wrote, or a Hub repo id"
        )
    kwargs = {"dtype": getattr(torch, dtype)}
    if attn:
        kwargs["attn_implementation"] = attn
    if load_in_4bit:
        cls = AutoModelForImageTextToText._model_mapping[type(_config(model_id))]
        kwargs["quantization_config"] = cls.default_quantization_config(compute_dtype=getattr(torch, dtype))
    model = AutoModelForImageTextToText.from_pretrained(model_id, **kwargs).eval()
    processor = AutoProcessor.from_pretrained(model_id)
    return model, processor


def _config(model_id):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_id)


def answer(model, processor, messages: list[dict], *, max_new_tokens: int = 128, **media) -> str:
    batch = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **media)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0] if model.is_seq2seq else out[0, batch["input_ids"].shape[1] :]  # seq2seq returns the decoder only
    return processor.decode(new, skip_special_tokens=True).strip()


def run_chat(args: argparse.Namespace) -> int:
    model, processor = load_for_inference(args.model, dtype=args.dtype, load_in_4bit=args.load_in_4bit, attn=args.attn)
    if args.num_frames is not None:
        processor.num_frames, processor.video_fps = args.num_frames, None
    if args.fps is not None:
        processor.num_frames, processor.video_fps = None, args.fps
    heard = {"with_audio": True} if getattr(args, "with_audio", False) else {}  # audio-visual models: the video's track
    media_parts = (
        [{"type": "image", "image": p} for p in args.image]
        + [{"type": "video", "video": p, **heard} for p in args.video]
        + [{"type": "audio", "audio": p} for p in getattr(args, "audio", None) or []]
    )
    history: list[dict] = []
    first = True
    while True:
        if args.prompt is not None:
            question = args.prompt
        else:
            try:
                question = input("you> ").strip()
            except EOFError:
                return 0
            if question in ("", "exit", "quit"):
                return 0
        content = (media_parts if first else []) + [{"type": "text", "text": question}]
        history.append({"role": "user", "content": content})
        reply = answer(model, processor, history, max_new_tokens=args.max_new_tokens)
        history.append({"role": "assistant", "content": [{"type": "text", "text": reply}]})
        print(reply if args.prompt is not None else f"assistant> {reply}")
        first = False
        if args.prompt is not None:
            return 0
