"""Qwen2-VL: native-resolution vision transformer (3D patch embedding, 2D rotary) -> 2x2 patch merger -> Qwen2 with
multimodal rotary positions (M-RoPE).

Reads top to bottom: config -> encoder + connector (transformers' ``Qwen2VisionTransformerPretrainedModel``: Conv3d
patch embedding over ``temporal_patch_size`` frames, blocks with 2D axial rotary embeddings and attention inside each
temporal patch group, ``PatchMerger`` 2x2 -> LLM width) -> merge (shared core) -> LLM (transformers'
``Qwen2VLTextModel`` with our LM head, :class:`VideoLLMQwen2VLTextForCausalLM`).

* Inputs are packed: ``pixel_values`` holds every image's patches (``sum(t*h*w)`` rows), ``image_grid_thw`` each
  image's ``(t, h, w)`` patch grid (likewise ``pixel_values_videos`` / ``video_grid_thw``). One item becomes
  ``t * h * w / merge**2`` tokens.
* Positions (:func:`mrope_positions`): text tokens advance all three rotary sections together; an item's tokens share
  its start and spread over (time, height, width); the text after an item starts one past the item's largest
  position. They are computed from the grids on every call -- forward, prefill and each decoding step -- and never
  stored on the module (transformers 5.24 keeps ``rope_deltas`` on the module; see the tests).
* Time: Qwen2-VL's released weights use the temporal grid index. With ``tokens_per_second`` set (Qwen2.5-VL's
  scheme) the temporal position of grid step ``k`` is ``int(k * video_second_per_grid * tokens_per_second)``, where
  the processor computes ``video_second_per_grid`` from the frames it actually sampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel, Qwen2VLTextModel

from .base import VideoLLMPreTrainedModel
from .contract import InputSpec, Modality, ModelInputs
from .merge import MediaMismatchError

__all__ = [
    "QWEN2VL_INPUTS",
    "VideoLLMQwen2VLConfig",
    "VideoLLMQwen2VLForConditionalGeneration",
    "VideoLLMQwen2VLModel",
    "VideoLLMQwen2VLTextForCausalLM",
    "mrope_positions",
    "qwen2vl_num_tokens",
]

QWEN2VL_INPUTS = ModelInputs(
    modalities=(
        Modality("image", ("vision_tower",)),
        Modality("video", ("vision_tower",)),
    ),
    inputs=(
        # (sum over images of t*h*w, 3 * temporal_patch * patch * patch), rows of each image from its grid
        InputSpec("pixel_values", modality="image", collate="packed", rows_from="image_grid_thw"),
        InputSpec("image_grid_thw", modality="image", layout=True),  # (images, 3); the encoder and positions read it
        InputSpec("pixel_values_videos", modality="video", collate="packed", rows_from="video_grid_thw"),
        InputSpec("video_grid_thw", modality="video", layout=True),
        # seconds one temporal grid step covers, per video (from the frames the processor sampled)
        InputSpec("video_second_per_grid", modality="video", encoder=False, layout=True),
    ),
)


def qwen2vl_num_tokens(grid_thw: Sequence[int], spatial_merge_size: int = 2) -> int:
    """Visual tokens of one item with patch grid ``(t, h, w)``."""
    t, h, w = (int(x) for x in grid_thw)
    return t * h * w // spatial_merge_size**2


# --------------------------------------------------------------------------------------------------- positions
def _item_offsets(grids: torch.Tensor, merge: int, intervals: torch.Tensor | None, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the items of one modality: per-token (t, h, w) offsets (3, total), tokens per item, extent per item
    (one past the largest offset: where the following text starts)."""
    g = grids.to(device=device, dtype=torch.long).reshape(-1, 3)
    t, h, w = g[:, 0], g[:, 1] // merge, g[:, 2] // merge
    counts = t * h * w
    total = int(counts.sum())
    starts = torch.cumsum(counts, 0) - counts
    k = torch.arange(total, device=device) - torch.repeat_interleave(starts, counts)
    hw = torch.repeat_interleave(h * w, counts)
    ww = torch.repeat_interleave(w, counts)
    hh = torch.repeat_interleave(h, counts)
    tk = k // hw
    if intervals is not None:
        iv = intervals.to(device=device, dtype=torch.float32).reshape(-1)
        t_off = (tk.float() * torch.repeat_interleave(iv, counts)).long()
        t_max = ((t - 1).clamp(min=0).float() * iv).long()
    else:
        t_off, t_max = tk, (t - 1).clamp(min=0)
    offsets = torch.stack([t_off, (k // ww) % hh, k % ww])
    extent = torch.maximum(t_max, torch.maximum(h - 1, w - 1)) + 1
    return offsets, counts, extent


def mrope_positions(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    image_token_id: int | None,
    video_token_id: int | None,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    spatial_merge_size: int = 2,
    video_time_intervals: torch.Tensor | None = None,
    pad_position: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE position ids ``(3, B, L)`` and rope deltas ``(B, 1)`` (largest position + 1 - real length) of a batch.

    Items of each modality are taken in order over the batch (sample 0's first); each placeholder run is split into
    items by their token counts, so two items next to each other need no separator. Padding positions get
    ``pad_position`` (masked anyway). ``video_time_intervals`` (per video) scales the temporal grid index, as
    Qwen2.5-VL's ``second_per_grid * tokens_per_second``; ``None`` keeps the index (Qwen2-VL)."""
    B, L = input_ids.shape
    device = input_ids.device
    real = attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    step = real.long()  # text advances by 1
    media_pos: list[tuple[torch.Tensor, torch.Tensor]] = []  # (flat indices of media tokens, their (3, n) offsets)
    for tid, grids, iv, name in (
        (image_token_id, image_grid_thw, None, "image"),
        (video_token_id, video_grid_thw, video_time_intervals, "video"),
    ):
        if tid is None:
            continue
        mask = (input_ids == tid) & real
        n_tokens = int(mask.sum())
        if grids is None or len(grids) == 0:
            if n_tokens:
                raise MediaMismatchError(f"{n_tokens} {name} placeholder(s) in input_ids but no {name}_grid_thw")
            continue
        offsets, counts, extent = _item_offsets(torch.as_tensor(grids), spatial_merge_size, iv, device)
        if n_tokens != int(counts.sum()):
            raise MediaMismatchError(
                f"input_ids hold {n_tokens} {name} placeholder(s) but {name}_grid_thw describes {int(counts.sum())} "
                f"tokens ({counts.tolist()} per item); were the ids truncated or built with another grid?"
            )
        flat = mask.flatten().nonzero().flatten()
        step.view(-1)[flat] = 0
        last = flat[torch.cumsum(counts, 0) - 1]  # each item's last token carries the item's extent
        step.view(-1)[last] = extent
        media_pos.append((flat, offsets))
    start = torch.cumsum(step, dim=1) - step  # position where each token's run starts
    pos = start.unsqueeze(0).repeat(3, 1, 1)
    flat_pos = pos.view(3, -1)
    for flat, offsets in media_pos:
        flat_pos[:, flat] += offsets
    largest = (start + step).masked_fill(~real, 0).amax(dim=1)  # one past the largest position of each row
    deltas = (largest - real.sum(1)).unsqueeze(1)
    pos.masked_fill_(~real.unsqueeze(0), pad_position)
    return pos, deltas


# --------------------------------------------------------------------------------------------------- config
class VideoLLMQwen2VLConfig(PreTrainedConfig):
    r"""Qwen2-VL configuration.

    Args:
        vision_config: ``qwen2_vl_vision`` config (transformers' defaults = Qwen2-VL-7B's tower: 32 blocks of width
            1280, patch 14, temporal patch 2, merge 2; its ``hidden_size`` is the merger's output = LLM width).
        text_config: ``qwen2_vl_text`` config (M-RoPE sections in ``rope_parameters["mrope_section"]``).
        image_token_id / video_token_id: ``<|image_pad|>`` / ``<|video_pad|>``; each expands to one id per token.
        vision_start_token_id / vision_end_token_id: ``<|vision_start|>`` / ``<|vision_end|>`` around each item.
        tokens_per_second: ``None`` (Qwen2-VL): a video's temporal position is its grid index. A number
            (Qwen2.5-VL uses 2): the position of temporal grid step ``k`` is ``int(k * seconds_per_grid * tps)``.
    """

    model_type = "videollm_qwen2_vl"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(AutoConfig, model_type="qwen2_vl_vision"),
        "text_config": SubConfigSpec(AutoConfig, model_type="qwen2_vl_text"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    image_token_id: int = 151655
    video_token_id: int | None = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    image_token: str = "<|image_pad|>"
    video_token: str = "<|video_pad|>"
    tokens_per_second: float | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        section = (getattr(self.text_config, "rope_parameters", None) or {}).get("mrope_section")
        head_dim = getattr(self.text_config, "head_dim", None) or self.text_config.hidden_size // self.text_config.num_attention_heads
        if section is None or sum(section) * 2 != head_dim:
            raise ValueError(
                f"text_config.rope_parameters['mrope_section'] must give (time, height, width) rotary sections summing "
                f"to head_dim / 2 = {head_dim // 2}; got {section}"
            )
        if self.vision_config.hidden_size != self.text_config.hidden_size:
            raise ValueError(
                f"vision_config.hidden_size ({self.vision_config.hidden_size}) is the patch merger's output width and "
                f"must equal text_config.hidden_size ({self.text_config.hidden_size})"
            )


# --------------------------------------------------------------------------------------------------- LLM
class VideoLLMQwen2VLTextForCausalLM(PreTrainedModel, GenerationMixin):
    """transformers' ``Qwen2VLTextModel`` (M-RoPE Qwen2) with an LM head: transformers has no causal-LM class for it
    alone. Takes ``position_ids`` of shape ``(3, B, L)``; loss via transformers' causal-LM loss."""

    config_class = Qwen2VLTextConfig
    base_model_prefix = "model"
    _no_split_modules = ["Qwen2VLDecoderLayer"]
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    def __init__(self, config: Qwen2VLTextConfig):
        super().__init__(config)
        self.model = Qwen2VLTextModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def get_decoder(self):
        return self.model

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep: int | torch.Tensor = 0, **kwargs):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                         inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache, hidden_states=out.hidden_states,
                                      attentions=out.attentions)


# --------------------------------------------------------------------------------------------------- model
class VideoLLMQwen2VLModel(VideoLLMPreTrainedModel):
    """Qwen2-VL without the LM head (``AutoModel``): hidden states of the language model and the media features."""

    config_class = VideoLLMQwen2VLConfig
    input_spec = QWEN2VL_INPUTS
    with_lm_head = False
    positions_from_layout = True
    _parts = {
        "vision_tower": ("vision_tower.patch_embed", "vision_tower.blocks"),
        "connector": ("vision_tower.merger",),
        "language_model": ("language_model",),
    }

    def __init__(self, config: VideoLLMQwen2VLConfig):
        super().__init__(config)
        self.vision_tower = Qwen2VisionTransformerPretrainedModel._from_config(config.vision_config)
        self.language_model = self.build_language_model(config.text_config)
        self.post_init()

    def build_language_model(self, text_config) -> nn.Module:
        if not self.with_lm_head:
            return Qwen2VLTextModel._from_config(text_config)
        return VideoLLMQwen2VLTextForCausalLM._from_config(text_config)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        if not cls.with_lm_head and "key_mapping" not in kwargs:
            # saved with the head: the decoder sits at language_model.model.*, the bare model holds it at language_model
            kwargs["key_mapping"] = {r"^language_model\.model\.": "language_model."}
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    # --------------------------------------------------------------------------------------------- encoders
    @property
    def spatial_merge_size(self) -> int:
        return self.config.vision_config.spatial_merge_size

    def _encode(self, pixels: torch.Tensor, grid_thw: torch.Tensor, name: str) -> list[torch.Tensor]:
        grid_thw = torch.as_tensor(grid_thw).reshape(-1, 3)
        vc = self.config.vision_config
        width = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        rows = int(grid_thw.prod(-1).sum())
        if pixels.ndim != 2 or pixels.shape != (rows, width):
            raise ValueError(
                f"{name} must be packed patches of shape (sum of t*h*w over the grids = {rows}, {width}), got "
                f"{tuple(pixels.shape)}; use the Qwen2-VL processor (or transformers' Qwen2VLImageProcessor)"
            )
        m = self.spatial_merge_size
        if bool(((grid_thw[:, 1:] % m) != 0).any()):
            raise ValueError(f"every grid height and width must be a multiple of spatial_merge_size={m}; got {grid_thw.tolist()}")
        out = self.vision_tower(self._cast_for(self.vision_tower, pixels), grid_thw=grid_thw.to(pixels.device))
        return list(out.pooler_output.split((grid_thw.prod(-1) // m**2).tolist()))

    def get_image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """Packed patches + ``(images, 3)`` grids -> one ``(t*h*w/merge**2, D_llm)`` tensor per image."""
        return self._encode(pixel_values, image_grid_thw, "pixel_values")

    def get_video_features(self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.Tensor) -> list[torch.Tensor]:
        """Packed patches + ``(videos, 3)`` grids -> one ``(t*h*w/merge**2, D_llm)`` tensor per video."""
        return self._encode(pixel_values_videos, video_grid_thw, "pixel_values_videos")

    def dummy_media_inputs(self, modality: str) -> dict[str, Any]:
        vc = self.config.vision_config
        p = next(self.vision_tower.parameters())
        m = vc.spatial_merge_size
        pixels = torch.zeros(m * m, vc.in_channels * vc.temporal_patch_size * vc.patch_size**2, device=p.device, dtype=p.dtype)
        grid = torch.tensor([[1, m, m]], device=p.device)
        if modality == "image":
            return {"pixel_values": pixels, "image_grid_thw": grid}
        return {"pixel_values_videos": pixels, "video_grid_thw": grid}

    # --------------------------------------------------------------------------------------- mm_token_type_ids
    def _check_mm_token_type_ids(self, input_ids, mm_token_type_ids) -> None:
        """transformers' Qwen2-VL needs ``mm_token_type_ids`` (1 image / 2 video token); ours reads the placeholder
        ids, so batches made for transformers (or by our processor with ``return_mm_token_type_ids=True``) are
        accepted and the ids only checked against ``input_ids``."""
        if mm_token_type_ids is None or input_ids is None:
            return
        types = torch.as_tensor(mm_token_type_ids, device=input_ids.device)
        want = (input_ids == self.config.image_token_id).long() + 2 * (input_ids == self.config.video_token_id).long()
        if types.shape != want.shape or not torch.equal(types.long(), want):
            raise ValueError(
                f"mm_token_type_ids (shape {tuple(types.shape)}) disagree with the placeholder ids in input_ids (shape "
                f"{tuple(input_ids.shape)}; 1 at image_token_id={self.config.image_token_id}, 2 at video_token_id="
                f"{self.config.video_token_id}, 0 elsewhere): this model reads the placeholders; drop "
                f"mm_token_type_ids or build both with the same processor"
            )

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                labels=None, use_cache=None, logits_to_keep: int | torch.Tensor = 0, mm_encoder_outputs=None,
                mm_token_type_ids=None, **kwargs):
        """:meth:`VideoLLMPreTrainedModel.forward`; ``mm_token_type_ids`` (transformers' input) is checked and
        not used."""
        self._check_mm_token_type_ids(input_ids, mm_token_type_ids)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache, inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                               logits_to_keep=logits_to_keep, mm_encoder_outputs=mm_encoder_outputs, **kwargs)

    def generate(self, input_ids=None, attention_mask=None, mm_token_type_ids=None, **kwargs):
        self._check_mm_token_type_ids(input_ids, mm_token_type_ids)
        return super().generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    # --------------------------------------------------------------------------------------------- positions
    def compute_position_ids(self, input_ids, attention_mask, image_grid_thw=None, video_grid_thw=None,
                             video_second_per_grid=None):
        return self.get_rope_index(input_ids, attention_mask, image_grid_thw, video_grid_thw, video_second_per_grid)[0]

    def get_rope_index(self, input_ids, attention_mask=None, image_grid_thw=None, video_grid_thw=None,
                       video_second_per_grid=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(3, B, L)`` M-RoPE position ids and ``(B, 1)`` rope deltas of this call (nothing is stored)."""
        intervals = None
        tps = self.config.tokens_per_second
        if tps is not None and video_grid_thw is not None:
            if video_second_per_grid is None:
                raise ValueError(
                    "config.tokens_per_second is set, so video temporal positions need video_second_per_grid (seconds "
                    "per temporal grid step, per video); the processor returns it"
                )
            intervals = torch.as_tensor(video_second_per_grid, dtype=torch.float32).reshape(-1) * tps
        return mrope_positions(
            input_ids, attention_mask, image_token_id=self.config.image_token_id,
            video_token_id=self.config.video_token_id, image_grid_thw=image_grid_thw, video_grid_thw=video_grid_thw,
            spatial_merge_size=self.spatial_merge_size, video_time_intervals=intervals,
        )


class VideoLLMQwen2VLForConditionalGeneration(VideoLLMQwen2VLModel, GenerationMixin):
    """Qwen2-VL with its LM head: loss, logits, ``generate``."""

    with_lm_head = True
