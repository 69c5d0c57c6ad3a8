"""``hf-videollm demo`` and ``hf-videollm bench-synthetic``: does a video model really use time?

The benchmark (:func:`run_benchmark`):

1. writes synthetic H.264 videos with questions (:mod:`hf_videollm.synthetic`; train and test seeds never overlap);
2. builds a tiny model of the chosen family from its demo preset (:mod:`hf_videollm.demo_presets`) and
   trains it from scratch through the package's own path: ``VideoLLMDataset`` -> ``VideoLLMCollator`` (encoded
   samples cached after the first epoch) -> ``VideoLLMTrainer`` (:func:`hf_videollm.training.train.train`), with
   the preset's hard-first schedule (:func:`write_schedule`: the first batches hold only the question types a mix
   from the start never learns -- direction and shape for VideoLLaMA 2 --, the file is read in order);
3. scores held-out videos per question kind: the model's next-token logits restricted to the question's answer
   options, once with the clip and once with the single-frame baseline (the middle frame repeated, so the model
   sees the same number of tokens but no time).

The demo (:func:`run_demo`) then reloads the saved model with ``AutoModelForImageTextToText`` / ``AutoProcessor``
in a fresh Python process and answers questions about newly generated video files with the processor's chat
template and ``generate``. It prints a table and writes a JSON report (``--report``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from . import synthetic as S

__all__ = [
    "BenchSettings", "TARGETS", "evaluate", "run_benchmark", "run_demo", "format_table", "check_targets", "write_schedule",
]

#: The demo's targets: (kind, what) -> bound. Accuracy of the video model at least, of the single-frame baseline
#: at most (chance + margin: 1/4 for direction, 1/2 for order).
TARGETS: dict[str, dict[str, float]] = {
    "video_min": {"appearance": 0.95, "direction": 0.90, "order": 0.90},
    "single_frame_max": {"direction": 0.40, "order": 0.65},
}


@dataclass
class BenchSettings:
    """One benchmark run. ``None`` fields come from the model's demo preset (:class:`hf_videollm.demo_presets.DemoPreset`)."""

    model: str = "videollama2"  # the default demo model: it meets the targets (bench/RESULTS.md)
    workdir: str | None = None
    kinds: list[str] | None = None  # default: every synthetic kind of the model's modalities
    train_per_kind: int | dict[str, int] | None = None  # one count, or {kind: count} updating the preset's
    test_per_kind: int = 100
    max_steps: int | None = None
    first_steps: int | None = None  # batches of the preset's first question types before the mix (0: none; None: the
    # preset's fraction of max_steps)
    batch_size: int | None = None
    learning_rate: float | None = None
    warmup_ratio: float | None = None
    num_frames: int | None = None
    # 32 px videos: the models see at most 32 px frames (bench/RESULTS.md)
    video_size: int = 32
    video_frames: int = 16
    seed: int = 0
    # processes that generate the videos of a split of at least 1000 videos (spawned: a script calling run_benchmark
    # needs the usual ``if __name__ == "__main__":`` guard); smaller splits are generated in this process, where the
    # workers' start-up would cost more than it saves (bench/RESULTS.md, "Data generation in worker processes")
    data_workers: int = 2
    # models that hear (an "audio" modality): every video gets an audio track and the model hears it (the video's
    # tokens then its audio's in the slot); False = the no-audio baseline (the same model, audio never given)
    audio: bool | None = None
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def resolve(self) -> BenchSettings:
        from .registry import MODELS

        if self.model not in MODELS:
            raise ValueError(f"no model named {self.model!r}; registered: {sorted(MODELS)}")
        spec = MODELS[self.model]
        if "video" not in spec.modalities:
            raise ValueError(f"model {self.model!r} takes no video ({spec.modalities}); pick a video model")
        preset = spec.get_demo_preset()
        if preset is None:
            raise ValueError(f"model {self.model!r} has no demo preset (hf_videollm.demo_presets)")
        values = asdict(self)
        for name in ("max_steps", "batch_size", "learning_rate", "warmup_ratio", "num_frames"):
            if values[name] is None:
                values[name] = getattr(preset, name)
        if values["first_steps"] is None:  # the preset's share of the steps, whatever max_steps is
            values["first_steps"] = round(preset.first_fraction * values["max_steps"]) if preset.first_types else 0
        if values["kinds"] is None:
            values["kinds"] = list(S.KINDS_VIDEO) + (list(S.KINDS_AUDIO) if "audio" in spec.modalities else [])
        kinds = values["kinds"]
        unknown = [k for k in kinds if k not in S.KINDS]
        if unknown:
            raise ValueError(f"unknown kind(s) {unknown}; expected some of {S.KINDS}")
        audio_kinds = [k for k in kinds if k in S.KINDS_AUDIO]
        if audio_kinds and "audio" not in spec.modalities:
            raise ValueError(f"model {self.model!r} hears no audio; drop the kind(s) {audio_kinds}")
        if values["audio"] is None:
            values["audio"] = "audio" in spec.modalities
        elif values["audio"] and "audio" not in spec.modalities:
            raise ValueError(f"model {self.model!r} hears no audio; audio=True needs a model with an audio modality")
        values["train_per_kind"] = _train_counts(values["train_per_kind"], kinds, preset)
        for name in ("test_per_kind", "max_steps", "batch_size", "num_frames"):
            if values[name] < 1:
                raise ValueError(f"{name} must be >= 1, got {values[name]}")
        if not 0 <= values["first_steps"] < values["max_steps"]:
            raise ValueError(
                f"first_steps must be >= 0 and below max_steps={values['max_steps']}, got {values['first_steps']}"
            )
        if values["num_frames"] > values["video_frames"]:
            raise ValueError(
                f"num_frames={values['num_frames']} is more than the {values['video_frames']} frames each video has"
            )
        return BenchSettings(**values)


