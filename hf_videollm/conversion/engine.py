"""Generic, streaming checkpoint conversion driven by a declarative key table.

A model converter declares a :class:`KeyTable` of rules and calls :func:`convert_checkpoint`::

    table = KeyTable("llava", [
        Drop(r"^model\\.vision_tower\\..*\\.position_ids$", "buffer re-created by the model"),
        Rename(r"^model\\.mm_projector\\.(\\d)\\.", r"multi_modal_projector.linear_\\1."),
        Transform(r"^(.*)\\.qkv\\.weight$", (r"\\1.q.weight", r"\\1.k.weight", r"\\1.v.weight"), split_fused(3)),
        Merge((r"^(.*)\\.q_bias$", r"^(.*)\\.v_bias$"), r"\\1.qkv.bias",
              lambda q, v: torch.cat([q, torch.zeros_like(q), v])),
        Rename(r"^model\\.", "language_model.model."),
    ])
    report = convert_checkpoint([(CheckpointSource.open(src_dir), table)], expected, out_dir)

Matching semantics (all rules, ``allow_missing`` too): a rule matches a key when ``re.search(pattern, key)`` finds
the pattern; the FIRST matching rule of the table wins.  Target names are built re.sub-style from that (leftmost)
match: the matched span is replaced by ``match.expand(template)`` and the rest of the key is kept, so
``Rename(r"^model\\.", "lm.")`` and ``Rename(r"^model\\.(.*)$", r"lm.\\1")`` are equivalent.  Anchor patterns
(``^...$``) to avoid accidental partial matches.

Conversion runs in two phases:

1. Plan (cheap, nothing written): every source key is resolved; unmatched keys, duplicate targets, incomplete merges,
   AddDelta base problems and -- against ``expected`` -- missing keys, unexpected keys and shape mismatches are
   collected.  Shapes come from safetensors headers / memory-mapped pickles; Transform and Merge output shapes are
   obtained by running their function on ``meta`` tensors (no data).  If anything is wrong, one
   :class:`ConversionError` lists every problem group and nothing is written.
2. Stream: sources are read shard by shard; each tensor is converted and its bytes appended to the current output
   shard's data file at once (a new shard starts when ``max_shard_size`` would be exceeded).  The memory-mapped
   pages of a consumed pickled-source tensor are handed back to the kernel, so resident data is about one tensor +
   the parts of merges that are still waiting for their other parts.  Shards are written under
   temporary names inside a staging directory next to ``out_dir`` and renamed to HF names
   (``model.safetensors`` or ``model-00001-of-0000N.safetensors`` + ``model.safetensors.index.json``) once their
   count is known; the staging directory is moved into place only on success, so a failure leaves no output.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch

from .sources import CheckpointSource, ConversionError

logger = logging.getLogger(__name__)

__all__ = [
    "AddDelta",
    "CheckpointSource",
    "ConversionContext",
    "ConversionError",
    "ConversionReport",
    "Drop",
    "KeyTable",
    "Merge",
    "Rename",
    "Resolution",
    "Transform",
    "concat",
    "convert_checkpoint",
    "expected_from_model",
    "parse_size",
    "split_fused",
    "split_per_head",
    "transpose",
    "weight_norm",
]

# problem groups, in the order they are reported
UNEXPECTED_SOURCE = "unexpected source keys"
DUPLICATE_TARGETS = "duplicate targets"
MISSING = "missing target keys"
UNEXPECTED_TARGET = "unexpected target keys"
SHAPES = "shape mismatches"
INCOMPLETE_MERGES = "incomplete merges"
DELTA_BASE = "AddDelta base problems"
RULE_FAILURES = "rule failures"
_GROUP_ORDER = (UNEXPECTED_SOURCE, DUPLICATE_TARGETS, MISSING, UNEXPECTED_TARGET, SHAPES, INCOMPLETE_MERGES,
                DELTA_BASE, RULE_FAILURES)
_GROUP_HINTS = {
    UNEXPECTED_SOURCE: "no rule matches them; add a Rename, or a Drop with a reason",
    DUPLICATE_TARGETS: "several source keys produce the same target",
    MISSING: "expected by the model, never produced; map them or pass allow_missing",
    UNEXPECTED_TARGET: "produced but not in the model's state dict",
    SHAPES: "produced shape differs from the model's",
    INCOMPLETE_MERGES: "some parts of a Merge never appeared",
    DELTA_BASE: "",
    RULE_FAILURES: "a rule's function raised or returned the wrong number of tensors",
}
_SHOW = 20


# ---------------------------------------------------------------------------------------------------------------------
# rules
# ---------------------------------------------------------------------------------------------------------------------


def _compile(rule: object, pattern: str) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise ConversionError(f"{type(rule).__name__}: pattern must be a str, got {pattern!r}")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ConversionError(f"{type(rule).__name__}: invalid regular expression {pattern!r}: {e}") from e


def _sub(m: re.Match[str], template: str) -> str:
    s = m.string
    return s[: m.start()] + m.expand(template) + s[m.end():]


@dataclass(frozen=True)
class Rename:
    """One source key -> one target key: the match is replaced by ``replacement`` (``\\1``, ``\\g<name>``)."""

    pattern: str
    replacement: str
    _re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_re", _compile(self, self.pattern))


@dataclass(frozen=True)
class Drop:
    """Source keys consumed on purpose and never written; ``reason`` (required) is shown in the report."""

    pattern: str
    reason: str
    _re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.reason, str) or not self.reason.strip():
            raise ConversionError(f"Drop({self.pattern!r}) needs a non-empty reason")
        object.__setattr__(self, "_re", _compile(self, self.pattern))


@dataclass(frozen=True)
class Transform:
    """One source key -> one or more targets.

    ``targets``: replacement templates (applied to the match like :class:`Rename`), or a callable
    ``targets(match) -> tuple[str, ...]`` returning full target names.  ``fn(tensor, match, ctx)`` returns a tuple
    of tensors, one per target (a bare tensor is accepted for a single target).  ``fn`` is also called once on
    ``meta`` tensors while planning to learn the output shapes; if it cannot run on meta tensors the shapes are
    checked when the real tensors are computed instead.
    """

    pattern: str
    targets: tuple[str, ...] | Callable[[re.Match[str]], tuple[str, ...]]
    fn: Callable[..., Any]
    reason: str = ""
    _re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", (self.targets,))
        elif not callable(self.targets):
            object.__setattr__(self, "targets", tuple(self.targets))
            if not self.targets or not all(isinstance(t, str) for t in self.targets):
                raise ConversionError(f"Transform({self.pattern!r}): targets must be non-empty str templates")
        object.__setattr__(self, "_re", _compile(self, self.pattern))


@dataclass(frozen=True)
class Merge:
    """Several source keys -> one target: ``fn(*parts)`` gets the parts in ``patterns`` order.

    A key matching ``patterns[i]`` is part ``i`` of the merge whose target is built from that key's match
    (``target`` template, Rename-style); parts belonging together are therefore those yielding the same target
    name.  Parts may come from different shards or from different sources sharing the table: they are buffered
    until the merge is complete.
    """

    patterns: tuple[str, ...]
    target: str
    fn: Callable[..., Any]
    reason: str = ""
    _res: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.patterns, str):
            raise ConversionError(f"Merge({self.patterns!r}): patterns must be a tuple of patterns")
        object.__setattr__(self, "patterns", tuple(self.patterns))
        if len(self.patterns) < 2:
            raise ConversionError(f"Merge{self.patterns!r}: needs at least two patterns")
        object.__setattr__(self, "_res", tuple(_compile(self, p) for p in self.patterns))


@dataclass(frozen=True)
class AddDelta:
    """target = delta (this source) + base (``extra_sources[base]``), computed in float32, stored in the delta dtype.

    Target name: the source key, or the match replaced by ``replacement`` when given.  Base key: ``base_key``
    template applied to the match when given, otherwise the first of (source key, target key) present in the base.
    A delta with more rows than the base along dim 0 (new vocabulary rows) keeps those extra rows as they are in
    the delta (the report says which).  Non-floating tensors are taken from the delta unchanged.
    """

    pattern: str
    base: str = "base"
    replacement: str | None = None
    base_key: str | None = None
    reason: str = ""
    _re: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_re", _compile(self, self.pattern))


Rule = Union[Rename, Drop, Transform, Merge, AddDelta]  # noqa: UP007 - runtime alias usable on py3.10


def describe_rule(rule: Rule) -> str:
    """Short, stable text for a rule (used in reports and error messages)."""
    if isinstance(rule, Rename):
        return f"Rename({rule.pattern!r} -> {rule.replacement!r})"
    if isinstance(rule, Drop):
        return f"Drop({rule.pattern!r}: {rule.reason})"
    if isinstance(rule, Transform):
        tg = getattr(rule.targets, "__name__", "<callable>") if callable(rule.targets) else list(rule.targets)
        return f"Transform({rule.pattern!r} -> {tg})"
    if isinstance(rule, Merge):
        return f"Merge({list(rule.patterns)} -> {rule.target!r})"
    if isinstance(rule, AddDelta):
        return f"AddDelta({rule.pattern!r}, base={rule.base!r})"
    return repr(rule)


@dataclass(frozen=True)
class Resolution:
    """What :meth:`KeyTable.resolve` found: the rule, its match, the target keys and (Merge) the part index."""

    rule: Rule
    match: re.Match[str]
    targets: tuple[str, ...]
    part: int | None = None


@dataclass
class KeyTable:
    """An ordered list of rules; the first rule matching a key decides what happens to it."""

    name: str
    rules: list[Rule]

    def __post_init__(self) -> None:
        self.rules = list(self.rules)
        for r in self.rules:
            if not isinstance(r, (Rename, Drop, Transform, Merge, AddDelta)):
                raise ConversionError(f"KeyTable {self.name!r}: not a rule: {r!r}")

    def resolve(self, key: str) -> Resolution | None:
        """The first matching rule and the target keys it produces, or ``None`` (an unexpected source key)."""
        for rule in self.rules:
            if isinstance(rule, Merge):
                for i, rx in enumerate(rule._res):
                    m = rx.search(key)
                    if m:
                        return Resolution(rule, m, (_sub(m, rule.target),), part=i)
                continue
            m = rule._re.search(key)
            if not m:
                continue
            if isinstance(rule, Drop):
                return Resolution(rule, m, ())
            if isinstance(rule, Rename):
                return Resolution(rule, m, (_sub(m, rule.replacement),))
            if isinstance(rule, AddDelta):
                return Resolution(rule, m, (_sub(m, rule.replacement) if rule.replacement is not None else key,))
            assert isinstance(rule, Transform)
            if callable(rule.targets):
                try:
                    targets = tuple(rule.targets(m))
                except Exception as e:
                    raise ConversionError(f"{describe_rule(rule)}: targets({key!r}) raised {e!r}") from e
                if not targets or not all(isinstance(t, str) for t in targets):
                    raise ConversionError(f"{describe_rule(rule)}: targets({key!r}) returned {targets!r}")
            else:
                targets = tuple(_sub(m, t) for t in rule.targets)
            return Resolution(rule, m, targets)
        return None


# ---------------------------------------------------------------------------------------------------------------------
# context handed to Transform functions
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ConversionContext:
    """Passed to ``Transform.fn(tensor, match, ctx)``.

    ``meta`` is True while planning (tensors are on the ``meta`` device).  ``lookup(name, key)`` reads a tensor from
    a named extra source (meta-shaped while planning) -- use it for combinations with tensors that are not streamed.
    """

    key: str
    targets: tuple[str, ...]
    table: KeyTable
    source: CheckpointSource
    extra_sources: Mapping[str, CheckpointSource]
    expected: Mapping[str, tuple[torch.Size, torch.dtype]] | None
    meta: bool = False

    def expected_shape(self, target: str | None = None) -> torch.Size | None:
        """The model's shape for ``target`` (default: the first target), or None when unknown."""
        if self.expected is None:
            return None
        entry = self.expected.get(target if target is not None else self.targets[0])
        return None if entry is None else entry[0]

    def lookup(self, source: str, key: str) -> torch.Tensor:
        src = self.extra_sources[source]
        if self.meta:
            return torch.empty(src.shape(key), dtype=src.dtype(key), device="meta")
        return src.get(key)


