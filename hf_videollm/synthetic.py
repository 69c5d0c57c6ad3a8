"""Procedurally generated short videos with question-answer pairs: "does a video model really use time?".

Every sample is drawn from its own ``numpy.random.Generator(seed)``, so a seed fully determines frames, audio, question
and answer. Kinds:

* ``appearance`` -- one object (circle/square/triangle; red/green/blue/yellow), visible in every frame and drifting
  slightly; the question asks its colour *or* its shape. One frame suffices (control kind).
* ``direction`` -- one object moves steadily left/right/up/down by about 0.4 of the frame. **No single frame tells
  the direction**: the scene is a torus (an object leaving one edge re-enters at the opposite edge) and the start
  position is uniform on it, so the object's position in *every* frame is uniform over the frame for every
  direction (and colour/shape are drawn independently of the answer). The first and last frame together give the
  direction exactly (the displacement is below half the frame, so the wrapped difference is unambiguous). A set of
  frames without their order only tells the axis, not the sign.
* ``order`` -- object A is visible only in window 1, object B only in window 2 (same length, B's window after A's,
  random positions); the question names both colours ("Which color appears first, red or blue?"), in random order,
  and ``choices`` are those two colours. A frame shows one object or none. The pattern's start is drawn from a set
  that is symmetric under reflection about the middle frame ``T // 2`` with the roles swapped, so the middle frame
  (the one :func:`single_frame_baseline` keeps) shows the first or the second object with exactly equal probability:
  it is at chance (1/2). Note: frames near the start/end cannot all be uninformative -- the earliest frame that
  shows anything can only show the first object; this is inherent to "which appears first".
* ``count`` -- one static object flashes k in {1, 2, 3} times. The total on-time (frames showing the object) is
  drawn independently of k, so an unordered bag of frames (or the fraction of frames showing it) does not tell k;
  at ``num_frames >= 16`` every on and off run lasts >= 2 frames, so sampling every second frame still sees all
  flashes.
* ``pitch`` / ``beeps`` (audio, written to the file's audio track; AAC in MP4, Opus in WebM) -- a tone of about
  1200 Hz (high) or 300 Hz (low); or k in {1, 2, 3} short beeps. Their video is a static neutral scene.

Frames are (T, H, W, 3) uint8 on a dark background with a random gradient, a static noise texture and mild temporal
noise (never pure black). The object's size parameter is about 1/6 of the frame (radius of the circle), so it stays
visible after resizing to 28x28.

Datasets (:func:`generate_dataset`) balance the answers within each kind (class counts differ by at most one) and
shuffle them deterministically. Sample seeds come from ``hash(seed, split, kind, index)`` and encode the split in
``seed % 3`` (train 0, val 1, test 2), so two splits never share a sample seed.

Vocabulary: questions use the fixed templates in :data:`QUESTIONS`; answers are single lowercase words.
:data:`VOCABULARY` holds every token :func:`words` can produce from any question or answer (lowercase words and the
punctuation marks ``,``, ``.``, ``?``).

Command line: ``python -m hf_videollm.synthetic OUT_DIR --samples-per-kind 50 --splits train test``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "AUDIO_RATE",
    "COLORS",
    "DIRECTIONS",
    "KINDS",
    "KINDS_AUDIO",
    "KINDS_VIDEO",
    "NUMBER_WORDS",
    "QUESTIONS",
    "SHAPES",
    "SPLITS",
    "VOCABULARY",
    "SyntheticSample",
    "answer_classes",
    "question_type",
    "build_samples",
    "generate_dataset",
    "make_sample",
    "sample_seed",
    "single_frame_baseline",
    "words",
]

KINDS_VIDEO = ("appearance", "direction", "order", "count")
KINDS_AUDIO = ("pitch", "beeps")
KINDS = KINDS_VIDEO + KINDS_AUDIO
SPLITS = ("train", "val", "test")

#: Base RGB of each colour (each sample jitters every channel by up to +-15).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (45, 190, 70),
    "blue": (60, 100, 240),
    "yellow": (235, 210, 50),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
NUMBER_WORDS = ("one", "two", "three")
PITCHES = ("high", "low")
_NEUTRAL = (140, 140, 140)

AUDIO_RATE = 16000
_PITCH_HZ = {"high": 1200.0, "low": 300.0}

_SUFFIX = " Answer with one word."
#: Question templates (``order`` is formatted with the two colours, in random order).
QUESTIONS: dict[str, str] = {
    "appearance_color": "What color is the object?" + _SUFFIX,
    "appearance_shape": "What shape is the object?" + _SUFFIX,
    "direction": "Which direction does the object move?" + _SUFFIX,
    "order": "Which color appears first, {0} or {1}?" + _SUFFIX,
    "count": "How many times does the object flash?" + _SUFFIX,
    "pitch": "Is the tone high or low?" + _SUFFIX,
    "beeps": "How many beeps do you hear?" + _SUFFIX,
}

_MIN_FRAMES = 8
_MIN_SIZE = 16
_MIN_AUDIO_SECONDS = 1.0
_MIN_CHUNK = 64  # fewer samples per worker than this are built in the calling process
_SEED_SPACE = 2**53 // len(SPLITS)  # seeds stay below 2**53 (exact in any JSON reader)

_TOKEN_RE = re.compile(r"[a-z]+|[^\sa-z]")


def words(text: str) -> list[str]:
    """Word-level tokens of a question or answer: lowercase words and single punctuation marks."""
    return _TOKEN_RE.findall(text.lower())


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")


def answer_classes(kind: str) -> tuple[str, ...]:
    """The answer words of ``kind`` (balanced in datasets). ``appearance``: colours, then shapes."""
    _check_kind(kind)
    return {
        "appearance": tuple(COLORS) + SHAPES,
        "direction": DIRECTIONS,
        "order": tuple(COLORS),
        "count": NUMBER_WORDS,
        "pitch": PITCHES,
        "beeps": NUMBER_WORDS,
    }[kind]


def question_type(kind: str, answer: str) -> str:
    """Which :data:`QUESTIONS` template a sample of ``kind`` with ``answer`` was asked with (``appearance`` splits into
    ``appearance_color`` and ``appearance_shape``; every other kind is its own)."""
    _check_kind(kind)
    if kind == "appearance":
        return "appearance_shape" if answer in SHAPES else "appearance_color"
    return kind


def _all_questions() -> list[str]:
    out = [q for k, q in QUESTIONS.items() if k != "order"]
    out += [QUESTIONS["order"].format(a, b) for a in COLORS for b in COLORS if a != b]
    return out


#: Every token (see :func:`words`) that can occur in a question or an answer, sorted.
VOCABULARY: list[str] = sorted(
    {w for q in _all_questions() for w in words(q)} | {w for k in KINDS for a in answer_classes(k) for w in words(a)}
)


# ----------------------------------------------------------------------------------------------------------------------
# Samples
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class SyntheticSample:
    """One generated sample. ``video`` is set when the file was written, ``frames``/``audio`` when kept in memory."""

    id: str
    kind: str
    question: str
    answer: str
    choices: list[str]
    seed: int
    video: Path | None
    frames: np.ndarray | None
    meta: dict = field(default_factory=dict)
    audio: np.ndarray | None = None


@dataclass(frozen=True)
class _Cfg:
    height: int
    width: int
    num_frames: int
    fps: float

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    @property
    def radius(self) -> float:
        return min(self.height, self.width) / 6.0


def _make_cfg(size: int | Sequence[int], num_frames: int, fps: float) -> _Cfg:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    elif isinstance(size, Sequence) and len(size) == 2:
        h, w = (int(s) for s in size)
    else:
        raise ValueError(f"size must be an int or (height, width), got {size!r}")
    if h < _MIN_SIZE or w < _MIN_SIZE or h % 2 or w % 2:
        raise ValueError(f"frame size must be even and >= {_MIN_SIZE} (yuv420p video), got {h}x{w}")
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < _MIN_FRAMES:
        raise ValueError(f"num_frames must be an integer >= {_MIN_FRAMES}, got {num_frames!r}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return _Cfg(h, w, int(num_frames), float(fps))


# ----------------------------------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------------------------------

_GRIDS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
# Outward edge normals of an upward-pointing equilateral triangle (image coordinates, y down).
_TRI_NORMALS = np.array([[0.0, 1.0], [math.sqrt(3) / 2, -0.5], [-math.sqrt(3) / 2, -0.5]], dtype=np.float32)


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each (h, w) float32."""
    if (h, w) not in _GRIDS:
        y, x = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
        _GRIDS[(h, w)] = (y, x)
    return _GRIDS[(h, w)]


