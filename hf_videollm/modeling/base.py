"""The shared core every hf_videollm model is built on.

A model subclass only defines its config, its encoders and connector, and ``get_<modality>_features`` that return
one tensor of tokens (already in the language model's width) per media item. Everything else lives here, once:

* the per-sample validated merge of those tokens into the text embeddings (:mod:`.merge`);
* ``generate`` that encodes media once before prefill and reuses the features (with or without KV cache, beam
  search, ``num_return_sequences``, left-padded batches);
* freezing by named part and a summary of trainable parameters per part (:mod:`.parts`);
* 4-bit loading that quantizes only the language model (:mod:`.quantization`);
* attention implementation plumbing (``eager`` / ``sdpa`` / ``flash_attention_2`` reach every sub-model through the
  composite config's ``sub_configs``; ``set_attn_implementation`` switches at runtime).

The language model is always a real ``AutoModelForCausalLM`` sub-module named ``language_model`` so PEFT target
resolution, quantization skip lists and ``device_map`` work on full module paths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .merge import MediaMismatchError, as_item_list, assign_items_to_samples, media_mask, merge_media_embeddings
from .parts import PartsMixin
from .quantization import QuantizationMixin
from .vision import select_hidden_features, unused_tower_prefixes

__all__ = ["VideoLLMPreTrainedModel", "VisionTowerModel", "VideoLLMCausalLMOutput", "MediaMismatchError"]


@dataclass
class VideoLLMCausalLMOutput(CausalLMOutputWithPast):
    """Causal LM output plus the media features that were merged (modality -> list of per-item token tensors)."""

    media_features: dict[str, list[torch.Tensor]] | None = None


class VideoLLMPreTrainedModel(QuantizationMixin, PartsMixin, PreTrainedModel):
    """Base class: composite config with ``vision_config``/``text_config`` (+ others), LLM at ``language_model``.

    Concrete models list ``GenerationMixin`` directly in their bases (transformers' ``can_generate`` looks there).
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

    #: modality -> names of the forward arguments that carry that modality's raw inputs (encoded once in generate).
    media_inputs: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: modality -> module paths its encoder path runs through (modalities sharing modules share a dummy pass).
    media_modules: ClassVar[dict[str, tuple[str, ...]]] = {}
    #: modality -> config attribute holding the placeholder token id.
    media_token_attributes: ClassVar[dict[str, str]] = {
        "image": "image_token_id",
        "video": "video_token_id",
        "audio": "audio_token_id",
    }

    def post_init(self) -> None:
        super().post_init()
        # transformers aggregates children's no-split classes; keep the ones that exist in this model (a vision-only
        # CLIP tower lists CLIPTextEmbeddings, which makes FSDP's layer-class lookup fail).
        present = {type(m).__name__ for m in self.modules()}
        if self._no_split_modules:
            self._no_split_modules = sorted(c for c in set(self._no_split_modules) if c in present)

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
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self):
        return self.language_model.get_decoder()

    # ----------------------------------------------------------------------------------------------- media
    @property
    def media_token_ids(self) -> dict[str, int]:
        ids = {}
        for modality in self.media_inputs:
            tid = getattr(self.config, self.media_token_attributes[modality], None)
            if tid is not None:
                ids[modality] = tid
        return ids

    def encode_media(self, **media_kwargs: Any) -> dict[str, list[torch.Tensor]]:
        """Run each modality's encoder + connector once. Returns modality -> list of ``(tokens_i, D)`` tensors."""
        features: dict[str, list[torch.Tensor]] = {}
        for modality, names in self.media_inputs.items():
            args = {n: media_kwargs[n] for n in names if media_kwargs.get(n) is not None}
            if not args or media_kwargs.get(names[0]) is None:
                if args:
                    raise ValueError(
                        f"{', '.join(args)} given without {names[0]}; pass {names[0]} to use the {modality} branch"
                    )
                continue
            out = getattr(self, f"get_{modality}_features")(**args)
            features[modality] = as_item_list(out)
        return features

    def dummy_media_inputs(self, modality: str) -> dict[str, Any]:
        """Smallest valid raw inputs for ``modality`` (used to keep encoders in the graph during training)."""
        raise NotImplementedError(f"{type(self).__name__} defines no dummy {modality} input")

    def _dummy_media_sum(self, features: Mapping[str, Any]) -> torch.Tensor | None:
        used: set[str] = set()
        for m in features:
            used |= set(self.media_modules.get(m, (m,)))
        total = None
        for modality in self.media_inputs:
            modules = set(self.media_modules.get(modality, (modality,)))
            if modality in features or modules <= used:
                continue
            out = getattr(self, f"get_{modality}_features")(**self.dummy_media_inputs(modality))
            s = sum(t.float().sum() for t in as_item_list(out))
            total = s if total is None else total + s
            used |= modules
        return total

    def _split_media_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        names = {n for group in self.media_inputs.values() for n in group}
        return {n: kwargs.pop(n) for n in list(kwargs) if n in names}

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
        safe_ids = input_ids.masked_fill(placeholders, 0) if placeholders.any() else input_ids
        embeds = self.get_input_embeddings()(safe_ids)
        return merge_media_embeddings(
            input_ids, embeds, dict(media_features or {}), token_ids,
            attention_mask=attention_mask, token_names=self._placeholder_names(),
        )

    def _placeholder_names(self) -> dict[str, str]:
        return {m: getattr(self.config, f"{m}_token", None) or f"<{m}>" for m in self.media_inputs}

    # ----------------------------------------------------------------------------------------------- forward
    def _multimodal_forward(
        self,
        *,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        media_kwargs: dict[str, Any],
        mm_encoder_outputs: Mapping[str, Sequence[torch.Tensor]] | None,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        **lm_kwargs: Any,
    ) -> VideoLLMCausalLMOutput:
        """Shared forward: encode (or take precomputed features), merge, run the language model."""
        has_pixels = any(v is not None for v in media_kwargs.values())
        if has_pixels and mm_encoder_outputs:
            raise ValueError("pass either raw media inputs or precomputed `mm_encoder_outputs`, not both")
        features = dict(mm_encoder_outputs) if mm_encoder_outputs else (self.encode_media(**media_kwargs) if has_pixels else {})

        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.build_inputs_embeds(input_ids, features, attention_mask)
            if labels is not None:
                # Media positions are never supervised, whatever the caller put there.
                labels = labels.masked_fill(media_mask(input_ids, self.media_token_ids), -100)
        elif any(as_item_list(f) for f in features.values()):
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
        out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **lm_kwargs)
        return VideoLLMCausalLMOutput(
            loss=out.loss,
            logits=out.logits,
            cache=getattr(out, "cache", None),
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            media_features=features or None,
        )

    # ----------------------------------------------------------------------------------------------- generation
    def generate(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs):
        """``GenerationMixin.generate`` with the media encoded once, before prefill.

        Raw media arguments (``pixel_values``, ``pixel_values_videos``, ...) are encoded here and travel as
        ``mm_encoder_outputs``; transformers forwards them at prefill only when a cache is used, and at every step
        without a cache (where the full sequence is re-embedded, so the same features are merged again).
        """
        media_kwargs = self._split_media_kwargs(kwargs)
        if any(v is not None for v in media_kwargs.values()):
            if kwargs.get("mm_encoder_outputs"):
                raise ValueError("pass either raw media inputs or precomputed `mm_encoder_outputs`, not both")
            kwargs["mm_encoder_outputs"] = self.encode_media(**media_kwargs)
        if input_ids is not None and kwargs.get("mm_encoder_outputs"):
            # Validate before generation starts so a mismatch fails with a clear message, not mid-loop.
            self._group_media_by_sample(input_ids, kwargs["mm_encoder_outputs"], attention_mask)
        return super().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

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
        """Beam search / ``num_return_sequences``: repeat each sample's media items with the sample."""
        features = model_kwargs.pop("mm_encoder_outputs", None)
        if features and expand_size > 1 and input_ids is not None:
            groups = self._group_media_by_sample(input_ids, features, model_kwargs.get("attention_mask"))
            expanded = {}
            for modality, per_sample in groups.items():
                items = as_item_list(features[modality])
                expanded[modality] = [items[i] for group in per_sample for _ in range(expand_size) for i in group]
            features = expanded
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        if features is not None:
            model_kwargs["mm_encoder_outputs"] = features
        return input_ids, model_kwargs


