"""Stage recipes from the original training curricula (see ../shared/specs/*.md, section "Training recipe").

A stage says which parts train, how (full / LoRA), and the learning rates the original used. Batch sizes and
epochs of the originals are recorded for reference (they were tuned for 8 GPUs); the CLI takes them as defaults
only where they make sense on the user's hardware.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["Stage", "RECIPES", "get_stage", "LLAVA_STAGES", "VIDEOLLAMA2_STAGES", "VIDEOLLAMA2_AV_STAGES", "BLIP2_STAGES", "QWEN2VL_STAGES", "LONGVLM_STAGES", "QWEN_VL_STAGES", "VIDEOLLAMA3_STAGES", "VIDEO_LLAMA_STAGES"]


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
        original_global_batch_size=128, original_epochs=2,  # scripts/custom/va_joint_dlc.sh: num_train_epochs 2
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

#: BLIP-2 / InstructBLIP (LAVIS ``pretrain_stage2.yaml``, InstructBLIP paper): ViT and LLM frozen throughout.
BLIP2_STAGES: dict[str, Stage] = {
    "stage2": Stage(
        "stage2", ("ln_vision", "qformer", "connector"), 1e-4,
        "vision-to-language generative pre-training (pretrain_stage2.yaml): Q-Former + query tokens + ln_vision + "
        "projection, ViT and LLM frozen; linear warm-up (2000 steps) then cosine to 1e-5, AdamW wd 0.05",
        original_global_batch_size=1024, original_epochs=10, weight_decay=0.05,
    ),
    "instruct": Stage(
        "instruct", ("ln_vision", "qformer", "connector"), 1e-5,
        "InstructBLIP instruction tuning: the Q-Former reads the instruction; Q-Former + query tokens + ln_vision + "
        "projection, ViT and LLM frozen; warm-up 1000 steps then cosine to 0, AdamW wd 0.05 (paper; batch 128-192)",
        original_global_batch_size=128, weight_decay=0.05,
    ),
    "lora": Stage(
        "lora", ("ln_vision", "qformer", "connector"), 1e-4,
        "not in the original (no LoRA in LAVIS): stage 2 / instruction tuning plus LoRA r16 on the LLM, the bridge "
        "trained fully",
        lora=True, modules_to_save_parts=("ln_vision", "qformer", "connector"), weight_decay=0.05,
    ),
}

# Qwen2-VL report (arXiv 2409.12191, section 2.2): stage 1 trains the ViT (with its merger) on image-text pairs, the
# LLM frozen; stage 2 unfreezes everything on mixed multimodal data; stage 3 freezes the ViT and tunes the LLM on
# ChatML instruction data. The report gives no learning rates or batch sizes: the rates here are ours (common values
# for each kind of stage), the data, parts and order are the report's.
QWEN2VL_STAGES: dict[str, Stage] = {
    "stage1": Stage(
        "stage1", ("vision_tower", "connector"), 1e-4,
        "ViT + merger on image-text pairs (captions, OCR, classification), LLM frozen (learning rate not published)",
    ),
    "stage2": Stage(
        "stage2", ("vision_tower", "connector", "language_model"), 2e-5,
        "every part on interleaved image-text, VQA, video dialogue and grounding data (learning rate not published)",
    ),
    "stage3": Stage(
        "stage3", ("language_model",), 1e-5,
        "instruction tuning in ChatML (multi-image, video, agent, grounding dialogues), ViT and merger frozen "
        "(learning rate not published)",
    ),
    "lora": Stage(
        "lora", (), 1e-4,
        "stage 3 with LoRA r64/alpha128 on every LLM linear layer (full module paths: the vision blocks also have "
        "Linear layers), ViT and merger frozen",
        lora=True, lora_r=64, lora_alpha=128,
    ),
}

LONGVLM_STAGES: dict[str, Stage] = {
    "stage1": Stage(
        "stage1", ("connector",), 2e-5,
        "LongVLM's single stage (run.sh, tune_mm_mlp_adapter): the projector only, CLIP and the LLaVA-7B LLM frozen, "
        "on Video-ChatGPT-100K-style video instructions; 3 epochs, 8 x 4 GPUs, lr 2e-5, cosine, warmup 0.03 (the "
        "original also lets the 3 new embedding rows learn; here the embeddings stay frozen)",
        original_global_batch_size=32, original_epochs=3,
    ),
}


#: Qwen-VL (../shared/specs/qwen_vl.md section 5). Stages 1-2 are the paper's (arXiv 2308.12966; learning rates and
#: batches from its training table, not in the repo); stage 3 / lora are the repo's fine-tuning scripts
#: (finetune/finetune_ds.sh, finetune_lora_ds.sh): bf16, lr 1e-5, weight decay 0.1, adam_beta2 0.95, warmup 0.01,
#: cosine, 5 epochs, model_max_length 2048, global batch 128.
QWEN_VL_STAGES: dict[str, Stage] = {
    "stage1": Stage(
        "stage1", ("vision_tower", "connector", "vision_projection"), 2e-4,
        "pre-training on image-text pairs at 224 px: ViT + resampler trained, LLM frozen (paper; global batch 30720, "
        "50k steps)",
        original_global_batch_size=30720, weight_decay=0.05,
    ),
    "stage2": Stage(
        "stage2", ("vision_tower", "connector", "vision_projection", "language_model", "embeddings"), 5e-5,
        "multi-task pre-training at 448 px (captioning, VQA, grounding, OCR, interleaved): every part trained (paper; "
        "global batch 4096, 19k steps)",
        original_global_batch_size=4096, weight_decay=0.05,
    ),
    "stage3": Stage(
        "stage3", ("connector", "language_model", "embeddings"), 1e-5,
        "supervised fine-tuning in ChatML (finetune_ds.sh, fix_vit): LLM + the resampler's attn_pool trained; ViT, "
        "ln_post and proj frozen",
        original_global_batch_size=128, original_epochs=5, warmup_ratio=0.01, weight_decay=0.1,
    ),
    "lora": Stage(
        "lora", (), 1e-5,
        "finetune_lora_ds.sh: LoRA r64/alpha16/dropout 0.05 on the LLM (the original targets c_attn, attn.c_proj, w1, "
        "w2 = q/k/v/o, up, gate; here every LLM linear layer, down_proj too) with the token embeddings and LM head "
        "trained fully (finetune.py's modules_to_save ['wte', 'lm_head'] without Q-LoRA), everything else frozen",
        lora=True, lora_r=64, lora_alpha=16, lora_dropout=0.05, modules_to_save_parts=("embeddings",),
        original_global_batch_size=128, original_epochs=5, warmup_ratio=0.01, weight_decay=0.1,
    ),
}


# VideoLLaMA 3 (scripts/train/stage{1..4}_2b.sh; spec videollama3.md section 5): global batch 128, bf16, cosine,
# warmup 0.03, weight decay 0, fps 1 / max_frames 180, mm_max_length 10240; per-part learning rates as the scripts'
# vision_encoder_lr / mm_projector_lr / llm_lr.
VIDEOLLAMA3_STAGES: dict[str, Stage] = {
    "stage1": Stage(
        "stage1", ("vision_tower", "connector"), 1e-3,
        "vision-encoder adaptation: encoder (lr 1e-5) + projector (lr 1e-3), LLM frozen (llm_lr unset)",
        part_learning_rates={"vision_tower": 1e-5}, original_global_batch_size=128,
    ),
    "stage2": Stage(
        "stage2", ("vision_tower", "connector", "language_model"), 1e-5,
        "vision-language alignment: every part, LLM and projector lr 1e-5, encoder lr 2e-6",
        part_learning_rates={"vision_tower": 2e-6}, original_global_batch_size=128,
    ),
    "stage3": Stage(
        "stage3", ("vision_tower", "connector", "language_model"), 1e-5,
        "multi-task fine-tuning: as stage 2, with DiffFP token compression on (use_token_compression)",
        part_learning_rates={"vision_tower": 2e-6}, original_global_batch_size=128,
    ),
    "stage4": Stage(
        "stage4", ("vision_tower", "connector", "language_model"), 1e-5,
        "video-centric fine-tuning: as stage 3, images with merge size 2 (processor image_merge_size=2)",
        part_learning_rates={"vision_tower": 2e-6}, original_global_batch_size=128,
    ),
}


# Video-LLaMA (specs/video_llama.md section 5; the repo's train_configs/*.yaml): batch sizes there are per GPU (the
# README trains on 8 A100s: global = 8 x per-GPU); schedules are LAVIS' linear_warmup_cosine_lr (warmup_lr 1e-6,
# min_lr 8e-5 / 1e-5), AdamW wd 0.05; the frozen parts are the EVA ViT, the image Q-Former, ImageBind and the LLM.
VIDEO_LLAMA_STAGES: dict[str, Stage] = {
    "stage1": Stage(
        "stage1", ("video_qformer", "connector"), 1e-4,
        "vision branch pre-training (visionbranch_stage1_pretrain.yaml: WebVid-2.5M + LLaVA-CC3M-595K captions): video "
        "Q-Former + video queries + frame position embedding + llama_proj; 5 epochs x 2500 iters, warm-up 2500 "
        "steps, min_lr 8e-5, batch 32 per GPU",
        original_global_batch_size=256, original_epochs=5, weight_decay=0.05,
    ),
    "stage2": Stage(
        "stage2", ("video_qformer", "connector"), 3e-5,
        "vision branch instruction tuning (visionbranch_stage2_finetune.yaml: MiniGPT-4 cc_sbu_align + "
        "LLaVA-Instruct-150K + VideoChat-11K): same parts; 3 epochs x 1000 iters, warm-up 1000 steps, min_lr 1e-5, "
        "batch 4 per GPU, max_txt_len 320",
        original_global_batch_size=32, original_epochs=3, weight_decay=0.05,
    ),
    "audio_stage1": Stage(
        "audio_stage1", ("audio_qformer", "audio_projector"), 1e-4,
        "audio branch pre-training (audiobranch_stage1_pretrain.yaml): audio Q-Former + audio queries + audio "
        "position embedding + audio_llama_proj; 5 epochs x 5000 iters, warm-up 5000 steps, batch 32 per GPU. The "
        "original feeds video frames through ImageBind's *vision* path here (the shared embedding space); this "
        "package has only ImageBind's audio path, so the stage trains on audio",
        original_global_batch_size=256, original_epochs=5, weight_decay=0.05,
    ),
    "audio_stage2": Stage(
        "audio_stage2", ("audio_qformer", "audio_projector"), 3e-5,
        "audio branch instruction tuning (audiobranch_stage2_finetune.yaml): same parts; 3 epochs x 1000 iters, "
        "warm-up 400 steps, min_lr 1e-5, batch 4 per GPU",
        original_global_batch_size=32, original_epochs=3, weight_decay=0.05,
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
