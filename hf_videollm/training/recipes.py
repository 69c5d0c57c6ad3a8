"""Stage recipes from the original training curricula (see ../shared/specs/*.md, section "Training recipe").

A stage says which parts train, how (full / LoRA), and the learning rates the original used. Batch sizes and
epochs of the originals are recorded for reference (they were tuned for 8 GPUs); the CLI takes them as defaults
only where they make sense on the user's hardware.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Stage", "RECIPES", "get_stage", "LLAVA_STAGES", "VIDEOLLAMA2_STAGES", "VIDEOLLAMA2_AV_STAGES"]


@dataclass(frozen=True)
class Stage:
    name: str
    trainable_parts: tuple[str, ...]
    learning_rate: float
    description: str
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    modules_to_save_parts: tuple[str, ...] = ()  # parts trained fully next to LoRA (saved with the adapter)
    part_learning_rates: dict[str, float] = field(default_factory=dict)
    original_global_batch_size: int | None = None
    original_epochs: float | None = None
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    lr_scheduler_type: str = "cosine"


LLAVA_STAGES: dict[str, Stage] = {
    "stage1": Stage(
        "stage1", ("connector",), 1e-3,
        "feature alignment (LCS-558K captions): projector only, CLIP and LLM frozen (v1.5; v1 used 2e-3)",
        original_global_batch_size=256, original_epochs=1,
    ),
    "stage2": Stage(
        "stage2", ("connector", "language_model"), 2e-5,
        "instruction tuning (llava_v1_5_mix665k): projector + LLM, CLIP frozen",
        original_global_batch_size=128, original_epochs=1,
    ),
    "lora": Stage(
        "lora", ("connector",), 2e-4,
        "stage 2 with LoRA r128/alpha256 on the LLM and the projector trained fully at 2e-5",
        lora=True, lora_r=128, lora_alpha=256, modules_to_save_parts=("connector",),
        part_learning_rates={"connector": 2e-5}, original_global_batch_size=128, original_epochs=1,
    ),
}

VIDEOLLAMA2_STAGES: dict[str, Stage] = {
    "stage1": Stage(
        "stage1", ("connector",), 1e-3,
        "pretraining on image + video captions: STC connector only, tower and LLM frozen (tune_mm_mlp_adapter)",
        original_global_batch_size=256, original_epochs=1,
    ),
    "stage2": Stage(
        "stage2", ("connector", "language_model"), 2e-5,
        "instruction tuning: STC connector + LLM (full), vision tower frozen",
        original_global_batch_size=128, original_epochs=1,
    ),
    "lora": Stage(
        "lora", ("connector",), 2e-5,
        "stage 2 with LoRA r128/alpha256 on every LLM linear layer and the connector trained fully at 2e-5 "
        "(scripts/custom/finetune_lora.sh; train.py's own default would be r64)",
        lora=True, lora_r=128, lora_alpha=256, modules_to_save_parts=("connector",),
        part_learning_rates={"connector": 2e-5}, original_global_batch_size=128, original_epochs=1,
    ),
}

#: VideoLLaMA 2.1-AV (``audio_visual`` branch scripts), starting from VideoLLaMA2.1-7B-16F + BEATs.
VIDEOLLAMA2_AV_STAGES: dict[str, Stage] = {
    "audio_stage1": Stage(
        "audio_stage1", ("audio_projector",), 1e-3,
        "audio pretraining (pretrain_audio.sh, tune_mm_mlp_adapter_a): audio projector only; BEATs, vision path and "
        "LLM frozen",
        original_global_batch_size=1024, original_epochs=1,
    ),
    "audio_stage2": Stage(
        "audio_stage2", ("audio_projector", "audio_tower"), 2e-5,
        "audio fine-tuning (finetune_audio.sh, tune_audio_tower): audio projector + BEATs",
        original_global_batch_size=128, original_epochs=1,
    ),
    "av_joint": Stage(
        "av_joint", ("connector", "audio_projector", "language_model"), 2e-5,
        "audio-visual joint training (va_joint.sh, tune_adapter_llm, --va True): LLM + both projectors; vision "
        "tower and BEATs frozen",
        original_global_batch_size=128, original_epochs=1,
    ),
    "av_joint_lora": Stage(
        "av_joint_lora", ("connector", "audio_projector"), 2e-5,
        "av_joint with LoRA on every LLM linear layer (r128 / alpha256 as VideoLLaMA 2's LoRA script) and both "
        "projectors trained fully",
        lora=True, lora_r=128, lora_alpha=256, modules_to_save_parts=("connector", "audio_projector"),
        part_learning_rates={"connector": 2e-5, "audio_projector": 2e-5},
        original_global_batch_size=128, original_epochs=1,
    ),
}


class _Recipes(Mapping):
    """Model name -> its stages, read from each model's registry entry (``ModelEntry.recipes``)."""

    def __getitem__(self, name: str) -> dict[str, Stage]:
        from ..registry import MODELS

        if name not in MODELS or MODELS[name].recipes is None:
            raise KeyError(name)
        return MODELS[name].get_recipes()

    def __iter__(self):
        from ..registry import MODELS

        return iter([n for n, e in MODELS.items() if e.recipes is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self)


#: model name -> {stage name: Stage}
RECIPES: Mapping[str, dict[str, Stage]] = _Recipes()


def get_stage(model_name: str, stage: str) -> Stage:
    if model_name not in RECIPES:
        raise KeyError(f"no training recipe for {model_name!r}; available: {sorted(RECIPES)}")
    stages = RECIPES[model_name]
    if stage not in stages:
        raise KeyError(f"{model_name} has no stage {stage!r}; available: {sorted(stages)}")
    return stages[stage]
