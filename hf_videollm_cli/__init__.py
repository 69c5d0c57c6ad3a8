"""``hf-videollm`` command line: demo | chat | convert | train | export | push | bench.

A package of its own, beside ``hf_videollm``: ``import hf_videollm`` imports torch and transformers and registers
every model with the Auto classes (seconds), which ``--help`` and argument errors must not wait for. The parser is
built from :mod:`hf_videollm_cli._meta` (stage names and ``TrainConfig`` fields, a static copy of the registry's
values that ``tests/test_cli.py`` keeps equal to them); a command imports the package only when it runs.
"""

from __future__ import annotations

import argparse
import sys


def _cmd_demo(args: argparse.Namespace) -> int:
    from hf_videollm.demo import run_demo

    return run_demo(args)


def _cmd_bench_synthetic(args: argparse.Namespace) -> int:
    from hf_videollm.demo import run_bench_synthetic

    return run_bench_synthetic(args)


def _per_kind(text: str):
    from hf_videollm.demo import parse_per_kind

    try:
        return parse_per_kind(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _add_bench_flags(p: argparse.ArgumentParser) -> None:
    """Flags of the synthetic benchmark (``None`` = the model's demo preset, see ``hf_videollm.demo_presets.DemoPreset``)."""
    p.add_argument(
        "--model", default=None, help="registered model name (its tiny demo config is trained); default videollama2"
    )
    p.add_argument("--workdir", default=None, help="where data and the model go (default: a temporary directory)")
    p.add_argument("--report", default=None, help="write a JSON report here")
    p.add_argument("--kinds", default=None, help="comma-separated question kinds (default: all the model can perceive)")
    p.add_argument(
        "--train-per-kind", type=_per_kind, default=None, metavar="N|KIND=N,...",
        help="training videos per kind: one count for every kind, or kind=count pairs that update the preset's",
    )
    p.add_argument("--test-per-kind", type=int, default=None, help="held-out videos per kind (default 100)")
    p.add_argument("--max-steps", type=int, default=None, help="training steps")
    p.add_argument(
        "--first-steps", type=int, default=None,
        help="steps on the preset's first question types (e.g. direction and shape) before the mix; 0: mix throughout",
    )
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--num-frames", type=int, default=None, help="frames the model samples from each video")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-audio", dest="audio", action="store_const", const=False, default=None,
                   help="models that hear: never give them the audio tracks (the no-audio baseline)")
    p.add_argument("--quiet", action="store_true", help="no training progress output")


def _cmd_convert(args: argparse.Namespace) -> int:
    from hf_videollm.conversion import convert

    report = convert(
        args.model,
        args.src,
        args.out,
        source_format=args.source_format,
        vision_tower=args.vision_tower,
        base=args.base,
        audio_config=args.audio_config,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        progress=not args.quiet,
    )
    print(report.summary())
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from hf_videollm.chat import run_chat

    return run_chat(args)