def _extent(r: float) -> float:
    """Largest distance from the centre to the border of any shape along x or y (the triangle's top vertex)."""
    return 1.2 * r


def _alpha(shape: str, cx: float, cy: float, r: float, h: int, w: int, wrap: bool = False) -> np.ndarray:
    """Anti-aliased coverage (h, w) in [0, 1] of ``shape`` centred at (cx, cy); ``wrap``: the frame is a torus."""
    y, x = _grid(h, w)
    dx = x - np.float32(cx)
    dy = y - np.float32(cy)
    if wrap:
        dx = (dx + w / 2) % w - w / 2
        dy = (dy + h / 2) % h - h / 2
    if shape == "circle":
        sdf = np.sqrt(dx * dx + dy * dy) - r
    elif shape == "square":
        sdf = np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r
    elif shape == "triangle":  # circumradius 1.2 r, centroid at (cx, cy); sdf exact inside, a bound outside
        n = _TRI_NORMALS
        sdf = np.maximum(
            np.maximum(n[0, 0] * dx + n[0, 1] * dy, n[1, 0] * dx + n[1, 1] * dy), n[2, 0] * dx + n[2, 1] * dy
        )
        sdf = sdf - 0.6 * r
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.clip(0.5 - sdf, 0.0, 1.0)