# ---------------------------------------------------------------------------------------------------------------------
# ready-made tensor functions
# ---------------------------------------------------------------------------------------------------------------------


def split_fused(n: int = 3, dim: int = 0) -> Callable[..., tuple[torch.Tensor, ...]]:
    """Transform fn: split a fused tensor into ``n`` equal contiguous blocks along ``dim`` (e.g. [q; k; v])."""

    def fn(t: torch.Tensor, match: re.Match[str] | None = None, ctx: ConversionContext | None = None):
        if t.shape[dim] % n:
            raise ValueError(f"cannot split dim {dim} of size {t.shape[dim]} into {n} equal parts")
        return tuple(t.chunk(n, dim=dim))

    fn.__name__ = f"split_fused_{n}"
    return fn


def split_per_head(num_heads: int, n: int = 3) -> Callable[..., tuple[torch.Tensor, ...]]:
    """Transform fn: split a per-head interleaved fused tensor whose dim 0 is laid out as
    ``[head][part][head_dim]`` (e.g. ``[h0: q k v, h1: q k v, ...]``) into ``n`` tensors of ``num_heads*head_dim``
    rows each (weights and biases)."""

    def fn(t: torch.Tensor, match: re.Match[str] | None = None, ctx: ConversionContext | None = None):
        rows = t.shape[0]
        if rows % (num_heads * n):
            raise ValueError(f"dim 0 of size {rows} is not divisible by num_heads*{n} = {num_heads * n}")
        head_dim = rows // (num_heads * n)
        v = t.reshape(num_heads, n, head_dim, *t.shape[1:])
        return tuple(v[:, i].reshape(num_heads * head_dim, *t.shape[1:]) for i in range(n))

    fn.__name__ = f"split_per_head_{num_heads}x{n}"
    return fn


