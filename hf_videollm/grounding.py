"""Grounding boxes in Qwen2-VL's text format: ``<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>``
(and Qwen-VL's, ``style="qwen_vl"``: ``<ref>label</ref><box>(x1,y1),(x2,y2)</box>``, same coordinates).

Coordinates in the text are relative to the image, scaled to integers in ``[0, 1000)`` (Qwen2-VL's convention), so
they do not depend on the resolution the processor resized to; :func:`parse_boxes` maps them back to pixels of the
original image, :func:`format_box` / :func:`format_grounding` write pixel boxes the way the model reads them (for
training data or prompts).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Box", "format_box", "format_grounding", "parse_boxes", "SCALE", "MARKERS"]

SCALE = 1000
OBJECT_REF = ("<|object_ref_start|>", "<|object_ref_end|>")
BOX = ("<|box_start|>", "<|box_end|>")
#: style -> (object reference markers, box markers)
MARKERS = {"qwen2_vl": (OBJECT_REF, BOX), "qwen_vl": (("<ref>", "</ref>"), ("<box>", "</box>"))}

_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_PAIR = rf"\({_NUM},{_NUM}\)"


def _box_re(style: str) -> re.Pattern:
    if style not in MARKERS:
        raise ValueError(f"style must be one of {sorted(MARKERS)}, got {style!r}")
    ref, box = MARKERS[style]
    return re.compile(
        rf"(?:{re.escape(ref[0])}(?P<label>.*?){re.escape(ref[1])}\s*)?"
        rf"(?:{re.escape(box[0])})?\s*{_PAIR}\s*,\s*{_PAIR}\s*(?:{re.escape(box[1])})?",
        re.S,
    )


_BOX_RE = _box_re("qwen2_vl")


@dataclass(frozen=True)
class Box:
    """A box in pixels of the original image (``x1, y1`` top-left, ``x2, y2`` bottom-right) and its label."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str | None = None

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


def _size(image_size: Sequence[int]) -> tuple[int, int]:
    if len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(f"image_size must be (width, height) in pixels, got {tuple(image_size)}")
    return int(image_size[0]), int(image_size[1])


def format_box(box: Sequence[float], image_size: Sequence[int]) -> str:
    """Pixel box ``(x1, y1, x2, y2)`` of an image of ``image_size = (width, height)`` -> ``"(x1,y1),(x2,y2)"`` in
    ``[0, 1000)``."""
    w, h = _size(image_size)
    if len(box) != 4:
        raise ValueError(f"a box is (x1, y1, x2, y2), got {tuple(box)}")
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h):
        raise ValueError(f"box {tuple(box)} is not inside a {w}x{h} image with x1 <= x2 and y1 <= y2")

    def n(v: float, size: int) -> int:
        return min(SCALE - 1, int(v / size * SCALE))

    return f"({n(x1, w)},{n(y1, h)}),({n(x2, w)},{n(y2, h)})"


def format_grounding(label: str, box: Sequence[float], image_size: Sequence[int], *, style: str = "qwen2_vl") -> str:
    """``<|object_ref_start|>label<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`` (``style="qwen_vl"``:
    ``<ref>label</ref><box>(x1,y1),(x2,y2)</box>``)."""
    if style not in MARKERS:
        raise ValueError(f"style must be one of {sorted(MARKERS)}, got {style!r}")
    ref, marks = MARKERS[style]
    return f"{ref[0]}{label}{ref[1]}{marks[0]}{format_box(box, image_size)}{marks[1]}"


def parse_boxes(text: str, image_size: Sequence[int], *, style: str = "qwen2_vl") -> list[Box]:
    """Every ``(x1,y1),(x2,y2)`` box in ``text`` (with or without the box / object markers), mapped from
    ``[0, 1000)`` back to pixels of an image of ``image_size = (width, height)``; coordinates are clamped to the
    image and each box's corners ordered. The label is the object reference right before the box, if any."""
    w, h = _size(image_size)
    out = []
    for m in (_BOX_RE if style == "qwen2_vl" else _box_re(style)).finditer(text):
        a, b, c, d = (float(m.group(i)) for i in range(2, 6))
        xs = sorted(min(max(v, 0.0), SCALE) / SCALE * w for v in (a, c))
        ys = sorted(min(max(v, 0.0), SCALE) / SCALE * h for v in (b, d))
        label = m.group("label")
        out.append(Box(xs[0], ys[0], xs[1], ys[1], label.strip() if label is not None else None))
    return out
