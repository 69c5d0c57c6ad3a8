"""The training entry point: ``train(TrainConfig(...))`` and ``hf-videollm train``.

Model -> stage recipe (which parts train, full or LoRA/QLoRA, learning rates) -> data (validated up front) ->
collator (chat template, assistant-only labels, media decoded in workers) -> ``VideoLLMTrainer`` on Accelerate
(runs as is under ``accelerate launch`` / ``torchrun``) -> model + processor + training metadata saved.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .recipes import Stage, get_stage

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "train", "load_train_config", "TRAINING_METADATA"]

TRAINING_METADATA = "hf_videollm_training.json"


@dataclass
class TrainConfig:
    """Everything a run needs. Every field is also a ``hf-videollm train --flag`` and a key of a config file."""

    model: str  # a model directory / Hub id in hf_videollm format, or "tiny:<name>" for a tiny random model
    # json / jsonl / parquet files or folders (LLaVA `conversations`, `messages`, ms-swift / LLaMA-Factory records),
    # Hugging Face dataset ids "owner/name[@revision][:split-or-path]" (local cache first), or datasets objects
    data: list[str]
    output_dir: str
    model_family: str | None = None  # recipe lookup ("llava", ...); inferred from the config when None
    stage: str = "stage2"
    mode: str | None = None  # "full" | "lora" | "qlora"; default: the stage's own (LoRA stages use "lora")
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    lora_vision_tower: bool = False
    trainable_parts: list[str] | None = None  # override the stage's parts
    learning_rate: float | None = None
    part_learning_rates: dict[str, float] = field(default_factory=dict)  # e.g. {"vision_tower": 2e-6}
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    warmup_ratio: float | None = None  # a fraction of the steps; a value >= 1 is a number of warm-up steps
    weight_decay: float | None = None
    lr_scheduler_type: str | None = None
    gradient_checkpointing: bool = False
    max_length: int | None = None
    max_visual_tokens: int | None = None
    num_frames: int | None = None
    video_fps: float | None = None
    skip_invalid: bool = False
    group_by_length: bool = False
    data_split: str = "train"  # the split of a datasets.DatasetDict or of a Hub dataset / folder with several files
    # one weight per data source: the training set takes each source in that proportion (see data.mix_sources):
    # data_mix_size samples (default: the sum of the sources' sizes), largest-remainder rounding, a smaller source
    # repeated (whole passes + a seeded sample), a larger one sub-sampled without replacement, seeded by `seed`
    data_ratios: list[float] | None = None
    data_mix_size: int | None = None
    shuffle: bool = True  # False: samples in file order (a data schedule, e.g. a curriculum written into the file)
    dataloader_num_workers: int = 0
    cache_encoded_samples: bool = False  # keep encoded samples in memory after their first epoch (small datasets)
    # with cache_encoded_samples: encode every sample the run will read into the cache before the first step, in this
    # many threads (0: lazily, during the first epoch); the same tensors, less wall time on several cores
    prefill_cache_threads: int = 0
    seed: int = 42
    dtype: str = "float32"  # "bfloat16" for bf16 mixed precision on GPUs
    logging_steps: int = 10
    save_steps: int | None = None
    save_total_limit: int | None = None
    resume_from_checkpoint: str | bool | None = None
    # experiment tracking: "none" (console only), "tensorboard" (event files in <output_dir>/runs) or "wandb" (a W&B run;
    # WANDB_MODE=offline keeps it on disk); both need `pip install "hf-videollm[tracking]"`; comma-separate for both
    report_to: str = "none"
    use_cpu: bool = False
    extra_training_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.resume_from_checkpoint, str):
            # "true" (as the CLI / YAML write it) resumes from the latest checkpoint-N in output_dir; "false" starts fresh
            flag = self.resume_from_checkpoint.strip().lower()
            if flag in ("true", "yes", "1", "latest"):
                self.resume_from_checkpoint = True
            elif flag in ("false", "no", "0", "none", ""):
                self.resume_from_checkpoint = None
        if isinstance(self.data, (str, Path)):
            self.data = [str(self.data)]
        elif not isinstance(self.data, (list, tuple)):  # one datasets.Dataset / DatasetDict object
            self.data = [self.data]
        if self.data_ratios is not None or self.data_mix_size is not None:
            from .data import check_mix_size, check_ratios

            if self.data_ratios is None:
                raise ValueError("data_mix_size needs data_ratios (one weight per data source)")
            self.data_ratios = check_ratios(self.data_ratios, len(self.data))
            self.data_mix_size = check_mix_size(self.data_mix_size)
        if self.mode not in (None, "full", "lora", "qlora"):
            raise ValueError(f"mode must be full, lora or qlora, got {self.mode!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.prefill_cache_threads < 0:
            raise ValueError(f"prefill_cache_threads must be >= 0, got {self.prefill_cache_threads}")
        if self.prefill_cache_threads and not self.cache_encoded_samples:
            raise ValueError("prefill_cache_threads fills the cache of encoded samples: set cache_encoded_samples=True")
        if self.group_by_length and not self.shuffle:
            raise ValueError("group_by_length reorders samples; it cannot be combined with shuffle=False (file order)")


def load_train_config(path: str | Path, **overrides) -> TrainConfig:
    """A JSON or YAML file with TrainConfig fields, or the name of a shipped example (``"llava/stage2"``: see
    ``hf-videollm train --list-configs``); ``overrides`` (e.g. CLI flags) win."""
    from hf_videollm_cli._configs import resolve_config

    path = resolve_config(path)
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        values = json.loads(text)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"{path}: unknown training option(s) {sorted(unknown)}; known: {sorted(known)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)


# ------------------------------------------------------------------------------------------------------ model
def _materialize_tiny(name: str, output_dir: Path, seed: int) -> Path:
    """Tiny random models have no checkpoint: save one, so LoRA export and QLoRA loading have a base on disk."""
    from ..tiny import build_tiny

    base = output_dir / "base_model"
    if not (base / "config.json").is_file():
        model, processor = build_tiny(name, seed=seed)
        model.save_pretrained(base)
        processor.save_pretrained(base)
    return base


def _family_of(config) -> str:
    from ..registry import entry_for_config

    return entry_for_config(config).name


def load_model_for_training(cfg: TrainConfig, stage: Stage, mode: str):
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    import hf_videollm  # noqa: F401  (Auto registration)

    source = cfg.model
    if source.startswith("tiny:"):
        source = str(_materialize_tiny(source.split(":", 1)[1], Path(cfg.output_dir), cfg.seed))
    dtype = getattr(torch, cfg.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if mode == "qlora":
        model_cls = AutoModelForImageTextToText._model_mapping[type(AutoConfig.from_pretrained(source))]
        compute = dtype if dtype != torch.float32 or not torch.cuda.is_available() else torch.bfloat16
        kwargs["quantization_config"] = model_cls.default_quantization_config(compute_dtype=compute)
    model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    processor = AutoProcessor.from_pretrained(source)
    return model, processor, source


def lora_settings(stage: Stage, cfg: TrainConfig) -> dict[str, Any]:
    """What a LoRA / QLoRA run of ``stage`` attaches: rank, alpha, dropout, the parts LoRA adapts and the parts
    trained fully next to it (saved with the adapter). One source for :func:`apply_stage` and the run's metadata."""
    parts = list(cfg.trainable_parts or stage.trainable_parts)
    return {
        "r": cfg.lora_r or stage.lora_r,
        "alpha": cfg.lora_alpha or stage.lora_alpha,
        "dropout": stage.lora_dropout if cfg.lora_dropout is None else cfg.lora_dropout,
        "adapted_parts": ["language_model", "vision_tower"] if cfg.lora_vision_tower else ["language_model"],
        "fully_trained_parts": [p for p in parts if p != "language_model"] or list(stage.modules_to_save_parts),
    }


