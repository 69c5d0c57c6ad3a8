"""Freezing by named part, and a summary of trainable parameters per part.

Each model declares its parts as ``_parts = {"vision_tower": ("vision_tower",), "connector": (...), ...}``
(part name -> module paths). Stage recipes then read as ``model.set_trainable_parts(["connector"])``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from torch import nn

__all__ = ["PartsMixin", "UnknownPartError"]


class UnknownPartError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class PartsMixin:
    #: part name -> module paths (dotted, relative to the model). Parameters outside every part count as "other".
    _parts: ClassVar[dict[str, tuple[str, ...]]] = {}

    @classmethod
    def part_names(cls) -> list[str]:
        return list(cls._parts)

    def _check_parts(self, names: Iterable[str]) -> list[str]:
        names = [names] if isinstance(names, str) else list(names)
        unknown = [n for n in names if n not in self._parts]
        if unknown:
            raise UnknownPartError(
                f"unknown part(s) {unknown} for {type(self).__name__}; known parts: {self.part_names()}"
            )
        return names

    def get_part_modules(self, name: str) -> list[nn.Module]:
        self._check_parts([name])
        modules = []
        for path in self._parts[name]:
            try:
                modules.append(self.get_submodule(path))
            except AttributeError:
                continue  # optional part absent in this configuration (e.g. no audio branch)
        return modules

    def part_of_parameter(self, param_name: str) -> str:
        for part, paths in self._parts.items():
            for path in paths:
                if param_name == path or param_name.startswith(path + "."):
                    return part
        return "other"

    def freeze_parts(self, *names: str) -> None:
        """Freeze every parameter of the named parts."""
        for name in self._check_parts(names):
            for module in self.get_part_modules(name):
                module.requires_grad_(False)

    def unfreeze_parts(self, *names: str) -> None:
        for name in self._check_parts(names):
            for module in self.get_part_modules(name):
                module.requires_grad_(True)
        unused = tuple(getattr(self, "unused_parameter_prefixes", list)())
        if unused:
            for pname, param in self.named_parameters():
                if pname.startswith(unused):
                    param.requires_grad_(False)

    def set_trainable_parts(self, names: Iterable[str]) -> None:
        """Train exactly the named parts; freeze everything else (including parameters outside every part)."""
        names = self._check_parts(names)
        self.requires_grad_(False)
        self.unfreeze_parts(*names)

    def trainable_parts_table(self) -> list[dict]:
        rows: dict[str, dict] = {p: {"part": p, "trainable": 0, "total": 0} for p in [*self._parts, "other"]}
        for name, param in self.named_parameters():
            row = rows[self.part_of_parameter(name)]
            n = param.numel()
            if hasattr(param, "quant_state") or param.__class__.__name__ == "Params4bit":
                n *= 2  # 4-bit params pack two values per byte-element
            row["total"] += n
            if param.requires_grad:
                row["trainable"] += n
        return [r for r in rows.values() if r["total"] or r["part"] != "other"]

    def trainable_parameters_summary(self) -> str:
        rows = self.trainable_parts_table()
        total = sum(r["total"] for r in rows)
        trainable = sum(r["trainable"] for r in rows)
        width = max(len(r["part"]) for r in rows)
        lines = [f"{'part':<{width}}  {'trainable':>14}  {'total':>14}  {'%':>6}"]
        for r in rows:
            pct = 100.0 * r["trainable"] / r["total"] if r["total"] else 0.0
            lines.append(f"{r['part']:<{width}}  {r['trainable']:>14,}  {r['total']:>14,}  {pct:>6.2f}")
        pct = 100.0 * trainable / total if total else 0.0
        lines.append(f"{'all':<{width}}  {trainable:>14,}  {total:>14,}  {pct:>6.2f}")
        return "\n".join(lines)

    def print_trainable_parameters(self) -> None:
        print(self.trainable_parameters_summary())
