"""4-bit loading that quantizes only the language model.

Vision towers, Q-Formers, connectors and audio encoders are small next to the LLM and lose accuracy when quantized,
so they stay in the compute dtype: their module paths (every part except ``language_model``) and ``lm_head`` are
always in ``llm_int8_skip_modules``. A user's own skip list extends the defaults, never replaces them. Inputs to the
unquantized towers are cast to their dtype by the model (``_cast_for``), so no manual casting is needed.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["QuantizationMixin", "default_skip_modules"]


def default_skip_modules(model_cls) -> list[str]:
    paths = [p for part, ps in model_cls._parts.items() if part != "language_model" for p in ps]
    return [*paths, "lm_head"]


#: bitsandbytes' packed CPU kernel for 4-bit inference (taken on CPUs with AVX512-BF16, in eval mode without grad)
#: repacks each weight in blocks of 32 output rows (asserting ``out_features % 32 == 0``) and reshapes the absmax
#: statistics to ``(out_features, in_features // blocksize)`` (``in_features`` must be a multiple of the blocksize).
_CPU_PACK_BLOCK_N = 32


def _unpack_cpu_kernel_where_unsupported(model) -> None:
    """Layers whose shapes the packed CPU kernel cannot take (``out_features`` not a multiple of 32, ``in_features``
    not a multiple of the quantization blocksize: small or unusual LLM widths) use bitsandbytes' generic 4-bit path
    instead of failing at the first ``generate`` (``AssertionError: N must be divisible by block_n``, or ``shape
    '[96, 0]' is invalid``); every other layer keeps the kernel."""
    for module in model.modules():
        if type(module).__name__ != "Linear4bit" or not getattr(module, "support_avx512bf16_for_cpu", False):
            continue
        blocksize = getattr(getattr(module.weight, "quant_state", None), "blocksize", None) or 64
        if module.out_features % _CPU_PACK_BLOCK_N or module.in_features % blocksize:
            module.support_avx512bf16_for_cpu = False


def _merge_skip(user: list[str] | None, defaults: list[str]) -> list[str]:
    merged = list(defaults)
    for m in user or []:
        if m not in merged:
            merged.append(m)
    return merged


class QuantizationMixin:
    @classmethod
    def default_quantization_config(
        cls,
        *,
        bits: int = 4,
        compute_dtype: torch.dtype = torch.bfloat16,
        quant_type: str = "nf4",
        double_quant: bool = True,
        skip_modules: list[str] | None = None,
    ):
        """A ``BitsAndBytesConfig`` that quantizes the language model only (``skip_modules`` extends the defaults)."""
        from transformers import BitsAndBytesConfig

        if bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {bits}")
        kwargs: dict[str, Any] = {"llm_int8_skip_modules": _merge_skip(skip_modules, default_skip_modules(cls))}
        if bits == 4:
            kwargs.update(
                load_in_4bit=True,
                bnb_4bit_compute_dtype=compute_dtype,
                bnb_4bit_quant_type=quant_type,
                bnb_4bit_use_double_quant=double_quant,
            )
        else:
            kwargs.update(load_in_8bit=True)
        return BitsAndBytesConfig(**kwargs)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        qc = kwargs.get("quantization_config")
        if qc is not None:
            kwargs["quantization_config"] = cls._with_default_skips(qc)
        loaded = super().from_pretrained(*args, **kwargs)
        # ``output_loading_info=True`` returns ``(model, loading_info)``
        _unpack_cpu_kernel_where_unsupported(loaded[0] if isinstance(loaded, tuple) else loaded)
        return loaded

    @classmethod
    def _with_default_skips(cls, qc):
        from transformers import BitsAndBytesConfig

        if isinstance(qc, dict) and qc.get("quant_method", "bitsandbytes") == "bitsandbytes":
            qc = BitsAndBytesConfig.from_dict(dict(qc))
        if isinstance(qc, BitsAndBytesConfig):
            qc.llm_int8_skip_modules = _merge_skip(qc.llm_int8_skip_modules, default_skip_modules(cls))
        return qc
