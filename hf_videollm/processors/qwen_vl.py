"""Qwen-VL processor: ``Resize((S, S), bicubic)`` + CLIP normalisation, ``<img>`` + 256 ``<imgpad>`` + ``</img>`` per image,
ChatML (Qwen-VL-Chat's ``make_context``) with images as ``Picture {n}:<img>...</img>\\n``.

The original passes image *paths* inside the text (``<img>path</img>``: the tokenizer writes the path's bytes into the
256 slots and the model opens the file inside ``forward``). Here images go through the processor like every other
model: the text marker ``<image>`` becomes ``<img>`` + 256 ``<imgpad>`` + ``</img>`` (the slots the model overwrites
with the visual tokens, so the ids there do not change any output). Videos (not in the original, image-only) are
their sampled frames, each wrapped as an image: ``<img>`` + 256 ``<video>`` ids + ``</img>`` per frame.
"""

from __future__ import annotations

import re

from ..modeling.qwen_vl import QWENVL_INPUTS
from .base import ProcessorInputError, VideoLLMProcessor
from .chat_templates import qwen_vl_template
from .pixels import FramePixelsMixin

__all__ = ["VideoLLMQwenVLProcessor", "GROUNDING_TOKENS"]

#: Qwen-VL's grounding markup: special tokens the model reads and writes as text (``<ref>the dog</ref><box>(x1,y1),
#: (x2,y2)</box>``); the original allows them in chat content (``allowed_special=IMAGE_ST`` in ``make_context``)
GROUNDING_TOKENS = ("<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>")
_GROUNDING_RE = re.compile("(" + "|".join(re.escape(t) for t in GROUNDING_TOKENS) + ")")


class VideoLLMQwenVLProcessor(FramePixelsMixin, VideoLLMProcessor):
    """Turns text + images/videos into Qwen-VL inputs.

    Pixels as the original ``VisionTransformer.image_transform``: resize to ``(image_size, image_size)`` (bicubic, no
    aspect preservation, no crop), ``/255``, CLIP mean/std. The text between media slots is tokenized chunk by chunk
    (special tokens such as ``<|im_start|>``, ``<ref>``, ``<box>`` recognised in it, as the original's
    ``allowed_special="all"``); the slots are bounded by the special ``<img>`` / ``</img>`` in the original too, so
    the ids are the original's.
    """

    input_spec = QWENVL_INPUTS
    settings = {
        "image_size": 448,
        "resize_mode": "exact",
        "num_frames": 4,
        "image_tokens_per_item": 256,  # the resampler's queries (n_queries)
        "image_start_token": "<img>",
        "image_end_token": "</img>",
        "image_token_id": 151859,
        "video_token_id": 151860,
        "tokenization": "chunks",
        # labels as the original finetune.py: also <|im_start|> and "<|im_end|>\n" of every turn (default: the
        # assistant's answers + their "<|im_end|>\n" only)
        "finetune_labels": False,
    }

    def default_chat_template(self) -> str:
        return qwen_vl_template(image_token=self.image_token, video_token=self.video_token,
                                finetune_labels=self.finetune_labels)

    def image_tokens(self) -> int:
        return self.image_tokens_per_item

    def video_tokens(self, num_frames: int) -> int:
        return num_frames * self.image_tokens_per_item

    def escape_text(self, text: str) -> str:
        """As every processor (placeholders and special tokens typed in chat text stay text, e.g. ``<|im_end|>``), except
        the grounding markup, which stays the special tokens the model was trained with."""
        return "".join(p if p in GROUNDING_TOKENS else super(VideoLLMQwenVLProcessor, self).escape_text(p)
                       for p in _GROUNDING_RE.split(text) if p)

    def _wrapper_ids(self) -> tuple[int, int]:
        ids = []
        for token in (self.image_start_token, self.image_end_token):
            tid = self.tokenizer.convert_tokens_to_ids(token)
            if tid is None or tid == self.tokenizer.unk_token_id:
                raise ProcessorInputError(f"the tokenizer has no token {token!r}; Qwen-VL wraps each image in <img>...</img>")
            ids.append(tid)
        return ids[0], ids[1]

    def _expand(self, modality: str, tokens) -> list[int]:
        """``<img>`` + one placeholder id per visual token + ``</img>`` per image / video frame."""
        start, end = self._wrapper_ids()
        per = self.image_tokens_per_item
        if not isinstance(tokens, int) or tokens % per:
            raise ProcessorInputError(f"a {modality} item must be a whole number of {per}-token images, got {tokens}")
        frame = [start] + [self.media_token_id(modality)] * per + [end]
        return frame * (tokens // per)
