"""LongVLM (ziplab/LongVLM, Weng et al., ECCV 2024): long videos as segment-ordered merged local tokens plus global
tokens, on top of LLaVA-7B.

Reads top to bottom: config -> encoder (transformers' CLIP ViT-L/14-224, composed through the shared
:class:`~.base.VisionTowerModel`) -> connector (hierarchical token merging per segment, global tokens, one Linear)
-> merge (shared core) -> LLM (LLaMA / Vicuna).

A video of ``T`` frames (default 100):

* every frame through CLIP, in chunks of ``vision_chunk_frames`` frames (peak memory does not grow with ``T``
  beyond the per-frame features);
* **local tokens**: the patch tokens of hidden state ``vision_feature_layer`` (-2, CLS dropped), split into
  ``num_segments`` (S = 10) segments of ``T / S`` consecutive frames; each segment's ``T / S x P`` tokens are reduced
  to ``tokens_per_segment`` (M = 30) by ToMe bipartite soft matching (:mod:`.token_merging`), all segments at once;
  segments stay in time order -> ``S * M`` tokens;
* **global tokens**: the CLS token of each of the last ``num_global_tokens`` (E = 5) hidden states, averaged over the
  ``T`` frames -> ``E`` tokens, placed **before** the local ones;
* one Linear (``multi_modal_projector``) into the LLM: ``E + S * M`` tokens (305 by default).

Two configurations exist (see ../shared/specs/longvlm.md):

* ``"paper"`` (default): the paper / training configuration, ``merge.py``'s default merge schedule -> 30 tokens per
  segment, 5 global tokens, 305 visual tokens (``train.py`` hard-codes 305);
* ``"released_script"``: what ``scripts/save_features.py`` + the inference script actually feed: the schedule
  ``[2880, ..., 40]`` -> 20 tokens per segment and no global tokens (the inference script drops them) -> 200 tokens.

Precomputed features (the original's offline ``.pkl`` files: local ``(S*M, C)`` and global ``(E, C)``, before the
projector) can be given instead of frames as ``video_local_features`` / ``video_global_features``: they are
declared as alternatives to ``pixel_values_videos`` in the input contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, GenerationMixin, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .base import VisionTowerModel
from .connectors import MLPProjector
from .contract import InputSpec, Modality, ModelInputs
from .token_merging import LONGVLM_SCRIPT_SCHEDULE, halving_schedule, merge_segments, merged_length
from .vision import CLIP_L14_336, unused_tower_prefixes

__all__ = [
    "VideoLLMLongVLMConfig",
    "VideoLLMLongVLMForConditionalGeneration",
    "VideoLLMLongVLMModel",
    "LONGVLM_INPUTS",
    "LONGVLM_VARIANTS",
    "longvlm_num_tokens",
    "longvlm_merge_schedule",
]

#: openai/clip-vit-large-patch14 (224 px) vision config: what ``save_features.py`` loads.
CLIP_L14_224 = {**CLIP_L14_336, "image_size": 224}

#: named configurations (config / processor settings); see the module docstring.
LONGVLM_VARIANTS: dict[str, dict[str, Any]] = {
    "paper": {"tokens_per_segment": 30, "num_global_tokens": 5, "merge_schedule": None},
    "released_script": {"tokens_per_segment": 20, "num_global_tokens": 0, "merge_schedule": list(LONGVLM_SCRIPT_SCHEDULE)},
}

#: score-matrix elements one merge call may hold (segments x (tokens/2)^2): 100 frames of CLIP-L (10 segments of 2560
#: tokens) merge in one call; longer segments are merged in groups so that memory stays bounded.
MERGE_SCORE_BUDGET = 1 << 25

LONGVLM_INPUTS = ModelInputs(
    modalities=(Modality("video", ("vision_tower", "multi_modal_projector")),),
    inputs=(
        InputSpec("pixel_values_videos", modality="video"),  # (videos, T, 3, H, W), or a list of (T_i, 3, H, W)
        # the original's offline features instead of frames (before the projector)
        InputSpec("video_local_features", modality="video", alternative_to="pixel_values_videos"),  # (V, S*M, C)
        InputSpec("video_global_features", modality="video", alternative_to="pixel_values_videos"),  # (V, E, C)
    ),
)


def longvlm_merge_schedule(
    frames: int, patches: int, num_segments: int, tokens_per_segment: int, schedule: Sequence[int] | None = None
) -> tuple[int, ...]:
    """The merge steps of one segment of a ``frames``-frame video: ``schedule`` if given, else the halving schedule of
    ``merge.py`` down to ``tokens_per_segment``."""
    if frames < num_segments or frames % num_segments:
        raise ValueError(
            f"a LongVLM video is split into {num_segments} segments of equal length: {frames} frames is not a "
            f"positive multiple of {num_segments}; sample a multiple of {num_segments} frames (num_frames)"
        )
    tokens = frames // num_segments * patches
    if schedule is not None:
        return tuple(int(r) for r in schedule)
    return halving_schedule(tokens, tokens_per_segment)


def longvlm_num_tokens(
    frames: int,
    patches: int,
    num_segments: int,
    tokens_per_segment: int,
    num_global_tokens: int,
    schedule: Sequence[int] | None = None,
) -> int:
    """Visual tokens one video becomes: ``E + S * M``. The processor and the model both use this."""
    steps = longvlm_merge_schedule(frames, patches, num_segments, tokens_per_segment, schedule)
    return num_global_tokens + num_segments * merged_length(frames // num_segments * patches, steps)


class VideoLLMLongVLMConfig(PreTrainedConfig):
    r"""LongVLM configuration.

    Args:
        vision_config: CLIP vision config (default CLIP ViT-L/14-224, as ``save_features.py``).
        text_config: language model config (default LLaMA-7B shape; LongVLM's LLM is LLaVA-7B = Vicuna-7B).
        video_token_id: the placeholder id (LongVLM: the in-vocabulary ``<vid_patch>``, whose embeddings are
            overwritten); ``video_start_token`` / ``video_end_token`` wrap the run in the prompt (processor side).
        num_frames: frames sampled per video (T, default 100).
        num_segments: segments of consecutive frames (S, default 10); ``num_frames`` must be a multiple of it.
        tokens_per_segment: merged local tokens per segment (M, default 30).
        num_global_tokens: CLS tokens of the last E hidden states averaged over time (E, default 5; 0 = none).
        merge_schedule: the tokens removed per merging step; ``None`` = halve down to ``tokens_per_segment`` (for
            100 frames of 256 patches: ``merge.py``'s ``[1280, 640, 320, 160, 80, 40, 10]``).
        merge_heads: channel groups averaged into the ToMe metric (16, as ``merge.py``).
        vision_feature_layer: hidden state of the local tokens (-2 = penultimate; CLS dropped).
        vision_chunk_frames: frames per CLIP call (bounds the tower's peak memory; results do not depend on it).
        variant: ``"paper"`` (305 tokens) or ``"released_script"`` (200 tokens, no global tokens): sets
            ``tokens_per_segment`` / ``num_global_tokens`` / ``merge_schedule`` (see ``LONGVLM_VARIANTS``).
    """

    model_type = "videollm_longvlm"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(AutoConfig, model_type="clip_vision_model", init_kwargs=CLIP_L14_224),
        "text_config": SubConfigSpec(AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    video_token_id: int = 32003
    video_token: str = "<video>"
    video_start_token: str | None = "<vid_start>"
    video_end_token: str | None = "<vid_end>"
    num_frames: int = 100
    num_segments: int = 10
    tokens_per_segment: int = 30
    num_global_tokens: int = 5
    merge_schedule: list[int] | None = None
    merge_heads: int = 16
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    vision_chunk_frames: int = 16
    variant: str | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.variant is not None:
            if self.variant not in LONGVLM_VARIANTS:
                raise ValueError(f"variant must be one of {sorted(LONGVLM_VARIANTS)}, got {self.variant!r}")
            for key, value in LONGVLM_VARIANTS[self.variant].items():
                setattr(self, key, value)
        if self.merge_schedule is not None:
            self.merge_schedule = [int(r) for r in self.merge_schedule]
        if self.vision_feature_select_strategy != "default":
            raise ValueError("LongVLM drops the CLS token of the local features: vision_feature_select_strategy='default'")
        if self.num_global_tokens < 0 or self.num_global_tokens > self.vision_config.num_hidden_layers + 1:
            raise ValueError(
                f"num_global_tokens must be between 0 and {self.vision_config.num_hidden_layers + 1} (hidden states "
                f"of the tower), got {self.num_global_tokens}"
            )
        if self.vision_chunk_frames < 1:
            raise ValueError(f"vision_chunk_frames must be >= 1, got {self.vision_chunk_frames}")
        if self.vision_config.hidden_size % self.merge_heads:
            raise ValueError(
                f"merge_heads={self.merge_heads} must divide the tower width {self.vision_config.hidden_size}"
            )
        self.video_seq_length(self.num_frames)  # validates frames / segments / schedule
        if self.merge_schedule is not None:
            got = (self.video_seq_length(self.num_frames) - self.num_global_tokens) // self.num_segments
            if got != self.tokens_per_segment:
                raise ValueError(
                    f"merge_schedule {self.merge_schedule} leaves {got} tokens per segment for {self.num_frames} "
                    f"frames, but tokens_per_segment is {self.tokens_per_segment}; make them agree"
                )

    @property
    def patches_per_frame(self) -> int:
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    def video_seq_length(self, frames: int | None = None) -> int:
        return longvlm_num_tokens(
            self.num_frames if frames is None else frames, self.patches_per_frame, self.num_segments,
            self.tokens_per_segment, self.num_global_tokens, self.merge_schedule,
        )


class VideoLLMLongVLMModel(VisionTowerModel):
    """LongVLM without the LM head (``AutoModel``): hidden states of the language model and the media features."""

    config_class = VideoLLMLongVLMConfig
    input_spec = LONGVLM_INPUTS
    with_lm_head = False

    def __init__(self, config: VideoLLMLongVLMConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = MLPProjector(
            config.vision_config.hidden_size, config.text_config.hidden_size, depth=1
        )
        self.language_model = self.build_language_model(config.text_config)
        self.post_init()

    # --------------------------------------------------------------------------------------------- encoder
    def _tower_states(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(T, 3, H, W)`` -> patch tokens of ``vision_feature_layer`` ``(T, P, C)`` and the CLS tokens of the last
        E hidden states ``(T, E, C)`` (``None`` when E = 0), CLIP run ``vision_chunk_frames`` frames at a time."""
        cfg = self.config
        frames = self._cast_for(self.vision_tower, frames)
        e = cfg.num_global_tokens
        tower_trains = torch.is_grad_enabled() and any(p.requires_grad for p in self.vision_tower.parameters())
        local_parts, cls_parts, local_buf, cls_buf = [], [], None, None
        for start in range(0, frames.shape[0], cfg.vision_chunk_frames):
            chunk = frames[start : start + cfg.vision_chunk_frames]
            hidden = self.vision_tower(pixel_values=chunk, output_hidden_states=True, return_dict=True).hidden_states
            local = hidden[cfg.vision_feature_layer][:, 1:]
            cls = torch.stack([h[:, 0] for h in hidden[len(hidden) - e :]], dim=1) if e else None
            del hidden
            if tower_trains:  # keep the autograd graph: collect and concatenate
                local_parts.append(local)
                cls_parts.append(cls)
                continue
            if local_buf is None:  # frozen tower: fill preallocated buffers (no second copy of the features)
                n = frames.shape[0]
                local_buf = local.new_empty(n, *local.shape[1:])
                cls_buf = cls.new_empty(n, *cls.shape[1:]) if e else None
            end = start + chunk.shape[0]
            local_buf[start:end] = local
            if e:
                cls_buf[start:end] = cls
        if tower_trains:
            return torch.cat(local_parts), (torch.cat(cls_parts) if e else None)
        return local_buf, cls_buf

    def merge_local_tokens(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """``(T, P, C)`` patch tokens of one video, or ``(V, T, P, C)`` of V videos of equal length -> ``(S * M, C)``
        (resp. ``(V, S * M, C)``) merged local tokens, segment-major (time order). All segments of all videos are
        merged together (in groups only when their score matrices would exceed ``MERGE_SCORE_BUDGET``)."""
        cfg = self.config
        single = patch_tokens.ndim == 3
        if single:
            patch_tokens = patch_tokens[None]
        v, t, p, c = patch_tokens.shape
        schedule = longvlm_merge_schedule(t, p, cfg.num_segments, cfg.tokens_per_segment, cfg.merge_schedule)
        segments = patch_tokens.reshape(v * cfg.num_segments, t // cfg.num_segments * p, c)
        per_call = max(1, MERGE_SCORE_BUDGET // max(1, (segments.shape[1] // 2) ** 2))
        merged = torch.cat([merge_segments(g, schedule, cfg.merge_heads) for g in segments.split(per_call)])
        merged = merged.reshape(v, -1, c)
        return merged[0] if single else merged

    def get_video_visual_features(self, frames: torch.Tensor | list[torch.Tensor]) -> tuple[Any, Any]:
        """One video ``(T, 3, H, W)`` -> (local ``(S * M, C)``, global ``(E, C)``): the original's offline features
        (``save_features.py``), before the projector. A list of videos -> (list of local, list of global); their
        frames share the chunked CLIP calls and videos of equal length are merged together."""
        single = isinstance(frames, torch.Tensor)
        videos = [frames] if single else list(frames)
        for v in videos:
            if v.ndim != 4:
                raise ValueError(f"a video must be (frames, 3, H, W), got shape {tuple(v.shape)}")
        lengths = [v.shape[0] for v in videos]
        patch_tokens, cls = self._tower_states(torch.cat(videos) if len(videos) > 1 else videos[0])
        patch_tokens = patch_tokens.split(lengths)
        cls = cls.split(lengths) if cls is not None else [None] * len(videos)
        local: list[torch.Tensor | None] = [None] * len(videos)
        for n in sorted(set(lengths)):  # one merge call per video length (all of a batch's videos, usually)
            idx = [i for i, m in enumerate(lengths) if m == n]
            batch = patch_tokens[idx[0]][None] if len(idx) == 1 else torch.stack([patch_tokens[i] for i in idx])
            for i, tokens in zip(idx, self.merge_local_tokens(batch)):
                local[i] = tokens
        glob = [c.mean(0) if c is not None else loc.new_zeros(0, loc.shape[-1]) for c, loc in zip(cls, local)]
        return (local[0], glob[0]) if single else (local, glob)

    def _project(self, globs: list[torch.Tensor], locals_: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per video ``[global; local]`` (global first) through the projector, all videos in one call."""
        tokens = [torch.cat([g.to(loc.dtype), loc], dim=0) for g, loc in zip(globs, locals_)]
        projected = self.multi_modal_projector(self._cast_for(self.multi_modal_projector, torch.cat(tokens)))
        return list(projected.split([t.shape[0] for t in tokens]))

    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor | list[torch.Tensor] | None = None,
        video_local_features: torch.Tensor | list[torch.Tensor] | None = None,
        video_global_features: torch.Tensor | list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """Frames ``(V, T, 3, H, W)`` (or a list of ``(T_i, 3, H, W)``) -- or precomputed features, local
        ``(V, S*M, C)`` and global ``(V, E, C)`` -- -> one ``(E + S*M, D_llm)`` per video (global tokens first)."""
        cfg = self.config
        if pixel_values_videos is not None:
            if video_local_features is not None or video_global_features is not None:
                raise ValueError("pass either pixel_values_videos or precomputed video_*_features, not both")
            local, glob = self.get_video_visual_features(self._video_list(pixel_values_videos))
            return self._project(glob, local)
        if video_local_features is None:
            raise ValueError(
                "video_global_features given without video_local_features: precomputed features need the local "
                "(S*M, C) tokens too"
            )
        locals_ = _per_video(video_local_features)
        if cfg.num_global_tokens and video_global_features is None:
            raise ValueError(
                f"this model uses {cfg.num_global_tokens} global tokens: pass video_global_features (V, "
                f"{cfg.num_global_tokens}, C) with video_local_features (or use variant='released_script')"
            )
        if video_global_features is None:
            globals_ = [f.new_zeros(0, f.shape[-1]) for f in locals_]
        else:
            globals_ = _per_video(video_global_features)
        if len(globals_) != len(locals_):
            raise ValueError(f"{len(locals_)} videos of local features but {len(globals_)} of global features")
        width = cfg.vision_config.hidden_size
        for i, (loc, glob) in enumerate(zip(locals_, globals_)):
            if loc.ndim != 2 or loc.shape[-1] != width or glob.ndim != 2 or glob.shape[-1] != width:
                raise ValueError(
                    f"video {i}: precomputed features must be local (S*M, {width}) and global (E, {width}), got "
                    f"{tuple(loc.shape)} and {tuple(glob.shape)}"
                )
            if glob.shape[0] != cfg.num_global_tokens:
                raise ValueError(
                    f"video {i}: {glob.shape[0]} global tokens given, the model uses {cfg.num_global_tokens} "
                    "(the original's memory features keep the last E rows: pass features[-E:])"
                )
        return self._project(globals_, locals_)

    def dummy_media_inputs(self, modality: str) -> dict[str, Any]:
        """The fewest frames a video can have: one per segment (more when a frame has fewer patches than
        ``tokens_per_segment``), so text-only training batches do not run CLIP on ``num_frames`` frames."""
        cfg = self.config
        p = next(self.vision_tower.parameters())
        size = cfg.vision_config.image_size
        per_segment = -(-cfg.tokens_per_segment // cfg.patches_per_frame)
        frames = cfg.num_segments * per_segment
        try:
            longvlm_num_tokens(frames, cfg.patches_per_frame, cfg.num_segments, cfg.tokens_per_segment,
                               cfg.num_global_tokens, cfg.merge_schedule)
        except ValueError:
            frames = cfg.num_frames  # an explicit schedule made for num_frames
        dtype = p.dtype if p.is_floating_point() else torch.float32
        return {"pixel_values_videos": torch.zeros(1, frames, 3, size, size, device=p.device, dtype=dtype)}

    def unused_parameter_prefixes(self) -> list[str]:
        deepest = -1 if self.config.num_global_tokens else self.config.vision_feature_layer
        return unused_tower_prefixes(self.config.vision_config, [self.config.vision_feature_layer, deepest])


class VideoLLMLongVLMForConditionalGeneration(VideoLLMLongVLMModel, GenerationMixin):
    """LongVLM with its LM head: loss, logits, ``generate``."""

    with_lm_head = True


def _per_video(features: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``(V, N, C)`` or a list of ``(N_i, C)`` (or one ``(N, C)``) -> list of ``(N_i, C)``."""
    if isinstance(features, torch.Tensor):
        return list(features) if features.ndim == 3 else [features]
    return list(features)
