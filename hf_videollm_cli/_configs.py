"""Example training configs shipped with the package (``hf_videollm/configs/<model>/<stage>.yaml``), found by name.

Standard library only: ``hf-videollm train --list-configs`` and ``--config llava/stage2`` must not import torch.
The directory is located with :func:`importlib.util.find_spec`, which does not run ``hf_videollm/__init__.py``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["configs_dir", "example_configs", "resolve_config", "describe_config"]


def configs_dir() -> Path:
    spec = importlib.util.find_spec("hf_videollm")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("hf_videollm is not installed: its example configs cannot be found")
    return Path(next(iter(spec.submodule_search_locations))) / "configs"


def example_configs() -> dict[str, Path]:
    """``{"llava/stage2": path, ...}``: every shipped example, sorted by name."""
    root = configs_dir()
    if not root.is_dir():
        return {}
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.glob("*/*.yaml"))}


def resolve_config(value: str | Path) -> Path:
    """``value`` itself when it is an existing file, else the shipped example of that name (``llava/stage2``, with or
    without ``.yaml``); an error that lists the shipped names when neither exists."""
    path = Path(value)
    if path.is_file():
        return path
    name = str(value).removesuffix(".yaml").removesuffix(".yml").strip("/")
    shipped = example_configs()
    if name in shipped:
        return shipped[name]
    raise FileNotFoundError(
        f"--config {value}: no such file, and no shipped example config of that name; give a JSON / YAML file or one "
        f"of: {', '.join(shipped) or '(none shipped)'} (`hf-videollm train --list-configs` describes them)"
    )


def describe_config(path: Path, width: int = 110) -> str:
    """The first sentence of the file's leading comment (what the example trains), cut to ``width`` characters."""
    words: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#") or not line.lstrip("# ").strip():
            break
        words.append(line.lstrip("# ").strip())
    text = " ".join(words)
    end = text.find(". ")
    text = text if end < 0 else text[: end + 1]
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."