def apply_stage(model, stage: Stage, cfg: TrainConfig, mode: str):
    """Freeze/unfreeze parts, attach LoRA where the mode asks; returns the (possibly PEFT-wrapped) model."""
    parts = list(cfg.trainable_parts or stage.trainable_parts)
    if mode == "full":
        model.set_trainable_parts(parts)
        return model
    import peft

    from .lora import default_lora_config

    if mode == "qlora":
        model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    lora = lora_settings(stage, cfg)
    modules_to_save = [path for p in lora["fully_trained_parts"] for path in model._parts[p]] or None
    lora_config = default_lora_config(
        model, r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"], vision_tower=cfg.lora_vision_tower,
        modules_to_save=modules_to_save,
    )
    return peft.get_peft_model(model, lora_config)


# ------------------------------------------------------------------------------------------------------ train
#: tracker name -> (modules, any one of which provides it)
_TRACKERS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def check_report_to(report_to: str | list[str] | None) -> list[str]:
    """The trackers ``report_to`` names (``"none"`` -> ``[]``); an error naming the extra to install when a tracker's
    package is missing (transformers would otherwise fail deep inside ``Trainer`` or, for ``"all"``, skip it)."""
    import importlib.util

    names = report_to if isinstance(report_to, (list, tuple)) else str(report_to or "none").split(",")
    names = [n.strip() for n in names if n.strip() and n.strip() != "none"]
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    unknown = [n for n in names if n not in INTEGRATION_TO_CALLBACK and n != "all"]
    if unknown:
        raise ValueError(
            f"report_to names unknown tracker(s) {unknown}: use none, tensorboard or wandb (or another of transformers' "
            f"integrations: {', '.join(sorted(INTEGRATION_TO_CALLBACK))}), comma-separated for several"
        )
    for name in names:
        modules = _TRACKERS.get(name)
        if modules and not any(importlib.util.find_spec(m) for m in modules):
            raise ValueError(
                f'report_to={name!r} needs the {modules[0]} package, which is not installed: '
                f'pip install "hf-videollm[tracking]" (or pip install {modules[0]}), or use report_to="none"'
            )
    return names


