"""Read-only, lazily loaded checkpoint sources for the conversion engine.

A :class:`CheckpointSource` is a set of named tensors stored in one file or in a directory (single file or
sharded with an index).  Keys, shapes and dtypes are available without materialising tensors wherever the format
allows it, and tensors are fetched one at a time with :meth:`CheckpointSource.get`.

Security: pickled PyTorch files (``.bin``/``.pth``/``.pt``) are only ever read with
``torch.load(path, map_location="cpu", weights_only=True, mmap=True)``; legacy (non-zip) files, which cannot be
memory-mapped, fall back to ``mmap=False`` and are still read with ``weights_only=True``.  A file that needs
arbitrary unpickling is refused.  safetensors files are read with :func:`safetensors.safe_open`, one tensor at a
time.

Memory: a sharded ``.bin`` checkpoint keeps at most ONE shard resident per source (the shard is dropped before the
next one is loaded).  :data:`TORCH_SHARD_STATS` counts resident shards across all sources so tests can verify it.
The file-backed pages of a memory-mapped shard (pickled with ``mmap=True``, or safetensors through ``safe_open``)
count in the process's RSS once touched, until the mapping goes; :meth:`CheckpointSource.drop_pages` hands a
consumed tensor's pages back to the kernel (``madvise(MADV_DONTNEED)`` on Linux, only inside a verified mapping of
the shard file: clean file pages are re-read from the file if touched again), so converting a shard holds about
one tensor resident instead of the whole shard.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import struct
import sys
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointSource",
    "ConversionError",
    "ShardResidency",
    "TORCH_SHARD_STATS",
    "WEIGHT_SUFFIXES",
]

# ---------------------------------------------------------------------------------------------------------------------
# errors (re-exported by engine.py; defined here so that sources.py does not import engine.py)
# ---------------------------------------------------------------------------------------------------------------------


class ConversionError(ValueError):
    """A checkpoint cannot be read or converted.  ``problems`` maps a problem group to its entries (may be empty)."""

    def __init__(self, message: str, problems: Mapping[str, list[str]] | None = None):
        super().__init__(message)
        self.problems: dict[str, list[str]] = {k: list(v) for k, v in (problems or {}).items()}


# ---------------------------------------------------------------------------------------------------------------------
# residency accounting for pickled shards
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ShardResidency:
    """Counts pickled (``torch.load``-ed) shards currently held by sources: ``current``, ``peak`` and ``loads``
    (and ``dropped_bytes``: memory-mapped pages of consumed tensors handed back, see ``drop_pages``)."""

    current: int = 0
    peak: int = 0
    loads: int = 0
    dropped_bytes: int = 0  # pages of consumed tensors handed back to the kernel (see CheckpointSource.drop_pages)

    def reset(self) -> None:
        self.current = 0
        self.peak = 0
        self.loads = 0
        self.dropped_bytes = 0

    def _loaded(self) -> None:
        self.current += 1
        self.loads += 1
        self.peak = max(self.peak, self.current)

    def _released(self) -> None:
        self.current -= 1


#: Global counter over all sources; each source also keeps its own (``CheckpointSource.residency``).
TORCH_SHARD_STATS = ShardResidency()


# ---------------------------------------------------------------------------------------------------------------------
# dropping the pages of consumed tensors from a memory-mapped shard (Linux; a no-op elsewhere)
# ---------------------------------------------------------------------------------------------------------------------

_MADV_DONTNEED = 4  # Linux value on every architecture
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_madvise_fn: Any = None  # resolved on first use; False when unavailable


def _madvise() -> Any:
    """libc's ``madvise`` via ctypes, or ``None`` off Linux / when it cannot be found."""
    global _madvise_fn
    if _madvise_fn is None:
        _madvise_fn = False
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(None, use_errno=True).madvise
                fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                fn.restype = ctypes.c_int
                _madvise_fn = fn
            except (OSError, AttributeError):
                pass
    return _madvise_fn or None


def _mapping_containing(start: int, end: int, paths: set[str]) -> tuple[int, int] | None:
    """The range of this process's mapping (``/proc/self/maps``) of one of ``paths`` that holds ``[start, end)``;
    ``None`` when there is none or the table cannot be read."""
    try:
        with open("/proc/self/maps") as f:
            table = f.read()
    except OSError:
        return None
    for line in table.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5] in paths:
            try:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
            except ValueError:
                continue
            if lo <= start and end <= hi:
                return lo, hi
    return None


