"""Collator: chat template -> ids, labels on assistant tokens only, media decoded here (in DataLoader workers).

Per sample: the model's chat template is rendered with ``{% generation %}`` marks, so ``labels`` supervise exactly
the assistant text and its end-of-turn token; media tokens, the prompt, BOS and padding are -100. Samples are
right-padded for training. A sample longer than ``max_length`` is shortened from the end of its text if that cut
stays after its last media span and keeps at least one supervised token; otherwise it is dropped with a logged
reason (``on_overflow="drop"``) or fails (``"error"``). The processor's ``max_visual_tokens`` is a per-sample
visual-token budget enforced the same way. Text-only, image, video and audio samples mix freely in one batch.

``cache=True`` keeps every encoded sample in memory, keyed by its messages (media paths included), so later epochs --
and a sample repeated in the data, e.g. an up-sampled or scheduled dataset -- skip decoding and preprocessing (useful
for many epochs over a small dataset; the processor must be deterministic, i.e. no random augmentation, and media
files must not change during the run). With DataLoader workers each worker holds its own cache: use
``persistent_workers``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import torch

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
        key = json.dumps(sample["messages"], sort_keys=True, default=str)
        if key not in self._cache:
            self._cache[key] = self._encode(sample)  # a dropped sample is cached as None: dropped once, logged once
        return self._cache[key]

    def _encode(self, sample: dict) -> dict[str, Any] | None:
        messages = sample["messages"]
        text = self.processor.apply_chat_template(messages, mark_generation=True)
        media = {_MEDIA_KEYS[k]: v for k, v in media_of(messages).items() if v}
        try:
            enc = self.processor(text=[text], **media, padding=False, return_labels=True)
        except ProcessorInputError as e:
            return self._drop(sample, str(e))
        ids, labels = enc["input_ids"][0], enc["labels"][0]
        if self.max_length is not None and ids.shape[0] > self.max_length:
            placeholder_ids = [self.processor.media_token_id(m) for m in self.processor.modalities]
            is_media = torch.isin(ids, torch.tensor(placeholder_ids))
            last_media = int(is_media.nonzero().max()) + 1 if is_media.any() else 0
            if last_media > self.max_length:
                return self._drop(sample, f"{ids.shape[0]} tokens; its media end at token {last_media}, past max_length={self.max_length}")
            ids, labels = ids[: self.max_length], labels[: self.max_length]
            if not (labels != -100).any():
                return self._drop(sample, f"no supervised token left within max_length={self.max_length}")
        if not (labels != -100).any():
            return self._drop(sample, "no supervised (assistant) token: check the chat template and the data")
        out = {"input_ids": ids, "labels": labels}
        for key, value in enc.items():
            if key.startswith("pixel_values") or key in ("audio_values", "audio_features"):
                out[key] = value
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
        width = max(e["input_ids"].shape[0] for e in encoded)
        pad_id = self.processor.tokenizer.pad_token_id
        pad_id = pad_id if pad_id is not None else 0
        batch: dict[str, Any] = {
            "input_ids": torch.full((len(encoded), width), pad_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(encoded), width), dtype=torch.long),
            "labels": torch.full((len(encoded), width), -100, dtype=torch.long),
        }
        for i, e in enumerate(encoded):  # right padding for training
            n = e["input_ids"].shape[0]
            batch["input_ids"][i, :n] = e["input_ids"]
            batch["attention_mask"][i, :n] = 1
            batch["labels"][i, :n] = e["labels"]
        media_keys = sorted({k for e in encoded for k in e if k not in ("input_ids", "labels")})
        for key in media_keys:
            items = [t for e in encoded if key in e for t in _items(e[key])]
            if len({tuple(t.shape) for t in items}) == 1:
                batch[key] = torch.stack(items)
            else:
                batch[key] = items  # e.g. videos with different frame counts
        return batch


def _items(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return list(value.unbind(0))
    return list(value)
