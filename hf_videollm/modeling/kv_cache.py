"""A key/value cache layer that appends in place: transformers' ``DynamicLayer`` with room to grow.

transformers' default ``DynamicCache`` appends each decoding step's keys/values with ``torch.cat``, which copies the
whole cache of every layer at every step: for a video prompt of 9k tokens that is the full prompt's K/V per layer
per generated token, and twice the cache in memory during the copy. :class:`GrowingKVLayer` keeps keys/values in a
buffer with spare room (sized from ``generate``'s ``max_length``, at most half the current length extra) and writes
only the new positions; ``keys`` / ``values`` are views of the filled prefix, so attention reads the same numbers
in the same order (the generated tokens and scores are bit-identical to ``DynamicCache`` on CPU, tested).

Everything else is the parent's: ``crop`` keeps a prefix view (the next update writes after it);
``reorder_cache`` / ``batch_select_indices`` / ``batch_repeat_interleave`` / ``offload`` replace the tensors, and the
next update copies them into a fresh buffer (what ``torch.cat`` did at every step). Sliding-window layers are left
as transformers builds them.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

__all__ = ["GrowingKVLayer", "use_growing_layers"]


class GrowingKVLayer(DynamicLayer):
    """``DynamicLayer`` whose appends write into a pre-sized buffer instead of concatenating (see module doc).

    ``capacity``: positions to reserve at the first allocation (``generate`` passes its maximum cache length); the
    buffer never reserves more than half the current length beyond what is needed, and grows by half when full.
    """

    def __init__(self, capacity: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.capacity = int(capacity)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def _holds_prefix(self, length: int, new: torch.Tensor) -> bool:
        """``keys`` / ``values`` are still the first ``length`` positions of the buffers, and ``new`` fits after."""
        kb, vb = self._key_buffer, self._value_buffer
        if kb is None or vb is None or length == 0:
            return False
        return (
            self.keys.data_ptr() == kb.data_ptr() and self.values.data_ptr() == vb.data_ptr()
            and self.keys.stride() == kb.stride() and self.values.stride() == vb.stride()
            and self.keys.shape[:2] == new.shape[:2] and length + new.shape[-2] <= kb.shape[-2]
            and new.dtype == kb.dtype and new.device == kb.device
        )

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.get_seq_length()
        need = length + key_states.shape[-2]
        if not self._holds_prefix(length, key_states):
            room = need + need // 2
            size = min(self.capacity, room) if self.capacity >= need else room
            kb = key_states.new_empty((*key_states.shape[:-2], size, key_states.shape[-1]))
            vb = value_states.new_empty((*value_states.shape[:-2], size, value_states.shape[-1]))
            if length:
                kb[..., :length, :].copy_(self.keys)
                vb[..., :length, :].copy_(self.values)
            self._key_buffer, self._value_buffer = kb, vb
        self._key_buffer[..., length:need, :].copy_(key_states)
        self._value_buffer[..., length:need, :].copy_(value_states)
        self.keys = self._key_buffer[..., :need, :]
        self.values = self._value_buffer[..., :need, :]
        return self.keys, self.values

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        super().reset()


def use_growing_layers(cache: DynamicCache, capacity: int) -> DynamicCache:
    """Swap the plain ``DynamicLayer`` s of a fresh ``cache`` for :class:`GrowingKVLayer` s (others are kept)."""
    cache.layers = [
        GrowingKVLayer(capacity=capacity) if type(layer) is DynamicLayer and not layer.is_initialized else layer
        for layer in cache.layers
    ]
    return cache
