"""``VideoLLMTrainer``: transformers' Trainer with per-part learning rates and media-aware length grouping."""

from __future__ import annotations

import os

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

__all__ = ["VideoLLMTrainer", "unwrap_videollm"]


def unwrap_videollm(model):
    """The hf_videollm model inside PEFT / DDP / Accelerate wrappers."""
    from ..modeling.base import VideoLLMPreTrainedModel

    seen = model
    for _ in range(8):
        if isinstance(seen, VideoLLMPreTrainedModel):
            return seen
        for attr in ("module", "base_model", "model"):
            inner = getattr(seen, attr, None)
            if inner is not None and inner is not seen:
                seen = inner
                break
        else:
            break
    raise TypeError(f"{type(model).__name__} does not wrap an hf_videollm model")


def _clean_name(name: str) -> str:
    for prefix in ("module.", "base_model.model."):
        while name.startswith(prefix):
            name = name[len(prefix) :]
    return name


class VideoLLMTrainer(Trainer):
    """Trainer with ``part_learning_rates`` ({"connector": 2e-5, "vision_tower": 2e-6, ...}) and, when
    ``train_sampling_strategy="group_by_length"``, batches grouped by estimated text + visual tokens."""

    def __init__(self, *args, part_learning_rates: dict[str, float] | None = None, sample_lengths=None, **kwargs):
        self.part_learning_rates = dict(part_learning_rates or {})
        self.sample_lengths = sample_lengths
        super().__init__(*args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint save, then the completeness marker (see :mod:`hf_videollm.training.checkpoints`):
        a checkpoint killed mid-save has no marker and is skipped by resume and export."""
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            from .checkpoints import mark_complete

            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            if os.path.isdir(folder):
                mark_complete(folder, self.state.global_step)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        core = unwrap_videollm(opt_model)
        unknown = set(self.part_learning_rates) - set(core.part_names())
        if unknown:
            raise ValueError(f"part_learning_rates names unknown parts {sorted(unknown)}; parts: {core.part_names()}")
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[float, float], list] = {}
        for name, param in opt_model.named_parameters():
            if not param.requires_grad:
                continue
            part = core.part_of_parameter(_clean_name(name))
            lr = self.part_learning_rates.get(part, self.args.learning_rate)
            wd = self.args.weight_decay if name in decay else 0.0
            groups.setdefault((lr, wd), []).append(param)
        param_groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy == "group_by_length" and self.sample_lengths is not None:
            return LengthGroupedSampler(
                self.args.train_batch_size * self.args.gradient_accumulation_steps,
                dataset=dataset,
                lengths=list(self.sample_lengths),
            )
        return super()._get_train_sampler(train_dataset)