def _background(rng: np.random.Generator, cfg: _Cfg) -> np.ndarray:
    """(T, H, W, 3) float32: dark base + tint + random linear gradient + static texture + mild temporal noise."""
    h, w, t = cfg.height, cfg.width, cfg.num_frames
    y, x = _grid(h, w)
    base = rng.uniform(30.0, 48.0) + rng.uniform(-4.0, 4.0, size=3)
    angle = rng.uniform(0.0, 2 * math.pi)
    ramp = (np.cos(angle) * (x / w - 0.5) + np.sin(angle) * (y / h - 0.5)) * rng.uniform(8.0, 20.0)
    static = rng.standard_normal((h, w, 3), dtype=np.float32) * 3.0
    img = base.astype(np.float32) + ramp[..., None] + static
    frames = rng.integers(-2, 3, size=(t, h, w, 3), dtype=np.int8).astype(np.float32)  # temporal noise, std 1.4
    frames += img
    return frames


def _color(rng: np.random.Generator, name: str) -> np.ndarray:
    base = np.array(COLORS[name], dtype=np.float32)
    return np.clip(base + rng.uniform(-15.0, 15.0, size=3), 0, 255).astype(np.float32)


def _paint(frame: np.ndarray, alpha: np.ndarray, rgb: np.ndarray) -> None:
    a = alpha[..., None]
    frame *= 1.0 - a
    frame += a * rgb


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _inside(rng: np.random.Generator, cfg: _Cfg, r: float, shrink: tuple[float, float] = (0.0, 0.0)) -> list[float]:
    """A centre (x, y) keeping the object fully inside, with extra room ``shrink`` (x, y) on each side."""
    e = _extent(r) + 1.0
    return [
        float(rng.uniform(e + shrink[0], cfg.width - e - shrink[0])),
        float(rng.uniform(e + shrink[1], cfg.height - e - shrink[1])),
    ]


def _radius(rng: np.random.Generator, cfg: _Cfg) -> float:
    return float(cfg.radius * rng.uniform(0.9, 1.1))


def _r3(v: float) -> float:
    return round(float(v), 3)


# ----------------------------------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------------------------------


def _n_audio(cfg: _Cfg) -> int:
    return int(round(cfg.duration * AUDIO_RATE))


def _audio_floor(rng: np.random.Generator, cfg: _Cfg) -> np.ndarray:
    """Quiet noise floor (the audio track of video kinds, and the bed under tones/beeps)."""
    return (rng.standard_normal(_n_audio(cfg), dtype=np.float32) * 0.003).astype(np.float32)


