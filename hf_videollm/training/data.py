"""Training data: LLaVA-style ``conversations``, OpenAI-style ``messages`` and the ms-swift / LLaMA-Factory layout
(string contents with ``<image>``/``<video>``/``<audio>`` tags + top-level ``images``/``videos``/``audios``), read with
``datasets``.

Both formats become one form, chat messages whose content is a list of parts::

    {"role": "user", "content": [{"type": "video", "video": "/abs/clip.mp4"}, {"type": "text", "text": "..."}]}

Sources (:func:`load_sources`): json / jsonl / parquet files, local folders of them, Hugging Face dataset ids
``owner/name[@revision][:split-or-path]`` (resolved from the local Hub cache, downloaded when absent and online) and
``datasets`` objects; several sources are concatenated, or mixed by weights (:func:`mix_sources`).

Media paths are resolved against ``media_root`` (default: the data file's directory, a folder / Hub repo's root); validation probes each file
once (empty or undecodable files are listed with their sample index before training), full decoding happens in the
collator, i.e. lazily in the DataLoader workers. :func:`validate_records` checks every
sample up front (missing files, placeholder counts, empty or malformed conversations) and reports all problems
with their indices; ``skip_invalid=True`` drops them instead of failing.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "DataFileError", "DataProblem", "InvalidDataError", "VideoLLMDataset", "format_mix_table", "load_records",
    "load_sources", "mix_counts", "mix_sources", "normalize_record", "parse_hub_dataset_id", "validate_records",
]

MEDIA_KINDS = ("image", "video", "audio")
_LLAVA_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_MARKERS = {"image": "<image>", "video": "<video>", "audio": "<audio>"}


@dataclass(frozen=True)
class DataProblem:
    index: int
    reason: str
    source: str | None = None  # with several data sources (or a mix): the source and the record's row in it
    source_index: int | None = None

    def __str__(self) -> str:
        where = f" [{self.source} record {self.source_index}]" if self.source is not None else ""
        return f"sample {self.index}: {self.reason}{where}"


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


def _check_json_file(path: Path) -> list[str] | None:
    """Empty files, non-UTF-8 bytes, malformed JSON / JSON Lines, ``[]`` and non-object records -> one
    :class:`DataFileError` line naming the file and line, before ``datasets`` turns them into long tracebacks.
    Returns the record lines of a JSON Lines file (None for a JSON document)."""
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
        return None
    n = 0
    lines = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if n == 0 and lineno == 1:
                try:  # a .json file holding one pretty-printed object (datasets reads dicts of columns)
                    if isinstance(json.loads(text), dict):
                        return None
                except json.JSONDecodeError:
                    pass
            raise DataFileError(f"{path}: line {lineno} column {e.colno}: invalid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise DataFileError(f"{path}: line {lineno}: a record must be a JSON object, got {type(rec).__name__}")
        n += 1
        lines.append(line)
    return lines


#: a JSON Lines file of at least this many records, at most half of them distinct (a schedule that repeats rows, e.g.
#: the demo's 76,800 over 5,000), is read as its distinct lines then put in file order with ``Dataset.select``:
#: ``datasets``' JSON reader costs ~0.1-0.2 ms a row (15 s for the demo's schedule on a busy machine)
_DEDUPE_MIN_ROWS = 1000


def _distinct_lines(lines: list[str] | None) -> tuple[list[str], list[int]] | None:
    """(distinct lines in first-seen order, each line's position among them), or None when not worth it."""
    if lines is None or len(lines) < _DEDUPE_MIN_ROWS:
        return None
    first: dict[str, int] = {}
    order = [first.setdefault(line, len(first)) for line in lines]
    return (list(first), order) if 2 * len(first) <= len(lines) else None


_DATA_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
#: json files of ``datasets``' own metadata (``save_to_disk``, dataset cards) that are never training records
_NOT_DATA = {"dataset_info.json", "dataset_infos.json", "dataset_dict.json", "state.json"}
#: ``owner/name`` with an optional ``@revision`` and ``:selector`` (a split name or a path inside the repo)
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+?)(?:@(?P<revision>[^:@/]+))?(?::(?P<select>.+))?$")


