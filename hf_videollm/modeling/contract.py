"""What a model consumes, declared once.

Every model class carries one :class:`ModelInputs` (``Model.input_spec``); its processor carries the same object.
Everything that has to know a model's inputs reads it instead of guessing names:

* ``forward`` / ``encode_media`` take each modality's encoder inputs from it; ``generate`` encodes them once and
  keeps the *layout* inputs (grids, per-item timing) for every decoding step and for ``compute_position_ids``;
* beam search / ``num_return_sequences`` repeat per-item inputs with their sample's items (:func:`expand_items`);
* the processor emits exactly these inputs; the training collator pads and batches exactly these
  (:func:`collate_inputs`); the language-model kind decides how labels and ``generate`` work;
* benchmarks, the demo and the common test suite select media inputs through it (:meth:`ModelInputs.media_inputs`).

Vocabulary:

``item``
    one image, one video or one audio clip. Per-item inputs have the items of their modality along dim 0, in the
    order their placeholders appear over the batch (sample 0's items first).
``sample``
    one row of the batch (dim 0 = batch).
``layout``
    an input that must survive encoding and reach every forward step (e.g. Qwen2-VL's ``image_grid_thw``, which its
    encoder reads and from which M-RoPE positions are computed at every step).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["InputSpec", "Modality", "ModelInputs", "collate_inputs", "expand_items", "items_of", "LM_KINDS", "PLACEMENTS"]

LM_KINDS = ("causal", "seq2seq")
PLACEMENTS = ("inline", "prefix")
_PER = ("item", "sample")
_COLLATE = ("stack", "packed", "pad")


@dataclass(frozen=True)
class InputSpec:
    """One tensor input besides ``input_ids`` / ``attention_mask`` / ``labels``.

    Args:
        name: the forward argument (and processor output) name.
        per: ``"item"`` (dim 0 = the items of ``modality``) or ``"sample"`` (dim 0 = batch).
        modality: for per-item inputs, whose items.
        encoder: ``True`` if ``get_<modality>_features`` takes it (the first encoder input of a modality is the one
            whose presence turns the branch on).
        layout: kept through generation and passed to every forward step (and to ``compute_position_ids``);
            otherwise the input is consumed by encoding and dropped after prefill.
        text: derived from the text by the processor (e.g. a second tokenizer's ids), not from media.
        collate: how items/samples are batched: ``"stack"`` (equal shapes are stacked, otherwise a list of tensors),
            ``"packed"`` (concatenated along dim 0; ``rows_from`` names the per-item grid input whose row product is
            each item's row count), ``"pad"`` (token sequences right-padded along the last dim with ``pad_value``).
        alternative_to: another encoder input of the same modality that this one can replace (e.g. precomputed
            features instead of pixels): its presence also turns the modality's branch on, and giving both is an
            error. The modality's first encoder input must not itself be an alternative.
    """

    name: str
    per: str = "item"
    modality: str | None = None
    encoder: bool = True
    layout: bool = False
    text: bool = False
    collate: str = "stack"
    rows_from: str | None = None
    pad_value: int | float = 0
    alternative_to: str | None = None

    def __post_init__(self) -> None:
        if self.alternative_to is not None and not self.encoder:
            raise ValueError(f"InputSpec {self.name}: only an encoder input can be an alternative to another input")
        if self.per not in _PER:
            raise ValueError(f"InputSpec {self.name}: per must be one of {_PER}, got {self.per!r}")
        if self.per == "item" and self.modality is None:
            raise ValueError(f"InputSpec {self.name}: a per-item input needs its modality")
        if self.encoder and self.modality is None:
            raise ValueError(f"InputSpec {self.name}: an encoder input needs its modality")
        if self.collate not in _COLLATE:
            raise ValueError(f"InputSpec {self.name}: collate must be one of {_COLLATE}, got {self.collate!r}")
        if (self.collate == "packed") != (self.rows_from is not None):
            raise ValueError(f"InputSpec {self.name}: collate='packed' and rows_from go together")


@dataclass(frozen=True)
class Modality:
    """A media modality the model encodes.

    Args:
        name: ``"image"``, ``"video"`` or ``"audio"``.
        modules: module paths its encoder path runs through (modalities sharing all their modules share the dummy
            pass that keeps encoders in the graph during training).
        token_attr: config attribute holding the placeholder token id (default ``<name>_token_id``).
    """

    name: str
    modules: tuple[str, ...]
    token_attr: str | None = None

    @property
    def token_id_attribute(self) -> str:
        return self.token_attr or f"{self.name}_token_id"


@dataclass(frozen=True)
class ModelInputs:
    """The whole declaration: modalities, every extra input, the language-model kind, where media tokens go.

    Args:
        modalities: the media the model encodes, in processing order.
        inputs: every input besides ``input_ids`` / ``attention_mask`` / ``labels`` (and the LM's own kwargs).
        lm: ``"causal"`` (decoder-only; labels aligned with ``input_ids``) or ``"seq2seq"`` (encoder-decoder:
            media merged into the encoder's embeddings, labels are the decoder sequence).
        placement: ``"inline"`` (each placeholder run stands where the user put the media) or ``"prefix"`` (all media
            tokens of a sample go before its special prefix such as BOS, as BLIP-2 / InstructBLIP do).
    """

    modalities: tuple[Modality, ...]
    inputs: tuple[InputSpec, ...] = ()
    lm: str = "causal"
    placement: str = "inline"
    _by_name: dict[str, InputSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.lm not in LM_KINDS:
            raise ValueError(f"lm must be one of {LM_KINDS}, got {self.lm!r}")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")
        names = [s.name for s in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"input names repeat: {names}")
        by_name = {s.name: s for s in self.inputs}
        known = {m.name for m in self.modalities}
        for spec in self.inputs:
            if spec.modality is not None and spec.modality not in known:
                raise ValueError(f"input {spec.name} names modality {spec.modality!r}, not one of {sorted(known)}")
            if spec.rows_from is not None and spec.rows_from not in by_name:
                raise ValueError(f"input {spec.name}: rows_from={spec.rows_from!r} is not a declared input")
            if spec.alternative_to is not None:
                other = by_name.get(spec.alternative_to)
                if other is None or not other.encoder or other.modality != spec.modality or other.alternative_to:
                    raise ValueError(
                        f"input {spec.name}: alternative_to={spec.alternative_to!r} must name a primary encoder input "
                        f"of the {spec.modality} modality"
                    )
        for m in self.modalities:
            encoders = [s for s in self.inputs if s.encoder and s.modality == m.name]
            if not encoders:
                raise ValueError(f"modality {m.name!r} has no encoder input")
            if encoders[0].alternative_to is not None:
                raise ValueError(f"modality {m.name!r}: its first encoder input {encoders[0].name} is an alternative")
        object.__setattr__(self, "_by_name", by_name)

    # ------------------------------------------------------------------------------------------------- lookups
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    @property
    def modality_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    def __getitem__(self, name: str) -> InputSpec:
        return self._by_name[name]

    def modality(self, name: str) -> Modality:
        for m in self.modalities:
            if m.name == name:
                return m
        raise KeyError(f"no modality {name!r}; declared: {list(self.modality_names)}")

    def encoder_inputs(self, modality: str) -> tuple[str, ...]:
        """Arguments of ``get_<modality>_features``; the first one switches the branch on."""
        return tuple(s.name for s in self.inputs if s.encoder and s.modality == modality)

    def branch_inputs(self, modality: str) -> tuple[str, ...]:
        """Encoder inputs whose presence turns ``modality``'s branch on: the first one and its alternatives."""
        names = self.encoder_inputs(modality)
        return (names[0], *(s.name for s in self.inputs if s.alternative_to == names[0]))

    def alternative_groups(self, modality: str) -> dict[str, tuple[str, ...]]:
        """``{primary input: its alternatives}`` for ``modality`` (only primaries that have alternatives)."""
        groups: dict[str, list[str]] = {}
        for s in self.inputs:
            if s.modality == modality and s.alternative_to is not None:
                groups.setdefault(s.alternative_to, []).append(s.name)
        return {k: tuple(v) for k, v in groups.items()}

    @property
    def layout_inputs(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs if s.layout)

    @property
    def consumed_inputs(self) -> tuple[str, ...]:
        """Inputs used only to encode media: encoded once, dropped after prefill."""
        return tuple(s.name for s in self.inputs if not s.layout)

    @property
    def text_inputs(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs if s.text)

    def media_inputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The encoder inputs present in ``batch`` (e.g. a processor output), by name."""
        return {s.name: batch[s.name] for s in self.inputs if s.encoder and batch.get(s.name) is not None}

    def split(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Pop every declared input from ``kwargs``: ``(encoder inputs, layout / per-step inputs)``; an input can be
        in both (a grid the encoder reads and positions need)."""
        taken = {n: kwargs.pop(n) for n in list(kwargs) if n in self._by_name}
        encoder = {n: v for n, v in taken.items() if self._by_name[n].encoder}
        step = {n: v for n, v in taken.items() if self._by_name[n].layout or not self._by_name[n].encoder}
        return encoder, step


# ----------------------------------------------------------------------------------------------------- items
def _rows(spec: InputSpec, batch: Mapping[str, Any]) -> list[int]:
    grid = batch[spec.rows_from]
    return [int(r.prod()) for r in torch.as_tensor(grid).reshape(len(grid), -1)]


def items_of(spec: InputSpec, value: Any, batch: Mapping[str, Any] | None = None) -> list[Any]:
    """A batched input -> one entry per item (per-item input) or per sample."""
    if value is None:
        return []
    if spec.collate == "packed":
        if batch is None:
            raise ValueError(f"{spec.name} is packed: its rows per item come from {spec.rows_from}; pass the batch")
        return list(torch.as_tensor(value).split(_rows(spec, batch), dim=0))
    if isinstance(value, torch.Tensor):
        return list(value.unbind(0))
    return list(value)


def _batch_items(spec: InputSpec, items: list[Any]) -> Any:
    if not items:
        return None
    if spec.collate == "packed":
        return torch.cat(items, dim=0)
    if spec.collate == "pad":
        width = max(t.shape[-1] for t in items)
        out = items[0].new_full((len(items), *items[0].shape[:-1], width), spec.pad_value)
        for i, t in enumerate(items):
            out[i, ..., : t.shape[-1]] = t
        return out
    if all(isinstance(t, torch.Tensor) for t in items) and len({tuple(t.shape) for t in items}) == 1:
        return torch.stack(items)
    return list(items)  # e.g. videos with different frame counts


def collate_inputs(spec: ModelInputs, encoded: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch the declared inputs of separately processed samples (each a processor output for one sample)."""
    out: dict[str, Any] = {}
    for s in spec.inputs:
        items = [it for e in encoded if e.get(s.name) is not None for it in items_of(s, e[s.name], e)]
        value = _batch_items(s, items)
        if value is not None:
            out[s.name] = value
    return out


def expand_items(
    spec: ModelInputs,
    model_kwargs: dict[str, Any],
    groups: Mapping[str, Sequence[Sequence[int]]],
    expand_size: int,
) -> None:
    """Beam search / ``num_return_sequences``: repeat each sample's per-item inputs with the sample (in place).

    ``groups[modality][b]`` lists the item indices of sample ``b``. Per-sample inputs are left to transformers'
    own expansion (``repeat_interleave`` over the batch)."""
    original = dict(model_kwargs)  # packed inputs read their row counts from the unexpanded grids
    for s in spec.inputs:
        value = original.get(s.name)
        if value is None or s.per != "item":
            continue
        items = items_of(s, value, original)
        per_sample = groups.get(s.modality)
        if per_sample is None:
            raise ValueError(f"cannot expand {s.name}: no {s.modality} items were matched to samples")
        model_kwargs[s.name] = _batch_items(s, [items[i] for g in per_sample for _ in range(expand_size) for i in g])
