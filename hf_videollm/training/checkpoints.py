"""Which training outputs are complete.

* A ``checkpoint-N`` dir is complete once it holds the marker written after everything else (model, optimizer,
  scheduler, RNG state, trainer state). A run killed mid-save leaves a dir without it; resume and export skip such a
  dir with a warning (or refuse it when it is named explicitly).
* The run's final model is saved into a staging dir inside the run dir and then published file by file under a
  sentinel (:func:`publish_final`): while the sentinel exists the run dir's model is a mix of old and new files, and
  every loader of ours refuses it (:func:`check_final_complete`), naming the complete checkpoints to use instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

__all__ = [
    "COMPLETE_MARKER", "FINAL_INCOMPLETE", "is_complete_checkpoint", "mark_complete", "complete_checkpoints",
    "resolve_resume", "final_staging_dir", "publish_final", "check_final_complete",
]

logger = logging.getLogger(__name__)

#: written into ``checkpoint-N`` after the Trainer has saved everything there.
COMPLETE_MARKER = "hf_videollm_checkpoint_complete.json"
_CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")
#: present in a run dir while its final model is being published (a killed publish leaves it behind).
FINAL_INCOMPLETE = "hf_videollm_final_save_incomplete"
_FINAL_STAGING = ".final-save"
#: files of an earlier final save that the new one replaces as a whole (the new set may be sharded differently).
_WEIGHTS = re.compile(
    r"^(model\.safetensors|model\.safetensors\.index\.json|model-\d{5}-of-\d{5}\.safetensors|adapter_model\.safetensors)$"
)


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


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def final_staging_dir(run_dir: str | Path) -> Path:
    """An empty staging dir for the run's final save (the same path on every rank; one left by a killed run is
    removed)."""
    staging = Path(run_dir) / _FINAL_STAGING
    if staging.exists():
        logger.warning("removing %s, left by a run killed during its final save", staging)
        shutil.rmtree(staging)
    return staging


def publish_final(staging: str | Path, run_dir: str | Path, last: str) -> None:
    """Move the complete final save in ``staging`` into ``run_dir``: sentinel first, then the files (weights of an
    earlier final save that the new one does not have are removed), ``last`` (the run's metadata) after all others,
    sentinel removed at the end. Every step is an atomic rename, so a kill at any point leaves either the sentinel
    (refused by :func:`check_final_complete`) or the complete new model."""
    staging, run_dir = Path(staging), Path(run_dir)
    sentinel = run_dir / FINAL_INCOMPLETE
    _write_synced(sentinel, "the final save of this run did not finish; use a complete checkpoint-N\n")
    new = {f.name for f in staging.iterdir()}
    for f in run_dir.iterdir():
        if f.is_file() and _WEIGHTS.match(f.name) and f.name not in new:
            f.unlink()
    for f in sorted(staging.iterdir(), key=lambda f: f.name == last):
        if f.is_dir():
            shutil.rmtree(run_dir / f.name, ignore_errors=True)
        os.replace(f, run_dir / f.name)
    staging.rmdir()
    sentinel.unlink()


def check_final_complete(path: str | Path) -> None:
    """Refuse a run dir whose final save was killed half-way, naming the complete checkpoints to use instead."""
    path = Path(path)
    if (path / FINAL_INCOMPLETE).is_file():
        ok = [p.name for p in complete_checkpoints(path, warn=False)]
        raise OSError(
            f"{path}: its final save was interrupted (the run was killed while writing the model; {FINAL_INCOMPLETE} "
            f"is still there), so its model files are a mix of two saves; use a complete checkpoint"
            + (f" ({', '.join(str(path / n) for n in ok)})" if ok else "")
            + " or train again with --resume-from-checkpoint true"
        )
