"""Training data: LLaVA-style ``conversations``, OpenAI-style ``messages`` and the ms-swift / LLaMA-Factory layout
(string contents with ``<image>``/``<video>``/``<audio>`` tags + top-level ``images``/``videos``/``audios``), read with
``datasets``.

Both formats become one form, chat messages whose content is a list of parts::

    {"role": "user", "content": [{"type": "video", "video": "/abs/clip.mp4"}, {"type": "text", "text": "..."}]}

Media paths are resolved against ``media_root`` (default: the data file's directory); validation probes each file
once (empty or undecodable files are listed with their sample index before training), full decoding happens in the
collator, i.e. lazily in the DataLoader workers. :func:`validate_records` checks every
sample up front (missing files, placeholder counts, empty or malformed conversations) and reports all problems
with their indices; ``skip_invalid=True`` drops them instead of failing.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["DataFileError", "DataProblem", "InvalidDataError", "VideoLLMDataset", "load_records", "normalize_record", "validate_records"]

MEDIA_KINDS = ("image", "video", "audio")
_LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_MARKERS = {"image": "<image>", "video": "<video>", "audio": "<audio>"}


@dataclass(frozen=True)
class DataProblem:
    index: int
    reason: str

    def __str__(self) -> str:
        return f"sample {self.index}: {self.reason}"


class InvalidDataError(ValueError):
    def __init__(self, problems: Sequence[DataProblem], total: int):
        self.problems = list(problems)
        shown = "\n  ".join(str(p) for p in self.problems[:50])
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(
            f"{len(self.problems)} of {total} training samples are invalid:\n  {shown}{more}\n"
            f"Fix them, or pass skip_invalid=True (--skip-invalid) to drop them."
        )


class DataFileError(ValueError):
    """A training data file that cannot be read: one line naming the file (and line)."""


def _check_json_file(path: Path) -> None:
    """Empty files, non-UTF-8 bytes, malformed JSON / JSON Lines, ``[]`` and non-object records -> one
    :class:`DataFileError` line naming the file and line, before ``datasets`` turns them into long tracebacks."""
    data = path.read_bytes()
    if not data.strip():
        raise DataFileError(f"{path}: the file is empty; expected a JSON list of records or JSON Lines (one per line)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataFileError(
            f"{path}: line {line}: not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); re-save the file as UTF-8"
        ) from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataFileError(f"{path}: line {e.lineno} column {e.colno}: invalid JSON ({e.msg})") from None
        if not value:
            raise DataFileError(f"{path}: holds an empty list: no records")
        for i, rec in enumerate(value):
            if not isinstance(rec, dict):
                raise DataFileError(f"{path}: record {i} is {type(rec).__name__}, expected an object")
        return
    n = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if n == 0 and lineno == 1:
                try:  # a .json file holding one pretty-printed object (datasets reads dicts of columns)
                    if isinstance(json.loads(text), dict):
                        return
                except json.JSONDecodeError:
                    pass
            raise DataFileError(f"{path}: line {lineno} column {e.colno}: invalid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise DataFileError(f"{path}: line {lineno}: a record must be a JSON object, got {type(rec).__name__}")
        n += 1


def load_records(paths: str | Path | Sequence[str | Path], split: str = "train"):
    """Read json / jsonl / parquet files with ``datasets`` (a list of records per JSON file is fine too).

    ``datasets.Dataset`` / ``DatasetDict`` objects are accepted as sources too (a DatasetDict gives its ``split``);
    their records go through the same normalize / validation path as files, and relative media paths in them
    resolve against the current working directory."""
    from datasets import Dataset, DatasetDict, concatenate_datasets, load_dataset

    paths = [paths] if isinstance(paths, (str, Path, Dataset, DatasetDict)) else list(paths)
    parts = []
    for i, p in enumerate(paths):
        if isinstance(p, (Dataset, DatasetDict)):
            parts.append(_from_datasets_object(p, split, i))
            continue
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"training data file {p} not found")
        suffix = p.suffix.lower()
        builder = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(suffix)
        if builder is None:
            raise ValueError(f"{p}: unsupported data format {suffix!r}; use .json, .jsonl or .parquet")
        if builder == "json":
            _check_json_file(p)
        try:
            ds = load_dataset(builder, data_files=str(p), split="train")  # local files hold one split
        except Exception as e:  # noqa: BLE001 -- datasets wraps parse errors in DatasetGenerationError
            cause = e.__cause__ or e
            raise DataFileError(f"{p}: could not be read as {builder} ({type(cause).__name__}: {cause})") from e
        if len(ds) == 0:
            raise DataFileError(f"{p}: holds no records")
        ds = ds.add_column("_media_root", [str(p.parent.resolve())] * len(ds))
        parts.append(ds)
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def _from_datasets_object(ds, split: str, index: int):
    from datasets import DatasetDict

    where = f"data source {index} ({type(ds).__name__})"
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise DataFileError(
                f"{where}: has no split {split!r}; its splits are {sorted(ds)} -- pass data_split=<one of them> "
                "(CLI: --data-split) or the split itself, e.g. data=dsdict['validation']")
        ds = ds[split]
    if len(ds) == 0:
        raise DataFileError(f"{where}: holds no records")
    if "_media_root" not in ds.column_names:
        ds = ds.add_column("_media_root", [str(Path.cwd().resolve())] * len(ds))
    return ds


def _resolve(path: Any, root: str | None) -> Any:
    if not isinstance(path, str) or re.match(r"^[a-z]+://", path):
        return path
    p = Path(path).expanduser()
    if not p.is_absolute() and root:
        p = Path(root) / p
    return str(p)


def _as_list(x) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


#: top-level media fields: LLaVA (``image``: a path or list) and ms-swift / LLaMA-Factory (``images`` / ``videos`` /
#: ``audios`` lists, matched in order to the ``<image>`` / ``<video>`` / ``<audio>`` tags in string contents).
_MEDIA_FIELDS = {"image": ("image", "images"), "video": ("video", "videos"), "audio": ("audio", "audios")}


def _record_media(record: dict, root) -> dict[str, tuple[str, list]]:
    """kind -> (field name, resolved paths) of the record's top-level media lists."""
    out = {}
    for kind, fields in _MEDIA_FIELDS.items():
        present = [f for f in fields if record.get(f) is not None and _as_list(record.get(f))]
        if len(present) > 1:
            raise ValueError(f"both {present[0]!r} and {present[1]!r} are set; use one {kind} field")
        field = present[0] if present else fields[-1]
        out[kind] = (field, [_resolve(x, root) for x in _as_list(record.get(field))])
    return out