class VisionTowerModel(VideoLLMPreTrainedModel):
    """Models that see images and video frames through one transformers vision tower (CLIP / SigLIP) at
    ``vision_tower``, a connector at ``multi_modal_projector`` and the LLM at ``language_model`` (LLaVA, VideoLLaMA 2).

    The config provides ``vision_config``, ``vision_feature_layer`` and ``vision_feature_select_strategy``; the
    subclass builds the modules and defines ``get_image_features`` / ``get_video_features``.
    """

    input_modalities = ("image", "video", "text")
    media_inputs = {"image": ("pixel_values",), "video": ("pixel_values_videos",)}
    media_modules = {"image": ("vision_tower", "multi_modal_projector"), "video": ("vision_tower", "multi_modal_projector")}
    _parts = {
        "vision_tower": ("vision_tower",),
        "connector": ("multi_modal_projector",),
        "language_model": ("language_model",),
    }

    def get_vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tower features of the selected layer for ``(N, 3, H, W)`` images or frames, ``(N, P, C_vis)``."""
        pixel_values = self._cast_for(self.vision_tower, pixel_values)
        return select_hidden_features(
            self.vision_tower, pixel_values, self.config.vision_feature_layer, self.config.vision_feature_select_strategy
        )

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

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, list[torch.Tensor]] | None = None,
        **kwargs: Any,
    ) -> VideoLLMCausalLMOutput:
        return self._multimodal_forward(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            media_kwargs={"pixel_values": pixel_values, "pixel_values_videos": pixel_values_videos},
            mm_encoder_outputs=mm_encoder_outputs,
            attention_mask=attention_mask,
            labels=labels,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
