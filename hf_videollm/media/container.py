"""What reading video and reading audio share: the errors they raise, and opening a source as a PyAV container.

A source is a path (str / ``os.PathLike``), ``bytes`` or a binary file object. :func:`open_container` checks it
(missing, empty, not a file, unsupported type) and turns every way PyAV can fail to open it into the given error class
with a message that names the source (:func:`describe_source`), what is wrong and how to fix it.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import av

# PyAV < 19 decodes metadata strictly unless told to ignore bad bytes; PyAV 19 dropped the option (its metadata
# values are decoded with "surrogateescape", never raising), and passing it is a TypeError there.
_OPEN_OPTIONS = {"metadata_errors": "ignore"} if int(av.__version__.split(".")[0]) < 19 else {}

__all__ = [
    "AV_TIME_BASE",
    "AudioDecodeError",
    "BackendUnavailableError",
    "VideoDecodeError",
    "describe_source",
    "open_container",
    "streams_summary",
]

#: FFmpeg's ``AV_TIME_BASE``: container-level timestamps and durations are in microseconds.
AV_TIME_BASE = 1_000_000


# ----------------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------------


class VideoDecodeError(ValueError):
    """Raised for every bad input: missing/empty/corrupt/truncated files, non-video data and invalid arguments.

    The message names the source, what is wrong and how to fix it.
    """


class AudioDecodeError(VideoDecodeError):
    """Raised by :func:`load_audio` (no audio stream, undecodable audio, bad arguments)."""


class BackendUnavailableError(VideoDecodeError, ImportError):
    """The requested decoding backend (e.g. ``torchcodec``) is not installed."""


# ----------------------------------------------------------------------------------------------------------------------
# Opening sources
# ----------------------------------------------------------------------------------------------------------------------


def describe_source(source: Any) -> str:
    """How error messages name ``source``: its path, its size in bytes, or its file object."""
    if isinstance(source, (str, os.PathLike)):
        return f"'{os.fspath(source)}'"
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes of in-memory data>"
    name = getattr(source, "name", None)
    if isinstance(name, str):
        return f"'{name}' (file object)"
    return f"<{type(source).__name__} file object>"


@contextlib.contextmanager
def open_container(source: Any, error_cls: type[VideoDecodeError] = VideoDecodeError):
    """Open ``source`` (path, bytes or binary file-like) with PyAV; yields ``(container, name)``."""
    name = describe_source(source)
    restore_pos: tuple[Any, int] | None = None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise error_cls(f"{name}: file does not exist; check the path (cwd is '{os.getcwd()}').")
        if not path.is_file():
            raise error_cls(f"{name}: is not a regular file (a directory?); pass the path of a media file.")
        if path.stat().st_size == 0:
            raise error_cls(f"{name}: file is empty (0 bytes); the download or the encoder that wrote it failed.")
        target: Any = str(path)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise error_cls(f"{name}: the data is empty (0 bytes); pass the complete content of a media file.")
        target = io.BytesIO(bytes(source))
    elif hasattr(source, "read"):
        seekable = False
        with contextlib.suppress(Exception):
            seekable = bool(source.seekable()) if hasattr(source, "seekable") else False
        if seekable:
            # FFmpeg addresses the data with absolute offsets, so the whole object is read from offset 0.
            pos = source.tell()
            size = source.seek(0, io.SEEK_END)
            source.seek(0)
            restore_pos = (source, pos)
            if size == 0:
                source.seek(pos)
                raise error_cls(
                    f"{name}: the file object is empty (0 bytes); pass the complete content of a media file."
                )
            target = source
        else:
            data = source.read()
            if not data:
                raise error_cls(f"{name}: the file object returned no data; pass the complete content of a media file.")
            target = io.BytesIO(data)
    else:
        raise error_cls(
            f"unsupported source type {type(source).__name__}: pass a path (str/Path), bytes, or a binary file object."
        )
    try:
        container = av.open(target, mode="r", **_OPEN_OPTIONS)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        if restore_pos is not None:
            restore_pos[0].seek(restore_pos[1])
        raise error_cls(
            f"{name}: could not be opened as a media file ({exc}). The data is corrupt, truncated, or not an "
            "audio/video container; re-download it or re-encode it (e.g. `ffmpeg -i in -c:v libx264 out.mp4`)."
        ) from exc
    try:
        yield container, name
    finally:
        container.close()
        if restore_pos is not None:
            with contextlib.suppress(Exception):
                restore_pos[0].seek(restore_pos[1])


def streams_summary(container) -> str:
    kinds = [s.type for s in container.streams]
    return ", ".join(kinds) if kinds else "none"