def _drop_range(start: int, end: int) -> int:
    """``MADV_DONTNEED`` on the whole pages inside ``[start, end)`` (the caller has checked that the range is a
    file mapping: its pages are re-read from the file if touched again).  Returns the bytes handed back; 0 when
    nothing was done (less than a page, no madvise, or madvise failed)."""
    lo = -(-start // _PAGE_SIZE) * _PAGE_SIZE  # inward: never a page that also holds bytes outside the range
    hi = end // _PAGE_SIZE * _PAGE_SIZE
    if hi <= lo:
        return 0
    fn = _madvise()
    if fn is None:
        return 0
    try:
        if fn(lo, hi - lo, _MADV_DONTNEED) != 0:
            return 0
    except Exception:  # a foreign libc / ctypes failure: keep the pages, never fail the conversion
        return 0
    return hi - lo


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
_TORCH_SUFFIXES = (".bin", ".pth", ".pt")
_WRAPPER_KEYS = ("model", "state_dict", "module")
_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024

_ST_DTYPES: dict[str, torch.dtype] = {}
for _name, _attr in [
    ("F64", "float64"),
    ("F32", "float32"),
    ("F16", "float16"),
    ("BF16", "bfloat16"),
    ("I64", "int64"),
    ("I32", "int32"),
    ("I16", "int16"),
    ("I8", "int8"),
    ("U64", "uint64"),
    ("U32", "uint32"),
    ("U16", "uint16"),
    ("U8", "uint8"),
    ("BOOL", "bool"),
    ("F8_E4M3", "float8_e4m3fn"),
    ("F8_E5M2", "float8_e5m2"),
    ("F8_E8M0", "float8_e8m0fnu"),
    ("C64", "complex64"),
]:
    if hasattr(torch, _attr):
        _ST_DTYPES[_name] = getattr(torch, _attr)


def _preview(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


# ---------------------------------------------------------------------------------------------------------------------
# shards
# ---------------------------------------------------------------------------------------------------------------------


class _SafetensorsShard:
    """One safetensors file: header parsed eagerly (cheap), tensors via a lazily opened ``safe_open`` handle."""

    kind = "safetensors"

    def __init__(self, path: Path):
        self.path = path
        self.meta: dict[str, tuple[torch.Size, torch.dtype]] = {}
        self.file_metadata: dict[str, str] = {}
        self._read_header()
        self.keys: list[str] = list(self.meta)

    def _read_header(self) -> None:
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                raw = f.read(8)
                if len(raw) != 8:
                    raise ValueError("file shorter than the 8-byte header length")
                (n,) = struct.unpack("<Q", raw)
                if n > min(size - 8, _MAX_SAFETENSORS_HEADER):
                    raise ValueError(f"header length {n} does not fit in a file of {size} bytes")
                header = json.loads(f.read(n))
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
            end = 0
            starts: dict[str, int] = {}
            for name, info in header.items():
                if name == "__metadata__":
                    self.file_metadata = dict(info or {})
                    continue
                dt = _ST_DTYPES.get(info["dtype"])
                if dt is None:
                    raise ValueError(f"tensor {name!r} has unsupported dtype {info['dtype']!r}")
                self.meta[name] = (torch.Size(info["shape"]), dt)
                starts[name] = int(info["data_offsets"][0])
                end = max(end, int(info["data_offsets"][1]))
            # keys in file order, so that streaming reads the file sequentially
            self.meta = {k: self.meta[k] for k in sorted(self.meta, key=starts.__getitem__)}
            if 8 + n + end > size:
                raise ValueError(f"truncated: tensor data needs {8 + n + end} bytes, file has {size}")
        except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error) as e:
            raise ConversionError(f"unreadable or corrupt safetensors file {self.path}: {e}") from e

    def open_handle(self):
        from safetensors import safe_open

        try:
            return safe_open(str(self.path), framework="pt", device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError
            raise ConversionError(f"unreadable or corrupt safetensors file {self.path}: {e}") from e


class _TorchShard:
    """One pickled state-dict file, read with ``weights_only=True`` (and ``mmap=True`` for zip files)."""

    kind = "torch"

    def __init__(self, path: Path, subkey: str | None, keys: list[str] | None = None):
        self.path = path
        self.subkey = subkey
        self.subkey_detected = False
        self.keys: list[str] | None = keys  # from the index when sharded; None until loaded otherwise
        self.meta: dict[str, tuple[torch.Size, torch.dtype]] = {}
        self.mmap: bool | None = None  # known once loaded

    def load(self) -> dict[str, torch.Tensor]:
        self.mmap = zipfile.is_zipfile(self.path)
        try:
            obj = torch.load(self.path, map_location="cpu", weights_only=True, mmap=self.mmap)
        except pickle.UnpicklingError as e:
            if "weights only" in str(e).lower():
                raise ConversionError(
                    f"{self.path} contains objects other than tensors and plain containers: refusing to unpickle "
                    "arbitrary objects; convert it to safetensors or a plain state dict"
                ) from e
            raise ConversionError(f"unreadable or corrupt checkpoint file {self.path}: {e}") from e
        except Exception as e:
            raise ConversionError(f"unreadable or corrupt checkpoint file {self.path}: {str(e)[:300]}") from e
        sd = self._unwrap(obj)
        meta = {k: (v.shape, v.dtype) for k, v in sd.items()}
        if self.keys is not None:
            listed, present = set(self.keys), set(sd)
            if listed != present:
                absent = sorted(listed - present)
                extra = sorted(present - listed)
                raise ConversionError(
                    f"index and shard {self.path.name} disagree: keys listed but absent: [{_preview(absent)}]; "
                    f"keys present but not listed: [{_preview(extra)}]"
                )
        else:
            self.keys = list(sd)
        self.meta = meta
        return sd

    def _unwrap(self, obj: Any) -> dict[str, torch.Tensor]:
        if not isinstance(obj, Mapping):
            raise ConversionError(f"{self.path} does not hold a tensor dict (found {type(obj).__name__})")
        if self.subkey is not None:
            for part in self.subkey.split("/"):
                if not isinstance(obj, Mapping) or part not in obj:
                    top = list(obj) if isinstance(obj, Mapping) else []
                    raise ConversionError(
                        f"{self.path}: subkey {self.subkey!r} not found (top-level keys: {_preview([str(k) for k in top])})"
                    )
                obj = obj[part]
        elif not any(isinstance(v, torch.Tensor) for v in obj.values()):
            found = [k for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
            if len(found) == 1:
                self.subkey = found[0]
                self.subkey_detected = True
                obj = obj[found[0]]
            elif len(found) > 1:
                raise ConversionError(f"{self.path}: several wrapped state dicts {found}; pass subkey= to choose one")
        if not isinstance(obj, Mapping):
            raise ConversionError(f"{self.path}: subkey {self.subkey!r} does not hold a dict")
        bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
        if bad:
            raise ConversionError(
                f"{self.path} is not a plain tensor dict: non-tensor entries {_preview(bad)}"
                + ("" if self.subkey else "; if the state dict is wrapped, pass subkey=")
            )
        return dict(obj)


# ---------------------------------------------------------------------------------------------------------------------
# the source
# ---------------------------------------------------------------------------------------------------------------------


class CheckpointSource:
    """A read-only, lazily loaded set of tensors: a file or a directory.

    Use :meth:`open` (files and directories) or :meth:`from_state_dict` (in-memory tensors).  Every key this source
    yields or accepts carries ``prefix``.  Attributes: ``path``, ``files`` (weight files in shard order), ``format``
    (``"safetensors"``, ``"torch"`` or ``"memory"``), ``subkey`` (the wrapper entry used, detected or given),
    ``residency`` (pickled-shard counters for this source).
    """

    _MAX_HANDLES = 4

    def __init__(self, path: Path, shards: list[_SafetensorsShard | _TorchShard], *, prefix: str = "",
                 index: dict | None = None, subkey: str | None = None):
        self.path = path
        self.prefix = prefix
        self._shards = shards
        self._index = index
        self._subkey = subkey
        self.files: list[Path] = [s.path for s in shards]
        kinds = {s.kind for s in shards}
        self.format = kinds.pop() if len(kinds) == 1 else "mixed"
        self.residency = ShardResidency()
        self._handles: OrderedDict[int, Any] = OrderedDict()  # shard idx -> safe_open handle (LRU)
        self._resident: tuple[int, dict[str, torch.Tensor]] | None = None  # the one loaded pickled shard
        # drop_pages: file mappings found so far, each with a storage inside it that keeps it mapped (until release)
        self._mapped: list[tuple[int, int, Any]] = []
        self._map_misses = 0  # tensors found in no mapping (e.g. a safetensors build that copies): stop looking
        self._real_paths: set[str] | None = None
        self._key_to_shard: dict[str, int] | None = None
        self._memory: dict[str, torch.Tensor] | None = None
        self._index_file: Path | None = None

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, subkey: str | None = None, prefix: str = "") -> CheckpointSource:
        """Open a checkpoint file or directory.

        Files: ``.safetensors``, ``.bin``, ``.pth``, ``.pt`` or a shard index ``*.index.json``.  Directories, in HF's
        order of preference: ``model.safetensors``, ``model.safetensors.index.json``, ``pytorch_model.bin``,
        ``pytorch_model.bin.index.json``; otherwise exactly one ``*.index.json`` or exactly one weight file.
        ``subkey`` selects a wrapped state dict (``"model"``; ``"a/b"`` for nested wrappers) in pickled files; when
        omitted, a dict without top-level tensors and exactly one dict-valued ``model``/``state_dict``/``module``
        entry is unwrapped automatically (see ``metadata()["subkey"]``).
        """
        p = Path(path).expanduser()
        if not p.exists():
            raise ConversionError(f"checkpoint path does not exist: {p}")
        if p.is_dir():
            target = cls._pick_in_dir(p)
        else:
            target = p
        name = target.name
        if name.endswith(".index.json"):
            return cls._open_index(p, target, subkey=subkey, prefix=prefix)
        if name.endswith(".safetensors"):
            if subkey is not None:
                raise ConversionError(f"subkey={subkey!r} only applies to pickled torch checkpoints, not {target}")
            return cls(p, [_SafetensorsShard(target)], prefix=prefix)
        if name.endswith(_TORCH_SUFFIXES):
            return cls(p, [_TorchShard(target, subkey)], prefix=prefix, subkey=subkey)
        raise ConversionError(f"unsupported checkpoint file {target}: expected one of {', '.join(WEIGHT_SUFFIXES)} "
                              "or a *.index.json shard index")

    @staticmethod
    def _pick_in_dir(d: Path) -> Path:
        for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json"):
            if (d / name).is_file():
                return d / name
        entries = sorted(e.name for e in d.iterdir() if not e.name.startswith("."))
        indexes = [n for n in entries if n.endswith((".safetensors.index.json", ".bin.index.json"))]
        if len(indexes) == 1:
            return d / indexes[0]
        weights = [n for n in entries if n.endswith(WEIGHT_SUFFIXES) and (d / n).is_file()]
        if len(weights) == 1 and not indexes:
            return d / weights[0]
        found = _preview(entries) if entries else "nothing"
        why = "several candidates" if len(weights) + len(indexes) > 1 else "no checkpoint files"
        raise ConversionError(
            f"{why} in {d}: expected model.safetensors, model.safetensors.index.json, pytorch_model.bin, "
            f"pytorch_model.bin.index.json, or exactly one *.safetensors/*.bin/*.pth/*.pt file; found: {found}"
        )

    @classmethod
    def _open_index(cls, path: Path, index_file: Path, *, subkey: str | None, prefix: str) -> CheckpointSource:
        try:
            index = json.loads(index_file.read_text())
            weight_map = index["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConversionError(f"unreadable or corrupt shard index {index_file}: {e}") from e
        order: list[str] = []
        per_file: dict[str, list[str]] = {}
        for key, fname in weight_map.items():
            if fname not in per_file:
                per_file[fname] = []
                order.append(fname)
            per_file[fname].append(key)
        order.sort()  # HF shard names (model-00001-of-0000n...) sort into shard order
        base = index_file.parent
        outside = [f for f in order if not isinstance(f, str) or not f or os.path.isabs(f)
                   or ".." in Path(f).parts or ".." in Path(f.replace("\\", "/")).parts]
        if outside:
            raise ConversionError(
                f"shard index {index_file} points outside its directory ({_preview(outside)}); shard file names must be "
                f"relative paths inside {base} -- refusing to read them"
            )
        missing = [f for f in order if not (base / f).is_file()]
        if missing:
            raise ConversionError(f"shard index {index_file} references missing shard files: {_preview(missing)}")
        shards: list[_SafetensorsShard | _TorchShard] = []
        for fname in order:
            fpath = base / fname
            if fname.endswith(".safetensors"):
                if subkey is not None:
                    raise ConversionError(f"subkey={subkey!r} only applies to pickled torch checkpoints, not {fpath}")
                shard = _SafetensorsShard(fpath)
                listed, present = set(per_file[fname]), set(shard.keys)
                if listed != present:
                    raise ConversionError(
                        f"index {index_file.name} and shard {fname} disagree: keys listed but absent: "
                        f"[{_preview(sorted(listed - present))}]; keys present but not listed: "
                        f"[{_preview(sorted(present - listed))}]"
                    )
                shards.append(shard)
            elif fname.endswith(_TORCH_SUFFIXES):
                shards.append(_TorchShard(fpath, subkey, keys=per_file[fname]))
            else:
                raise ConversionError(f"shard index {index_file} references unsupported file {fname}")
        src = cls(path, shards, prefix=prefix, index=index, subkey=subkey)
        src._index_file = index_file
        return src

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], *, prefix: str = "",
                        name: str = "<memory>") -> CheckpointSource:
        """Wrap in-memory tensors (e.g. from a model or a test) as a single-shard source."""
        bad = [str(k) for k, v in state_dict.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
        if bad:
            raise ConversionError(f"state dict {name} has non-tensor entries: {_preview(bad)}")
        src = cls(Path(name), [], prefix=prefix)
        src.format = "memory"
        src._memory = dict(state_dict)
        return src

    # -- key bookkeeping ------------------------------------------------------------------------------------------
    def _raw(self, key: str) -> str:
        if not key.startswith(self.prefix):
            raise KeyError(f"{key!r} does not start with this source's prefix {self.prefix!r} ({self.path})")
        return key[len(self.prefix):]

    def _shard_keys(self, i: int) -> list[str]:
        shard = self._shards[i]
        if shard.keys is None:  # single pickled file: keys need a (memory-mapped) load
            self._load_torch(i)
        assert shard.keys is not None
        return shard.keys

    def _locate(self, key: str) -> int:
        if self._key_to_shard is None:
            table: dict[str, int] = {}
            for i in range(len(self._shards)):
                for k in self._shard_keys(i):
                    table.setdefault(k, i)
            self._key_to_shard = table
        raw = self._raw(key)
        try:
            return self._key_to_shard[raw]
        except KeyError:
            raise KeyError(f"{key!r} not in checkpoint {self.path}") from None

    def keys(self) -> list[str]:
        """All keys (with prefix), in shard order.  Pickled single files are memory-mapped to list them."""
        if self._memory is not None:
            return [self.prefix + k for k in self._memory]
        return [self.prefix + k for i in range(len(self._shards)) for k in self._shard_keys(i)]

    def shards(self) -> Iterator[list[str]]:
        """Keys (with prefix) grouped by shard, in shard order; a single file is one group."""
        if self._memory is not None:
            yield [self.prefix + k for k in self._memory]
            return
        for i in range(len(self._shards)):
            yield [self.prefix + k for k in self._shard_keys(i)]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            if self._memory is not None:
                return self._raw(key) in self._memory
            self._locate(key)
            return True
        except KeyError:
            return False

    def __len__(self) -> int:
        return len(self.keys())

    # -- tensor access --------------------------------------------------------------------------------------------
    def _handle(self, i: int):
        h = self._handles.get(i)
        if h is None:
            shard = self._shards[i]
            assert isinstance(shard, _SafetensorsShard)
            h = shard.open_handle()
            self._handles[i] = h
            while len(self._handles) > self._MAX_HANDLES:
                self._handles.popitem(last=False)
        else:
            self._handles.move_to_end(i)
        return h

    def _load_torch(self, i: int) -> dict[str, torch.Tensor]:
        if self._resident is not None and self._resident[0] == i:
            return self._resident[1]
        self.release()  # drop the resident shard BEFORE loading the next one: never two at a time
        shard = self._shards[i]
        assert isinstance(shard, _TorchShard)
        sd = shard.load()
        self._subkey = shard.subkey
        self._resident = (i, sd)
        TORCH_SHARD_STATS._loaded()
        self.residency._loaded()
        return sd

    def release(self) -> None:
        """Drop the resident pickled shard and the open safetensors handles (they are reopened on demand)."""
        self._mapped = []
        self._map_misses = 0
        if self._resident is not None:
            self._resident = None
            TORCH_SHARD_STATS._released()
            self.residency._released()
        self._handles.clear()

    close = release

    def __enter__(self) -> CheckpointSource:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # keep the global counter honest when a source is dropped while holding a shard
        try:
            self.release()
        except Exception:
            pass

    def get(self, key: str) -> torch.Tensor:
        """The tensor stored under ``key`` (with prefix).  Raises ``KeyError`` for unknown keys."""
        if self._memory is not None:
            try:
                return self._memory[self._raw(key)]
            except KeyError:
                raise KeyError(f"{key!r} not in {self.path}") from None
        i = self._locate(key)
        raw = self._raw(key)
        shard = self._shards[i]
        if isinstance(shard, _SafetensorsShard):
            try:
                return self._handle(i).get_tensor(raw)
            except Exception as e:
                raise ConversionError(f"unreadable or corrupt safetensors file {shard.path} ({raw}): {e}") from e
        return self._load_torch(i)[raw]

    def drop_pages(self, tensor: torch.Tensor) -> int:
        """Hand the memory-mapped file pages of a consumed source tensor back to the kernel; returns the bytes dropped.

        Acts only when the tensor's storage lies inside a mapping of one of this source's files (memory-mapped
        pickled shards, safetensors files read through ``safe_open``), checked in ``/proc/self/maps`` while the
        tensor is alive; the mapping is remembered with that storage, which keeps it mapped until :meth:`release`.
        Clean file-backed pages are simply unmapped (``madvise(MADV_DONTNEED)``) and re-read from the file when
        touched again, so the tensor and every other view of it keep their values.  Anything else -- in-memory
        sources, non-zip pickles, heap copies, other platforms, a failing ``madvise`` -- is left alone and 0
        returned.  Call it once the tensor's bytes are written out: a tensor modified in place would read back its
        file values.
        """
        if self._memory is not None or not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
            return 0
        try:
            storage = tensor.untyped_storage()
            start, nbytes = storage.data_ptr(), storage.nbytes()
        except Exception:
            return 0
        end = start + nbytes
        if nbytes < _PAGE_SIZE or _madvise() is None:
            return 0
        if not any(lo <= start and end <= hi for lo, hi, _ in self._mapped):
            if self._map_misses >= 8 and not self._mapped:
                return 0
            if self._real_paths is None:
                self._real_paths = {os.path.realpath(f) for f in self.files}
            found = _mapping_containing(start, end, self._real_paths)
            if found is None:
                self._map_misses += 1
                return 0
            self._mapped.append((found[0], found[1], storage))  # the storage keeps this mapping alive
        dropped = _drop_range(start, end)
        self.residency.dropped_bytes += dropped
        TORCH_SHARD_STATS.dropped_bytes += dropped
        return dropped

    def _meta(self, key: str) -> tuple[torch.Size, torch.dtype]:
        if self._memory is not None:
            t = self.get(key)
            return t.shape, t.dtype
        i = self._locate(key)
        raw = self._raw(key)
        shard = self._shards[i]
        if raw not in shard.meta:  # pickled shard listed by an index but not loaded yet
            self._load_torch(i)
        return shard.meta[raw]

    def shape(self, key: str) -> torch.Size:
        """Shape without materialising the tensor (headers for safetensors; memory-mapped load for pickles)."""
        return self._meta(key)[0]

    def dtype(self, key: str) -> torch.dtype:
        return self._meta(key)[1]

    def nbytes(self, key: str) -> int:
        shape, dt = self._meta(key)
        return shape.numel() * dt.itemsize

    def metadata(self) -> dict[str, Any]:
        """Format, files, subkey, safetensors ``__metadata__`` (merged over shards) and the shard index metadata."""
        st_meta: dict[str, str] = {}
        for s in self._shards:
            if isinstance(s, _SafetensorsShard):
                st_meta.update(s.file_metadata)
        detected = any(isinstance(s, _TorchShard) and s.subkey_detected for s in self._shards)
        out: dict[str, Any] = {
            "format": self.format,
            "path": str(self.path),
            "files": [str(f) for f in self.files],
            "prefix": self.prefix,
            "subkey": self._subkey,
            "subkey_detected": detected,
        }
        flags = [s.mmap for s in self._shards if isinstance(s, _TorchShard) and s.mmap is not None]
        if flags:
            out["mmap"] = all(flags)  # pickled shards loaded so far were memory-mapped
        if st_meta:
            out["safetensors_metadata"] = st_meta
        if self._index is not None:
            out["index_metadata"] = dict(self._index.get("metadata") or {})
        return out

    @property
    def subkey(self) -> str | None:
        return self._subkey

    def __repr__(self) -> str:
        pre = f", prefix={self.prefix!r}" if self.prefix else ""
        return f"CheckpointSource({str(self.path)!r}, format={self.format!r}, shards={max(1, len(self._shards))}{pre})"
