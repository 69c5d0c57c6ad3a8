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
        return super().from_pretrained(*args, **kwargs)

    @classmethod
    def _with_default_skips(cls, qc):
        from transformers import BitsAndBytesConfig

        if isinstance(qc, dict) and qc.get("quant_method", "bitsandbytes") == "bitsandbytes":
            qc = BitsAndBytesConfig.from_dict(dict(qc))
        if isinstance(qc, BitsAndBytesConfig):
            qc.llm_int8_skip_modules = _merge_skip(qc.llm_int8_skip_modules, default_skip_modules(cls))
        return qc
