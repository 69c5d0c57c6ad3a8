"""4-bit inference on the CPU with LLM widths that bitsandbytes' packed CPU kernel cannot take.

bitsandbytes >= 0.48 repacks a 4-bit weight for its AVX512-BF16 kernel at the first eval forward without grad; that
repacking needs ``out_features % 32 == 0`` and ``in_features`` a multiple of the blocksize, and fails otherwise
(``AssertionError: N must be divisible by block_n``; ``shape '[96, 0]' is invalid``). A converted release with such
widths (the tiny fixtures: hidden 48) could not ``generate`` in 4-bit on those CPUs. ``from_pretrained`` now sends such
layers down the generic 4-bit path.
"""

from __future__ import annotations

import pytest
import torch

from hf_videollm.tiny import tiny_llava, tiny_tokenizer


def test_4bit_layers_the_packed_cpu_kernel_cannot_take_use_the_generic_path(tmp_path):
    pytest.importorskip("bitsandbytes")
    model, processor = tiny_llava(tiny_tokenizer(), 0, text_config=dict(hidden_size=48, intermediate_size=96))
    model.save_pretrained(tmp_path)
    qc = type(model).default_quantization_config(compute_dtype=torch.float32)
    q = type(model).from_pretrained(tmp_path, quantization_config=qc, dtype=torch.float32).eval()
    layers = {n: m for n, m in q.named_modules() if type(m).__name__ == "Linear4bit"}
    assert layers
    for name, m in layers.items():
        fits = m.out_features % 32 == 0 and m.in_features % m.weight.quant_state.blocksize == 0
        # the kernel stays where it fits (on CPUs that have it), the others never try it
        assert not m.support_avx512bf16_for_cpu or fits, name
    assert any(not m.support_avx512bf16_for_cpu for m in layers.values())  # 48 / 96 wide layers exist here
    batch = processor(text=[f"{processor.image_token} what is it"], images=[torch.zeros(3, 32, 32, dtype=torch.uint8)])
    with torch.no_grad():
        out = q.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[-1] == batch["input_ids"].shape[-1] + 3
