"""Resolve a local path or a Hub id to a local directory (downloads only what conversion reads); copy release files."""

from __future__ import annotations

from pathlib import Path

from .sources import ConversionError

_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.pth", "*.model", "*.tiktoken", "*.txt", "*.jinja", "*.py"]


def resolve_local(path_or_id: str | Path, *, what: str = "checkpoint") -> Path:
    p = Path(path_or_id).expanduser()
    if p.exists():
        return p
    repo_id = str(path_or_id)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise ConversionError(f"{what}: {repo_id!r} is neither an existing path nor a Hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=_PATTERNS))
    except Exception as e:  # offline, missing repo, auth: one clear message
        raise ConversionError(
            f"{what}: could not download {repo_id!r} from the Hub ({type(e).__name__}: {e}); "
            f"download it yourself and pass a local path"
        ) from e


def copy_generation_config(src: Path, out: Path) -> None:
    """Carry the release's ``generation_config.json`` (if any) into the converted checkpoint."""
    if (src / "generation_config.json").is_file():
        from transformers import GenerationConfig

        GenerationConfig.from_pretrained(str(src)).save_pretrained(out)