def normalize_record(record: dict, media_root: str | None = None) -> list[dict]:
    """One record -> chat messages with content parts.

    Accepted: LLaVA ``conversations`` (``from``/``value``) with ``image`` / ``video``; OpenAI-style ``messages`` whose
    content is a list of parts; and the ms-swift / LLaMA-Factory layout, ``messages`` or ``conversations`` whose
    string contents hold ``<image>`` / ``<video>`` / ``<audio>`` tags, with top-level ``images`` / ``videos`` /
    ``audios`` lists (the n-th tag of a kind takes the n-th file). Tags without a file, or files without a tag in a
    record whose text has tags of that kind, are errors naming the field -- never a silent drop.
    """
    root = record.get("_media_root") if media_root is None else media_root
    media = _record_media(record, root)
    used = dict.fromkeys(MEDIA_KINDS, 0)
    if record.get("messages") is not None:
        out = _normalize_messages(record["messages"], root, media, used)
    elif record.get("conversations") is not None:
        out = _normalize_turns(record["conversations"], media, used)
    else:
        raise ValueError("record has neither 'messages' nor 'conversations'")
    # Media without a tag go to the start of the first user turn (LLaVA's preprocess_multimodal).
    first_user = next((m for m in out if m["role"] == "user"), None)
    for kind in MEDIA_KINDS:
        field, paths = media[kind]
        rest = paths[used[kind] :]
        if not rest:
            continue
        if used[kind]:
            raise ValueError(f"{len(paths)} files in {field!r} but {used[kind]} {_MARKERS[kind]} markers in the text")
        if first_user is None:
            raise ValueError(f"{field!r} has files but there is no user turn to attach them to")
        first_user["content"] = [{"type": kind, kind: p} for p in rest] + first_user["content"]
    if record.get("with_audio"):  # a record-level flag (VideoLLaMA 2 --va data): every video is heard with its audio
        for m in out:
            for part in m["content"]:
                if part["type"] == "video":
                    part.setdefault("with_audio", True)
    return out