def _has_accelerator() -> bool:
    acc = getattr(torch, "accelerator", None)
    if acc is not None and hasattr(acc, "is_available"):
        return bool(acc.is_available())
    return torch.cuda.is_available()


def train(cfg: TrainConfig):
    """Run one training stage. Returns the ``VideoLLMTrainer`` (``trainer.state`` holds the log history)."""
    from transformers import TrainingArguments

    from .collator import VideoLLMCollator
    from .data import VideoLLMDataset, concat_sources, format_mix_table, load_sources, mix_sources
    from .trainer import VideoLLMTrainer, unwrap_videollm

    report_to = check_report_to(cfg.report_to) or "none"  # before anything is loaded or written
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Resolve the recipe before loading anything heavy.
    if cfg.model_family is None:
        if cfg.model.startswith("tiny:"):
            cfg.model_family = cfg.model.split(":", 1)[1]
        else:
            from transformers import AutoConfig

            import hf_videollm  # noqa: F401

            cfg.model_family = _family_of(AutoConfig.from_pretrained(cfg.model))
    stage = get_stage(cfg.model_family, cfg.stage)
    mode = cfg.mode or ("lora" if stage.lora else "full")
    # Data sources before the model: a missing file or an uncached Hub dataset fails in seconds.
    sources = load_sources(cfg.data, split=cfg.data_split, distinct_rows=cfg.data_ratios is None)
    mix = None
    if cfg.data_ratios is not None:
        records, mix = mix_sources(sources, cfg.data_ratios, seed=cfg.seed, size=cfg.data_mix_size)
        print(format_mix_table(mix, cfg.seed))
    else:
        records = concat_sources(sources)

    lr = cfg.learning_rate if cfg.learning_rate is not None else stage.learning_rate
    part_lrs = {**stage.part_learning_rates, **cfg.part_learning_rates}
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=lr,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler_type or stage.lr_scheduler_type,
        warmup_steps=stage.warmup_ratio if cfg.warmup_ratio is None else cfg.warmup_ratio,
        weight_decay=stage.weight_decay if cfg.weight_decay is None else cfg.weight_decay,
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cfg.dtype == "bfloat16" and mode != "qlora",
        fp16=cfg.dtype == "float16",
        report_to=report_to,
        remove_unused_columns=False,  # samples are chat messages; the collator builds model inputs
        dataloader_num_workers=cfg.dataloader_num_workers,
        dataloader_persistent_workers=cfg.cache_encoded_samples and cfg.dataloader_num_workers > 0,
        activation_checkpointing=cfg.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},  # works with frozen towers
        train_sampling_strategy="group_by_length" if cfg.group_by_length else ("random" if cfg.shuffle else "sequential"),
        use_cpu=cfg.use_cpu or not _has_accelerator(),  # several CPU processes must still form one DDP group
        **cfg.extra_training_args,
    )
    # TrainingArguments exist before the model is loaded: DeepSpeed ZeRO-3 sharded init and FSDP's CPU-RAM-efficient
    # loading hook into from_pretrained through them. Ranks wait for the main process to write a tiny base model.
    with args.main_process_first(local=True, desc="load model"):
        model, processor, base_source = load_model_for_training(cfg, stage, mode)
    for key, value in (("num_frames", cfg.num_frames), ("video_fps", cfg.video_fps), ("max_visual_tokens", cfg.max_visual_tokens)):
        if value is not None:
            setattr(processor, key, value)
    if cfg.video_fps is not None and cfg.num_frames is None:
        processor.num_frames = None

    dataset = VideoLLMDataset(records, processor, skip_invalid=cfg.skip_invalid)
    model = apply_stage(model, stage, cfg, mode)
    core = unwrap_videollm(model)
    summary = core.trainable_parameters_summary()
    logger.info("trainable parameters per part:\n%s", summary)
    overridden = f" -- trainable parts overridden: {', '.join(cfg.trainable_parts)}" if cfg.trainable_parts else ""
    print(f"stage {stage.name} ({mode}): {stage.description}{overridden}\n{summary}")

    collator = VideoLLMCollator(processor, max_length=cfg.max_length, cache=cfg.cache_encoded_samples)
    if cfg.prefill_cache_threads:
        # in file order a run reads only its first max_steps * batch * accumulation * ranks rows; shuffled, any row
        limit = None
        if not cfg.shuffle and not cfg.group_by_length and cfg.max_steps > 0:
            limit = cfg.max_steps * args.train_batch_size * args.gradient_accumulation_steps * args.world_size
        n = collator.prefill((dataset[i] for i in dataset.distinct_positions(limit)), threads=cfg.prefill_cache_threads)
        logger.info("encoded %d distinct samples ahead of training in %d threads", n, cfg.prefill_cache_threads)
    trainer = VideoLLMTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=processor,  # saved into every checkpoint-N, so any checkpoint can be exported
        part_learning_rates=part_lrs,
        sample_lengths=dataset.lengths if cfg.group_by_length else None,
    )
    from .checkpoints import final_staging_dir, publish_final, resolve_resume

    result = trainer.train(resume_from_checkpoint=resolve_resume(cfg.resume_from_checkpoint, out))
    # Every rank takes part in the final save (ZeRO-3 / FSDP gather the weights collectively); only rank 0 writes.
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    # crash-safe: the whole final save goes to a staging dir, then is published under a sentinel (checkpoints.py)
    staging = final_staging_dir(out) if trainer.is_world_process_zero() else out / ".final-save"
    trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        processor.save_pretrained(staging)
        meta = {
            "base_model": str(Path(base_source).resolve()) if Path(base_source).exists() else base_source,
            "model_family": cfg.model_family,
            "stage": dataclasses.asdict(stage),
            "mode": mode,
            "lora": None if mode == "full" else {
                **(lora := lora_settings(stage, cfg)), "learning_rate": lr,
                "fully_trained_learning_rates": {p: part_lrs.get(p, lr) for p in lora["fully_trained_parts"]},
            },
            "data": [Path(name).name if Path(name).exists() else name for name, _ in sources],
            "data_mix": mix,
            "num_samples": len(dataset),
            "dropped_samples": collator.dropped,
            "hyperparameters": {
                "learning_rate": lr, "part_learning_rates": part_lrs, "epochs": cfg.num_train_epochs,
                "max_steps": cfg.max_steps, "per_device_train_batch_size": cfg.per_device_train_batch_size,
                "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
                "world_size": int(os.environ.get("WORLD_SIZE", "1")), "seed": cfg.seed, "dtype": cfg.dtype,
            },
            "evaluation_preset": {
                "num_frames": getattr(processor, "num_frames", None),
                "video_fps": getattr(processor, "video_fps", None),
                "image_size": getattr(processor, "image_size", None),
                "chat_template": "chat_template.jinja",
            },
            "train_loss": result.training_loss,
        }
        (staging / TRAINING_METADATA).write_text(json.dumps(meta, indent=2, default=str))
        publish_final(staging, out, last=TRAINING_METADATA)
    return trainer
