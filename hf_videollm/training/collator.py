"""Collator: chat template -> ids, labels on assistant tokens only, media decoded here (in DataLoader workers).

Per sample: the model's chat template is rendered with ``{% generation %}`` marks, so ``labels`` supervise exactly
the assistant text and its end-of-turn token; media tokens, the prompt, BOS and padding are -100 (an encoder-decoder
model's labels are the last assistant turn as the decoder sequence). Samples are right-padded for training; the
model's declared inputs (pixels, grids, a second tokenizer's ids...) are batched by their declared rule
(:func:`hf_videollm.modeling.contract.collate_inputs`) and nothing else is kept. A sample longer than ``max_length`` is shortened from the end of its text if that cut
stays after its last media span and keeps at least one supervised token; otherwise it is dropped with a logged
reason (``on_overflow="drop"``) or fails (``"error"``). The processor's ``max_visual_tokens`` is a per-sample
visual-token budget enforced the same way. Text-only, image, video and audio samples mix freely in one batch.

``cache=True`` keeps every encoded sample in memory, keyed by its messages (media paths included), so later epochs --
and a sample repeated in the data, e.g. an up-sampled or scheduled dataset -- skip decoding and preprocessing (useful
for many epochs over a small dataset; the processor must be deterministic, i.e. no random augmentation, and media
files must not change during the run). With DataLoader workers each worker holds its own cache: use
``persistent_workers``. :meth:`VideoLLMCollator.prefill` encodes given samples into the cache ahead of training in
several threads (PyAV decodes without holding the GIL): the same tensors, in less wall time on a multi-core machine.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from ..modeling.contract import collate_inputs
from ..processors.base import ProcessorInputError
from .data import media_of

logger = logging.getLogger(__name__)

__all__ = ["VideoLLMCollator"]

_MEDIA_KEYS = {"image": "images", "video": "videos", "audio": "audio"}


@dataclass
class VideoLLMCollator:
    processor: Any
    max_length: int | None = None
    on_overflow: str = "drop"  # "drop" | "error"
    cache: bool = False
    dropped: list[tuple[int, str]] = field(default_factory=list)
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.on_overflow not in ("drop", "error"):
            raise ValueError("on_overflow must be 'drop' or 'error'")

    def encode(self, sample: dict) -> dict[str, Any] | None:
        """One sample -> unpadded tensors, or None when it is dropped (cached by its messages if ``cache``)."""
        if not self.cache:
            return self._encode(sample)
        key = self._key(sample)
        if key not in self._cache:
            self._cache[key] = self._encode(sample)  # a dropped sample is cached as None: dropped once, logged once
        return self._cache[key]

    @staticmethod
    def _key(sample: dict) -> str:
        return json.dumps(sample["messages"], sort_keys=True, default=str)

    def prefill(self, samples, threads: int = 2) -> int:
        """Encode ``samples`` (an iterable of dataset items) into the cache in ``threads`` threads, as training would
        one at a time: the same tensors under the same keys, dropped samples recorded in the order given. Returns how
        many were encoded (samples already cached, or repeated, are encoded once)."""
        if not self.cache:
            raise ValueError("prefill fills the cache of encoded samples: create the collator with cache=True")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        todo: dict[str, dict] = {}
        for sample in samples:
            key = self._key(sample)
            if key not in self._cache and key not in todo:
                todo[key] = sample
        items = list(todo.items())
        if not items:
            return 0
        dropped_before = len(self.dropped)
        # the first sample alone: lazily built processor state (tokenizer settings, lookup tables) is set up once,
        # before the threads share it read-only
        self._cache[items[0][0]] = self._encode(items[0][1])
        if threads == 1 or len(items) == 1:
            for key, sample in items[1:]:
                self._cache[key] = self._encode(sample)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads, thread_name_prefix="videollm-encode") as pool:
                for (key, _), enc in zip(items[1:], pool.map(self._encode, (s for _, s in items[1:])), strict=True):
                    self._cache[key] = enc
            order = {s.get("index"): n for n, (_, s) in enumerate(items)}  # drops as a sequential pass records them
            self.dropped[dropped_before:] = sorted(self.dropped[dropped_before:], key=lambda d: order.get(d[0], 0))
        return len(items)

    def _encode(self, sample: dict) -> dict[str, Any] | None:
        messages = sample["messages"]
        text = self.processor.apply_chat_template(messages, mark_generation=True)
        media = {_MEDIA_KEYS[k]: v for k, v in media_of(messages).items() if v}
        try:
            enc = self.processor(text=[text], **media, padding=False, return_labels=True)
        except ProcessorInputError as e:
            return self._drop(sample, str(e))
        ids, labels = enc["input_ids"][0], enc["labels"][0]
        seq2seq = self.processor.input_spec.lm == "seq2seq"  # labels are the decoder sequence, not aligned with ids
        if self.max_length is not None and ids.shape[0] > self.max_length:
            placeholder_ids = [self.processor.media_token_id(m) for m in self.processor.modalities]
            is_media = torch.isin(ids, torch.tensor(placeholder_ids))
            last_media = int(is_media.nonzero().max()) + 1 if is_media.any() else 0
            if last_media > self.max_length:
                return self._drop(sample, f"{ids.shape[0]} tokens; its media end at token {last_media}, past max_length={self.max_length}")
            ids = ids[: self.max_length]
            if not seq2seq:
                labels = labels[: self.max_length]
            if not (labels != -100).any():
                return self._drop(sample, f"no supervised token left within max_length={self.max_length}")
        if not (labels != -100).any():
            return self._drop(sample, "no supervised (assistant) token: check the chat template and the data")
        out = {"input_ids": ids, "labels": labels}
        out.update({name: enc[name] for name in self.processor.input_spec.names if enc.get(name) is not None})
        return out

    def _drop(self, sample: dict, reason: str):
        if self.on_overflow == "error":
            raise ProcessorInputError(f"sample {sample.get('index')}: {reason}")
        logger.warning("dropping sample %s: %s", sample.get("index"), reason)
        self.dropped.append((sample.get("index"), reason))
        return None

    def __call__(self, samples: list[dict]) -> dict[str, Any]:
        encoded = [e for e in (self.encode(s) for s in samples) if e is not None]
        if not encoded:
            raise ProcessorInputError(
                f"every sample of this batch was dropped ({self.dropped[-len(samples):]}); raise max_length or fix the data"
            )
        pad_id = self.processor.tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else 0
        batch: dict[str, Any] = {  # right padding for training; seq2seq labels have their own width
            "input_ids": _pad([e["input_ids"] for e in encoded], pad_id),
            "attention_mask": _pad([torch.ones_like(e["input_ids"]) for e in encoded], 0),
            "labels": _pad([e["labels"] for e in encoded], -100),
        }
        # the model's declared inputs (media, layout, text-derived), batched by their declared rule
        batch.update(collate_inputs(self.processor.input_spec, encoded))
        return batch


def _pad(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    """Right-pad 1-D rows to the longest: one C++ call (a Python loop of slice assignments cost ~2 ms a batch of 32)."""
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=value).to(torch.long)