def transpose(dim0: int = 0, dim1: int = 1) -> Callable[..., tuple[torch.Tensor]]:
    """Transform fn: swap two dims (e.g. Conv1D-style [in, out] weights -> Linear [out, in])."""

    def fn(t: torch.Tensor, match: re.Match[str] | None = None, ctx: ConversionContext | None = None):
        return (t.transpose(dim0, dim1).contiguous(),)

    return fn


def concat(dim: int = 0) -> Callable[..., torch.Tensor]:
    """Merge fn: concatenate the parts along ``dim``."""

    def fn(*parts: torch.Tensor) -> torch.Tensor:
        return torch.cat(parts, dim=dim)

    return fn


def weight_norm(dim: int | None = 0) -> Callable[..., torch.Tensor]:
    """Merge fn for ``(weight_g, weight_v)`` pairs: ``weight = g * v / ||v||``, the norm taken over every dim except
    ``dim`` (PyTorch's ``weight_norm(dim=...)``; ``None`` = over all dims).  Computed in float32."""

    def fn(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        vf = v.float()
        dims = [d for d in range(v.dim()) if dim is None or d != dim % v.dim()]
        norm = vf.pow(2).sum(dim=dims, keepdim=True).sqrt()
        return (vf * (g.float() / norm)).to(v.dtype)

    return fn


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like ``"5GB"``, ``"500MB"``, ``"2GiB"``, ``"100kB"`` (decimal and binary units)."""
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?)?B?\s*", str(size), flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot parse size {size!r} (examples: 5GB, 500MB, 2GiB, 1048576)")
    unit = (m.group(2) or "").upper()
    mult = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
            "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
    n = int(float(m.group(1)) * mult)
    if n <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return n


def expected_from_model(model: torch.nn.Module, *, exclude_tied: bool = True) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """``{key: (shape, dtype)}`` of a model's state dict (build the model on the ``meta`` device: no memory).

    With ``exclude_tied`` a tensor reachable under several names (tied embeddings) is listed under its first name
    only, as ``save_pretrained`` stores it.
    """
    seen: set[int] = set()
    out: dict[str, tuple[torch.Size, torch.dtype]] = {}
    for k, v in model.state_dict(keep_vars=True).items():
        if exclude_tied and id(v) in seen:
            continue
        seen.add(id(v))
        out[k] = (v.shape, v.dtype)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------------------------


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"


@dataclass
class ConversionReport:
    """What a conversion did.  ``counts``: source keys handled per rule type; ``dropped``: source key -> reason;
    ``transformed``: one entry per Transform / Merge / AddDelta application; ``notes``: remarks such as AddDelta rows
    taken from the delta; ``files``: written weight files (final paths), ``index_file`` when sharded."""

    out_dir: Path
    tables: list[str]
    sources: list[str]
    counts: dict[str, int]
    dropped: dict[str, str]
    transformed: list[dict[str, Any]]
    notes: list[str]
    allowed_missing: list[str]
    unused_rules: list[str]
    files: list[Path]
    index_file: Path | None
    total_bytes: int
    num_tensors: int
    dtype: str | None
    cast_tensors: int
    seconds: float
    removed_stale: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "tables": self.tables,
            "sources": self.sources,
            "counts": self.counts,
            "dropped": self.dropped,
            "transformed": self.transformed,
            "notes": self.notes,
            "allowed_missing": self.allowed_missing,
            "unused_rules": self.unused_rules,
            "files": [str(f) for f in self.files],
            "index_file": str(self.index_file) if self.index_file else None,
            "total_bytes": self.total_bytes,
            "num_tensors": self.num_tensors,
            "dtype": self.dtype,
            "cast_tensors": self.cast_tensors,
            "seconds": round(self.seconds, 3),
            "removed_stale": self.removed_stale,
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def summary(self) -> str:
        total_src = sum(self.counts.values())
        per_rule = ", ".join(f"{k} {v}" for k, v in self.counts.items() if v)
        lines = [
            f"converted [{', '.join(self.tables)}] -> {self.out_dir}: {self.num_tensors} tensors, "
            f"{_fmt_bytes(self.total_bytes)} in {len(self.files)} file(s), {self.seconds:.1f}s",
            f"  source keys: {total_src} ({per_rule or 'none'})",
        ]
        if self.dtype:
            lines.append(f"  cast {self.cast_tensors} floating tensors to {self.dtype}")
        if self.dropped:
            by_reason: dict[str, list[str]] = defaultdict(list)
            for k, r in self.dropped.items():
                by_reason[r].append(k)
            lines.append(f"  dropped {len(self.dropped)}:")
            for r, ks in by_reason.items():
                eg = ", ".join(ks[:3]) + (", ..." if len(ks) > 3 else "")
                lines.append(f"    - {r}: {len(ks)} key(s) ({eg})")
        if self.transformed:
            groups: dict[tuple[str, str], int] = defaultdict(int)
            for t in self.transformed:
                groups[(t["rule"], t["reason"])] += 1
            lines.append(f"  transformed {len(self.transformed)}:")
            for (rule, reason), n in groups.items():
                lines.append(f"    - {rule}{': ' + reason if reason else ''}: {n}")
        for n in self.notes:
            lines.append(f"  note: {n}")
        if self.allowed_missing:
            lines.append(f"  left unfilled (allowed): {len(self.allowed_missing)} ({', '.join(self.allowed_missing[:5])}"
                         + (", ..." if len(self.allowed_missing) > 5 else "") + ")")
        if self.unused_rules:
            lines.append(f"  rules that matched nothing: {len(self.unused_rules)}")
            lines.extend(f"    - {r}" for r in self.unused_rules[:_SHOW])
        if self.removed_stale:
            lines.append(f"  replaced earlier weight files: {', '.join(self.removed_stale)}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------------------------------------------------


def _fmt_shape(s: Iterable[int]) -> str:
    return "(" + ", ".join(str(int(d)) for d in s) + ")"


def _problem_error(problems: Mapping[str, list[str]], header: str) -> ConversionError:
    groups = [g for g in _GROUP_ORDER if problems.get(g)] + [g for g in problems if g not in _GROUP_ORDER and problems[g]]
    total = sum(len(problems[g]) for g in groups)
    lines = [f"{header}: {total} problem(s) in {len(groups)} group(s)"]
    for g in groups:
        items = problems[g]
        hint = _GROUP_HINTS.get(g, "")
        lines.append(f"{g} ({len(items)}){' - ' + hint if hint else ''}:")
        lines.extend(f"  - {it}" for it in items[:_SHOW])
        if len(items) > _SHOW:
            lines.append(f"  ... and {len(items) - _SHOW} more")
    return ConversionError("\n".join(lines), {g: problems[g] for g in groups})


def _normalize_expected(expected: Mapping[str, Any] | None) -> dict[str, tuple[torch.Size, torch.dtype | None]] | None:
    if expected is None:
        return None
    out: dict[str, tuple[torch.Size, torch.dtype | None]] = {}
    for k, v in expected.items():
        if isinstance(v, torch.Tensor):
            out[k] = (v.shape, v.dtype)
        elif isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], torch.dtype):
            out[k] = (torch.Size(v[0]), v[1])
        else:
            out[k] = (torch.Size(v), None)
    return out


def _meta_like(shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _as_tensors(out: Any, n: int, what: str) -> tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        out = (out,)
    if not isinstance(out, (tuple, list)) or not all(isinstance(t, torch.Tensor) for t in out):
        raise TypeError(f"{what} must return a tuple of tensors, got {type(out).__name__}")
    if len(out) != n:
        raise TypeError(f"{what} returned {len(out)} tensor(s) for {n} target(s)")
    return tuple(out)


@dataclass
class _Item:
    key: str
    res: Resolution | None
    base_key: str | None = None  # AddDelta


@dataclass
class _Plan:
    items: list[list[list[_Item]]]  # per source, per shard
    produced: dict[str, tuple[torch.Size, torch.dtype] | None]  # target -> (shape, dtype after cast) or unknown
    problems: dict[str, list[str]]
    counts: dict[str, int]
    dropped: dict[str, str]
    transformed: list[dict[str, Any]]
    notes: list[str]
    allowed_missing: list[str]
    unused_rules: list[str]
    merge_sizes: dict[tuple[int, str], int]
    num_source_keys: int


def _out_dtype(dt: torch.dtype, cast: torch.dtype | None) -> torch.dtype:
    return cast if cast is not None and dt.is_floating_point else dt


def _plan(
    sources: list[tuple[CheckpointSource, KeyTable]],
    expected: dict[str, tuple[torch.Size, torch.dtype | None]] | None,
    extra: Mapping[str, CheckpointSource],
    cast: torch.dtype | None,
    allow: list[re.Pattern[str]],
) -> _Plan:
    problems: dict[str, list[str]] = defaultdict(list)
    owner: dict[str, str] = {}
    produced: dict[str, tuple[torch.Size, torch.dtype] | None] = {}
    counts = {"Rename": 0, "Drop": 0, "Transform": 0, "Merge": 0, "AddDelta": 0}
    dropped: dict[str, str] = {}
    transformed: list[dict[str, Any]] = []
    notes: list[str] = []
    used: set[int] = set()
    merges: dict[tuple[int, str], list[tuple[int, str] | None]] = {}
    merge_rule: dict[tuple[int, str], Merge] = {}
    reported_bases: set[int] = set()  # AddDelta rules whose extra source is missing
    items: list[list[list[_Item]]] = []
    n_keys = 0

    def claim(target: str, who: str) -> bool:
        if target in owner:
            problems[DUPLICATE_TARGETS].append(f"{target}: from {owner[target]} and from {who}")
            return False
        owner[target] = who
        return True

    for si, (src, table) in enumerate(sources):
        per_source: list[list[_Item]] = []
        items.append(per_source)
        for shard_keys in src.shards():
            shard_items: list[_Item] = []
            per_source.append(shard_items)
            for key in shard_keys:
                n_keys += 1
                res = table.resolve(key)
                item = _Item(key, res)
                shard_items.append(item)
                if res is None:
                    problems[UNEXPECTED_SOURCE].append(f"{key} (table {table.name!r}, {src.path})")
                    continue
                rule = res.rule
                used.add(id(rule))
                counts[type(rule).__name__] += 1
                if isinstance(rule, Drop):
                    dropped[key] = rule.reason
                elif isinstance(rule, Rename):
                    if claim(res.targets[0], key):
                        produced[res.targets[0]] = (src.shape(key), _out_dtype(src.dtype(key), cast))
                elif isinstance(rule, Transform):
                    transformed.append({"rule": "Transform", "sources": [key], "targets": list(res.targets),
                                        "reason": rule.reason})
                    ok = [claim(t, key) for t in res.targets]
                    shapes: list[tuple[torch.Size, torch.dtype] | None] = [None] * len(res.targets)
                    ctx = ConversionContext(key, res.targets, table, src, extra, expected, meta=True)
                    try:
                        out = rule.fn(_meta_like(src.shape(key), src.dtype(key)), res.match, ctx)
                    except Exception:
                        out = None  # cannot run on meta tensors: check the real output while streaming
                    if out is not None:
                        try:
                            outs = _as_tensors(out, len(res.targets), describe_rule(rule))
                            shapes = [(o.shape, _out_dtype(o.dtype, cast)) for o in outs]
                        except TypeError as e:
                            problems[RULE_FAILURES].append(f"{key}: {e}")
                    for t, good, sh in zip(res.targets, ok, shapes, strict=True):
                        if good:
                            produced[t] = sh
                elif isinstance(rule, AddDelta):
                    target = res.targets[0]
                    if claim(target, key):
                        produced[target] = (src.shape(key), _out_dtype(src.dtype(key), cast))
                    transformed.append({"rule": "AddDelta", "sources": [key], "targets": [target],
                                        "reason": rule.reason or f"delta + {rule.base}"})
                    base = extra.get(rule.base)
                    if base is None:
                        if id(rule) not in reported_bases:
                            reported_bases.add(id(rule))
                            problems[DELTA_BASE].append(
                                f"{describe_rule(rule)}: no extra source named {rule.base!r} "
                                f"(extra_sources: {sorted(extra)})")
                        continue
                    cands = [_sub(res.match, rule.base_key)] if rule.base_key is not None else list(
                        dict.fromkeys([key, target]))
                    bk = next((c for c in cands if c in base), None)
                    if bk is None:
                        problems[DELTA_BASE].append(f"{key}: base key missing in {rule.base!r} ({base.path}); "
                                                    f"tried {cands}")
                        continue
                    item.base_key = bk
                    d, b = src.shape(key), base.shape(bk)
                    if not src.dtype(key).is_floating_point:
                        notes.append(f"{target}: non-floating {src.dtype(key)} taken from the delta unchanged")
                    elif d == b:
                        pass
                    elif len(d) >= 1 and len(d) == len(b) and d[1:] == b[1:] and d[0] > b[0]:
                        notes.append(f"{target}: rows {b[0]}..{d[0] - 1} taken from the delta as is "
                                     f"(base {bk} has {b[0]} rows)")
                    else:
                        problems[DELTA_BASE].append(f"{key}: delta shape {_fmt_shape(d)} incompatible with base "
                                                    f"{bk} {_fmt_shape(b)}")
                else:
                    assert isinstance(rule, Merge) and res.part is not None
                    gk = (id(rule), res.targets[0])
                    if gk not in merges:
                        merges[gk] = [None] * len(rule.patterns)
                        merge_rule[gk] = rule
                        claim(res.targets[0], f"merge of {key}")
                    slot = merges[gk]
                    if slot[res.part] is not None:
                        problems[DUPLICATE_TARGETS].append(
                            f"{res.targets[0]}: merge part {res.part} ({rule.patterns[res.part]!r}) from both "
                            f"{slot[res.part][1]} and {key}")
                    else:
                        slot[res.part] = (si, key)

    merge_sizes: dict[tuple[int, str], int] = {}
    for gk, parts in merges.items():
        rule = merge_rule[gk]
        target = gk[1]
        present = [p for p in parts if p is not None]
        merge_sizes[gk] = len(parts)
        if len(present) != len(parts):
            missing = [rule.patterns[i] for i, p in enumerate(parts) if p is None]
            problems[INCOMPLETE_MERGES].append(
                f"{target}: have {[p[1] for p in present]}, missing parts matching {missing}")
            produced.setdefault(target, None)  # reported here, not again as "missing"
            continue
        transformed.append({"rule": "Merge", "sources": [p[1] for p in present], "targets": [target],
                            "reason": rule.reason})
        produced.setdefault(target, None)
        try:
            metas = [_meta_like(sources[s][0].shape(k), sources[s][0].dtype(k)) for s, k in present]
            out = rule.fn(*metas)
        except Exception:
            continue  # cannot run on meta tensors: check the real output while streaming
        try:
            o = _as_tensors(out, 1, describe_rule(rule))[0]
        except TypeError as e:
            problems[RULE_FAILURES].append(f"{target}: {e}")
            continue
        if owner.get(target, "").startswith("merge of"):
            produced[target] = (o.shape, _out_dtype(o.dtype, cast))

    allowed_missing: list[str] = []
    if expected is not None:
        for k in expected:
            if k not in produced:
                if any(rx.search(k) for rx in allow):
                    allowed_missing.append(k)
                else:
                    problems[MISSING].append(k)
        for k, info in produced.items():
            if k not in expected:
                problems[UNEXPECTED_TARGET].append(f"{k} (from {owner.get(k, '?')})")
            elif info is not None and info[0] != expected[k][0]:
                problems[SHAPES].append(f"{k}: got {_fmt_shape(info[0])} expected {_fmt_shape(expected[k][0])} "
                                        f"(from {owner.get(k, '?')})")

    unused: list[str] = []
    seen_tables: set[int] = set()
    for _, table in sources:
        if id(table) in seen_tables:
            continue
        seen_tables.add(id(table))
        unused.extend(f"{table.name}: {describe_rule(r)}" for r in table.rules if id(r) not in used)

    return _Plan(items, produced, dict(problems), counts, dropped, transformed, notes, allowed_missing, unused,
                 merge_sizes, n_keys)


# ---------------------------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------------------------

_STALE = re.compile(r"^(model\.safetensors|model\.safetensors\.index\.json|model-\d{5}-of-\d{5}\.safetensors)$")


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"), ("uint16", "U16"),
                     ("uint32", "U32"), ("uint64", "U64")):
    if hasattr(torch, _name):
        _SAFETENSORS_DTYPES[getattr(torch, _name)] = _code


class _ShardWriter:
    """Streams output tensors into safetensors shards of at most ``limit`` bytes.

    Each tensor's bytes go to the current shard's data file as soon as it is added (nothing is buffered, so a
    memory-mapped source page is touched once and its mapping can go when its shard is done); at a shard boundary the
    header is written and the data appended to it with ``copy_file_range`` (kernel-side, no user-space buffer).
    Peak memory is about one tensor instead of a whole output shard; the driver then drops the source tensor's
    memory-mapped pages (:meth:`CheckpointSource.drop_pages`).  The written bytes sit in the page cache, not in
    this process's RSS (``write`` / ``copy_file_range`` map nothing).
    """

    def __init__(self, directory: Path, limit: int, metadata: dict[str, str]):
        self.dir = directory
        self.limit = limit
        self.metadata = metadata
        self.entries: dict[str, dict[str, Any]] = {}
        self.seen: set[str] = set()
        self.buf_bytes = 0  # bytes of the current shard
        self.data: Any = None  # open data file of the current shard
        self.shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, t: torch.Tensor) -> None:
        if t.dtype not in _SAFETENSORS_DTYPES:
            raise ConversionError(f"{name}: dtype {t.dtype} cannot be stored in safetensors")
        if name in self.seen:
            raise ConversionError(f"{name} written twice")
        self.seen.add(name)
        nbytes = t.numel() * t.element_size()
        if self.entries and self.buf_bytes + nbytes > self.limit:
            self.flush()
        if self.data is None:
            self.data = open(self.dir / f".shard-{len(self.shards) + 1:05d}.data.tmp", "wb")
        if nbytes:
            flat = t.detach().reshape(-1)
            if not flat.is_contiguous():
                flat = flat.contiguous()
            self.data.write(memoryview(flat.view(torch.uint8).numpy()))
        self.entries[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                              "data_offsets": [self.buf_bytes, self.buf_bytes + nbytes]}
        self.buf_bytes += nbytes
        self.total_bytes += nbytes

    def flush(self) -> None:
        if self.data is None:
            self.data = open(self.dir / f".shard-{len(self.shards) + 1:05d}.data.tmp", "wb")
        data_path = Path(self.data.name)
        self.data.close()
        self.data = None
        header = {"__metadata__": dict(self.metadata), **self.entries}
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
        path = self.dir / f".shard-{len(self.shards) + 1:05d}.safetensors.tmp"
        with open(path, "wb") as out, open(data_path, "rb") as src:
            out.write(len(raw).to_bytes(8, "little"))
            out.write(raw)
            out.flush()
            _append_file(src, out, self.buf_bytes)
        data_path.unlink()
        self.shards.append((path, list(self.entries)))
        self.entries = {}
        self.buf_bytes = 0

    def finish(self) -> tuple[list[Path], Path | None]:
        if self.entries or not self.shards:
            self.flush()
        n = len(self.shards)
        if n == 1:
            final = self.dir / "model.safetensors"
            os.replace(self.shards[0][0], final)
            return [final], None
        files: list[Path] = []
        weight_map: dict[str, str] = {}
        for i, (tmp, names) in enumerate(self.shards, start=1):
            final = self.dir / f"model-{i:05d}-of-{n:05d}.safetensors"
            os.replace(tmp, final)
            files.append(final)
            for k in names:
                weight_map[k] = final.name
        index = self.dir / "model.safetensors.index.json"
        index.write_text(json.dumps({"metadata": {"total_size": self.total_bytes},
                                     "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
        return files, index


def _append_file(src: Any, out: Any, nbytes: int) -> None:
    """Append ``nbytes`` of ``src`` to ``out`` in the kernel where possible (no user-space copy of the data)."""
    done = 0
    if hasattr(os, "copy_file_range"):
        try:
            while done < nbytes:
                n = os.copy_file_range(src.fileno(), out.fileno(), nbytes - done)
                if n == 0:
                    break
                done += n
        except OSError:
            pass
    if done < nbytes:
        src.seek(done)
        out.seek(0, os.SEEK_END)
        shutil.copyfileobj(src, out, 16 << 20)


# ---------------------------------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------------------------------


def convert_checkpoint(
    sources: list[tuple[CheckpointSource, KeyTable]],
    expected: Mapping[str, Any] | None,
    out_dir: str | Path,
    *,
    extra_sources: Mapping[str, CheckpointSource] | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
    allow_missing: Iterable[str] = (),
    progress: bool = True,
    metadata: Mapping[str, str] | None = None,
    finalize: Callable[[Path], None] | None = None,
) -> ConversionReport:
    """Convert ``sources`` (each with its own table) into HF-style safetensors in ``out_dir``.

    ``expected``: the target model's ``{key: (shape, dtype)}`` (see :func:`expected_from_model`; a bare shape or a
    tensor per key is accepted too); ``None`` skips the missing / unexpected / shape checks.  Dtypes in ``expected``
    are not enforced (a float32 meta model loads float16 weights fine).  ``extra_sources``: named sources for
    :class:`AddDelta` bases and ``ctx.lookup``.  ``dtype`` casts floating tensors only.  ``allow_missing``: regexes
    (``re.search``) of expected keys that may stay unfilled.  ``metadata`` is stored in every shard next to
    ``{"format": "pt"}``.

    ``out_dir`` may exist (e.g. holding config.json): its other files are kept, earlier ``model.safetensors`` /
    ``model-*-of-*.safetensors`` / ``model.safetensors.index.json`` files are dropped.  ``finalize(staging_dir)``
    writes the rest of the output (config, tokenizer, processor) next to the weights before anything reaches
    ``out_dir``.  The new output is complete in a staging directory first and swapped in by renames, so a crash at
    any moment leaves either the old or the new output, never a mix; staging directories of killed runs are cleaned
    up (and reported) by the next run.  Raises :class:`ConversionError` listing every problem; in that case nothing
    is written to ``out_dir``.
    """
    t0 = time.monotonic()
    sources = list(sources)
    if not sources:
        raise ConversionError("convert_checkpoint needs at least one (source, table) pair")
    for pair in sources:
        if not (isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], CheckpointSource)
                and isinstance(pair[1], KeyTable)):
            raise TypeError(f"sources must be (CheckpointSource, KeyTable) pairs, got {pair!r}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    limit = parse_size(max_shard_size)
    extra = dict(extra_sources or {})
    meta_out = {"format": "pt"}
    for k, v in (metadata or {}).items():
        if not (isinstance(k, str) and isinstance(v, str)):
            raise ValueError(f"metadata must map str to str, got {k!r}: {v!r}")
        if k != "format":
            meta_out[k] = v
    try:
        allow = [re.compile(p) for p in allow_missing]
    except re.error as e:
        raise ConversionError(f"invalid allow_missing pattern: {e}") from e
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise ConversionError(f"out_dir {out_dir} exists and is not a directory")
    exp = _normalize_expected(expected)
    names = list(dict.fromkeys(t.name for _, t in sources))
    header = f"checkpoint conversion [{', '.join(names)}] failed"

    # phase 1: plan and check (no tensor data read for safetensors; pickles are memory-mapped)
    try:
        plan = _plan(sources, exp, extra, dtype, allow)
    finally:
        for src in [s for s, _ in sources] + list(extra.values()):
            src.release()
    if plan.problems:
        raise _problem_error(plan.problems, header)

    # phase 2: stream into a staging directory next to out_dir
    created: list[Path] = []
    parent = out_dir.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_staging(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.converting-{os.getpid()}-", dir=out_dir.parent))
    problems: dict[str, list[str]] = defaultdict(list)
    writer = _ShardWriter(staging, limit, meta_out)
    pending: dict[tuple[int, str], list[torch.Tensor | None]] = {}
    cast_count = 0

    def emit(target: str, t: torch.Tensor, who: str) -> None:
        nonlocal cast_count
        if exp is not None and target in exp and t.shape != exp[target][0]:
            problems[SHAPES].append(f"{target}: got {_fmt_shape(t.shape)} expected {_fmt_shape(exp[target][0])} "
                                    f"(from {who})")
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
            cast_count += 1
        if not problems:  # after the first problem keep going only to collect the others
            writer.add(target, t)

    try:
        from tqdm.auto import tqdm

        with tqdm(total=plan.num_source_keys, disable=not progress, unit="tensor", desc=f"converting {names[0]}",
                  leave=False) as bar:
            for si, (src, table) in enumerate(sources):
                for shard_items in plan.items[si]:
                    for item in shard_items:
                        bar.update(1)
                        res = item.res
                        assert res is not None
                        rule = res.rule
                        if isinstance(rule, Drop):
                            continue
                        tensor = src.get(item.key)
                        try:
                            # once a source tensor's outputs are written, src.drop_pages hands its memory-mapped
                            # pages back (pickled shards): resident stays ~one tensor, not the whole shard
                            if isinstance(rule, Rename):
                                emit(res.targets[0], tensor, item.key)
                                src.drop_pages(tensor)
                            elif isinstance(rule, Transform):
                                ctx = ConversionContext(item.key, res.targets, table, src, extra, exp)
                                outs = _as_tensors(rule.fn(tensor, res.match, ctx), len(res.targets),
                                                   describe_rule(rule))
                                for target, o in zip(res.targets, outs, strict=True):
                                    emit(target, o, item.key)
                                del outs
                                src.drop_pages(tensor)
                            elif isinstance(rule, AddDelta):
                                assert item.base_key is not None
                                base = extra[rule.base].get(item.base_key)
                                emit(res.targets[0], _add_delta(tensor, base), item.key)
                                src.drop_pages(tensor)
                                extra[rule.base].drop_pages(base)
                                del base
                            else:
                                assert isinstance(rule, Merge) and res.part is not None
                                gk = (id(rule), res.targets[0])
                                slot = pending.setdefault(gk, [None] * plan.merge_sizes[gk])
                                slot[res.part] = tensor
                                if all(p is not None for p in slot):
                                    del pending[gk]
                                    out = _as_tensors(rule.fn(*slot), 1, describe_rule(rule))[0]
                                    emit(res.targets[0], out, f"merge of {item.key}")
                                    del out
                                    for part in slot:  # parts from an earlier shard are not resident: no-op
                                        src.drop_pages(part)
                        except ConversionError:
                            raise
                        except Exception as e:
                            problems[RULE_FAILURES].append(f"{item.key} ({describe_rule(rule)}): "
                                                           f"{type(e).__name__}: {e}")
                        del tensor
                    src.release()  # this shard is done: drop its mapping (tensors still needed keep their pages)
                    gc.collect()  # a mapping caught in a reference cycle would otherwise stay resident into the next
                src.release()
        for gk in pending:  # cannot happen after a clean plan, kept as a safety net
            problems[INCOMPLETE_MERGES].append(gk[1])
        if problems:
            raise _problem_error(problems, header)
        files, index = writer.finish()
        if finalize is not None:
            finalize(staging)
        removed = _move_into_place(staging, out_dir)
    except BaseException:
        for src, _ in sources:
            src.release()
        for src in extra.values():
            src.release()
        shutil.rmtree(staging, ignore_errors=True)
        for d in created:  # parents this call created, innermost first
            try:
                d.rmdir()
            except OSError:
                break
        raise

    for src in extra.values():
        src.release()
    files = [out_dir / f.name for f in files]
    return ConversionReport(
        out_dir=out_dir,
        tables=names,
        sources=[str(s.path) + (f" (prefix {s.prefix!r})" if s.prefix else "") for s, _ in sources],
        counts=plan.counts,
        dropped=plan.dropped,
        transformed=plan.transformed,
        notes=plan.notes,
        allowed_missing=plan.allowed_missing,
        unused_rules=plan.unused_rules,
        files=files,
        index_file=out_dir / index.name if index is not None else None,
        total_bytes=writer.total_bytes,
        num_tensors=sum(len(n) for _, n in writer.shards),
        dtype=str(dtype).replace("torch.", "") if dtype is not None else None,
        cast_tensors=cast_count,
        seconds=time.monotonic() - t0,
        removed_stale=removed,
    )


def _add_delta(delta: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    if not delta.is_floating_point():
        return delta
    out = delta.float().clone() if delta.dtype == torch.float32 else delta.float()
    n = base.shape[0] if base.dim() else None
    if n is None or n == out.shape[0]:
        out += base.float()
    else:
        out[:n] += base.float()
    return out.to(delta.dtype)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_STAGING_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>converting|exporting|replaced)-(?P<pid>\d+)-[^/]*$")


def _clean_stale_staging(out_dir: Path) -> None:
    """Directories left next to ``out_dir`` by a conversion that was killed (its pid is gone): a staging dir is
    removed; a ``.replaced-`` dir (the previous output, moved aside just before the new one was renamed in) is
    removed when ``out_dir`` exists, else put back as ``out_dir``. Each is reported with a warning; directories of
    a conversion still running are left alone."""
    for d in sorted(out_dir.parent.glob(f".{glob_escape(out_dir.name)}.*-*")):
        m = _STAGING_RE.match(d.name)
        if not m or m["name"] != out_dir.name or not d.is_dir():
            continue
        if _pid_alive(int(m["pid"])) and int(m["pid"]) != os.getpid():
            logger.warning("%s: left by conversion process %s, which is still running; leaving it", d, m["pid"])
            continue
        if m["kind"] == "replaced" and not out_dir.exists() and (d / "old").is_dir():
            os.replace(d / "old", out_dir)
            shutil.rmtree(d, ignore_errors=True)
            logger.warning("restored %s from %s: an earlier conversion was killed while swapping outputs", out_dir, d)
        else:
            shutil.rmtree(d, ignore_errors=True)
            logger.warning("removed %s, left incomplete by a killed conversion/export into %s", d, out_dir)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _link_or_copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=_link_file)
    else:
        _link_file(src, dst)


def _link_file(src, dst) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _move_into_place(staging: Path, out_dir: Path) -> list[str]:
    """Swap the complete ``staging`` dir in as ``out_dir`` (files of an existing ``out_dir`` that the conversion
    does not write are carried over, stale weight files dropped): at every moment ``out_dir`` is the old output
    or the new one, never a mix."""
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return []
    removed = []
    for f in sorted(out_dir.iterdir()):
        if _STALE.match(f.name) and f.is_file():
            removed.append(f.name)
            continue
        if not (staging / f.name).exists():
            _link_or_copy(f, staging / f.name)
    aside = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.replaced-{os.getpid()}-", dir=out_dir.parent))
    os.replace(out_dir, aside / "old")  # same filesystem: atomic renames
    try:
        os.replace(staging, out_dir)
    except BaseException:
        os.replace(aside / "old", out_dir)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return removed
