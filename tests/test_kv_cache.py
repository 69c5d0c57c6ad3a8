"""``GrowingKVLayer``: the default cache of our ``generate`` appends in place; same keys/values as transformers'
``DynamicLayer`` through updates, crops and batch reorders, and bit-identical generation (greedy and beam search)."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from hf_videollm.modeling.kv_cache import GrowingKVLayer
from hf_videollm.tiny import build_tiny, tiny_media


def _kv(n, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, n, 4, generator=g), torch.randn(batch, 3, n, 4, generator=g)


@pytest.mark.parametrize("capacity", [0, 7, 100])
def test_layer_matches_dynamic_layer(capacity):
    ours, ref = GrowingKVLayer(capacity=capacity), DynamicLayer()
    steps = [5, 1, 1, 1, 3, 1]
    for i, n in enumerate(steps):
        k, v = _kv(n, seed=i)
        a, b = ours.update(k, v), ref.update(k, v)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert ours.get_seq_length() == ref.get_seq_length()
    assert ours._key_buffer.shape[-2] <= 12 + 12 // 2  # never more than half the length in reserve
    # crop, then append: the next update writes after the kept prefix
    ours.crop(-4), ref.crop(-4)
    k, v = _kv(2, seed=9)
    assert torch.equal(ours.update(k, v)[0], ref.update(k, v)[0])
    # beam reorder / batch selection replace the tensors; the next update re-buffers them
    idx = torch.tensor([1, 0])
    ours.reorder_cache(idx), ref.reorder_cache(idx)
    k, v = _kv(1, seed=10)
    a, b = ours.update(k, v), ref.update(k, v)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    ours.batch_select_indices(torch.tensor([1])), ref.batch_select_indices(torch.tensor([1]))
    k, v = _kv(1, batch=1, seed=11)
    assert torch.equal(ours.update(k, v)[1], ref.update(k, v)[1])
    ours.reset()
    assert ours.get_seq_length() == 0
    k, v = _kv(2, seed=12)
    assert torch.equal(ours.update(k, v)[0], k)


def test_append_writes_in_place():
    layer = GrowingKVLayer(capacity=10)  # generate's max length: prompt 8 + 2 new tokens
    layer.update(*_kv(8))
    first = layer.keys.data_ptr()
    for i in range(2):
        layer.update(*_kv(1, seed=i + 1))
    assert layer.keys.data_ptr() == first and layer.get_seq_length() == 10  # no copy of the cache per step
    layer.update(*_kv(1, seed=20))  # beyond the capacity: grows by half
    assert layer.get_seq_length() == 11 and layer._key_buffer.shape[-2] == 16
    small = GrowingKVLayer(capacity=1000)
    small.update(*_kv(4))
    assert small._key_buffer.shape[-2] == 6  # a large max_length reserves at most half the length extra


@pytest.mark.parametrize("beams", [1, 2])
def test_generate_is_bit_identical_to_dynamic_cache(beams):
    model, processor = build_tiny("llava")
    model.eval()
    batch = processor(text=[f"{processor.image_token} describe", f"{processor.image_token} what is it"],
                      images=[tiny_media("image", 0), tiny_media("image", 1)], padding=True)
    gen = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, num_beams=beams, output_scores=True,
               return_dict_in_generate=True)
    seen = []
    orig = GrowingKVLayer.update

    def spy(self, *a, **k):
        seen.append(type(self))
        return orig(self, *a, **k)

    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(GrowingKVLayer, "update", spy)
        ours = model.generate(**batch, **gen)
        assert seen, "our generate did not use the in-place cache"
        seen.clear()
        ref = model.generate(**batch, **gen, cache=DynamicCache(config=model.language_model.config))
        assert not seen  # a cache the caller passes is used as given
    assert torch.equal(ours.sequences, ref.sequences)
    assert all(torch.equal(a, b) for a, b in zip(ours.scores, ref.scores))
