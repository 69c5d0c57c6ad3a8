"""Which Trainer checkpoints are complete: a ``checkpoint-N`` dir is complete once it holds the marker written after
everything else (model, optimizer, scheduler, RNG state, trainer state). A run killed mid-save leaves a dir without
it; resume and export skip such a dir with a warning (or refuse it when it is named explicitly)."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

__all__ = ["COMPLETE_MARKER", "is_complete_checkpoint", "mark_complete", "complete_checkpoints", "resolve_resume"]

logger = logging.getLogger(__name__)

#: written into ``checkpoint-N`` after the Trainer has saved everything there.
COMPLETE_MARKER = "hf_videollm_checkpoint_complete.json"
_CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")


def is_complete_checkpoint(path: str | Path) -> bool:
    return (Path(path) / COMPLETE_MARKER).is_file()


def mark_complete(path: str | Path, global_step: int) -> None:
    """Write the marker atomically (temp file + rename, fsync'd): it is there only when the checkpoint is."""
    path = Path(path)
    tmp = path / f".{COMPLETE_MARKER}.tmp"
    with open(tmp, "w") as f:
        json.dump({"global_step": int(global_step)}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / COMPLETE_MARKER)


def _checkpoints(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and _CHECKPOINT_RE.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(_CHECKPOINT_RE.fullmatch(p.name).group(1)))


def complete_checkpoints(run_dir: str | Path, *, warn: bool = True) -> list[Path]:
    """``checkpoint-N`` dirs of ``run_dir`` that are complete, oldest first; incomplete ones are logged."""
    out = []
    for p in _checkpoints(Path(run_dir)):
        if is_complete_checkpoint(p):
            out.append(p)
        elif warn:
            logger.warning("skipping %s: incomplete (no %s; the run was killed while saving it)", p, COMPLETE_MARKER)
    return out


def resolve_resume(value: str | bool | None, run_dir: str | Path) -> str | None:
    """``resume_from_checkpoint`` -> the checkpoint path to resume from: ``True`` = the latest complete checkpoint
    of ``run_dir`` (incomplete ones skipped with a warning); a path must be a complete checkpoint."""
    if value is None or value is False:
        return None
    if value is True:
        found = _checkpoints(Path(run_dir))
        complete = complete_checkpoints(run_dir)
        if not complete:
            names = [p.name for p in found]
            raise ValueError(
                f"resume_from_checkpoint=True but {run_dir} has no complete checkpoint"
                + (f" ({names} were left incomplete by a killed save)" if names else "")
                + "; start without resume_from_checkpoint or pass a checkpoint directory"
            )
        return str(complete[-1])
    path = Path(value)
    if _CHECKPOINT_RE.fullmatch(path.name) and path.is_dir() and not is_complete_checkpoint(path):
        ok = [p.name for p in complete_checkpoints(path.parent, warn=False)]
        raise ValueError(
            f"{path} is incomplete (no {COMPLETE_MARKER}: the run was killed while saving it); resume from a complete "
            f"one{f' ({ok})' if ok else ''} or with resume_from_checkpoint=True"
        )
    return str(value)