def _train_counts(asked: int | dict[str, int] | None, kinds: list[str], preset) -> dict[str, int]:
    """Training videos per kind: the preset's counts, updated by ``asked`` ({kind: n}) or all replaced (one n)."""
    if asked is None or isinstance(asked, dict):
        asked = asked or {}
        stray = [k for k in asked if k not in kinds]
        if stray:
            raise ValueError(f"train_per_kind names kind(s) {stray} that this run does not train on ({kinds})")
        counts = {k: asked.get(k, preset.train_counts.get(k, preset.train_per_kind)) for k in kinds}
    else:
        counts = {k: asked for k in kinds}
    for kind, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"train_per_kind must be >= 1 for every kind, got {n!r} for {kind!r}")
    return counts


def parse_per_kind(text: str) -> int | dict[str, int]:
    """``"2000"`` -> 2000; ``"direction=4000,count=500"`` -> ``{"direction": 4000, "count": 500}``."""
    text = text.strip()
    try:
        if "=" not in text:
            return int(text)
        out = {}
        for item in text.split(","):
            kind, _, n = item.partition("=")
            out[kind.strip()] = int(n)
        return out
    except ValueError:
        raise ValueError(
            f"cannot read {text!r}: give one count (2000) or kind=count pairs (direction=4000,count=500)"
        ) from None


