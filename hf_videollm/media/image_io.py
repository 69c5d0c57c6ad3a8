"""Loading images from every common source into a uint8 RGB ``(3, H, W)`` tensor.

The originals load images with ``PIL.Image.open(path).convert("RGB")``; :func:`load_image` decodes files and bytes
with Pillow and converts exactly the same way (RGBA/LA drop alpha, P expands its palette, L is replicated, CMYK uses
Pillow's formula, ...).  Like the originals it does *not* apply the EXIF orientation tag.  Arrays and tensors are
converted with the same channel rules without going through Pillow.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["DEFAULT_MAX_PIXELS", "ImageLoadError", "check_aspect_ratio", "load_image"]

# Pillow's historical decompression-bomb threshold (MAX_IMAGE_PIXELS before Pillow 13, the hard error limit since).
DEFAULT_MAX_PIXELS = 178_956_970

_PIL_LIMIT_LOCK = threading.Lock()


class ImageLoadError(ValueError):
    """An input that cannot be turned into an RGB image; the message says what, why and how to fix it."""


def _describe(what: str, h: int, w: int) -> str:
    return f"{what} ({w}x{h} pixels, width x height)"


def _check_pixels(what: str, h: int, w: int, max_pixels: int | None) -> None:
    if h <= 0 or w <= 0:
        raise ImageLoadError(f"{_describe(what, h, w)} is empty: an image needs at least one row and one column")
    if max_pixels is not None and h * w > max_pixels:
        raise ImageLoadError(
            f"{_describe(what, h, w)} has {h * w:,} pixels, more than max_pixels={max_pixels:,}. The limit guards "
            f"against decompression bombs and out-of-memory errors; if you trust the image, pass "
            f"max_pixels={h * w} (or max_pixels=None to disable the check), or downscale it first."
        )


def check_aspect_ratio(height: int, width: int, max_ratio: float) -> float:
    """Raise :class:`ImageLoadError` if ``max(h, w) / min(h, w) > max_ratio``; return the ratio otherwise."""
    if height <= 0 or width <= 0:
        raise ImageLoadError(f"image of {width}x{height} pixels (width x height) is empty")
    ratio = max(height, width) / min(height, width)
    if ratio > max_ratio:
        raise ImageLoadError(
            f"image of {width}x{height} pixels (width x height) has an aspect ratio of {ratio:.1f}:1, more than the "
            f"supported {max_ratio:g}:1 (the vision encoder would see a sliver a few pixels wide). Crop it into parts, "
            f"pad it towards a square, or raise max_ratio / the processor's max_aspect_ratio if this is intended."
        )
    return ratio


# ----------------------------------------------------------------------------------------------------------------------
# Pillow decoding
# ----------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _pillow_bomb_check_disabled():
    """Open with Pillow's decompression-bomb guard off (our max_pixels check replaces it); restored afterwards."""
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _pil_to_tensor(im: Image.Image, what: str, max_pixels: int | None) -> torch.Tensor:
    w, h = im.size
    _check_pixels(what, h, w, max_pixels)
    try:
        rgb = im.convert("RGB")  # loads lazily opened files: decoding errors surface here
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError, EOFError, zlib.error ...
        raise ImageLoadError(
            f"{what} could not be decoded ({type(e).__name__}: {e}); the file is corrupt or truncated (or its mode "
            f"{im.mode!r} cannot be converted to RGB). Re-export or re-download it. To accept truncated files anyway "
            f"set PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True."
        ) from e
    arr = np.asarray(rgb, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:  # defensive: convert("RGB") always yields (H, W, 3)
        raise ImageLoadError(f"{what}: unexpected decoded shape {arr.shape}")
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _open_convert(fp: Any, what: str, max_pixels: int | None) -> torch.Tensor:
    with Image.open(fp) as im:
        return _pil_to_tensor(im, what, max_pixels)


def _decode(fp: Path | io.BytesIO, what: str, max_pixels: int | None, head: bytes) -> torch.Tensor:
    try:
        try:
            return _open_convert(fp, what, max_pixels)
        except Image.DecompressionBombError:
            # Pillow refuses images above twice its MAX_IMAGE_PIXELS before we see the size; reopen without its
            # guard so that our own max_pixels decides (and names the size in its message).
            if isinstance(fp, io.BytesIO):
                fp.seek(0)
            with _pillow_bomb_check_disabled():
                return _open_convert(fp, what, max_pixels)
    except ImageLoadError:
        raise
    except UnidentifiedImageError as e:
        hint = ""
        is_avi = head[:4] == b"RIFF" and head[8:12] == b"AVI "
        if head[4:8] == b"ftyp" or head[:4] == b"\x1aE\xdf\xa3" or is_avi:  # MP4/MOV, Matroska/WebM, AVI
            hint = " It looks like a video container: load it with the video loader instead."
        elif head.lstrip()[:1] in (b"<", b"{", b"["):
            hint = " It looks like a text/HTML/JSON file (an error page instead of the image?)."
        raise ImageLoadError(
            f"{what} is not an image Pillow can read (first bytes: {head[:16]!r}).{hint} Supported formats include "
            f"PNG, JPEG, GIF, BMP, WebP and TIFF; convert the file to one of them."
        ) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageLoadError(
            f"{what} could not be opened ({type(e).__name__}: {e}); the file is corrupt or truncated. Re-export or "
            f"re-download it."
        ) from e


def _load_path(source: str | os.PathLike, max_pixels: int | None) -> torch.Tensor:
    text = os.fspath(source)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.startswith(("http://", "https://", "ftp://")):
        raise ImageLoadError(
            f"{text!r} is a URL; load_image does not download. Fetch it first (e.g. with requests) and pass the bytes "
            f"or a local path."
        )
    if text.startswith("data:"):
        raise ImageLoadError(
            "data URIs are not accepted; decode the base64 payload (base64.b64decode) and pass the bytes"
        )
    path = Path(text)
    what = f"image file '{path}'"
    if not path.exists():
        raise ImageLoadError(
            f"{what} does not exist (resolved to '{path.resolve()}', working directory '{os.getcwd()}'); check the "
            f"path and its spelling."
        )
    if path.is_dir():
        raise ImageLoadError(f"{what} is a directory, not an image file; pass the path of one image inside it.")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError as e:
        raise ImageLoadError(f"{what} cannot be read ({e.strerror or e}); check its permissions.") from e
    if size == 0:
        raise ImageLoadError(f"{what} is empty (0 bytes); it was probably not fully written or downloaded.")
    return _decode(path, what, max_pixels, head)


def _load_bytes(data: bytes, what: str, max_pixels: int | None) -> torch.Tensor:
    if len(data) == 0:
        raise ImageLoadError(f"{what} is empty (0 bytes); nothing to decode.")
    return _decode(io.BytesIO(data), what, max_pixels, data[:32])


# ----------------------------------------------------------------------------------------------------------------------
# Arrays and tensors
# ----------------------------------------------------------------------------------------------------------------------

_CHANNELS = (1, 3, 4)


def _layout(shape: tuple[int, ...], prefer_channels_first: bool, what: str) -> str:
    """'hw', 'hwc' or 'chw' for a 2-D/3-D image shape."""
    if len(shape) == 2:
        return "hw"
    if len(shape) != 3:
        raise ImageLoadError(
            f"{what} has shape {shape}; expected (H, W), (H, W, C) or (C, H, W) with C in {_CHANNELS}. For a batch "
            f"of frames load each frame separately."
        )
    first, last = shape[0] in _CHANNELS, shape[2] in _CHANNELS
    if first and (last or shape[2] == 2):
        # (3, H, 3), (1, H, 4), (4, H, 2), ...: (C, H, W) and (H, W, C) both fit; guessing reads half the pixels wrong
        raise ImageLoadError(
            f"{what} has shape {shape}, which is ambiguous: both (C, H, W) and (H, W, C) fit"
            + (" (as (H, W, 2) it would be grey + alpha, not supported: pass the grey plane x[..., 0])"
               if shape[2] == 2 else "")
            + ". Pass it unambiguously: "
            "a grey image as a 2-D (H, W) array, a colour one as PIL.Image.fromarray(hwc_uint8_array) (from (C, H, W): "
            "x.permute(1, 2, 0) / x.transpose(1, 2, 0) first)."
        )
    if shape[2] == 2:
        raise ImageLoadError(
            f"{what} has shape {shape}: a last dim of 2 is grey + alpha, which is not supported (and reading it as "
            f"(C, H, W) would be wrong); pass the grey plane x[..., 0] as (H, W), or (H, W, 3) RGB."
        )
    if first and last:
        return "chw" if prefer_channels_first else "hwc"
    if last:
        return "hwc"
    if first:
        return "chw"
    raise ImageLoadError(
        f"{what} has shape {shape}: neither the first nor the last dim is a channel count in {_CHANNELS}; expected "
        f"(H, W, C) or (C, H, W) with 1 (grey), 3 (RGB) or 4 (RGBA) channels."
    )


def _to_uint8(x: torch.Tensor, what: str) -> torch.Tensor:
    if x.dtype == torch.uint8:
        return x
    if x.dtype == torch.bool:
        raise ImageLoadError(f"{what} is boolean (a mask?); convert it explicitly, e.g. mask.to(torch.uint8) * 255.")
    if x.is_complex():
        raise ImageLoadError(f"{what} has complex dtype {x.dtype}; images must be real.")
    if x.is_floating_point():
        xf = x.to(torch.float64)
        if not torch.isfinite(xf).all():
            raise ImageLoadError(f"{what} contains NaN or infinite values.")
        lo, hi = float(xf.min()), float(xf.max())
        if lo < 0.0 or hi > 1.0:
            raise ImageLoadError(
                f"{what} is floating point with values in [{lo:g}, {hi:g}]; float images must lie in [0, 1]. If the "
                f"values are 0..255, convert with .round().to(torch.uint8) / .astype(np.uint8) first."
            )
        # Round to nearest (x / 255 round-trips exactly; truncation would turn 0.999.. * 255 into 254).
        return torch.round(xf * 255.0).to(torch.uint8)
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi > 255:
        raise ImageLoadError(
            f"{what} has integer dtype {x.dtype} with values in [{lo}, {hi}], outside 0..255. For 16-bit images "
            f"scale to 8 bits first (e.g. (x >> 8).astype(np.uint8)), or pass the file so Pillow converts it."
        )
    return x.to(torch.uint8)


def _load_array(x: torch.Tensor, what: str, prefer_channels_first: bool, max_pixels: int | None) -> torch.Tensor:
    if x.layout != torch.strided:
        raise ImageLoadError(f"{what} is a {x.layout} tensor; pass a dense tensor (x.to_dense()).")
    if x.device.type == "meta":
        raise ImageLoadError(f"{what} is on the meta device and has no data; pass a tensor with real values.")
    if x.dtype in (torch.uint16, torch.uint32, torch.uint64):
        x = x.to(torch.int64)  # few ops support these; values are range-checked as 0..255 below
    shape = tuple(x.shape)
    layout = _layout(shape, prefer_channels_first, what)
    if layout == "hw":
        x = x.unsqueeze(0)
    elif layout == "hwc":
        x = x.permute(2, 0, 1)
    c, h, w = x.shape
    _check_pixels(f"{what} of shape {shape}", h, w, max_pixels)
    x = _to_uint8(x.detach(), f"{what} of shape {shape}")
    if c == 1:
        x = x.expand(3, h, w)
    elif c == 4:
        x = x[:3]  # Pillow's RGBA -> RGB drops alpha without compositing
    return x.clone(memory_format=torch.contiguous_format)


def load_image(source: Any, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Load an image as a uint8 RGB tensor ``(3, H, W)`` (channels first).

    Args:
        source: a path (``str`` / ``os.PathLike``), encoded ``bytes`` / ``bytearray`` / ``memoryview``, a binary
            file-like object, a ``PIL.Image.Image``, a numpy array ``(H, W)`` / ``(H, W, 1|3|4)`` (``(C, H, W)`` is
            accepted when unambiguous) or a torch tensor ``(C, H, W)`` / ``(H, W, C)`` / ``(H, W)``; a shape whose
            first and last dims could both be channels (e.g. ``(3, H, 3)``) is refused as ambiguous.  uint8 values are used as is,
            other integer types must hold 0..255, floats must lie in [0, 1] (scaled by 255 and rounded).
            4 channels = RGBA (alpha dropped, as ``convert("RGB")``), 1 channel = grey (replicated).
        max_pixels: refuse images with more pixels (Pillow's default decompression-bomb limit); ``None`` disables.

    Raises:
        ImageLoadError: missing/unreadable/empty file, not an image, corrupt or truncated data, empty image, too
            many pixels, unsupported type/shape/dtype/value range.
    """
    if max_pixels is not None and (not isinstance(max_pixels, int) or isinstance(max_pixels, bool) or max_pixels < 1):
        raise ImageLoadError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
    if isinstance(source, Image.Image):
        return _pil_to_tensor(source, f"PIL image (mode {source.mode})", max_pixels)
    if isinstance(source, (str, os.PathLike)):
        return _load_path(source, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _load_bytes(bytes(source), f"image bytes ({len(source)} bytes)", max_pixels)
    if isinstance(source, np.ndarray):
        if source.dtype == object or source.dtype.kind in "SUV":
            raise ImageLoadError(f"numpy array of dtype {source.dtype} is not an image; expected uint8 or float.")
        arr = np.ascontiguousarray(source)
        if arr.dtype.byteorder not in ("=", "|"):
            arr = arr.astype(arr.dtype.newbyteorder("="))
        if arr.dtype == np.uint16 or arr.dtype == np.uint32 or arr.dtype == np.uint64:
            arr = arr.astype(np.int64)  # torch lacks full unsigned support; values are range-checked below
        return _load_array(torch.from_numpy(arr), "numpy array", False, max_pixels)
    if isinstance(source, torch.Tensor):
        return _load_array(source, "tensor", True, max_pixels)
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        what = f"file object {name!r}" if isinstance(name, str) else f"file object {type(source).__name__}"
        try:
            data = source.read()
        except Exception as e:  # noqa: BLE001
            raise ImageLoadError(f"{what} could not be read ({type(e).__name__}: {e}).") from e
        if isinstance(data, str):
            raise ImageLoadError(f"{what} is opened in text mode; open it with 'rb'.")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise ImageLoadError(f"{what}.read() returned {type(data).__name__}, expected bytes.")
        if len(data) == 0:
            raise ImageLoadError(
                f"{what} returned no data (0 bytes); it is empty or already read to the end (call .seek(0) first)."
            )
        return _load_bytes(bytes(data), what, max_pixels)
    raise ImageLoadError(
        f"cannot load an image from {type(source).__name__}; pass a path, bytes, a binary file object, a PIL image, "
        f"a numpy array or a torch tensor."
    )