def _list_configs() -> int:
    from ._configs import configs_dir, describe_config, example_configs

    shipped = example_configs()
    print(f"example training configs ({configs_dir()}), one per model and stage; "
          "use: hf-videollm train --config NAME --data ... --output-dir ... (flags override the file)")
    for name, path in shipped.items():
        print(f"  {name:<29} {describe_config(path)}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    if args.list_configs:
        return _list_configs()
    from hf_videollm.training.train import TrainConfig, load_train_config, train

    from ._meta import TRAIN_FIELDS

    values = {f: getattr(args, f) for f, _ in TRAIN_FIELDS if getattr(args, f, None) is not None}
    if args.config:
        cfg = load_train_config(args.config, **values)
    else:
        missing = [f for f in ("model", "data", "output_dir") if f not in values]
        if missing:
            raise ValueError(f"give --config FILE or --{' --'.join(m.replace('_', '-') for m in missing)}")
        cfg = TrainConfig(**values)
    trainer = train(cfg)
    if trainer.is_world_process_zero():
        print(f"saved to {cfg.output_dir}")
    return 0


def _stages_epilog() -> str:
    """``--stage`` names of every registered model with one line each (the registry's recipes, via ``_meta``)."""
    from ._meta import STAGES

    lines = [
        "example configs, one per model and stage: --config MODEL/STAGE (e.g. --config llava/stage2), listed by",
        "--list-configs; flags override the file's values.",
        "",
        "stages (--stage), per model (--model NAME or tiny:NAME):",
    ]
    for name, stages in STAGES.items():
        lines.append(f"  {name}:")
        for stage_name, description in stages:
            lines.append(f"    {stage_name:<10} {description}")
    return "\n".join(lines)


_CHOICES = {"dtype": ["float32", "bfloat16", "float16"], "mode": ["full", "lora", "qlora"]}


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (``--per-device-train-batch-size``...); a config file gives the rest."""
    import json

    from ._meta import TRAIN_FIELDS

    for name, hint in TRAIN_FIELDS:
        flag = "--" + name.replace("_", "-")
        if "bool" in hint and "str" not in hint:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None)
        elif "list" in hint:
            p.add_argument(flag, dest=name, nargs="+", default=None)
        elif "dict" in hint:
            p.add_argument(flag, dest=name, type=json.loads, default=None, help="JSON object")
        elif "float" in hint and "int" not in hint:
            p.add_argument(flag, dest=name, type=float, default=None)
        elif hint.startswith("int"):
            p.add_argument(flag, dest=name, type=int, default=None)
        elif name in _CHOICES:
            p.add_argument(flag, dest=name, default=None, choices=_CHOICES[name])
        else:
            p.add_argument(flag, dest=name, default=None)


def _cmd_export(args: argparse.Namespace) -> int:
    from hf_videollm.training.export import export_model

    out = export_model(args.checkpoint, args.out, dtype=args.dtype, base=args.base)
    print(f"exported to {out}")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from hf_videollm.training.hub import push_to_hub

    url = push_to_hub(
        args.model_dir, args.repo_id, private=args.private, token=args.token,
        create_pr=args.create_pr, overwrite_card=args.overwrite_card,
    )
    print(url)
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from hf_videollm.benchmark import run_bench, run_bench_suite

    if args.suite:
        return run_bench_suite(args.suite, record=not args.no_record)
    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hf-videollm", description="Hugging Face-native video LLMs")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser(
        "demo",
        help="train a tiny video model on generated videos, show it uses time, save, reload and answer a new video",
    )
    _add_bench_flags(d)
    d.add_argument("--strict", action="store_true", help="exit with 1 when a target is not met")
    d.set_defaults(func=_cmd_demo)

    bs = sub.add_parser("bench-synthetic", help="the demo's synthetic video-QA benchmark for any registered model")
    _add_bench_flags(bs)
    bs.set_defaults(func=_cmd_bench_synthetic)

    c = sub.add_parser("convert", help="convert an original or transformers checkpoint to hf_videollm format")
    c.add_argument("model", help="model family, e.g. llava")
    c.add_argument("src", help="checkpoint directory or Hub id")
    c.add_argument("out", help="output directory")
    c.add_argument("--from", dest="source_format", choices=["original", "transformers"], default="original")
    c.add_argument("--vision-tower", default=None, help="local path or Hub id of the vision tower (default: as the release names it)")
    c.add_argument("--base", default=None, help="local path or Hub id of the base LLM of a delta release")
    c.add_argument("--audio-config", default=None,
                   help="JSON object of BEATs config fields for an audio-visual release (default: read from its weights)")
    c.add_argument("--dtype", default=None, choices=[None, "float32", "float16", "bfloat16"], help="cast floating weights")
    c.add_argument("--max-shard-size", default="5GB")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_cmd_convert)

    ch = sub.add_parser("chat", help="ask a model about images / videos")
    ch.add_argument("model", help="model directory or Hub id (hf_videollm format)")
    ch.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    ch.add_argument("--video", action="append", default=[], help="video file (repeatable)")
    ch.add_argument("--audio", action="append", default=[], help="audio file (repeatable; audio-visual models)")
    ch.add_argument("--with-audio", action="store_true", help="audio-visual models also hear each video's own track")
    ch.add_argument("--prompt", default=None, help="question; omit for an interactive session")
    ch.add_argument("--max-new-tokens", type=int, default=128)
    ch.add_argument("--num-frames", type=int, default=None)
    ch.add_argument("--fps", type=float, default=None)
    ch.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ch.add_argument("--load-in-4bit", action="store_true", help="quantize the language model with bitsandbytes")
    ch.add_argument("--attn", default=None, choices=["eager", "sdpa", "flash_attention_2"],
                    help="attention implementation (default: the model's)")
    ch.set_defaults(func=_cmd_chat)

    t = sub.add_parser("train", help="fine-tune with the model's stage recipe (full, LoRA or QLoRA) on Trainer/Accelerate",
                       epilog=_stages_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", default=None,
                   help="JSON or YAML file with TrainConfig fields, or the name of a shipped example such as "
                        "llava/stage2 (flags override it)")
    t.add_argument("--list-configs", action="store_true", help="list the shipped example configs and exit")
    _add_train_flags(t)
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("export", help="merge LoRA into 16-bit weights and save model + processor + chat template")
    e.add_argument("checkpoint", help="training output directory (or a checkpoint-N inside it)")
    e.add_argument("out", help="output directory")
    e.add_argument("--dtype", default="bfloat16", choices=["float32", "float16", "bfloat16"])
    e.add_argument("--base", default=None, help="base model of a LoRA run (default: as recorded by training)")
    e.set_defaults(func=_cmd_export)

    pu = sub.add_parser("push", help="push a model directory to the Hub with a generated model card")
    pu.add_argument("model_dir")
    pu.add_argument("repo_id")
    pu.add_argument("--private", action="store_true")
    pu.add_argument("--token", default=None)
    pu.add_argument("--create-pr", action="store_true")
    pu.add_argument("--overwrite-card", action="store_true", help="replace a hand-written README.md")
    pu.set_defaults(func=_cmd_push)

    b = sub.add_parser("bench", help="measure media encoding and generation throughput")
    b.add_argument("--model", default="llava", help="registered name (tiny random model) or a model directory")
    b.add_argument("--frames", type=int, default=8)
    b.add_argument("--new-tokens", type=int, default=32)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--attn", default="sdpa")
    b.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    b.add_argument("--device", default="cpu")
    b.add_argument("--suite", default=None, metavar="PARTS",
                   help="run the bench/ scripts instead (source checkout): 'all' or comma-separated parts of "
                        "preprocess, model, convert, load_video, e2e; each prints its table and appends it to bench/RESULTS.md")
    b.add_argument("--no-record", action="store_true", help="with --suite: print only, do not append to bench/RESULTS.md")
    b.set_defaults(func=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader of our output closed it (`hf-videollm train --list-configs | head`)
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 0
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        print(f"hf-videollm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 -- network / Hub / OS errors end as one line; anything else is a bug
        line = _network_error_line(e)
        if line is None:
            raise
        print(f"hf-videollm {args.command}: error: {line}", file=sys.stderr)
        return 2


def _network_error_line(e: BaseException) -> str | None:
    """One line for an OS, network or Hub error (with what to do), or None for anything else."""
    modules = {c.__module__.split(".")[0] for c in type(e).__mro__}
    network = modules & {"httpx", "httpx2", "requests", "urllib3", "huggingface_hub"} or isinstance(
        e, (ConnectionError, TimeoutError))
    if not network and not isinstance(e, OSError):
        return None
    text = " ".join(str(e).split()) or type(e).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    if network:
        return (f"{type(e).__name__}: {text} -- check the network connection, the repo id and access "
                "(`hf auth login`), or set HF_HUB_OFFLINE=1 to use only the local cache")
    return f"{type(e).__name__}: {text}"


if __name__ == "__main__":
    sys.exit(main())

