"""Chat templates of the original releases, as self-contained Jinja strings saved with each processor.

The template bodies live in ``templates/*.jinja``; the functions here bake in the parts that differ between
releases (system prompt, placeholder strings) so the saved ``chat_template.jinja`` renders the same anywhere.
Assistant turns are wrapped in ``{% generation %}`` blocks, so training can supervise exactly the assistant tokens.
"""

from __future__ import annotations

import json
from importlib import resources

__all__ = [
    "LLAVA_V1_SYSTEM", "VICUNA_V1_1_SYSTEM", "QWEN2_SYSTEM", "vicuna_v1_template", "llama2_template", "chatml_template",
    "qwen2vl_template", "qwen_vl_template", "videollama3_template", "video_llama_template",
]

#: ``conv_llava_v1`` (LLaVA v1.5 inference) system prompt.
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
#: ``conv_vicuna_v1`` / ``conv_vicuna_v1_1`` (LLaVA v1.5 training, Lightning v1-1) system prompt.
VICUNA_V1_1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


#: Qwen2-Instruct's default system prompt (its chat template adds it when the conversation has none).
QWEN2_SYSTEM = "You are a helpful assistant."


def _body(name: str) -> str:
    return resources.files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


def _preamble(**defaults: str) -> str:
    lines = []
    for key, value in defaults.items():
        lines.append(f"{{%- if {key} is not defined -%}}{{%- set {key} = {json.dumps(value)} -%}}{{%- endif -%}}")
    return "\n".join(lines) + "\n"


def vicuna_v1_template(system: str = LLAVA_V1_SYSTEM, image_token: str = "<image>", video_token: str = "<video>") -> str:
    """``SYSTEM USER: <image>\\nQ ASSISTANT: A</s>USER: ... ASSISTANT:`` (SeparatorStyle.TWO)."""
    return _preamble(default_system=system, image_token=image_token, video_token=video_token) + _body("vicuna_v1.jinja")


def llama2_template(system: str = VICUNA_V1_1_SYSTEM, image_token: str = "<image>", video_token: str = "<video>",
                    audio_token: str = "<audio>") -> str:
    """``[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n<video>\\nQ [/INST] A </s>[INST] ...`` (SeparatorStyle.LLAMA_2, as
    VideoLLaMA 2's ``conv_mistral_instruct`` training template; no ``<<SYS>>`` block when ``system`` is empty)."""
    return _preamble(default_system=system, image_token=image_token, video_token=video_token, audio_token=audio_token) + _body(
        "llama2.jinja"
    )


def chatml_template(system: str = QWEN2_SYSTEM, image_token: str = "<image>", video_token: str = "<video>",
                    audio_token: str = "<audio>") -> str:
    """``<|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n<video>\\nQ<|im_end|>\\n<|im_start|>assistant\\n``
    (Qwen2-Instruct; VideoLLaMA 2.1)."""
    return _preamble(default_system=system, image_token=image_token, video_token=video_token, audio_token=audio_token) + _body(
        "chatml.jinja"
    )


def blip2_template(image_token: str = "<image>", video_token: str = "<video>", *, answer_prefix: str = " ",
                   answer_end: str = "\n") -> str:
    """BLIP-2 / InstructBLIP: no chat format -- ``{prompt}{answer_prefix}{answer}{answer_end}`` (LAVIS training:
    OPT ends answers with ``"\\n"``, Vicuna with ``"</s>"``; Flan-T5: the answer is the decoder sequence)."""
    return _preamble(
        image_token=image_token, video_token=video_token, answer_prefix=answer_prefix, answer_end=answer_end
    ) + _body("blip2.jinja")


def qwen2vl_template(system: str = QWEN2_SYSTEM, image_token: str = "<|image_pad|>", video_token: str = "<|video_pad|>") -> str:
    """Qwen2-VL's ChatML: each image / video as ``<|vision_start|>{placeholder}<|vision_end|>`` (no newline after it),
    ``<|im_start|>system\\n{system}<|im_end|>\\n`` first when the conversation has no system turn."""
    return _preamble(default_system=system, image_token=image_token, video_token=video_token) + _body("qwen2vl.jinja")


def qwen_vl_template(system: str = QWEN2_SYSTEM, image_token: str = "<image>", video_token: str = "<video>", *,
                     finetune_labels: bool = False) -> str:
    """Qwen-VL-Chat's ChatML (``make_context``): ``Picture {n}:{image}\\n`` per image (numbered per user turn, as
    ``from_list_format``), the system turn always present (default prompt when none is given). Labels: the
    assistant's answers + ``<|im_end|>\\n``; ``finetune_labels=True``: as the original ``finetune.py``, which also
    supervises ``<|im_start|>`` and ``<|im_end|>\\n`` of every turn (system and user turns included)."""
    return _preamble(default_system=system, image_token=image_token, video_token=video_token,
                     finetune_labels=finetune_labels) + _body("qwen_vl.jinja")


def videollama3_template(system: str = "", image_token: str = "<image>", video_token: str = "<video>") -> str:
    """VideoLLaMA 3's ChatML (training repo ``DEFAULT_CHAT_TEMPLATE``): no system turn unless given (or ``system``),
    ``<image>\\n`` / ``<video>\\n`` per item; assistant labels end at ``<|im_end|>`` (the ``"\\n"`` after it is not
    supervised, as the original's ``[generation_prompt_length:-1]``)."""
    return _preamble(default_system=system, image_token=image_token, video_token=video_token) + _body("videollama3.jinja")


#: Video-LLaMA's Llama-2-Chat system prompt (``conv_llava_llama_2``).
VIDEO_LLAMA_LLAMA2_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language."
)


def video_llama_template(style: str = "vicuna", system: str | None = None, image_token: str = "<image>",
                         video_token: str = "<ImageHere>", audio_token: str = "<AudioHere>") -> str:
    """Video-LLaMA: ``style="vicuna"`` (``default_conversation``: ``###Human: ...###Assistant:``, empty system) or
    ``"llama_2"`` (``conv_llava_llama_2``: ``[INST] <<SYS>>...``), media wrapped as ``<Video>..</Video>`` /
    ``<Image>..</Image>``."""
    if style not in ("vicuna", "llama_2"):
        raise ValueError(f"style must be 'vicuna' or 'llama_2', got {style!r}")
    if system is None:
        system = VIDEO_LLAMA_LLAMA2_SYSTEM if style == "llama_2" else ""
    return _preamble(default_system=system, style=style, image_token=image_token, video_token=video_token,
                     audio_token=audio_token) + _body("video_llama.jinja")
