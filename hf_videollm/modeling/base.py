"""The shared core every hf_videollm model is built on.

A model declares what it consumes once (:class:`~.contract.ModelInputs`, ``input_spec``), builds its encoders and
connector, and defines ``get_<modality>_features`` returning one tensor of tokens (already in the language model's
width) per media item. Everything else lives here, once, and reads that declaration:

* ``forward``: encode (or take precomputed ``mm_encoder_outputs``), merge the tokens over their placeholders
  (validated per sample, :mod:`.merge`), run the language model -- decoder-only (labels aligned with the prompt, media
  positions never supervised) or encoder-decoder (media merged into the encoder's embeddings, labels are the decoder
  sequence);
* ``generate``: media encoded once before prefill; layout inputs (grids, per-item timing) kept for every step;
  position ids computed per call from them by the model's :meth:`compute_position_ids` hook, never stored on the
  module; beam search / ``num_return_sequences`` repeat each sample's items with the sample;
* freezing by named part (:mod:`.parts`), 4-bit loading that quantizes only the language model
  (:mod:`.quantization`), attention implementation plumbing through the composite config's ``sub_configs``.

Each model has two public classes built from one body: ``VideoLLM<X>Model`` (``AutoModel``: the bare language model,
returns hidden states and the media features) and ``VideoLLM<X>ForConditionalGeneration`` (the LM head; ``generate``).
The language model is a real transformers model at ``language_model`` so PEFT target resolution, quantization skip
lists and ``device_map`` work on full module paths.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
)

from .contract import InputSpec, Modality, ModelInputs, expand_items
from .kv_cache import use_growing_layers
from .merge import MediaMismatchError, as_item_list, assign_items_to_samples, media_mask, merge_media_embeddings
from .parts import PartsMixin
from .quantization import QuantizationMixin
from .vision import select_hidden_features, unused_tower_prefixes

__all__ = [
    "MediaMismatchError",
    "VideoLLMCausalLMOutput",
    "VideoLLMModelOutput",
    "VideoLLMPreTrainedModel",
    "VideoLLMSeq2SeqLMOutput",
    "VideoLLMSeq2SeqModelOutput",
    "TOWER_INPUTS",
    "VisionTowerModel",
]


@dataclass
class VideoLLMCausalLMOutput(CausalLMOutputWithPast):
    """Causal LM output plus the media features that were merged (modality -> list of per-item token tensors)."""

    media_features: dict[str, list[torch.Tensor]] | None = None


@dataclass
class VideoLLMSeq2SeqLMOutput(Seq2SeqLMOutput):
    """Encoder-decoder LM output plus the media features merged into the encoder's input."""

    media_features: dict[str, list[torch.Tensor]] | None = None


@dataclass
class VideoLLMModelOutput(BaseModelOutputWithPast):
    """``AutoModel`` output: the language model's hidden states plus the media features that were merged."""

    media_features: dict[str, list[torch.Tensor]] | None = None


@dataclass
class VideoLLMSeq2SeqModelOutput(Seq2SeqModelOutput):
    media_features: dict[str, list[torch.Tensor]] | None = None