# ------------------------------------------------------------------------------------------------------ data schedule
def write_schedule(
    data_jsonl: str | Path, *, first_types: tuple[str, ...] | list[str], first_steps: int, steps: int,
    batch_size: int, seed: int = 0,
) -> tuple[Path, int]:
    """A training file read in order (``TrainConfig(shuffle=False)``): ``first_steps`` batches of the rows whose
    question type (:func:`hf_videollm.synthetic.question_type`) is in ``first_types``, then batches of every row --
    each part in shuffled passes over its rows. Written beside ``data_jsonl`` (media paths stay relative to it) as
    ``schedule.jsonl``; returns the path and the number of rows of the first part (0 when no row has a first type,
    then the whole file is the mix). Rows repeat (the file has ``steps * batch_size`` rows: 76,800 / 30 MB for the
    VideoLLaMA 2 demo); the collator's cache decodes each video once."""
    import numpy as np

    data_jsonl = Path(data_jsonl)
    lines = [line for line in data_jsonl.read_text().splitlines() if line.strip()]
    rows = [json.loads(line) for line in lines]
    unknown = sorted(set(first_types) - set(S.QUESTIONS))
    if unknown:
        raise ValueError(f"unknown question type(s) {unknown}; expected some of {sorted(S.QUESTIONS)}")
    first = [i for i, r in enumerate(rows) if S.question_type(r["kind"], r["answer"]) in first_types]
    first_steps = first_steps if first else 0
    rng = np.random.default_rng(seed)

    def passes(pool: list[int], n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            out += [pool[i] for i in rng.permutation(len(pool))]
        return out[:n]

    order = passes(first, first_steps * batch_size) + passes(list(range(len(rows))), (steps - first_steps) * batch_size)
    out = data_jsonl.parent / "schedule.jsonl"
    out.write_text("".join(lines[i] + "\n" for i in order))
    return out, len(first)


# ------------------------------------------------------------------------------------------------------ evaluation
def _choice_token_ids(tokenizer, choices: list[str]) -> list[int]:
    ids = []
    for c in choices:
        tok = tokenizer(c, add_special_tokens=False)["input_ids"]
        if not tok or tok[0] == tokenizer.unk_token_id:
            raise ValueError(f"answer option {c!r} is not in the tokenizer's vocabulary")
        ids.append(tok[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"answer options {choices} share their first token; they cannot be scored by it")
    return ids


def next_token_logits(model, enc) -> torch.Tensor:
    """Logits of the first answer token after the prompt in ``enc``: the last prompt position of a causal LM, the
    decoder's first step (from ``decoder_start_token_id``) of an encoder-decoder LM."""
    extra = {}
    if model.is_seq2seq:
        start = model.generation_config.decoder_start_token_id
        if start is None:
            start = model.language_model.config.decoder_start_token_id
        extra["decoder_input_ids"] = torch.full((enc["input_ids"].shape[0], 1), int(start), device=enc["input_ids"].device)
    return model(**enc, **extra).logits[:, -1].float()


@torch.no_grad()
def evaluate(
    model, processor, data_jsonl: str | Path, *, batch_size: int = 50, with_audio: bool | None = None
) -> dict[str, dict[str, float]]:
    """Accuracy per kind on a synthetic ``data.jsonl``: ``{"video": {...}, "single_frame": {...}, "chance": {...},
    "count": {...}}``, and ``"video_by_answer"``: ``{kind: {answer: accuracy with the clip}}`` (e.g. shapes vs colours).

    A question is answered by the option whose (first) token has the highest next-token logit after the
    generation prompt; the single-frame baseline feeds :func:`hf_videollm.synthetic.single_frame_baseline` of the
    same decoded frames. ``with_audio`` (default: when a video part of the data says so) gives the model each video's
    own audio track too, with both the clip and the single frame.
    """
    data_jsonl = Path(data_jsonl)
    rows = [json.loads(line) for line in data_jsonl.read_text().splitlines() if line.strip()]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct: dict[str, dict[str, int]] = {"video": {}, "single_frame": {}}
    total: dict[str, int] = {}
    by_answer: dict[str, dict[str, list[int]]] = {}  # kind -> answer -> [correct with the clip, asked]
    chance: dict[str, float] = {}
    for start in range(0, len(rows), batch_size):
        batch_rows = rows[start : start + batch_size]
        texts, clips, singles = [], [], []
        for row in batch_rows:
            user = row["messages"][0]
            question = next(p["text"] for p in user["content"] if p["type"] == "text")
            part = next(p for p in user["content"] if p["type"] == "video")
            video = part["video"]
            prompt = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
            texts.append(processor.apply_chat_template(prompt, add_generation_prompt=True))
            frames = processor.sample_frames(str(data_jsonl.parent / video))
            hear = part.get("with_audio", False) if with_audio is None else with_audio
            if hear:
                from .processors.videollama2_av import VideoAudioTrack

                track = VideoAudioTrack(str(data_jsonl.parent / video))
                clips.append({"video": frames, "audio": track})
                singles.append({"video": S.single_frame_baseline(frames), "audio": track})
            else:
                clips.append(frames)
                singles.append(S.single_frame_baseline(frames))
        for name, videos in (("video", clips), ("single_frame", singles)):
            enc = processor(text=texts, videos=videos, padding=True, padding_side="left").to(device)
            logits = next_token_logits(model, enc)
            for i, row in enumerate(batch_rows):
                ids = _choice_token_ids(processor.tokenizer, row["choices"])
                pick = row["choices"][int(logits[i, ids].argmax())]
                kind = row["kind"]
                correct[name][kind] = correct[name].get(kind, 0) + int(pick == row["answer"])
                if name == "video":
                    tally = by_answer.setdefault(kind, {}).setdefault(row["answer"], [0, 0])
                    tally[0] += int(pick == row["answer"])
                    tally[1] += 1
        for row in batch_rows:
            total[row["kind"]] = total.get(row["kind"], 0) + 1
            chance[row["kind"]] = chance.get(row["kind"], 0.0) + 1.0 / len(row["choices"])  # summed, then averaged
    model.train(was_training)
    out = {name: {k: correct[name].get(k, 0) / n for k, n in total.items()} for name in correct}
    out["chance"] = {k: chance[k] / n for k, n in total.items()}  # appearance mixes 4 colours and 3 shapes
    out["count"] = {k: float(n) for k, n in total.items()}
    out["video_by_answer"] = {k: {a: c / n for a, (c, n) in sorted(v.items())} for k, v in by_answer.items()}
    return out


def check_targets(accuracy: dict[str, dict[str, float]]) -> list[dict]:
    """Every applicable target with its measured value and whether it is met."""
    rows = []
    for kind, bound in TARGETS["video_min"].items():
        if kind in accuracy["video"]:
            value = accuracy["video"][kind]
            rows.append({"kind": kind, "what": "video >=", "bound": bound, "value": value, "met": value >= bound})
    for kind, bound in TARGETS["single_frame_max"].items():
        if kind in accuracy["single_frame"]:
            value = accuracy["single_frame"][kind]
            rows.append({"kind": kind, "what": "single frame <=", "bound": bound, "value": value, "met": value <= bound})
    return rows


def format_table(accuracy: dict[str, dict[str, float]]) -> str:
    lines = [f"{'kind':<12} {'video':>7} {'1 frame':>8} {'chance':>7} {'n':>5}"]
    for kind in accuracy["video"]:
        lines.append(
            f"{kind:<12} {accuracy['video'][kind]:>7.1%} {accuracy['single_frame'][kind]:>8.1%} "
            f"{accuracy['chance'][kind]:>7.1%} {int(accuracy['count'][kind]):>5}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ benchmark
def _build_base(settings: BenchSettings, out: Path):
    """The tiny model + processor of the demo preset, saved to ``out`` (the training run loads it from there)."""
    from .registry import MODELS
    from .tiny import tiny_tokenizer

    spec = MODELS[settings.model]
    tokenizer = tiny_tokenizer(extra_words=S.VOCABULARY)
    model, processor = spec.build_tiny(tokenizer, settings.seed, **spec.get_demo_preset().model_overrides)
    processor.num_frames, processor.video_fps = settings.num_frames, None
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return sum(p.numel() for p in model.parameters()), model.part_names()


def _scheduler_args(preset, max_steps: int) -> dict:
    """``lr_scheduler_kwargs`` of the preset's schedule at ``max_steps`` (warmup_stable_decay: the decay's length)."""
    if preset.lr_scheduler_type == "warmup_stable_decay":
        return {"lr_scheduler_kwargs": {"num_decay_steps": max(1, round(preset.decay_fraction * max_steps))}}
    return {}


def _data_workers(settings: BenchSettings, per_kind: dict[str, int] | int) -> int:
    videos = sum(per_kind.values()) if isinstance(per_kind, dict) else per_kind * len(settings.kinds)
    return min(settings.data_workers, os.cpu_count() or 1) if videos >= 1000 else 1


def run_benchmark(settings: BenchSettings) -> dict:
    """Generate data, train the tiny model, evaluate it; returns the report (model saved in ``workdir/model``)."""
    import transformers

    from .registry import MODELS
    from .training.train import TrainConfig, train

    settings = settings.resolve()
    preset = MODELS[settings.model].get_demo_preset()
    workdir = Path(settings.workdir or tempfile.mkdtemp(prefix="hf_videollm_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    say = print if settings.progress else (lambda *a, **k: None)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    data = workdir / "data"
    paths = {}
    for split, n in (("train", settings.train_per_kind), ("test", settings.test_per_kind)):
        with _progress_bar(settings.progress, f"data: {split} videos", "video") as tick:
            paths[split] = S.generate_dataset(
                data, split=split, samples_per_kind=n, kinds=settings.kinds, seed=settings.seed,
                size=settings.video_size, num_frames=settings.video_frames, workers=_data_workers(settings, n),
                audio=True if settings.audio else None, progress=tick,
            )
        if settings.audio:
            _mark_with_audio(paths[split])
    timings["generate_data"] = time.perf_counter() - t
    per_kind = ", ".join(f"{k} {n}" for k, n in settings.train_per_kind.items())
    say(f"data: {sum(settings.train_per_kind.values())} training videos ({per_kind}) and "
        f"{settings.test_per_kind} test videos per kind in {timings['generate_data']:.1f} s -> {data}")

    train_file, shuffle = paths["train"], True
    if settings.first_steps:
        train_file, n_first = write_schedule(
            paths["train"], first_types=preset.first_types, first_steps=settings.first_steps,
            steps=settings.max_steps, batch_size=settings.batch_size, seed=settings.seed,
        )
        shuffle = False
        say(f"schedule: {settings.first_steps} steps of {', '.join(preset.first_types)} questions first "
            f"({n_first} videos), then all kinds -> {train_file}" if n_first else
            f"schedule: none of {', '.join(preset.first_types)} in this run; all kinds from the start")

    base = workdir / "base_model"
    params, parts = _build_base(settings, base)
    say(f"model: tiny {settings.model}, {params:,} parameters, trained from scratch "
        f"({settings.max_steps} steps x {settings.batch_size} samples, {settings.num_frames} frames per video)")

    say(f"training: every training video is probed and every record checked, each video decoded once, then "
        f"{settings.max_steps} steps")
    t = time.perf_counter()
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        cfg = TrainConfig(
            model=str(base), data=[str(train_file)], shuffle=shuffle, output_dir=str(workdir / "model"),
            model_family=settings.model, stage=preset.stage, trainable_parts=list(parts),
            learning_rate=settings.learning_rate, max_steps=settings.max_steps,
            per_device_train_batch_size=settings.batch_size, warmup_ratio=settings.warmup_ratio,
            weight_decay=0.0, lr_scheduler_type=preset.lr_scheduler_type, seed=settings.seed, cache_encoded_samples=True,
            # every video decoded once, before the first step, on every core: the tensors the first epoch would make
            prefill_cache_threads=min(2, os.cpu_count() or 1),
            logging_steps=max(1, settings.max_steps // 10), use_cpu=not torch.cuda.is_available(),
            extra_training_args={
                "disable_tqdm": not settings.progress, "max_grad_norm": 1.0, **_scheduler_args(preset, settings.max_steps),
                **preset.trainer_args, **settings.extra,
            },
        )
        trainer = train(cfg) if settings.progress else _quiet(train, cfg)
    finally:
        transformers.logging.set_verbosity(verbosity)
    timings["train"] = time.perf_counter() - t
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    say(f"trained in {timings['train']:.1f} s; loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "trained")

    t = time.perf_counter()
    from .training.trainer import unwrap_videollm

    model = unwrap_videollm(trainer.model)
    processor = trainer.processing_class
    accuracy = evaluate(model, processor, paths["test"], with_audio=bool(settings.audio))
    timings["evaluate"] = time.perf_counter() - t
    return {
        "model": settings.model,
        "parameters": params,
        "settings": asdict(settings) | {"workdir": str(workdir)},
        "model_dir": str(workdir / "model"),
        "train_loss": {"first": losses[0] if losses else None, "last": losses[-1] if losses else None, "logged": losses},
        "accuracy": accuracy,
        "targets": check_targets(accuracy),
        "seconds": {k: round(v, 2) for k, v in timings.items()},
        "torch_threads": torch.get_num_threads(),
    }


@contextlib.contextmanager
def _progress_bar(enabled: bool, desc: str, unit: str):
    """Yields ``tick(done, total)`` driving a tqdm bar (count, rate, elapsed and remaining time); a no-op when off."""
    if not enabled:
        yield lambda done, total: None
        return
    from tqdm.auto import tqdm

    bar = None

    def tick(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
        bar.update(done - bar.n)

    try:
        yield tick
    finally:
        if bar is not None:
            bar.close()


def _mark_with_audio(data_jsonl: Path) -> None:
    """Every video part of a synthetic ``data.jsonl`` gets ``"with_audio": true`` (the model hears its track)."""
    rows = [json.loads(line) for line in data_jsonl.read_text().splitlines() if line.strip()]
    for row in rows:
        for message in row["messages"]:
            for part in message["content"]:
                if part["type"] == "video":
                    part["with_audio"] = True
    data_jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _quiet(fn, *args):
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


# ------------------------------------------------------------------------------------------------------ demo
def _new_videos(settings: BenchSettings, out: Path) -> list[dict]:
    """One newly generated video file per kind, from seeds no dataset split uses (a ``val`` seed past the data)."""
    from .media import write_video

    out.mkdir(parents=True, exist_ok=True)
    items = []
    for kind in settings.kinds:
        seed = S.sample_seed(settings.seed + 1, "val", kind, 0)
        frames, audio, question, answer, choices, _ = S.make_sample(
            kind, seed, size=settings.video_size, num_frames=settings.video_frames
        )
        path = write_video(out / f"new_{kind}.mp4", frames, 8, audio=audio, audio_rate=S.AUDIO_RATE)
        items.append({"kind": kind, "video": str(path), "question": question, "expected": answer})
    return items


def answer_in_fresh_process(model_dir: str | Path, items: list[dict], timeout: float = 300) -> list[str]:
    """Load ``model_dir`` with the Auto classes in a new Python process and answer each item's question.

    ``-P``: the current directory is not put on the new process' ``sys.path`` -- run from the folder that holds a clone
    named ``hf_videollm``, ``import hf_videollm`` would find that folder as an empty namespace package (ahead of the
    editable install), register nothing, and the Auto classes would ask for ``trust_remote_code``."""
    cmd = [sys.executable, "-P", "-m", "hf_videollm.demo", "--answer", str(model_dir), json.dumps(items)]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"the fresh process failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    last = [line for line in done.stdout.splitlines() if line.startswith("{")][-1]
    return json.loads(last)["answers"]


def _answer_main(model_dir: str, items_json: str) -> None:
    from .chat import answer, load_for_inference

    model, processor = load_for_inference(model_dir)
    answers = []
    for item in json.loads(items_json):
        messages = [{"role": "user", "content": [{"type": "video", "video": item["video"]},
                                                 {"type": "text", "text": item["question"]}]}]
        answers.append(answer(model, processor, messages, max_new_tokens=4))
    print(json.dumps({"answers": answers, "model_class": type(model).__name__}))


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    names = {f.name for f in fields(BenchSettings)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "kinds" in values and isinstance(values["kinds"], str):
        values["kinds"] = [k.strip() for k in values["kinds"].split(",") if k.strip()]
    values["progress"] = not getattr(args, "quiet", False)
    return BenchSettings(**values)


def run_demo(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    settings = settings_from_args(args).resolve()
    if settings.workdir is None:
        settings.workdir = tempfile.mkdtemp(prefix="hf_videollm_demo_")
    report = run_benchmark(settings)
    print()
    print(format_table(report["accuracy"]))

    t = time.perf_counter()
    items = _new_videos(settings, Path(settings.workdir) / "new_videos")
    answers = answer_in_fresh_process(report["model_dir"], items)
    for item, reply in zip(items, answers):
        item["answer"] = reply
        item["correct"] = reply.strip().strip(".").lower() == item["expected"]
    report["seconds"]["reload_and_answer"] = round(time.perf_counter() - t, 2)
    report["new_videos"] = items
    report["seconds"]["total"] = round(time.perf_counter() - t0, 2)

    print(f"\nsaved with save_pretrained to {report['model_dir']}; reloaded with AutoModelForImageTextToText + "
          f"AutoProcessor in a fresh process, asked about new video files with generate:")
    for item in items:
        mark = "ok" if item["correct"] else f"wrong (expected {item['expected']})"
        print(f"  {Path(item['video']).name}: {item['question']!r} -> {item['answer']!r} {mark}")
    _print_targets(report["targets"])
    print(f"total {report['seconds']['total']:.0f} s")
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2, default=str))
    print(where_the_files_are(settings, report, args.report))
    return 0 if all(t["met"] for t in report["targets"]) or not getattr(args, "strict", False) else 1


def where_the_files_are(settings: BenchSettings, report: dict, report_path: str | None) -> str:
    """The demo's last lines: every directory it wrote and what is in it (it never deletes them)."""
    work = Path(settings.workdir)
    lines = [
        f"files (kept; delete {work} when done):",
        f"  data:       {work / 'data'} (train/ and test/: videos/ + data.jsonl)",
        f"  model:      {report['model_dir']} (AutoModelForImageTextToText / AutoProcessor.from_pretrained, "
        f"or: hf-videollm chat {report['model_dir']})",
        f"  base model: {work / 'base_model'} (the untrained start)",
    ]
    if report.get("new_videos"):
        lines.append(f"  new videos: {Path(report['new_videos'][0]['video']).parent}")
    if report_path:
        lines.append(f"  report:     {report_path}")
    return "\n".join(lines)


def _print_targets(targets: list[dict]) -> None:
    if not targets:
        return
    met = sum(t["met"] for t in targets)
    print(f"targets met: {met}/{len(targets)}" + "".join(
        f"\n  {t['kind']} {t['what']} {t['bound']:.0%}: {t['value']:.1%} {'met' if t['met'] else 'NOT met'}"
        for t in targets
    ))


def run_bench_synthetic(args: argparse.Namespace) -> int:
    report = run_benchmark(settings_from_args(args))
    print()
    print(f"model: tiny {report['model']} ({report['parameters']:,} parameters); seconds: {report['seconds']}")
    print(format_table(report["accuracy"]))
    _print_targets(report["targets"])
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2, default=str))
        print(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--answer":
        _answer_main(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit("usage: python -m hf_videollm.demo --answer MODEL_DIR ITEMS_JSON (internal; use hf-videollm demo)")