def parse_hub_dataset_id(source: Any) -> tuple[str, str | None, str | None] | None:
    """``(repo_id, revision, selector)`` when ``source`` names a Hugging Face dataset repo, else None.

    A Hub id is a string of the form ``owner/name[@revision][:selector]`` that is not an existing local path and whose
    ``owner/name`` part does not end in a data-file suffix (``data/train.jsonl`` stays a local file). ``selector`` is
    a path inside the repo (a file, or a folder to search) or, when no such path exists, a split name."""
    if not isinstance(source, str) or Path(source).expanduser().exists():
        return None
    m = _HUB_ID.match(source)
    if m is None or Path(m["repo"]).suffix.lower() in _DATA_BUILDERS:
        return None
    return m["repo"], m["revision"], m["select"]


def _hub_cache_dir() -> str:
    """The Hub cache as the environment names it now (``huggingface_hub`` reads it once, at import)."""
    from huggingface_hub import constants

    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]
    if env.get("HF_HOME"):
        return str(Path(env["HF_HOME"]) / "hub")
    return constants.HF_HUB_CACHE


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode()) or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in (
        "1", "ON", "YES", "TRUE")


def resolve_hub_dataset(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot directory of dataset repo ``repo_id``: from the Hub cache when it is there (offline), else
    downloaded with ``huggingface_hub.snapshot_download`` (all files: records and the media they name). Absent
    and offline, or the download failing -> one :class:`DataFileError` naming the id, the cache and what to do."""
    from huggingface_hub import snapshot_download

    cache = _hub_cache_dir()
    kwargs = {"repo_id": repo_id, "repo_type": "dataset", "revision": revision, "cache_dir": cache}
    try:
        return Path(snapshot_download(**kwargs, local_files_only=True))
    except Exception:  # noqa: BLE001 -- not (completely) cached: LocalEntryNotFoundError and kin
        pass
    name = repo_id + (f"@{revision}" if revision else "")
    todo = (f"run `huggingface-cli download --repo-type dataset {repo_id}"
            f"{f' --revision {revision}' if revision else ''}` (or `hf download`) on a machine with network and copy "
            f"the cache, or pass local data files")
    if _hub_offline():
        raise DataFileError(
            f"Hugging Face dataset {name!r} is not in the local cache ({cache}) and HF_HUB_OFFLINE is set: {todo}"
        ) from None
    try:
        logger.info("downloading dataset %s from the Hub into %s", name, cache)
        return Path(snapshot_download(**kwargs))
    except Exception as e:  # noqa: BLE001 -- network, auth, missing repo: one line with the cause
        cause = " ".join(str(e).split())[:200] or type(e).__name__
        raise DataFileError(
            f"Hugging Face dataset {name!r} is not in the local cache ({cache}) and could not be downloaded "
            f"({type(e).__name__}: {cause}): check the id and access (`hf auth login`), or {todo}"
        ) from None


def _data_files_in(folder: Path) -> list[Path]:
    """json / jsonl / parquet files under ``folder`` (hidden folders and ``datasets`` metadata files left out)."""
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in _DATA_BUILDERS and p.name not in _NOT_DATA and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def pick_data_files(root: Path, split: str = "train", select: str | None = None, where: str | None = None) -> list[Path]:
    """The data files of a dataset folder (a Hub snapshot or a local directory).

    ``select`` names a file inside ``root`` (used as is), a folder inside it (searched instead of ``root``) or else a
    split. Among several files, those of ``split`` are taken by the usual naming: a file or folder name that is the
    split or starts with it followed by ``-``, ``_``, ``.``, a space or a digit (``train.jsonl``,
    ``data/train-00000-of-00002.parquet``, ``train/part1.json``). A single file is the ``train`` split. Anything else
    is one :class:`DataFileError` listing the files and how to choose one. A README's ``configs`` are not read."""
    where = where or str(root)
    folder = root
    if select:
        target = root / select
        if target.is_file():
            return [target]
        if target.is_dir():
            folder = target
        else:
            split = select
    files = _data_files_in(folder)
    if not files:
        raise DataFileError(f"{where}: no .json / .jsonl / .parquet data files in {folder}")
    pattern = re.compile(rf"^{re.escape(split)}(?:[-._ 0-9]|$)", re.IGNORECASE)
    matched = [f for f in files if any(pattern.match(part) for part in f.relative_to(folder).with_suffix("").parts)]
    if matched:
        return matched
    if len(files) == 1 and split == "train":
        return files
    listed = ", ".join(str(f.relative_to(root)) for f in files[:20]) + (" ..." if len(files) > 20 else "")
    raise DataFileError(
        f"{where}: no data file of split {split!r} among {len(files)} files ({listed}); choose one with "
        f"'<id or folder>:<path inside it>' or a split with '<id or folder>:<split>' (or data_split / --data-split)"
    )


def _load_file(p: Path, media_root: Path, distinct_rows: bool = False):
    from datasets import load_dataset

    if not p.is_file():
        raise FileNotFoundError(f"training data file {p} not found")
    suffix = p.suffix.lower()
    builder = _DATA_BUILDERS.get(suffix)
    if builder is None:
        raise ValueError(f"{p}: unsupported data format {suffix!r}; use .json, .jsonl or .parquet")
    lines = _check_json_file(p) if builder == "json" else None
    # only for a dataset used as it is: tagging / mixing several sources adds columns, which rewrites every row
    distinct = _distinct_lines(lines) if distinct_rows else None
    try:
        if distinct is None:
            ds = load_dataset(builder, data_files=str(p), split="train")  # local files hold one split
        else:
            import tempfile

            unique, order = distinct
            with tempfile.TemporaryDirectory(prefix="hf_videollm_rows_") as tmp:
                rows = Path(tmp) / p.name
                rows.write_text("\n".join(unique) + "\n", encoding="utf-8")
                ds = load_dataset(builder, data_files=str(rows), split="train")
    except Exception as e:  # noqa: BLE001 -- datasets wraps parse errors in DatasetGenerationError
        cause = e.__cause__ or e
        raise DataFileError(f"{p}: could not be read as {builder} ({type(cause).__name__}: {cause})") from e
    if len(ds) == 0:
        raise DataFileError(f"{p}: holds no records")
    ds = ds.add_column("_media_root", [str(media_root)] * len(ds))
    # file order as an indices mapping (writing the rows out again, flatten_indices, costs more than reading them)
    return ds if distinct is None else ds.select(distinct[1])


def _load_folder(root: Path, split: str, select: str | None, where: str, distinct_rows: bool = False):
    """Every data file of a dataset folder, media resolving against the folder (the repo root of a snapshot)."""
    from datasets import concatenate_datasets

    files = pick_data_files(root, split, select, where)
    if len(files) > 1:
        logger.info("%s: %d data files: %s", where, len(files), ", ".join(str(f.relative_to(root)) for f in files))
    parts = [_load_file(f, root, distinct_rows) for f in files]
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def load_sources(paths, split: str = "train", *, distinct_rows: bool = False) -> list[tuple[str, Any]]:
    """Each data source -> ``(name, datasets.Dataset)``; every record carries its ``_media_root``.

    A source is a json / jsonl / parquet file (media relative to its folder), a local folder of such files or a
    Hugging Face dataset id ``owner/name[@revision][:split-or-path]`` (see :func:`parse_hub_dataset_id`,
    :func:`resolve_hub_dataset`, :func:`pick_data_files`; media relative to the folder / the repo root), or a
    ``datasets.Dataset`` / ``DatasetDict`` object (its ``split``; media relative to the working directory).

    ``distinct_rows``: one source, used as it is (not mixed): a JSON Lines file mostly of repeated rows is read as its
    distinct lines, put in file order by an indices mapping (see ``_DEDUPE_MIN_ROWS``)."""
    from datasets import Dataset, DatasetDict

    paths = [paths] if isinstance(paths, (str, Path, Dataset, DatasetDict)) else list(paths)
    distinct_rows = distinct_rows and len(paths) == 1
    out = []
    for i, p in enumerate(paths):
        if isinstance(p, (Dataset, DatasetDict)):
            out.append((f"{type(p).__name__} {i}", _from_datasets_object(p, split, i)))
            continue
        hub = parse_hub_dataset_id(p)
        if hub is not None:
            repo_id, revision, select = hub
            root = resolve_hub_dataset(repo_id, revision)
            out.append((str(p), _load_folder(root, split, select, f"Hugging Face dataset {p!r}", distinct_rows)))
            continue
        path = Path(p).expanduser()
        if path.is_dir():
            out.append((str(p), _load_folder(path.resolve(), split, None, str(path), distinct_rows)))
        else:
            out.append((str(p), _load_file(path, path.parent.resolve(), distinct_rows)))
    return out


def _tag(ds, name: str):
    """``_source`` / ``_source_index`` columns, so validation names each invalid record's source and row."""
    ds = ds.remove_columns([c for c in ("_source", "_source_index") if c in ds.column_names])
    ds = ds.add_column("_source", [name] * len(ds))
    return ds.add_column("_source_index", list(range(len(ds))))


def concat_sources(sources: Sequence[tuple[str, Any]]):
    """All records of all sources in order (tagged with their source when there are several)."""
    from datasets import concatenate_datasets

    if len(sources) == 1:
        return sources[0][1]
    return concatenate_datasets([_tag(ds, name) for name, ds in sources])


def check_ratios(ratios, n_sources: int, field: str = "data_ratios") -> list[float]:
    """``ratios`` as floats, or a ValueError naming ``field``: one finite, non-negative weight per source, not all 0."""
    values = list(ratios) if isinstance(ratios, (list, tuple)) else [ratios]
    try:
        weights = [float(r) for r in values]
    except (TypeError, ValueError):
        raise ValueError(f"{field} must be numbers (one weight per data source), got {ratios!r}") from None
    if len(weights) != n_sources:
        raise ValueError(
            f"{field} has {len(weights)} weight(s) but data has {n_sources} source(s): give one weight per data "
            f"source, in the same order"
        )
    if not all(math.isfinite(w) for w in weights):
        raise ValueError(f"{field} must be finite numbers, got {weights}")
    if any(w < 0 for w in weights):
        raise ValueError(f"{field} must not be negative, got {weights}")
    if sum(weights) <= 0:
        raise ValueError(f"{field} are all zero, got {weights}: at least one data source needs a positive weight")
    return weights


def check_mix_size(size, field: str = "data_mix_size") -> int | None:
    """``size`` as an int (None stays None), or a ValueError naming ``field``."""
    if size is None:
        return None
    try:
        n = int(size)
        ok = not isinstance(size, bool) and n == float(size) and n >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{field} must be a positive whole number of samples, got {size!r}")
    return n


def mix_counts(sizes: Sequence[int], ratios: Sequence[float], total: int | None = None) -> list[int]:
    """Samples per source: ``total`` (default: the sum of ``sizes``) split in proportion to ``ratios`` by
    largest-remainder rounding (each source gets the floor of its share, the remaining samples go to the largest
    fractional parts, ties to the earlier source); the counts sum to ``total`` exactly."""
    total = sum(sizes) if total is None else int(total)
    weight_sum = sum(ratios)
    exact = [total * w / weight_sum for w in ratios]
    counts = [math.floor(x) for x in exact]
    order = sorted((i for i, w in enumerate(ratios) if w > 0), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def mix_sources(sources: Sequence[tuple[str, Any]], ratios, *, seed: int = 42, size: int | None = None):
    """The training set drawn from several sources in proportion to ``ratios`` -> ``(dataset, table)``.

    Size: ``size`` (``data_mix_size``) or the sum of the sources' sizes; each source's count is
    :func:`mix_counts`. A source with fewer records than its count is repeated: whole passes over it, then the rest
    sampled without replacement; a larger one is sub-sampled without replacement. Sampling is seeded by ``seed`` and
    the source's position (``numpy.random.default_rng([seed, i])``), sampled rows keep their file order. ``table``
    has one row per source: name, records, weight, samples, full_passes, extra (samples beyond the full passes)."""
    import numpy as np
    from datasets import concatenate_datasets

    weights = check_ratios(ratios, len(sources))
    size = check_mix_size(size)
    sizes = [len(ds) for _, ds in sources]
    counts = mix_counts(sizes, weights, size)
    indices, table, offset = [], [], 0
    for i, ((name, _), n, w, c) in enumerate(zip(sources, sizes, weights, counts, strict=True)):
        passes, extra = divmod(c, n)
        rng = np.random.default_rng([seed, i])
        picked = np.concatenate([np.tile(np.arange(n), passes), np.sort(rng.choice(n, extra, replace=False))])
        indices.append(picked + offset)
        offset += n
        table.append({"source": name, "records": n, "weight": w, "samples": c, "full_passes": passes, "extra": extra})
    mixed = concatenate_datasets([_tag(ds, name) for name, ds in sources]).select(np.concatenate(indices).tolist())
    return mixed, table


def format_mix_table(table: Sequence[dict], seed: int | None = None) -> str:
    """The mix as one table: source, records, weight, samples taken and repeats (samples / records)."""
    total_w = sum(r["weight"] for r in table) or 1.0
    width = max(6, *(len(r["source"]) for r in table))
    head = f"data mix: {sum(r['samples'] for r in table)} samples" + (f" (seed {seed})" if seed is not None else "")
    lines = [head, f"  {'source':<{width}}  {'records':>8}  {'weight':>8}  {'share':>6}  {'samples':>8}  repeats"]
    for r in table:
        lines.append(
            f"  {r['source']:<{width}}  {r['records']:>8}  {r['weight']:>8.4g}  {r['weight'] / total_w:>6.1%}  "
            f"{r['samples']:>8}  {r['samples'] / r['records']:.2f}x ({r['full_passes']} full + {r['extra']})"
        )
    return "\n".join(lines)


def load_records(paths: str | Path | Sequence[str | Path], split: str = "train", *, ratios=None,
                 mix_size: int | None = None, seed: int = 42):
    """Read the data sources (:func:`load_sources`: files, folders, Hub dataset ids, ``datasets`` objects) into one
    ``datasets.Dataset``: all records in order, or, with ``ratios``, the mix of :func:`mix_sources`.

    ``datasets.Dataset`` / ``DatasetDict`` objects go through the same normalize / validation path as files (a
    DatasetDict gives its ``split``); relative media paths in them resolve against the current working directory."""
    sources = load_sources(paths, split, distinct_rows=ratios is None)
    if ratios is None:
        return concat_sources(sources)
    mixed, table = mix_sources(sources, ratios, seed=seed, size=mix_size)
    logger.info("%s", format_mix_table(table, seed))
    return mixed


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
        out = _normalize_turns(record["conversations"], media, used, root)
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


#: Qwen-VL's fine-tuning data names each image inside the text: ``Picture 1: <img>path</img>\n`` (its tokenizer's
#: convention); the ``Picture n:`` label is the chat template's to write, so it goes with the tag.
_QWEN_VL_IMAGE = re.compile(r"(?:Picture \d+:\s?)?<img>([^<>\n]{1,256})</img>")


def _split_tags(text: str, media: dict, used: dict, root=None) -> list[dict]:
    """A string with ``<image>``-style tags -> content parts, taking files from the record's media lists in order;
    a Qwen-VL ``<img>path</img>`` carries its own file (relative to the record's media root)."""
    marker_re = re.compile("|".join([re.escape(v) for v in _MARKERS.values()] + [_QWEN_VL_IMAGE.pattern]))
    parts, pos = [], 0
    for m in marker_re.finditer(text):
        if m.start() > pos:
            parts.append({"type": "text", "text": text[pos : m.start()]})
        if m.group(0) not in _MARKERS.values():  # <img>path</img>
            parts.append({"type": "image", "image": _resolve(m.group(1).strip(), root)})
            pos = m.end()
            if pos < len(text) and text[pos] == "\n":
                pos += 1
            continue
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
            parts = _split_tags(content, media, used, root)
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


def _normalize_turns(turns, media, used, root=None) -> list[dict]:
    out = []
    for turn in turns:
        role = _LLAVA_ROLES.get(turn.get("from", turn.get("role")))
        if role is None:
            raise ValueError(f"unknown conversation role {turn.get('from', turn.get('role'))!r}; use human/gpt")
        text = turn.get("value", turn.get("content")) or ""
        out.append({"role": role, "content": _split_tags(text, media, used, root)})
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


def validate_records(records, processor=None, *, check_files: bool = True, groups: list | None = None) -> list[DataProblem]:
    """Every problem of every sample, with its index (and, for several sources or a mix, its source and row
    there): malformed records, missing files, and (``check_files``) media files that are empty or cannot be decoded
    (each probed once: opened, first frame decoded).

    Identical records (a schedule that repeats rows, e.g. the demo's 76,800 rows over 5,000 samples) are checked
    once: the result is kept by the record's JSON text. ``groups``, when given a list, receives one entry per row:
    the same number for rows whose contents are identical plain JSON, -1 for a row that is not plain JSON (e.g. holds
    an image object; such rows are never grouped)."""
    problems: list[DataProblem] = []
    modalities = getattr(processor, "modalities", MEDIA_KINDS)
    seen: dict[str, list[str]] = {}
    group_ids: dict[str, int] = {}
    for i, rec in enumerate(_iter_rows(records)):
        origin = (rec.get("_source"), rec.get("_source_index")) if isinstance(rec, dict) else (None, None)
        plain = True
        try:
            content = {k: v for k, v in rec.items() if k not in ("_source", "_source_index")}
            try:
                key = json.dumps(content, sort_keys=True)
            except (TypeError, ValueError):  # not plain JSON (an image object...): checked by its repr, never grouped
                plain = False
                key = json.dumps(content, sort_keys=True, default=repr)
        except (TypeError, ValueError, AttributeError):  # not JSON-like: checked on its own
            key, plain = None, False
        if groups is not None:
            groups.append(group_ids.setdefault(key, len(group_ids)) if plain else -1)
        found = seen.get(key) if key is not None else None
        if found is None:
            found = _record_problems(rec, processor, modalities, check_files)
            if key is not None:
                seen[key] = found
        problems.extend(DataProblem(i, msg, *origin) for msg in found)
    return problems


class VideoLLMDataset(torch.utils.data.Dataset):
    """Normalized chat samples over a ``datasets.Dataset`` (or list of records); media stay as paths.

    A row that occurs several times (identical plain-JSON contents, found by the up-front checks, e.g. the demo's
    schedule: 76,800 rows over 5,000 samples) is read and normalized once; its repeats are served from that (as JSON
    text, so every sample is a fresh object), not read from the dataset again (~0.1-0.2 ms a row)."""

    def __init__(self, records, processor=None, *, skip_invalid: bool = False, validate: bool = True):
        self.records = records
        self.indices = list(range(len(records)))
        self._group: list[int] | None = None  # record index -> its group of identical rows (-1: read it as it is)
        self._normalized: dict[int, str | None] = {}  # group -> JSON text of its normalized messages
        if validate:
            groups: list[int] = []
            problems = validate_records(records, processor, groups=groups)
            sizes: dict[int, int] = {}
            for g in groups:
                sizes[g] = sizes.get(g, 0) + 1
            if any(n > 1 for g, n in sizes.items() if g >= 0):
                self._group = [g if g >= 0 and sizes[g] > 1 else -1 for g in groups]
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
        group = self._group[idx] if self._group is not None else -1
        if group >= 0:
            if group not in self._normalized:
                messages = normalize_record(self.records[idx])
                try:
                    text = json.dumps(messages)
                    # served from JSON only when JSON gives back exactly these messages (no tuples, non-str keys...)
                    self._normalized[group] = text if json.loads(text) == messages else None
                except (TypeError, ValueError):  # not JSON after normalizing: this group is read row by row
                    self._normalized[group] = None
                return {"index": idx, "messages": messages}
            text = self._normalized[group]
            if text is not None:
                return {"index": idx, "messages": json.loads(text)}
        return {"index": idx, "messages": normalize_record(self.records[idx])}

    def distinct_positions(self, limit: int | None = None) -> list[int]:
        """Positions (``dataset[i]``) among the first ``limit`` that are the first of their group of identical rows,
        or not grouped: one per distinct sample as far as the up-front checks could tell."""
        seen: set[int] = set()
        out = []
        for i in range(len(self.indices) if limit is None else min(limit, len(self.indices))):
            group = self._group[self.indices[i]] if self._group is not None else -1
            if group < 0 or group not in seen:
                seen.add(group)
                out.append(i)
        return out

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