def _add_tone(wave: np.ndarray, start_s: float, end_s: float, freq: float, amp: float, fade_s: float = 0.01) -> None:
    i0, i1 = int(round(start_s * AUDIO_RATE)), int(round(end_s * AUDIO_RATE))
    n = i1 - i0
    t = np.arange(n, dtype=np.float64) / AUDIO_RATE
    env = np.ones(n)
    nf = min(int(fade_s * AUDIO_RATE), n // 2)
    if nf > 0:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, math.pi, nf))
        env[:nf] = ramp
        env[n - nf :] = ramp[::-1]
    wave[i0:i1] += (amp * env * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def _check_audio_duration(cfg: _Cfg, kind: str) -> None:
    if cfg.duration < _MIN_AUDIO_SECONDS:
        raise ValueError(
            f"{kind}: the clip lasts {cfg.duration:.2f}s (num_frames / fps); audio kinds need >= {_MIN_AUDIO_SECONDS}s"
        )


# ----------------------------------------------------------------------------------------------------------------------
# Kinds. Each returns (frames uint8 (T, H, W, 3), audio float32 (N,) or None, question, answer, choices, meta).
# ----------------------------------------------------------------------------------------------------------------------

_Gen = tuple[np.ndarray, "np.ndarray | None", str, str, list, dict]


def gen_appearance(rng: np.random.Generator, answer: str, cfg: _Cfg) -> _Gen:
    """One object in every frame (slight drift); asks its colour if ``answer`` is a colour, else its shape."""
    attribute = "color" if answer in COLORS else "shape"
    color = answer if attribute == "color" else str(rng.choice(list(COLORS)))
    shape = answer if attribute == "shape" else str(rng.choice(SHAPES))
    frames = _background(rng, cfg)
    r = _radius(rng, cfg)
    drift = rng.uniform(0.0, 0.1) * min(cfg.height, cfg.width)
    angle = rng.uniform(0.0, 2 * math.pi)
    vx, vy = drift * math.cos(angle), drift * math.sin(angle)
    mid = _inside(rng, cfg, r, (abs(vx) / 2, abs(vy) / 2))
    rgb = _color(rng, color)
    positions = []
    for i in range(cfg.num_frames):
        f = i / (cfg.num_frames - 1) - 0.5
        cx, cy = mid[0] + vx * f, mid[1] + vy * f
        _paint(frames[i], _alpha(shape, cx, cy, r, cfg.height, cfg.width), rgb)
        positions.append([_r3(cx), _r3(cy)])
    choices = list(COLORS) if attribute == "color" else list(SHAPES)
    meta = {"attribute": attribute, "color": color, "shape": shape, "radius": _r3(r), "positions": positions}
    return _to_uint8(frames), None, QUESTIONS[f"appearance_{attribute}"], answer, choices, meta


_DIR_VEC = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


def gen_direction(rng: np.random.Generator, answer: str, cfg: _Cfg) -> _Gen:
    """One object moving steadily by 0.35-0.45 of the frame on a torus; every single frame is uninformative."""
    color = str(rng.choice(list(COLORS)))
    shape = str(rng.choice(SHAPES))
    frames = _background(rng, cfg)
    r = _radius(rng, cfg)
    rgb = _color(rng, color)
    ux, uy = _DIR_VEC[answer]
    frac = rng.uniform(0.35, 0.45)  # < 0.5: the wrapped first->last displacement keeps its sign
    dx, dy = ux * frac * cfg.width, uy * frac * cfg.height
    x0, y0 = rng.uniform(0.0, cfg.width), rng.uniform(0.0, cfg.height)
    positions = []
    for i in range(cfg.num_frames):
        f = i / (cfg.num_frames - 1)
        cx, cy = (x0 + dx * f) % cfg.width, (y0 + dy * f) % cfg.height
        _paint(frames[i], _alpha(shape, cx, cy, r, cfg.height, cfg.width, wrap=True), rgb)
        positions.append([_r3(cx), _r3(cy)])
    meta = {
        "color": color,
        "shape": shape,
        "radius": _r3(r),
        "displacement": [_r3(dx), _r3(dy)],
        "positions": positions,
        "wrap": True,
    }
    return _to_uint8(frames), None, QUESTIONS["direction"], answer, list(DIRECTIONS), meta


def _order_layouts(t: int) -> dict[int, list[tuple[tuple[int, int], tuple[int, int]]]]:
    """Possible ``order`` windows for ``t`` frames: ``{gap: [(window1, window2), ...]}`` (gap uniform, then a layout
    uniform). Windows are [s, s+L) and [s+L+gap, s+2L+gap), L = round(t/4). For every gap the start set is symmetric
    under reflection about frame ``t // 2`` (which swaps the two windows), so frame ``t // 2`` lies in the first or
    in the second window with exactly equal probability."""
    length = max(1, round(t / 4))
    m = t // 2
    out = {}
    for gap in range(max(1, round(t / 8)) + 1):
        total = 2 * length + gap
        lo, hi = max(0, 2 * m - t + 1), min(t - total, 2 * m - total + 1)
        assert lo <= hi, (t, length, gap)
        out[gap] = [((s, s + length), (s + length + gap, s + total)) for s in range(lo, hi + 1)]
    return out


def _order_windows(rng: np.random.Generator, t: int) -> tuple[tuple[int, int], tuple[int, int]]:
    layouts = _order_layouts(t)
    options = layouts[int(rng.integers(len(layouts)))]
    return options[int(rng.integers(len(options)))]


def gen_order(rng: np.random.Generator, answer: str, cfg: _Cfg) -> _Gen:
    """Colour ``answer`` visible only in window 1, another colour only in window 2 (after it)."""
    other = str(rng.choice([c for c in COLORS if c != answer]))
    named = [answer, other] if rng.random() < 0.5 else [other, answer]
    shapes = [str(s) for s in rng.choice(SHAPES, size=2)]
    frames = _background(rng, cfg)
    windows = _order_windows(rng, cfg.num_frames)
    objects = []
    for color, shape, (s, e) in zip((answer, other), shapes, windows, strict=True):
        r = _radius(rng, cfg)
        cx, cy = _inside(rng, cfg, r)
        alpha = _alpha(shape, cx, cy, r, cfg.height, cfg.width)
        rgb = _color(rng, color)
        for i in range(s, e):
            _paint(frames[i], alpha, rgb)
        objects.append({"color": color, "shape": shape, "window": [s, e], "position": [_r3(cx), _r3(cy)]})
    meta = {"objects": objects, "named": named}
    return _to_uint8(frames), None, QUESTIONS["order"].format(*named), answer, named, meta


def _composition(rng: np.random.Generator, total: int, parts: int, minimum: Sequence[int]) -> list[int]:
    """Random split of ``total`` into ``parts`` integers, part i >= minimum[i] (uniform over compositions)."""
    extra = total - sum(minimum)
    assert extra >= 0
    cuts = np.sort(rng.choice(extra + parts - 1, size=parts - 1, replace=False)) if parts > 1 else np.array([], int)
    bounds = np.concatenate([[-1], cuts, [extra + parts - 1]])
    return [int(minimum[i] + bounds[i + 1] - bounds[i] - 1) for i in range(parts)]


def gen_count(rng: np.random.Generator, answer: str, cfg: _Cfg) -> _Gen:
    """A static object flashes k times; the total on-time does not depend on k."""
    k = NUMBER_WORDS.index(answer) + 1
    t = cfg.num_frames
    run = 2 if t >= 16 else 1  # minimum length of every flash and of every gap between flashes
    kmax = len(NUMBER_WORDS)
    on_total = max(kmax * run, round(0.375 * t)) + int(rng.integers(0, 2))
    on = _composition(rng, on_total, k, [run] * k)
    off = _composition(rng, t - on_total, k + 1, [1] + [run] * (k - 1) + [1])
    color = str(rng.choice(list(COLORS)))
    shape = str(rng.choice(SHAPES))
    frames = _background(rng, cfg)
    r = _radius(rng, cfg)
    cx, cy = _inside(rng, cfg, r)
    alpha = _alpha(shape, cx, cy, r, cfg.height, cfg.width)
    rgb = _color(rng, color)
    flashes, pos = [], off[0]
    for i in range(k):
        for j in range(pos, pos + on[i]):
            _paint(frames[j], alpha, rgb)
        flashes.append([pos, pos + on[i]])
        pos += on[i] + off[i + 1]
    meta = {"k": k, "flashes": flashes, "color": color, "shape": shape, "position": [_r3(cx), _r3(cy)]}
    return _to_uint8(frames), None, QUESTIONS["count"], answer, list(NUMBER_WORDS), meta


def _neutral_scene(rng: np.random.Generator, cfg: _Cfg) -> tuple[np.ndarray, dict]:
    frames = _background(rng, cfg)
    r = _radius(rng, cfg)
    cx, cy = _inside(rng, cfg, r)
    _paint(frames, _alpha("circle", cx, cy, r, cfg.height, cfg.width)[None], np.array(_NEUTRAL, np.float32))
    return _to_uint8(frames), {"scene": "neutral", "position": [_r3(cx), _r3(cy)]}


def gen_pitch(rng: np.random.Generator, answer: str, cfg: _Cfg) -> _Gen:
    """A pure tone of about 1200 Hz (high) or 300 Hz (low), +-10 %, over most of the clip."""
    _check_audio_duration(cfg, "pitch")
    frames, meta = _neutral_scene(rng, cfg)
    wave = _audio_floor(rng, cfg)
    freq = _PITCH_HZ[answer] * rng.uniform(0.9, 1.1)
    d = cfg.duration
    start = rng.uniform(0.0, 0.15) * d
    end = d - rng.uniform(0.0, 0.15) * d
    amp = rng.uniform(0.3, 0.5)
    _add_tone(wave, start, end, freq, amp, fade_s=0.02)
    meta.update({"frequency": _r3(freq), "tone": [_r3(start), _r3(end)], "amplitude": _r3(amp)})
    return frames, np.clip(wave, -1, 1), QUESTIONS["pitch"], answer, list(PITCHES), meta


def gen_beeps(rng: np.random.Generator, answer: str, cfg: _Cfg) -> _Gen:
    """k short beeps (0.10-0.15 s, 500-1000 Hz) separated by >= 0.15 s of silence."""
    _check_audio_duration(cfg, "beeps")
    k = NUMBER_WORDS.index(answer) + 1
    frames, meta = _neutral_scene(rng, cfg)
    wave = _audio_floor(rng, cfg)
    freq = rng.uniform(500.0, 1000.0)
    amp = rng.uniform(0.3, 0.5)
    ms = 10  # work on a 10 ms grid
    n = int(cfg.duration * 1000) // ms
    lengths = [int(rng.integers(10, 16)) for _ in range(k)]  # x 10 ms
    gaps = _composition(rng, n - sum(lengths), k + 1, [5] + [15] * (k - 1) + [5])
    beeps, pos = [], gaps[0]
    for i in range(k):
        s, e = pos * ms / 1000, (pos + lengths[i]) * ms / 1000
        _add_tone(wave, s, e, freq, amp)
        beeps.append([_r3(s), _r3(e)])
        pos += lengths[i] + gaps[i + 1]
    meta.update({"k": k, "beeps": beeps, "frequency": _r3(freq), "amplitude": _r3(amp)})
    return frames, np.clip(wave, -1, 1), QUESTIONS["beeps"], answer, list(NUMBER_WORDS), meta


_GENERATORS = {
    "appearance": gen_appearance,
    "direction": gen_direction,
    "order": gen_order,
    "count": gen_count,
    "pitch": gen_pitch,
    "beeps": gen_beeps,
}


def make_sample(
    kind: str,
    seed: int,
    *,
    size: int | Sequence[int] = 64,
    num_frames: int = 16,
    fps: float = 8,
    audio: bool = False,
    answer: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None, str, str, list[str], dict]:
    """Generate one sample of ``kind`` from ``numpy.random.default_rng(seed)``.

    Args:
        size: frame side (or ``(height, width)``), even and >= 16.
        num_frames, fps: clip length (>= 8 frames) and frame rate; audio kinds need ``num_frames / fps >= 1 s``.
        audio: also return an audio track for video kinds (a quiet, uninformative noise floor). Audio kinds always
            return their waveform.
        answer: force the answer (one of :func:`answer_classes`); default: drawn from the generator. Everything
            else is the same for a given seed either way.

    Returns:
        ``(frames, audio, question, answer, choices, meta)``: uint8 ``(T, H, W, 3)``, float32 mono waveform in
        [-1, 1] at :data:`AUDIO_RATE` Hz (or ``None``), question text, one-word answer, the answer options, and
        JSON-serialisable metadata (``meta["kind"]``, object colours/shapes/positions, windows, flashes, ...).
    """
    _check_kind(kind)
    cfg = _make_cfg(size, num_frames, fps)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    classes = answer_classes(kind)
    rng = np.random.default_rng(int(seed))
    drawn = classes[int(rng.integers(len(classes)))]  # always consumed, so a forced answer changes nothing else
    if answer is None:
        answer = drawn
    elif answer not in classes:
        raise ValueError(f"answer {answer!r} is not a {kind} answer; expected one of {classes}")
    frames, wave, question, answer, choices, meta = _GENERATORS[kind](rng, answer, cfg)
    if wave is None and audio:
        wave = _audio_floor(rng, cfg)
    meta = {"kind": kind, "seed": int(seed), "size": [cfg.height, cfg.width], "fps": cfg.fps, **meta}
    return frames, wave, question, answer, choices, meta


def single_frame_baseline(frames: Any) -> Any:
    """The middle frame ``frames[T // 2]`` repeated ``T`` times (same type, shape and dtype as ``frames``).

    Feed this instead of the clip to measure what a model gets from a single frame: for ``direction`` and ``order``
    the middle frame carries no information about the answer (accuracy should fall to chance: 1/4 and 1/2), for
    ``appearance`` it carries all of it. Works on numpy arrays and torch tensors with time as the first axis.
    """
    n = frames.shape[0]
    if n == 0:
        raise ValueError("single_frame_baseline: empty clip")
    mid = frames[n // 2 : n // 2 + 1]
    if isinstance(frames, np.ndarray):
        return np.repeat(mid, n, axis=0)
    return mid.repeat(n, *([1] * (frames.ndim - 1)))  # torch.Tensor


# ----------------------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------------------


def _hash_int(*parts: Any) -> int:
    text = "\x1f".join(str(p) for p in ("hf_videollm.synthetic", *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def sample_seed(seed: int, split: str, kind: str, index: int) -> int:
    """Seed of sample ``index`` of ``kind`` in ``split``: a hash of all four, with ``result % 3`` = the split's
    position in :data:`SPLITS`, so different splits never share a seed. Below 2**53."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return _hash_int(seed, split, kind, index) % _SEED_SPACE * len(SPLITS) + SPLITS.index(split)


def _balanced_answers(seed: int, split: str, kind: str, n: int) -> list[str]:
    classes = answer_classes(kind)
    rng = np.random.default_rng(_hash_int(seed, split, kind, "answers"))
    perm = rng.permutation(len(classes))  # which classes get the remainder is random too
    labels = [classes[int(perm[i % len(classes)])] for i in range(n)]
    rng.shuffle(labels)
    return labels


def counts_per_kind(samples_per_kind: int | Mapping[str, int], kinds: Sequence[str]) -> dict[str, int]:
    """``{kind: n}`` for every kind of ``kinds``: one count for all, or a mapping that names each kind exactly."""

    def check(name: str, n: Any) -> int:
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
        return int(n)

    if isinstance(samples_per_kind, Mapping):
        missing = [k for k in kinds if k not in samples_per_kind]
        extra = [k for k in samples_per_kind if k not in kinds]
        if missing or extra:
            raise ValueError(
                f"samples_per_kind must give a count for exactly the kinds {list(kinds)}; "
                f"missing {missing}, not asked for {extra}"
            )
        return {k: check(f"samples_per_kind[{k!r}]", samples_per_kind[k]) for k in kinds}
    n = check("samples_per_kind", samples_per_kind)
    return {k: n for k in kinds}


def _plan(
    split: str, samples_per_kind: int | Mapping[str, int], kinds: Sequence[str], seed: int, audio: bool | None
) -> list[tuple[str, str, str, int]]:
    """Validated ``[(id, kind, answer, sample_seed), ...]`` of a split, kind by kind."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    kinds = tuple(kinds)
    for kind in kinds:
        _check_kind(kind)
        if audio is False and kind in KINDS_AUDIO:
            raise ValueError(f"kind {kind!r} needs an audio track but audio=False")
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds contains duplicates: {kinds}")
    counts = counts_per_kind(samples_per_kind, kinds)
    plan = []
    for kind in kinds:
        width = max(4, len(str(max(counts[kind] - 1, 0))))
        for index, answer in enumerate(_balanced_answers(seed, split, kind, counts[kind])):
            plan.append((f"{split}-{kind}_{index:0{width}d}", kind, answer, sample_seed(seed, split, kind, index)))
    return plan


def _build(item: tuple[str, str, str, int], size, num_frames: int, fps: float, audio: bool | None) -> SyntheticSample:
    sample_id, kind, answer, s = item
    frames, wave, question, answer, choices, meta = make_sample(
        kind, s, size=size, num_frames=num_frames, fps=fps, audio=bool(audio), answer=answer
    )
    return SyntheticSample(
        id=sample_id, kind=kind, question=question, answer=answer, choices=choices, seed=s, video=None,
        frames=frames, meta=meta, audio=wave,
    )


def build_samples(
    *,
    split: str,
    samples_per_kind: int | Mapping[str, int],
    kinds: Sequence[str] = KINDS_VIDEO,
    seed: int = 0,
    size: int | Sequence[int] = 64,
    num_frames: int = 16,
    fps: float = 8,
    audio: bool | None = None,
) -> Iterator[SyntheticSample]:
    """Yield the samples of a split in memory (``frames``/``audio`` set, ``video=None``), kind by kind.

    ``samples_per_kind``: one count for every kind, or ``{kind: count}`` naming each kind of ``kinds``; a kind's
    samples do not depend on the other kinds' counts.
    ``audio``: ``None`` = an audio track for audio kinds only, ``True`` = for every sample, ``False`` = none (audio
    kinds are then refused).
    """
    plan = _plan(split, samples_per_kind, kinds, seed, audio)
    _make_cfg(size, num_frames, fps)  # validate before generating anything
    for item in plan:
        yield _build(item, size, num_frames, fps, audio)


# Reproducible encoding. libx264 at these tiny sizes is not bit-reproducible with its defaults: with several threads,
# and even with one thread its lookahead analyses (mb-tree / adaptive quantisation / B-frame decisions) sometimes
# give a different stream for the same frames (decoded pixels differing by up to ~40). The ultrafast preset switches
# those analyses off; one thread for every codec. (Matroska/WebM files still differ in their random UIDs; the decoded
# frames and audio are identical.)
_ENCODER_OPTIONS = {
    "mp4": {"threads": "1", "preset": "ultrafast"},
    "mkv": {"threads": "1", "preset": "ultrafast"},
    "webm": {"threads": "1"},
}


def _row(sample: SyntheticSample, video_rel: str) -> dict:
    return {
        "id": sample.id,
        "kind": sample.kind,
        "answer": sample.answer,
        "choices": sample.choices,
        "seed": sample.seed,
        "messages": [
            {
                "role": "user",
                "content": [{"type": "video", "video": video_rel}, {"type": "text", "text": sample.question}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": sample.answer}]},
        ],
    }


def _write_rows(
    items: list[tuple[str, str, str, int]], video_dir: Path | None, size, num_frames: int, fps: float,
    audio: bool | None, container: str,
) -> list[dict]:
    """Build ``items``, write their files into ``video_dir`` (``None``: no files) and return their JSONL rows."""
    if video_dir is not None:
        from .media import write_video
    rows = []
    for item in items:
        sample = _build(item, size, num_frames, fps, audio)
        name = f"{sample.id.split('-', 1)[1]}.{container}"
        if video_dir is not None:
            write_video(
                video_dir / name, sample.frames, fps, audio=sample.audio, audio_rate=AUDIO_RATE,
                options=_ENCODER_OPTIONS[container],
            )
        rows.append(_row(sample, f"videos/{name}"))
    return rows


def generate_dataset(
    out_dir: str | os.PathLike,
    *,
    split: str,
    samples_per_kind: int | Mapping[str, int],
    kinds: Sequence[str] = KINDS_VIDEO,
    seed: int = 0,
    size: int | Sequence[int] = 64,
    num_frames: int = 16,
    fps: float = 8,
    container: str = "mp4",
    write_files: bool = True,
    audio: bool | None = None,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``out_dir/split/videos/<kind>_<index>.<container>`` and ``out_dir/split/data.jsonl``; return the latter.

    Each JSONL row: ``{"id", "kind", "answer", "choices", "seed", "messages"}`` where ``messages`` is a user turn
    ``[{"type": "video", "video": "videos/<kind>_<index>.mp4"}, {"type": "text", "text": question}]`` and an
    assistant turn with the answer; video paths are relative to the JSONL's directory. Audio kinds carry their audio
    in the video file (AAC in MP4, Opus in WebM). ``container``: ``"mp4"`` (H.264), ``"webm"`` (VP9) or ``"mkv"``.

    ``write_files=False`` writes only ``data.jsonl`` (the videos can be regenerated from the seeds with
    :func:`make_sample` at any time). ``audio``, ``samples_per_kind``: see :func:`build_samples`. Answers are
    balanced per kind and the same arguments always give the same rows and the same decoded frames, whatever
    ``workers`` (processes that build and encode the samples; spawned fresh interpreters, so safe after torch has
    run, but a script calling this with ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard).
    ``progress(done, total)`` is called as chunks of samples are finished (in order), last with ``done == total``.
    """
    if container not in ("mp4", "webm", "mkv"):
        raise ValueError(f"container must be 'mp4', 'webm' or 'mkv', got {container!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    plan = _plan(split, samples_per_kind, kinds, seed, audio)
    _make_cfg(size, num_frames, fps)  # validate before writing anything
    root = Path(out_dir) / split
    video_dir = root / "videos" if write_files else None
    if video_dir is not None:
        video_dir.mkdir(parents=True, exist_ok=True)
    job = functools.partial(
        _write_rows, video_dir=video_dir, size=size, num_frames=num_frames, fps=fps, audio=audio, container=container
    )
    workers = max(1, min(workers, len(plan) // _MIN_CHUNK))
    # chunks in order: a few per worker, and small enough that progress moves about every 5 %
    step = max(1, min(-(-len(plan) // (4 * workers)), -(-len(plan) // 20)))
    chunks = [plan[i : i + step] for i in range(0, len(plan), step)]
    rows: list[dict] = []

    def collect(parts) -> None:
        for part in parts:
            rows.extend(part)
            if progress is not None:
                progress(len(rows), len(plan))

    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            collect(pool.map(job, chunks))
    else:
        collect(map(job, chunks))
    root.mkdir(parents=True, exist_ok=True)
    path = root / "data.jsonl"
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hf_videollm.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--samples-per-kind", type=int, default=50)
    parser.add_argument("--splits", nargs="+", default=["train", "test"], choices=SPLITS)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS_VIDEO), choices=KINDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--num-frames", type=int, default=16)
    parser.add_argument("--fps", type=float, default=8)
    parser.add_argument("--container", default="mp4", choices=("mp4", "webm", "mkv"))
    parser.add_argument("--workers", type=int, default=1, help="processes that build and encode the videos")
    args = parser.parse_args(argv)
    for split in args.splits:
        t0 = time.perf_counter()
        path = generate_dataset(
            args.out_dir,
            split=split,
            samples_per_kind=args.samples_per_kind,
            kinds=args.kinds,
            seed=args.seed,
            size=args.size,
            num_frames=args.num_frames,
            fps=args.fps,
            container=args.container,
            workers=args.workers,
        )
        n = args.samples_per_kind * len(args.kinds)
        print(f"{path}: {n} samples in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
