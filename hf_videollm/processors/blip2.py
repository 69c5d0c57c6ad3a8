"""BLIP-2 / InstructBLIP processor: square bicubic resize + CLIP normalisation, media tokens before the text.

* Pixels as LAVIS ``BlipImageEvalProcessor``: ``Resize((S, S), bicubic)`` (no aspect preservation, no crop),
  ``ToTensor``, CLIP mean/std; ``S`` = 224 (pre-trained / instruction models) or 364 (``caption_coco_*``).
* Tokens: ``num_query_tokens`` per image, ``frames * num_query_tokens`` per video (frames in time order). Placement
  ``prefix``: every media run of a sample goes before its BOS (LAVIS concatenates ``[visual tokens] + embed(prompt)``);
  the placeholder may stand anywhere in the text.
* LLM kinds: OPT (GPT-2 BPE, BOS ``</s>``), Vicuna (LAVIS remaps BOS/EOS/UNK to ``</s>`` and adds ``[PAD]``: the
  converter sets this on the tokenizer), Flan-T5 (``lm="seq2seq"``: the tokenizer appends ``</s>``; the last answer
  becomes the decoder sequence).
* InstructBLIP (:class:`VideoLLMInstructBlipProcessor`): the sample's instruction (its text without media and
  without the answer) is tokenized a second time by ``qformer_tokenizer`` (bert-base-uncased + ``[DEC]``, truncated
  from the left to ``qformer_max_length`` = 128) -- one row per image / video of the sample -- and saved with the
  processor (``qformer_tokenizer/``).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..modeling.blip2 import blip2_input_spec
from .base import ESCAPE_CLOSE, ESCAPE_OPEN, GENERATION_CLOSE, GENERATION_OPEN, ProcessorInputError, VideoLLMProcessor
from .chat_templates import blip2_template
from .pixels import FramePixelsMixin

__all__ = ["VideoLLMBlip2Processor", "VideoLLMInstructBlipProcessor"]

_ANSWER = re.compile(f"{GENERATION_OPEN}.*?(?:{GENERATION_CLOSE}|$)", re.S)


class VideoLLMBlip2Processor(FramePixelsMixin, VideoLLMProcessor):
    """Turns text + images/videos into BLIP-2 inputs (see the module docstring)."""

    input_spec = blip2_input_spec(False, "causal")  # class default; each instance takes the one of its ``lm``
    qformer_text_input = False
    settings = {
        "image_size": 224,
        "resize_mode": "exact",  # LAVIS: Resize((S, S)) -- no aspect preservation, no crop
        "num_query_tokens": 32,
        "num_frames": 4,  # LAVIS video evaluation: 4 frames
        "lm": "causal",  # "seq2seq" for Flan-T5
        "answer_prefix": " ",  # chat template: between the prompt and the answer
        "answer_end": "\n",  # chat template: after the answer (OPT: "\n"; Vicuna: "</s>"; T5: "")
        "image_token_id": 50265,
        "video_token_id": 50266,
    }

    def _check_settings(self) -> None:
        super()._check_settings()
        if self.lm not in ("causal", "seq2seq"):
            raise ValueError(f"lm must be 'causal' (OPT, Vicuna) or 'seq2seq' (Flan-T5), got {self.lm!r}")
        if self.num_query_tokens < 1:
            raise ValueError(f"num_query_tokens must be >= 1, got {self.num_query_tokens}")
        self.input_spec = blip2_input_spec(self.qformer_text_input, self.lm)

    def default_chat_template(self) -> str:
        return blip2_template(self.image_token, self.video_token, answer_prefix=self.answer_prefix,
                              answer_end=self.answer_end)

    def image_tokens(self) -> int:
        return self.num_query_tokens

    def video_tokens(self, num_frames: int) -> int:
        return num_frames * self.num_query_tokens


class VideoLLMInstructBlipProcessor(VideoLLMBlip2Processor):
    """InstructBLIP: BLIP-2's processor + the instruction for the Q-Former (``qformer_tokenizer``)."""

    input_spec = blip2_input_spec(True, "causal")
    qformer_text_input = True
    tokenizer_attributes = ("tokenizer", "qformer_tokenizer")
    settings = {
        "qformer_max_length": 128,  # LAVIS max_txt_len; truncated from the left (truncation_side="left")
        "answer_end": "</s>",
        "image_token_id": 32001,
        "video_token_id": 32002,
    }

    def _setup(self, values: dict[str, Any]) -> None:
        if values.get("qformer_tokenizer") is None:
            raise ProcessorInputError(
                "InstructBLIP's processor needs qformer_tokenizer (the Q-Former's BERT tokenizer, bert-base-uncased + "
                "[DEC]); pass it as the second argument"
            )
        super()._setup(values)

    def instruction(self, text: str) -> str:
        """The instruction the Q-Former reads: the sample's text without the answer (generation block) and with
        escaped literals unwrapped."""
        text = _ANSWER.sub("", text)
        return text.replace(ESCAPE_OPEN, "").replace(ESCAPE_CLOSE, "").strip()

    def _text_inputs(self, samples, rows) -> dict[str, list]:
        out: dict[str, list] = {}
        tok = self.qformer_tokenizer
        side = tok.truncation_side
        tok.truncation_side = "left"
        try:
            for modality, prefix in (("image", "qformer_"), ("video", "qformer_video_")):
                ids, masks = [], []
                for s in samples:
                    n = len(s.items.get(modality, []))
                    if not n:
                        continue
                    enc = tok(self.instruction(s.text), truncation=True, max_length=self.qformer_max_length)
                    ids += [enc["input_ids"]] * n
                    masks += [enc["attention_mask"]] * n
                if ids:
                    out[f"{prefix}input_ids"] = [torch.tensor(i, dtype=torch.long) for i in ids]
                    out[f"{prefix}attention_mask"] = [torch.tensor(m, dtype=torch.long) for m in masks]
        finally:
            tok.truncation_side = side
        return out
