"""The versions CI runs are the versions pyproject.toml allows: every declared range holds the installed release.

A fresh install resolves inside these ranges, so a range wider than what runs here would ship an untested release
(transformers 5.25 and PyAV 19 each broke something); this test fails as soon as an environment drifts from the pins.
"""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]


def _requirements(extra: str | None = None) -> list[Requirement]:
    lines = PYPROJECT["dependencies"] if extra is None else PYPROJECT["optional-dependencies"][extra]
    return [Requirement(line) for line in lines]


@pytest.mark.parametrize("req", _requirements() + _requirements("dev") + _requirements("tracking"), ids=str)
def test_installed_release_is_inside_the_declared_range(req):
    try:
        installed = version(req.name)
    except PackageNotFoundError:
        pytest.fail(f"{req.name} is declared in pyproject.toml but not installed: run `pip install -e .[dev,tracking]`")
    assert req.specifier, f"{req.name} has no version range in pyproject.toml; pin it to the tested minor release"
    assert req.specifier.contains(Version(installed), prereleases=True), (
        f"{req.name} {installed} is installed but pyproject.toml allows {req.specifier}: either test this release "
        "and widen the range, or install a release inside it"
    )


def test_every_range_has_an_upper_bound():
    """An open range lets the next release in untested (transformers 5.25 made `kernels` a hard dependency)."""
    open_ended = [str(r) for extra in [None, *PYPROJECT["optional-dependencies"]] for r in _requirements(extra)
                  if not any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier)]
    assert not open_ended, f"ranges without an upper bound: {open_ended}"


def test_running_python_is_supported():
    assert Version(".".join(map(str, sys.version_info[:3]))) in SpecifierSet(PYPROJECT["requires-python"])