def _split_tags(text: str, media: dict, used: dict) -> list[dict]:
    """A string with ``<image>``-style tags -> content parts, taking files from the record's media lists in order."""
    marker_re = re.compile("|".join(re.escape(v) for v in _MARKERS.values()))
    parts, pos = [], 0
    for m in marker_re.finditer(text):
        if m.start() > pos:
            parts.append({"type": "text", "text": text[pos : m.start()]})
        kind = next(k for k, v in _MARKERS.items() if v == m.group(0))
        field, paths = media[kind]
        if used[kind] >= len(paths):
            raise ValueError(
                f"more {_MARKERS[kind]} markers in the text than files in {field!r} ({len(paths)}): add the file to "
                f"{field!r} or remove the marker"
            )
        parts.append({"type": kind, kind: paths[used[kind]]})
        used[kind] += 1
        pos = m.end()
        if pos < len(text) and text[pos] == "\n":
            pos += 1  # "<image>\n" is the tag's own line break in LLaVA / swift data
    if pos < len(text) or not parts:
        parts.append({"type": "text", "text": text[pos:]})
    return parts


def _normalize_messages(messages, root, media, used) -> list[dict]:
    out = []
    for m in messages:
        role = m.get("role")
        content = m.get("content")
        if isinstance(content, str):
            parts = _split_tags(content, media, used)
        else:
            parts = []
            for part in content or []:
                kind = part.get("type")
                if kind in MEDIA_KINDS:
                    src = next((part.get(k) for k in (kind, "path", "url") if part.get(k) is not None), None)
                    entry = {"type": kind, kind: _resolve(src, root)}
                    for key, value in part.items():  # per-item options, e.g. a video's "with_audio" / "audio"
                        if key not in ("type", kind, "path", "url", "text") and value is not None:
                            entry[key] = _resolve(value, root) if key == "audio" else value
                    parts.append(entry)
                elif kind == "text":
                    parts.append({"type": "text", "text": part.get("text") or ""})
                else:
                    raise ValueError(f"unknown content part type {kind!r}")
        out.append({"role": role, "content": parts})
    return out


def _normalize_turns(turns, media, used) -> list[dict]:
    out = []
    for turn in turns:
        role = _LLAVA_ROLES.get(turn.get("from", turn.get("role")))
        if role is None:
            raise ValueError(f"unknown conversation role {turn.get('from', turn.get('role'))!r}; use human/gpt")
        text = turn.get("value", turn.get("content")) or ""
        out.append({"role": role, "content": _split_tags(text, media, used)})
    return out


def media_of(messages: list[dict]) -> dict[str, list]:
    """Media per kind in order; an item with options (a video's ``with_audio`` / ``audio``) is ``{kind: src, **options}``
    as the processors take it."""
    found = {k: [] for k in MEDIA_KINDS}
    for m in messages:
        for part in m["content"]:
            kind = part["type"]
            if kind in MEDIA_KINDS:
                options = {k: v for k, v in part.items() if k not in ("type", kind) and v is not None}
                found[kind].append({kind: part[kind], **options} if options else part[kind])
    return found


def _files_of(kind: str, item) -> list[tuple[str, Any]]:
    if isinstance(item, dict):
        return [(kind, item.get(kind))] + ([("audio", item["audio"])] if item.get("audio") is not None else [])
    return [(kind, item)]


