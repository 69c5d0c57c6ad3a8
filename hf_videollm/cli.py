"""``hf-videollm`` command line: demo | chat | convert | bench."""

from __future__ import annotations

import argparse
import sys


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def _cmd_convert(args: argparse.Namespace) -> int:
    from .conversion import convert

    report = convert(
        args.model,
        args.src,
        args.out,
        source_format=args.source_format,
        vision_tower=args.vision_tower,
        base=args.base,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        progress=not args.quiet,
    )
    print(report.summary())
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from .chat import run_chat

    return run_chat(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .benchmark import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hf-videollm", description="Hugging Face-native video LLMs")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="build a tiny video model, run it on a generated video and print the answer")
    d.add_argument("--model", default="llava", help="registered model name (tiny config)")
    d.add_argument("--workdir", default=None, help="where generated files go (default: a temporary directory)")
    d.add_argument("--report", default=None, help="write a JSON report here")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_cmd_demo)

    c = sub.add_parser("convert", help="convert an original or transformers checkpoint to hf_videollm format")
    c.add_argument("model", help="model family, e.g. llava")
    c.add_argument("src", help="checkpoint directory or Hub id")
    c.add_argument("out", help="output directory")
    c.add_argument("--from", dest="source_format", choices=["original", "transformers"], default="original")
    c.add_argument("--vision-tower", default=None, help="local path or Hub id of the vision tower (default: as the release names it)")
    c.add_argument("--base", default=None, help="local path or Hub id of the base LLM of a delta release")
    c.add_argument("--dtype", default=None, choices=[None, "float32", "float16", "bfloat16"], help="cast floating weights")
    c.add_argument("--max-shard-size", default="5GB")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=_cmd_convert)

    ch = sub.add_parser("chat", help="ask a model about images / videos")
    ch.add_argument("model", help="model directory or Hub id (hf_videollm format)")
    ch.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    ch.add_argument("--video", action="append", default=[], help="video file (repeatable)")
    ch.add_argument("--prompt", default=None, help="question; omit for an interactive session")
    ch.add_argument("--max-new-tokens", type=int, default=128)
    ch.add_argument("--num-frames", type=int, default=None)
    ch.add_argument("--fps", type=float, default=None)
    ch.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ch.add_argument("--load-in-4bit", action="store_true", help="quantize the language model with bitsandbytes")
    ch.add_argument("--attn", default=None, choices=[None, "eager", "sdpa", "flash_attention_2"])
    ch.set_defaults(func=_cmd_chat)

    b = sub.add_parser("bench", help="measure media encoding and generation throughput")
    b.add_argument("--model", default="llava", help="registered name (tiny random model) or a model directory")
    b.add_argument("--frames", type=int, default=8)
    b.add_argument("--new-tokens", type=int, default=32)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--attn", default="sdpa")
    b.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    b.add_argument("--device", default="cpu")
    b.set_defaults(func=_cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"hf-videollm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