def _head_class(text_config, lm: str) -> type:
    """transformers' LM-head class for ``text_config`` (``AutoModelForCausalLM`` / ``AutoModelForSeq2SeqLM``)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    auto = AutoModelForSeq2SeqLM if lm == "seq2seq" else AutoModelForCausalLM
    try:
        return auto._model_mapping[type(text_config)]
    except KeyError:
        raise ValueError(
            f"{type(text_config).__name__} has no {auto.__name__} class; the declared language-model kind is {lm!r}"
        ) from None


_OUTPUTS = {
    ("causal", True): VideoLLMCausalLMOutput,
    ("causal", False): VideoLLMModelOutput,
    ("seq2seq", True): VideoLLMSeq2SeqLMOutput,
    ("seq2seq", False): VideoLLMSeq2SeqModelOutput,
}


class VideoLLMPreTrainedModel(QuantizationMixin, PartsMixin, PreTrainedModel):
    """Base class: composite config with ``vision_config``/``text_config`` (+ others), LLM at ``language_model``.

    Concrete generation classes list ``GenerationMixin`` directly in their bases (transformers' ``can_generate``
    looks there).
    """

    # No attribute of this name exists, so ``self.base_model`` is the model itself (composite models have no
    # separate base model; transformers' generation calls ``base_model.get_<modality>_features``).
    base_model_prefix = "videollm"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    #: what the model consumes (media, layout and text-derived inputs; LM kind; where media tokens go).
    input_spec: ClassVar[ModelInputs]
    #: ``False`` for the ``AutoModel`` class: the language model without its head.
    with_lm_head: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        spec = cls.__dict__.get("input_spec")
        if spec is not None:
            cls.input_modalities = (*spec.modality_names, "text")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:  # absent where this module runs as remote code (transformers alone)
            from hf_videollm.training.checkpoints import check_final_complete
        except ImportError:
            pass
        else:
            if os.path.isdir(str(pretrained_model_name_or_path)):
                check_final_complete(pretrained_model_name_or_path)  # a run dir whose final save was killed
        if not cls.with_lm_head and "key_mapping" not in kwargs:
            # A checkpoint saved with the LM head holds the decoder under the head class's prefix (LLaMA:
            # ``language_model.model.layers``, GPT-2: ``language_model.transformer.h``); the bare language model
            # holds it at ``language_model`` (the head's weights are left unused, as transformers does).
            config = kwargs.get("config")
            if not isinstance(config, cls.config_class):
                hub = {k: kwargs[k] for k in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if k in kwargs}
                config = cls.config_class.from_pretrained(pretrained_model_name_or_path, **hub)
            prefix = _head_class(config.text_config, cls.input_spec.lm).base_model_prefix
            if prefix:
                kwargs["key_mapping"] = {rf"^language_model\.{prefix}\.": "language_model."}
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As transformers', plus the model's code beside the weights and ``auto_map`` in ``config.json``, so the
        checkpoint loads with transformers alone (``trust_remote_code=True``; :mod:`hf_videollm.remote_code`)."""
        try:  # absent where this module runs as remote code (transformers alone)
            from hf_videollm.remote_code import auto_map, entry_for, write_remote_code
        except ImportError:
            return super().save_pretrained(save_directory, *args, **kwargs)
        entry = entry_for(self)
        if entry is not None:
            self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **auto_map(entry)}
        out = super().save_pretrained(save_directory, *args, **kwargs)
        if entry is not None and (kwargs.get("is_main_process", True)):
            write_remote_code(save_directory, entry)
        return out

    def post_init(self) -> None:
        super().post_init()
        # transformers aggregates children's no-split classes; keep the ones that exist in this model (a vision-only
        # CLIP tower lists CLIPTextEmbeddings, which makes FSDP's layer-class lookup fail).
        present = {type(m).__name__ for m in self.modules()}
        if self._no_split_modules:
            self._no_split_modules = sorted(c for c in set(self._no_split_modules) if c in present)

    def build_language_model(self, text_config) -> nn.Module:
        """The language model of this class: causal or encoder-decoder as declared, with or without its head."""
        from transformers import AutoModel

        if not self.with_lm_head:
            return AutoModel.from_config(text_config)
        return _head_class(text_config, self.input_spec.lm)._from_config(text_config)

    @property
    def is_seq2seq(self) -> bool:
        return self.input_spec.lm == "seq2seq"

    def unused_parameter_prefixes(self) -> list[str]:
        """Parameters the forward never uses (e.g. CLIP layers after the selected feature layer): kept frozen, so
        DDP without ``find_unused_parameters`` and optimizers never see them."""
        return []

    def _init_weights(self, module: nn.Module) -> None:
        if getattr(module, "_keep_default_init", False):
            module.reset_parameters()  # layers the original builds with PyTorch's default init (e.g. projectors)
            return
        super()._init_weights(module)

    # ----------------------------------------------------------------------------------------------- embeddings
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.language_model.get_output_embeddings() if self.with_lm_head else None

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self):
        return self.language_model.get_decoder()

    def get_encoder(self):
        return self.language_model.get_encoder()

    # ----------------------------------------------------------------------------------------------- media
    @property
    def media_token_ids(self) -> dict[str, int]:
        ids = {}
        for m in self.input_spec.modalities:
            tid = getattr(self.config, m.token_id_attribute, None)
            if tid is not None:
                ids[m.name] = tid
        return ids

    def encode_media(self, **inputs: Any) -> dict[str, list[torch.Tensor]]:
        """Run each modality's encoder + connector once on its declared inputs.

        Returns modality -> list of ``(tokens_i, D)`` tensors, one per item in batch order."""
        spec = self.input_spec
        unknown = sorted(set(inputs) - set(spec.names))
        if unknown:
            raise TypeError(f"{type(self).__name__} takes no input(s) {unknown}; its inputs: {list(spec.names)}")
        features: dict[str, list[torch.Tensor]] = {}
        for modality in spec.modality_names:
            names = spec.encoder_inputs(modality)
            args = {n: inputs[n] for n in names if inputs.get(n) is not None}
            switches = spec.branch_inputs(modality)
            if not any(n in args for n in switches):
                stray = [n for n in args if not spec[n].layout]
                if stray:
                    raise ValueError(f"{', '.join(stray)} given without {names[0]}; pass {names[0]} to use the {modality} branch")
                continue
            for primary, alternatives in spec.alternative_groups(modality).items():
                given = [n for n in alternatives if n in args]
                if primary in args and given:
                    raise ValueError(
                        f"{primary} and {', '.join(given)} both given for the {modality} branch: "
                        f"{', '.join(given)} replace {primary}; pass one or the other"
                    )
            features[modality] = as_item_list(getattr(self, f"get_{modality}_features")(**args))
        return features

    def dummy_media_inputs(self, modality: str) -> dict[str, Any]:
        """Smallest valid encoder inputs for ``modality`` (used to keep encoders in the graph during training)."""
        raise NotImplementedError(f"{type(self).__name__} defines no dummy {modality} input")

    def _dummy_media_sum(self, features: Mapping[str, Any]) -> torch.Tensor | None:
        modules = {m.name: set(m.modules) for m in self.input_spec.modalities}
        used: set[str] = set()
        for m in features:
            used |= modules[m]
        total = None
        for modality, mods in modules.items():
            if modality in features or mods <= used:
                continue
            out = getattr(self, f"get_{modality}_features")(**self.dummy_media_inputs(modality))
            s = sum(t.float().sum() for t in as_item_list(out))
            total = s if total is None else total + s
            used |= mods
        return total

    def _cast_for(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Cast floating inputs to the dtype/device of ``module``'s parameters (vision tower in compute dtype)."""
        p = next(module.parameters(), None)
        if p is None or not torch.is_floating_point(x):
            return x
        dtype = p.dtype if p.is_floating_point() else x.dtype
        return x.to(device=p.device, dtype=dtype)

    def build_inputs_embeds(
        self,
        input_ids: torch.Tensor,
        media_features: Mapping[str, Sequence[torch.Tensor]] | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Embed ``input_ids`` and merge media features over their placeholders (validated per sample)."""
        token_ids = self.media_token_ids
        placeholders = media_mask(input_ids, token_ids)
        # Placeholder ids may lie outside the LLM vocabulary (they are never embedded): embed a valid id instead.
        any_placeholder = bool(placeholders.any())
        safe_ids = input_ids.masked_fill(placeholders, 0) if any_placeholder else input_ids
        embeds = self.get_input_embeddings()(safe_ids)
        if not any_placeholder and not any(as_item_list(f) for f in (media_features or {}).values()):
            return embeds  # text only (e.g. a decoding step): nothing to merge or check
        return merge_media_embeddings(
            input_ids, embeds, dict(media_features or {}), token_ids,
            attention_mask=attention_mask, token_names=self._placeholder_names(),
        )

    def _placeholder_names(self) -> dict[str, str]:
        return {m: getattr(self.config, f"{m}_token", None) or f"<{m}>" for m in self.input_spec.modality_names}

    # ----------------------------------------------------------------------------------------------- positions
    #: ``True`` when the model computes its own position ids from layout inputs (:meth:`compute_position_ids`).
    positions_from_layout: ClassVar[bool] = False

    def compute_position_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, **layout: Any):
        """Position ids of the whole sequence ``input_ids`` (e.g. M-RoPE ``(3, B, L)`` from the grids in ``layout``).

        Called per call -- for training / prefill in ``forward`` and at every decoding step in ``generate`` (the
        whole sequence so far, then sliced to the new tokens) -- so nothing is ever stored on the module."""
        raise NotImplementedError(f"{type(self).__name__} sets positions_from_layout but defines no compute_position_ids")

    def _positions(self, input_ids, attention_mask, position_ids, cache, step_inputs):
        if position_ids is not None or not self.positions_from_layout:
            return position_ids
        if input_ids is None:
            raise ValueError(f"{type(self).__name__} computes positions from input_ids and its layout inputs; pass "
                             "input_ids (or position_ids with inputs_embeds)")
        if cache is not None and cache.get_seq_length() > 0:
            raise ValueError(
                f"{type(self).__name__}: with a non-empty cache pass position_ids (generate computes them from the "
                "whole sequence at every step)"
            )
        layout = {n: step_inputs.get(n) for n in self.input_spec.layout_inputs}
        return self.compute_position_ids(input_ids, attention_mask, **layout)

    # ----------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: Mapping[str, Sequence[torch.Tensor]] | None = None,
        **kwargs: Any,
    ):
        """Encode the declared media inputs (or take ``mm_encoder_outputs``), merge, run the language model.

        Media / layout inputs are the model's declared ones (``input_spec``, e.g. ``pixel_values``,
        ``pixel_values_videos``); other keyword arguments go to the language model (``decoder_input_ids`` for an
        encoder-decoder LM, ``output_hidden_states``...)."""
        encoder_inputs, step_inputs = self.input_spec.split(kwargs)
        has_media = any(v is not None for n, v in encoder_inputs.items() if not self.input_spec[n].layout)
        if has_media and mm_encoder_outputs:
            raise ValueError("pass either raw media inputs or precomputed `mm_encoder_outputs`, not both")
        if mm_encoder_outputs:
            features = {m: as_item_list(f) for m, f in mm_encoder_outputs.items()}
        else:
            features = self.encode_media(**encoder_inputs) if has_media else {}

        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.build_inputs_embeds(input_ids, features, attention_mask)
            if labels is not None and not self.is_seq2seq:
                # Media positions are never supervised, whatever the caller put there.
                labels = labels.masked_fill(media_mask(input_ids, self.media_token_ids), -100)
        elif any(features.values()):
            raise ValueError(
                "media inputs were given with `inputs_embeds` only; pass `input_ids` so the placeholders can be "
                "located (or merge the features into inputs_embeds yourself)"
            )
        if self.training and torch.is_grad_enabled():
            dummy = self._dummy_media_sum(features)
            if dummy is not None:
                # Every rank runs every encoder in every step (FSDP / ZeRO-3 gather parameters collectively; DDP
                # expects gradients for all trainable parameters): a batch without some modality contributes 0.
                inputs_embeds = inputs_embeds + 0.0 * dummy.to(inputs_embeds.dtype)
        position_ids = self._positions(input_ids, attention_mask, position_ids, cache, step_inputs)
        lm_kwargs: dict[str, Any] = dict(kwargs, cache=cache, use_cache=use_cache)
        if position_ids is not None:
            lm_kwargs["position_ids"] = position_ids
        if self.with_lm_head:
            lm_kwargs["labels"] = labels
            if not self.is_seq2seq:
                lm_kwargs["logits_to_keep"] = logits_to_keep
        elif labels is not None:
            raise ValueError(f"{type(self).__name__} has no LM head: use the ForConditionalGeneration class for a loss")
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **lm_kwargs)
        return _OUTPUTS[(self.input_spec.lm, self.with_lm_head)](**dict(out), media_features=features or None)

    # ----------------------------------------------------------------------------------------------- generation
    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs):
        """``GenerationMixin.generate`` with the media encoded once, before prefill.

        The declared encoder inputs (``pixel_values``, ``pixel_values_videos``, ...) are encoded here and travel as
        ``mm_encoder_outputs`` (transformers forwards them at prefill only when a cache is used, and at every step
        without a cache, where the full sequence is re-embedded); layout inputs stay in the keyword arguments and
        reach every step. An encoder-decoder LM generates from the merged encoder embeddings; the output is then the
        decoder sequence only (no prompt), as for any seq2seq model. The default KV cache appends in place
        (:mod:`.kv_cache`; same outputs as transformers' ``DynamicCache``, without copying the cache per token).
        """
        encoder_inputs, step_inputs = self.input_spec.split(kwargs)
        kwargs.update(step_inputs)
        if any(v is not None for n, v in encoder_inputs.items() if not self.input_spec[n].layout):
            if kwargs.get("mm_encoder_outputs"):
                raise ValueError("pass either raw media inputs or precomputed `mm_encoder_outputs`, not both")
            kwargs["mm_encoder_outputs"] = self.encode_media(**encoder_inputs)
        if input_ids is not None and kwargs.get("mm_encoder_outputs"):
            # Validate before generation starts so a mismatch fails with a clear message, not mid-loop.
            self._group_media_by_sample(input_ids, kwargs["mm_encoder_outputs"], attention_mask)
        if self.is_seq2seq:
            features = kwargs.pop("mm_encoder_outputs", None)
            inputs_embeds = self.build_inputs_embeds(input_ids, features, attention_mask)
            return self.language_model.generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
        return super().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    def _validate_model_kwargs(self, model_kwargs: dict[str, Any]) -> None:
        # the declared inputs reach ``forward`` through ``**kwargs``; transformers only knows named parameters
        super()._validate_model_kwargs({k: v for k, v in model_kwargs.items() if k not in self.input_spec.names})

    def _maybe_prepare_encoder_kwargs_for_generation(self, inputs_tensor, model_kwargs, model_input_name, generation_config):
        # Media were encoded in ``generate`` already; transformers' own pre-encoding would pop the layout inputs its
        # signature lookup finds (e.g. grids) and encode nothing.
        return model_kwargs

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, batch_size, max_cache_length):
        """transformers' cache for this call; its default ``DynamicCache`` gets layers that append in place
        (:class:`~.kv_cache.GrowingKVLayer`: no copy of the whole cache per generated token, same numbers). A cache
        the caller passed, or one chosen with ``cache_implementation``, is used as given."""
        out = super()._prepare_cache_for_generation(
            generation_config, model_kwargs, generation_mode, batch_size, max_cache_length
        )
        cache = model_kwargs.get("cache")
        if (
            type(cache) is DynamicCache and not getattr(cache, "_is_user_defined", False)
            and generation_config.cache_implementation in (None, "dynamic")
        ):
            use_growing_layers(cache, max_cache_length)
        return out

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        """transformers 5.24 builds 1-D position ids from the attention mask before the loop and advances them by
        one per generated token. A model whose positions come from its layout gets the prompt's own positions
        (:meth:`compute_position_ids`, from this call's inputs) instead; advancing them by one is right for the
        generated text tokens. A prompt whose last token is a media placeholder (the next position jumps past the
        item) gets ``None``: its positions are computed from the whole sequence at every step
        (:meth:`prepare_inputs_for_generation`)."""
        if not self.positions_from_layout:
            return super()._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)
        ids = model_kwargs.get("input_ids", inputs_tensor)
        mask = model_kwargs.get("attention_mask")
        if ids is None or ids.ndim != 2 or ids.is_floating_point() or ids.shape[1] == 0:
            return None
        if mask is not None and not bool(mask[:, -1].bool().all()):
            return None  # right padding: the last column is not the last token of every row
        if any(bool((ids[:, -1] == tid).any()) for tid in self.media_token_ids.values()):
            return None
        layout = {n: model_kwargs.get(n) for n in self.input_spec.layout_inputs}
        return self.compute_position_ids(ids, mask, **layout)

    def prepare_inputs_for_generation(self, input_ids, *args, attention_mask=None, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(input_ids, *args, attention_mask=attention_mask, **kwargs)
        if self.positions_from_layout and kwargs.get("position_ids") is None:
            layout = {n: kwargs.get(n) for n in self.input_spec.layout_inputs}
            new = model_inputs["input_ids"].shape[1] if model_inputs.get("input_ids") is not None else model_inputs["inputs_embeds"].shape[1]
            full = self.compute_position_ids(input_ids, attention_mask, **layout)
            model_inputs["position_ids"] = full[..., -new:]
        return model_inputs

    def _group_media_by_sample(self, input_ids, features, attention_mask=None) -> dict[str, list[list[int]]]:
        groups = {}
        names = self._placeholder_names()
        for modality, tid in self.media_token_ids.items():
            items = as_item_list(features.get(modality))
            mask = input_ids == tid
            if not items:
                if mask.any():
                    raise MediaMismatchError(f"{modality} placeholders found in input_ids but no {modality} inputs were given")
                continue
            groups[modality] = assign_items_to_samples(
                mask.sum(1).tolist(), [it.shape[0] for it in items], modality=modality, token=names[modality],
                attention_mask=attention_mask, placeholder_mask=mask,
            )
        return groups

    def _expand_inputs_for_generation(self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids=None, **model_kwargs):
        """Beam search / ``num_return_sequences``: repeat each sample's media items (features and per-item layout
        inputs such as grids) with the sample; per-sample inputs are repeated by transformers."""
        features = model_kwargs.pop("mm_encoder_outputs", None)
        per_item = {n: model_kwargs.pop(n) for n in self.input_spec.layout_inputs
                    if self.input_spec[n].per == "item" and model_kwargs.get(n) is not None}
        if expand_size > 1 and input_ids is not None and (features or per_item):
            groups = self._group_media_by_sample(input_ids, features or {}, model_kwargs.get("attention_mask"))
            if features:
                features = {m: [as_item_list(features[m])[i] for g in groups[m] for _ in range(expand_size) for i in g]
                            for m in groups}
            expand_items(self.input_spec, per_item, groups, expand_size)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        model_kwargs.update(per_item)
        if features is not None:
            model_kwargs["mm_encoder_outputs"] = features
        return input_ids, model_kwargs


#: The inputs of a model that sees images and video frames through one vision tower + connector.
TOWER_INPUTS = ModelInputs(
    modalities=(
        Modality("image", ("vision_tower", "multi_modal_projector")),
        Modality("video", ("vision_tower", "multi_modal_projector")),
    ),
    inputs=(
        InputSpec("pixel_values", modality="image"),  # (images, 3, H, W)
        InputSpec("pixel_values_videos", modality="video"),  # (videos, frames, 3, H, W), or a list of (T_i, 3, H, W)
    ),
)


class VisionTowerModel(VideoLLMPreTrainedModel):
    """Models that see images and video frames through one transformers vision tower (CLIP / SigLIP) at
    ``vision_tower``, a connector at ``multi_modal_projector`` and the LLM at ``language_model`` (LLaVA, VideoLLaMA 2).

    The config provides ``vision_config``, ``vision_feature_layer`` and ``vision_feature_select_strategy``; the
    subclass builds the modules and defines ``get_image_features`` / ``get_video_features``.
    """

    input_spec = TOWER_INPUTS
    _parts = {
        "vision_tower": ("vision_tower",),
        "connector": ("multi_modal_projector",),
        "language_model": ("language_model",),
    }

    #: Pixels per tower call (16 frames at 336 px): a long video is encoded in chunks, so activation memory stays
    #: flat in the frame count, while small frames (a training batch of 32 px clips) still go in one call. The
    #: tower sees each frame alone, so the features do not depend on the chunking.
    vision_batch_pixels = 16 * 336 * 336

    def get_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tower features of the selected layer for ``(N, 3, H, W)`` images or frames, ``(N, P, C_vis)``."""
        pixel_values = self._cast_for(self.vision_tower, pixel_values)
        step = max(1, int(self.vision_batch_pixels) // max(1, pixel_values.shape[-2] * pixel_values.shape[-1]))
        chunks = [
            select_hidden_features(
                self.vision_tower, part, self.config.vision_feature_layer, self.config.vision_feature_select_strategy
            )
            for part in pixel_values.split(step)
        ]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    @staticmethod
    def _check_images(pixel_values: torch.Tensor) -> None:
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be (num_images, 3, H, W), got shape {tuple(pixel_values.shape)}; "
                "pass videos as pixel_values_videos (num_videos, frames, 3, H, W)"
            )

    @staticmethod
    def _video_list(pixel_values_videos: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``(V, T, 3, H, W)`` or a list of ``(T_i, 3, H, W)`` -> list of per-video frame tensors."""
        if isinstance(pixel_values_videos, (list, tuple)):
            return list(pixel_values_videos)
        if pixel_values_videos.ndim != 5:
            raise ValueError(
                f"pixel_values_videos must be (num_videos, frames, 3, H, W), got {tuple(pixel_values_videos.shape)}"
            )
        return list(pixel_values_videos.unbind(0))

    @classmethod
    def _video_frames(cls, pixel_values_videos: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        """All frames of all videos as one ``(sum T_i, 3, H, W)`` tensor, and each video's frame count. A
        ``(V, T, 3, H, W)`` tensor (or a single video) gives a view, not a copy of the pixels."""
        if isinstance(pixel_values_videos, torch.Tensor) and pixel_values_videos.ndim == 5:
            v, t = pixel_values_videos.shape[:2]
            return pixel_values_videos.flatten(0, 1), [t] * v
        videos = cls._video_list(pixel_values_videos)
        return (videos[0] if len(videos) == 1 else torch.cat(videos, dim=0)), [x.shape[0] for x in videos]

    def unused_parameter_prefixes(self) -> list[str]:
        return unused_tower_prefixes(self.config.vision_config, self.config.vision_feature_layer)

    def dummy_media_inputs(self, modality: str) -> dict[str, Any]:
        p = next(self.vision_tower.parameters())
        size = self.config.vision_config.image_size
        dtype = p.dtype if p.is_floating_point() else torch.float32
        pixels = torch.zeros(1, 3, size, size, device=p.device, dtype=dtype)
        if modality == "image":
            return {"pixel_values": pixels}
        frames = getattr(self.config, "num_frames", 1)  # the fewest frames the connector takes
        return {"pixel_values_videos": pixels[None].expand(1, frames, -1, -1, -1)}