@functools.lru_cache(maxsize=65536)
def _probe_media(kind: str, path: str) -> str | None:
    """Why the media file at ``path`` cannot be used (empty, not decodable), or None. Cheap: an image is opened and
    verified, a video/audio file opened and its first frame decoded; nothing is kept."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        if kind == "image":
            from PIL import Image

            with Image.open(path) as im:
                im.verify()
            return None
        import av

        with av.open(path) as container:
            streams = container.streams.video if kind == "video" else container.streams.audio
            if not streams:
                return f"has no {kind} stream"
            stream = streams[0]
            if stream.codec_context is None:
                return f"no decoder for its {kind} stream (damaged header or unsupported codec)"
            for _ in container.decode(stream):
                return None
            return f"no decodable {kind} frame"
    except Exception as e:  # noqa: BLE001 -- any failure to open/decode is the problem reported
        return f"cannot be decoded ({type(e).__name__}: {e})"


def _iter_rows(records) -> Iterator[dict]:
    """The records as dicts, read a batch at a time from a ``datasets.Dataset`` (its row-by-row access
    cost ~0.1 ms a row more in the demo's 76,800-row schedule) or in order from a list."""
    if hasattr(records, "iter") and hasattr(records, "column_names"):
        for batch in records.iter(batch_size=1024):
            keys = list(batch)
            for values in zip(*(batch[k] for k in keys), strict=True):
                yield dict(zip(keys, values, strict=True))
    else:
        yield from records


def _record_problems(rec, processor, modalities, check_files: bool) -> list[str]:
    """What is wrong with one record (messages, without its index)."""
    try:
        msgs = normalize_record(rec)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return [f"malformed record: {e}"]
    if not msgs:
        return ["empty conversation"]
    problems: list[str] = []
    roles = [m["role"] for m in msgs]
    if any(r not in ("system", "user", "assistant") for r in roles):
        problems.append(f"unknown role in {roles}")
    if "assistant" not in roles:
        problems.append("no assistant turn: nothing to learn from")
    elif not any(p.get("text", "").strip() for m in msgs if m["role"] == "assistant" for p in m["content"]):
        problems.append("assistant turns are empty")
    for kind, items in media_of(msgs).items():
        if items and kind not in modalities:
            problems.append(f"has {kind} but the model takes {list(modalities)}")
        for kind_, src in (f for item in items for f in _files_of(kind, item)):
            if src is None:
                problems.append(f"{kind_} part without a path")
            elif check_files and isinstance(src, str) and "://" not in src:
                if not Path(src).is_file():
                    problems.append(f"{kind_} file not found: {src}")
                else:
                    bad = _probe_media(kind_, src)
                    if bad:
                        problems.append(f"{kind_} file {src}: {bad}")
    if processor is not None:
        for m in msgs:
            for part in m["content"]:
                if part["type"] == "text":
                    for kind in modalities:
                        token = processor.media_token(kind)
                        if token in part["text"] and m["role"] == "assistant":
                            problems.append(f"assistant text contains the placeholder {token}")
    return problems


def validate_records(records, processor=None, *, check_files: bool = True) -> list[DataProblem]:
    """Every problem of every sample, with its index: malformed records, missing files, and (``check_files``)
    media files that are empty or cannot be decoded (each probed once: opened, first frame decoded).

    Identical records (a schedule that repeats rows, e.g. the demo's 76,800 rows over 5,000 samples) are checked
    once: the result is kept by the record's JSON text."""
    problems: list[DataProblem] = []
    modalities = getattr(processor, "modalities", MEDIA_KINDS)
    seen: dict[str, list[str]] = {}
    for i, rec in enumerate(_iter_rows(records)):
        try:
            key = json.dumps(rec, sort_keys=True, default=repr)
        except (TypeError, ValueError):  # not JSON-like: checked on its own
            key = None
        found = seen.get(key) if key is not None else None
        if found is None:
            found = _record_problems(rec, processor, modalities, check_files)
            if key is not None:
                seen[key] = found
        problems.extend(DataProblem(i, msg) for msg in found)
    return problems


class VideoLLMDataset(torch.utils.data.Dataset):
    """Normalized chat samples over a ``datasets.Dataset`` (or list of records); media stay as paths."""

    def __init__(self, records, processor=None, *, skip_invalid: bool = False, validate: bool = True):
        self.records = records
        self.indices = list(range(len(records)))
        if validate:
            problems = validate_records(records, processor)
            if problems:
                if not skip_invalid:
                    raise InvalidDataError(problems, len(records))
                bad = {p.index for p in problems}
                for p in problems:
                    logger.warning("skipping %s", p)
                self.indices = [i for i in self.indices if i not in bad]
                if not self.indices:
                    raise InvalidDataError(problems, len(records))
        self.processor = processor

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        idx = self.indices[i]
        rec = self.records[idx]
        return {"index": idx, "messages": normalize_record(rec)}

    @property
    def lengths(self) -> list[int]:
        """Estimated tokens per sample (text words + visual tokens), for length-grouped sampling."""
        out = []
        for i in self.indices:
            msgs = normalize_record(self.records[i])
            words = sum(len(p.get("text", "").split()) for m in msgs for p in m["content"] if p["type"] == "text")
            media = media_of(msgs)
            visual = 0
            if self.processor is not None and hasattr(self.processor, "estimate_media_tokens"):
                visual = self.processor.estimate_media_tokens(media)
            out.append(int(words * 1.5) + visual)
        return out


def concat_lengths(datasets: Iterable[VideoLLMDataset]) -> list[int]:
    return [n for d in datasets for n in d.lengths]
