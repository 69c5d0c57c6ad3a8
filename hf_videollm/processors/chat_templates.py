"""Chat templates of the original releases, as self-contained Jinja strings saved with each processor.

The template bodies live in ``templates/*.jinja``; the functions here bake in the parts that differ between
releases (system prompt, placeholder strings) so the saved ``chat_template.jinja`` renders the same anywhere.
Assistant turns are wrapped in ``{% generation %}`` blocks, so training can supervise exactly the assistant tokens.
"""

from __future__ import annotations

import json
from importlib import resources

__all__ = ["LLAVA_V1_SYSTEM", "VICUNA_V1_1_SYSTEM", "vicuna_v1_template"]

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
