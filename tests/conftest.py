"""Shared pytest helpers.

Golden fixtures live outside the repository: ``$HF_VIDEOLLM_FIXTURES`` or ``../shared/fixtures`` next to the checkout.
Tests that need them call :func:`fixture_case` and are skipped (with the reason) when neither exists.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def fixtures_root() -> Path | None:
    env = os.environ.get("HF_VIDEOLLM_FIXTURES")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "fixtures")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def fixture_case(*parts: str) -> Path:
    """Return the directory of a fixture case, or skip the test with a clear reason."""
    root = fixtures_root()
    if root is None:
        pytest.skip(
            "golden fixtures not found: set HF_VIDEOLLM_FIXTURES or place them in ../shared/fixtures next to the repo"
        )
    case = root.joinpath(*parts)
    if not case.exists():
        pytest.skip(f"fixture case {'/'.join(parts)} not present under {root}")
    return case


def load_case(case_dir: Path) -> dict:
    return json.loads((case_dir / "case.json").read_text())


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
