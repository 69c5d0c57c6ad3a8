"""Qwen2-VL processor without torchvision: native resolution (``smart_resize``), packed patches, fps-sampled video with
its timing, a per-sample visual-token budget.

* Images: resized (bicubic, bit-exact Pillow) to multiples of ``patch_size * merge_size`` with the area in
  ``[min_pixels, max_pixels]`` (aspect kept; more than ``max_aspect_ratio``:1 is refused), rescaled, normalised
  (CLIP mean/std), repeated over the temporal patch and flattened into ``(t*h*w, 3*temporal_patch*patch*patch)`` rows
  in merge-window order -- the layout of transformers' ``Qwen2VLImageProcessor``.
* Videos from files: frames sampled by timestamp at ``video_fps`` (between ``min_frames`` and ``max_frames``; the
  count rounded to the temporal patch), each frame in ``[video_min_pixels, video_max_pixels]``. The true timestamps
  of the frames kept give ``video_second_per_grid`` (seconds one temporal grid step covers), which the model turns
  into temporal positions when its config sets ``tokens_per_second``. Frames given as arrays are taken as sampled at
  ``video_fps``.
  A file video's frames are resized and cut into float32 patch rows on worker threads while PyAV is still
  decoding (``load_video(on_frame=)``, :class:`_FramePipeline`): the budgeted size is planned from the frame count
  and size at the first frame; the result is used only when it is exactly what the pass after decoding would do.
* Budget: ``max_visual_tokens`` per sample. When a sample's items need more, every item's pixel cap is scaled down
  together (not below its minimum), then videos keep fewer frames (not below ``min_frames``); what was chosen is
  logged. Text is never cut; a sample that cannot fit is refused with the numbers.
* Placeholders: ``<|image_pad|>`` / ``<|video_pad|>`` expand to ``t*h*w / merge**2`` ids; the chat template wraps
  each in ``<|vision_start|>...<|vision_end|>``.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..media.frames import _is_video_source, load_frames, load_images
from ..media.image_io import ImageLoadError, check_aspect_ratio
from ..media.transforms import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    _run_parallel,
    normalize,
    rescale,
    resize,
    smart_resize,
)
from ..media.video_read import load_video
from ..modeling.qwen2vl import QWEN2VL_INPUTS
from .base import ProcessorInputError, Sample, VideoLLMProcessor
from .chat_templates import qwen2vl_template

__all__ = ["VideoLLMQwen2VLProcessor", "patchify"]

logger = logging.getLogger(__name__)

#: frame rate assumed for videos given as frame arrays when ``video_fps`` is None (their timing is not known)
ARRAY_FPS = 2.0


def patchify(frames: torch.Tensor, patch_size: int, temporal_patch_size: int, merge_size: int, *,
             channels_last: bool = False) -> tuple[torch.Tensor, list[int]]:
    """``(T, C, H, W)`` (or ``(T, H, W, C)`` with ``channels_last``) float frames, ``T`` a multiple of the temporal
    patch -> ``(t*h*w, C*tp*p*p)`` rows in merge-window order (row-major over ``(t, h/m, w/m, m, m)``, each row laid out
    ``(C, tp, p, p)``) and the grid ``[t, h, w]`` -- transformers' Qwen2-VL layout."""
    p, tp, m = patch_size, temporal_patch_size, merge_size
    if channels_last:
        T, H, W, C = frames.shape
        t, gh, gw = T // tp, H // p, W // p
        x = frames.reshape(t, tp, gh // m, m, p, gw // m, m, p, C).permute(0, 2, 5, 3, 6, 8, 1, 4, 7)
    else:
        T, C, H, W = frames.shape
        t, gh, gw = T // tp, H // p, W // p
        x = frames.reshape(t, tp, C, gh // m, m, p, gw // m, m, p).permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(t * gh * gw, C * tp * p * p), [t, gh, gw]


_PIL_CODES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def _pil_code(resample: str) -> int | None:
    """Pillow's filter code for ``resample`` (None: not a Pillow filter, the torch path resizes)."""
    from ..media.transforms import resolve_resample

    return _PIL_CODES.get(resolve_resample(resample))


def _pil_resize_frame(frame: np.ndarray, height: int, width: int, code: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize((width, height), code))


def _pil_resize(frames: torch.Tensor, height: int, width: int, resample: str) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> ``(T, height, width, 3)`` with Pillow itself (what transformers' PIL path runs;
    :func:`~hf_videollm.media.transforms.resize` gives the same bytes, Pillow's SIMD code is faster)."""
    from ..media.transforms import resolve_resample

    code = _pil_code(resample)
    if code is None:
        return resize(frames.permute(0, 3, 1, 2), (height, width), resolve_resample(resample)).permute(0, 2, 3, 1)
    out = np.empty((frames.shape[0], height, width, 3), dtype=np.uint8)
    src = frames.numpy()

    def one(i: int) -> None:  # Pillow releases the GIL while resizing: frames go to worker threads
        out[i] = _pil_resize_frame(src[i], height, width, code)

    _run_parallel(one, [(i,) for i in range(len(src))])
    return torch.from_numpy(out)


@dataclass(frozen=True)
class _Normalizer:
    """Rescale + normalize of uint8 values, equal bit for bit to the reference's arithmetic (transformers' numpy
    ``rescale``: ``float64(v) * rescale_factor`` cast to float32; ``normalize``: ``(x - mean) / std`` in float32).
    ``lut`` holds that result for every uint8 value per channel (``(C, 256)``). When float32 ``v / divisor`` gives the
    same rescaled values (1/255 does), the rows are made with torch's in-place ops (which release the GIL: the rows are
    written on worker threads while PyAV decodes); otherwise they are looked up in ``lut``."""

    lut: np.ndarray
    divisor: float | None
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def build(cls, rescale_factor: float, mean: list[float], std: list[float]) -> _Normalizer:
        levels = torch.arange(256, dtype=torch.uint8).expand(len(mean), 1, 256)  # (C, 1, 256): channels at -3
        lut = normalize(rescale(levels, rescale_factor), mean, std)  # the reference's arithmetic (media.transforms)
        mean32 = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        std32 = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        divisor = 1 / rescale_factor
        exact = torch.equal((levels.to(torch.float32) / divisor - mean32) / std32, lut)
        return cls(lut.reshape(len(mean), 256).numpy(), divisor if exact else None, mean32.flatten(), std32.flatten())

    def __call__(self, src: torch.Tensor, out: torch.Tensor, channel_dim: int) -> None:
        """uint8 ``src`` -> normalized float32 ``out`` (same shape; channels along ``channel_dim``)."""
        if self.divisor is not None:
            shape = [1] * out.ndim
            shape[channel_dim] = -1
            out.copy_(src)
            out.div_(self.divisor).sub_(self.mean.view(shape)).div_(self.std.view(shape))
            return
        s, d = src.numpy(), out.numpy()
        for k in range(src.shape[channel_dim]):  # mode="wrap": uint8 indices are in range, and ``d`` is written unbuffered
            index = (slice(None),) * channel_dim + (k,)
            np.take(self.lut[k], s[index], out=d[index], mode="wrap")


def _patch_rows(frames: torch.Tensor, out: torch.Tensor, patch: int, temporal: int, merge: int,
                normalize: _Normalizer) -> None:
    """uint8 ``(T, H, W, C)`` frames (``T`` a multiple of ``temporal``) -> their float32 patch rows, written into
    ``out`` of shape ``(t, h/m, w/m, m, m, C, tp, p, p)``: the patch layout is a view of the uint8 frames, written as
    float32 by one strided copy (no uint8 copy in between), then rescaled + normalized in place."""
    p, tp, m = patch, temporal, merge
    T, H, W, C = frames.shape
    view = frames.reshape(T // tp, tp, H // p // m, m, p, W // p // m, m, p, C).permute(0, 2, 5, 3, 6, 8, 1, 4, 7)
    normalize(view, out, channel_dim=5)


class _FramePipeline:
    """Resizes and patches a video's frames on worker threads while the decoder continues (``load_video``'s
    ``on_frame``). The output size and the frames kept are planned at the first frame -- the sample's budget needs
    only the frame count and size, known then -- on copies of the sample's other items (already loaded). The result
    is used only if the processor's own decision after loading is the same plan (:meth:`result`); anything else
    (a plan that fails, a video reloaded for ``min_frames``, padding, a non-Pillow filter) leaves the frames to the
    usual pass, so the output never depends on the pipeline."""

    def __init__(self, processor: VideoLLMQwen2VLProcessor, known: list[_Item], sample: int):
        self.proc, self.known, self.sample = processor, known, sample
        self.plan: tuple[int, int, list[int], int] | None = None  # (h, w, rows kept, frames decoded)
        self.failed = False
        self.waiting: dict[int, np.ndarray] = {}
        self.futures: list[Future] = []
        self.pool: ThreadPoolExecutor | None = None

    def _start(self, count: int, height: int, width: int) -> None:
        proc, tp = self.proc, self.proc.temporal_patch_size
        code = _pil_code(proc.resample)
        if count < max(tp, proc.min_frames) or code is None:  # reloaded for min_frames / padded / torch resize
            self.failed = True
            return
        check_aspect_ratio(height, width, proc.max_aspect_ratio)
        rows = _round_to_temporal(count, tp)
        item = _Item("video", None, None, proc.video_max_pixels, proc.video_min_pixels, len(rows), (height, width),
                     len(rows), rows)
        proc._fit([replace(it) for it in self.known] + [item], proc.max_visual_tokens, self.sample, log=False)
        h, w = smart_resize(height, width, proc.factor, item.floor, max(item.floor, item.cap),
                            max_ratio=proc.max_aspect_ratio)
        self.plan = (h, w, list(item.rows), count)
        p, m = proc.patch_size, proc.merge_size
        self.out = torch.empty((len(item.rows) // tp, h // p // m, w // p // m, m, m, 3, tp, p, p), dtype=torch.float32)
        self.pos = {r: k for k, r in enumerate(item.rows)}
        self.code, self.normalize = code, proc._normalizer()
        workers = max(1, min(torch.get_num_threads(), 8))
        if workers > 1:
            self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hf_videollm_qwen2vl")

    def __call__(self, row: int, frame: np.ndarray, count: int) -> None:
        if self.failed:
            return
        if self.plan is None:
            try:
                self._start(count, frame.shape[0], frame.shape[1])
            except ValueError:  # refused (aspect ratio, budget): the usual pass raises it with its context
                self.failed = True
            if self.failed:
                return
        k = self.pos.get(row)
        if k is None:
            return
        tp = self.proc.temporal_patch_size
        self.waiting[k] = frame
        t = k // tp
        if all(j in self.waiting for j in range(t * tp, t * tp + tp)):
            pair = [self.waiting.pop(j) for j in range(t * tp, t * tp + tp)]
            if self.pool is None:
                self._rows(t, pair)
            else:
                self.futures.append(self.pool.submit(self._rows, t, pair))

    def _rows(self, t: int, frames: list[np.ndarray]) -> None:
        h, w = self.plan[0], self.plan[1]
        frames = [f if f.shape[:2] == (h, w) else _pil_resize_frame(f, h, w, self.code) for f in frames]
        proc = self.proc
        _patch_rows(torch.from_numpy(np.stack(frames)), self.out[t : t + 1], proc.patch_size,
                    proc.temporal_patch_size, proc.merge_size, self.normalize)

    def result(self, height: int, width: int, rows: list[int], count: int) -> torch.Tensor | None:
        """The patch rows, if the processor's final choice ``(height, width, rows, count)`` is what was planned."""
        for fut in self.futures:
            fut.result()
        if self.pool is not None:
            self.pool.shutdown()
        if self.failed or self.plan != (height, width, rows, count) or self.waiting:
            return None
        return self.out.view(-1, math.prod(self.out.shape[-4:]))  # rows laid out (C, tp, p, p)


def _round_to_temporal(n: int, tp: int) -> list[int]:
    """Frames kept of ``n`` decoded: the count rounded down to the temporal patch, spread over the whole clip."""
    if n > tp and n % tp:
        return np.linspace(0, n - 1, n - n % tp).round().astype(int).tolist()
    return list(range(n))


@dataclass
class _Item:
    modality: str
    frames: torch.Tensor | None  # uint8 (T, H, W, 3) as loaded; an image has T = 1 (None: a pipeline's plan)
    timestamps: list[float] | None  # videos: seconds of each frame in `rows`
    cap: int  # max pixels per frame
    floor: int  # min pixels per frame
    keep: int  # frames kept (videos)
    size: tuple[int, int]  # (H, W) of the frames
    count: int  # frames available before the budget (len(rows))
    rows: list[int] | None = None  # indices into frames of the frames used (None: all)
    pipeline: _FramePipeline | None = None


class VideoLLMQwen2VLProcessor(VideoLLMProcessor):
    """Turns text + images/videos into Qwen2-VL inputs (``pixel_values`` + ``image_grid_thw``, ``pixel_values_videos``
    + ``video_grid_thw`` + ``video_second_per_grid``)."""

    input_spec = QWEN2VL_INPUTS
    settings = {
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "min_pixels": 56 * 56,  # images (transformers' Qwen2VLImageProcessor size.shortest_edge)
        "max_pixels": 28 * 28 * 1280,  # images (size.longest_edge)
        "video_min_pixels": 128 * 28 * 28,  # per frame (Qwen2VLVideoProcessor)
        "video_max_pixels": 768 * 28 * 28,
        "video_fps": 2.0,  # frames sampled per second of video (None: every frame, up to max_frames)
        "num_frames": None,  # a fixed frame count per video instead of video_fps
        "min_frames": 4,
        "max_frames": 768,
        "resample": "bicubic",
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
        "rescale_factor": 1 / 255,
        "max_aspect_ratio": 200.0,
        "max_image_pixels": 178_956_970,
        "max_visual_tokens": 16384,  # per sample; None: no budget
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "image_token_id": 151655,
        "video_token_id": 151656,
        "tokenization": "whole",
        "return_mm_token_type_ids": False,  # also emit transformers' mm_token_type_ids (our model does not need it)
    }

    def default_chat_template(self) -> str:
        return qwen2vl_template(image_token=self.image_token, video_token=self.video_token)

    def __call__(self, *args: Any, return_mm_token_type_ids: bool | None = None, **kwargs: Any):
        """As :meth:`VideoLLMProcessor.__call__`; with ``return_mm_token_type_ids`` (default: the setting of that
        name) the batch also holds ``mm_token_type_ids`` as transformers 5.24's ``Qwen2VLProcessor`` makes it
        (``create_mm_token_type_ids`` on the padded ``input_ids``): 1 at ``image_token_id``, 2 at
        ``video_token_id``, 0 elsewhere (text and padding). Our model reads the placeholder ids and accepts it
        without using it; transformers' ``Qwen2VLForConditionalGeneration`` requires it with grids."""
        out = super().__call__(*args, **kwargs)
        if self.return_mm_token_type_ids if return_mm_token_type_ids is None else return_mm_token_type_ids:
            ids = out["input_ids"]
            if isinstance(ids, torch.Tensor):
                out["mm_token_type_ids"] = (ids == self.image_token_id).long() + 2 * (ids == self.video_token_id).long()
            else:
                kinds = {self.image_token_id: 1, self.video_token_id: 2}
                out["mm_token_type_ids"] = [[kinds.get(t, 0) for t in row] for row in ids]
        return out

    def _check_settings(self) -> None:
        super()._check_settings()
        if self.min_pixels > self.max_pixels or self.video_min_pixels > self.video_max_pixels:
            raise ValueError(
                f"min_pixels must not exceed max_pixels (images: {self.min_pixels} > {self.max_pixels}? videos: "
                f"{self.video_min_pixels} > {self.video_max_pixels}?)"
            )
        if self.min_frames < 1 or self.max_frames < self.min_frames:
            raise ValueError(f"need 1 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")
        self.image_mean, self.image_std = list(self.image_mean), list(self.image_std)

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    # ---------------------------------------------------------------------------------------------- sizes
    def item_tokens(self, height: int, width: int, frames: int = 1, *, min_pixels: int | None = None,
                    max_pixels: int | None = None) -> int:
        """Tokens of an image (``frames=1``) or of a video of ``frames`` frames of ``height x width``."""
        h, w = smart_resize(height, width, self.factor, min_pixels or self.min_pixels, max_pixels or self.max_pixels,
                            max_ratio=self.max_aspect_ratio)
        t = math.ceil(frames / self.temporal_patch_size)
        return t * (h // self.patch_size) * (w // self.patch_size) // self.merge_size**2

    def _tokens(self, it: _Item, cap: int | None = None, keep: int | None = None) -> int:
        h, w = it.size
        frames = 1 if it.modality == "image" else (keep if keep is not None else it.keep)
        return self.item_tokens(h, w, frames, min_pixels=it.floor, max_pixels=max(it.floor, cap if cap is not None else it.cap))

    # ---------------------------------------------------------------------------------------------- loading
    def _read_video(self, video: Any, index: int, on_frame=None) -> tuple[torch.Tensor, list[float], list[int]]:
        """uint8 ``(T, H, W, 3)`` frames sampled at ``video_fps`` (count in ``[min_frames, max_frames]``), the
        timestamps in seconds of the frames used and their indices (the count rounded down to the temporal patch).
        ``on_frame`` goes to :func:`load_video` (file videos)."""
        tp = self.temporal_patch_size
        if not _is_video_source(video):
            frames = load_frames(video, index=index, num_frames=None, fps=None, max_frames=self.max_frames,
                                 max_aspect_ratio=self.max_aspect_ratio)
            stamps = [i / (self.video_fps or ARRAY_FPS) for i in range(frames.shape[0])]
            return frames.permute(0, 2, 3, 1).contiguous(), stamps, list(range(frames.shape[0]))
        try:
            if self.num_frames is not None:
                count = max(tp, round(self.num_frames / tp) * tp)
                frames, meta = load_video(video, num_frames=count, max_frames=self.max_frames, on_frame=on_frame,
                                          on_frame_order="any")
            else:
                frames, meta = load_video(video, fps=self.video_fps, max_frames=self.max_frames, on_frame=on_frame,
                                          on_frame_order="any")
            if self.num_frames is None and frames.shape[0] < self.min_frames and meta.total_frames > frames.shape[0]:
                frames, meta = load_video(video, num_frames=min(self.min_frames, meta.total_frames))
            check_aspect_ratio(frames.shape[1], frames.shape[2], self.max_aspect_ratio)
        except (ValueError, ImageLoadError) as e:
            raise type(e)(f"video {index}: {e}") from e
        rows = _round_to_temporal(frames.shape[0], tp)
        return frames, [meta.timestamps[i] for i in rows], rows

    def _load_video(self, video: Any, index: int) -> tuple[torch.Tensor, list[float]]:
        """uint8 ``(T, H, W, 3)`` frames sampled at ``video_fps`` (count in ``[min_frames, max_frames]``, a multiple
        of the temporal patch) and their timestamps in seconds."""
        frames, stamps, rows = self._read_video(video, index)
        if len(rows) < frames.shape[0]:
            frames = frames[rows]
        return frames.contiguous(), stamps

    def sample_frames(self, video: Any, index: int = 0) -> torch.Tensor:
        """The frames this processor feeds the model for ``video``: uint8 ``(T, 3, H, W)``, before resizing (as
        :meth:`hf_videollm.processors.pixels.FramePixelsMixin.sample_frames`; the demo's evaluation and single-frame
        baseline use it)."""
        return self._load_video(video, index)[0].permute(0, 3, 1, 2)

    def _load(self, given: dict[str, list], samples: list[dict[str, list[int]]]) -> dict[str, list[_Item]]:
        """Images, then videos; ``samples``: each sample's item indices per modality (the budget's groups). The last
        video of a sample is resized and patched while it decodes (:class:`_FramePipeline`): the sample's other
        items are known by then."""
        items: dict[str, list[_Item]] = {"image": [], "video": []}
        for img in load_images(given.get("image", []), self.max_image_pixels, self.max_aspect_ratio):
            frame = img.permute(1, 2, 0).contiguous()[None]
            items["image"].append(_Item("image", frame, None, self.max_pixels, self.min_pixels, 1,
                                        (frame.shape[1], frame.shape[2]), 1))
        last = {s["video"][-1]: (b, s) for b, s in enumerate(samples) if s.get("video")}
        for i, video in enumerate(given.get("video", [])):
            pipe = None
            if i in last and _is_video_source(video):
                b, s = last[i]
                if all(j < i for j in s["video"][:-1]):
                    known = [items["image"][j] for j in s.get("image", [])] + [items["video"][j] for j in s["video"][:-1]]
                    pipe = _FramePipeline(self, known, b)
            frames, stamps, rows = self._read_video(video, i, on_frame=pipe)
            items["video"].append(_Item("video", frames, stamps, self.video_max_pixels, self.video_min_pixels,
                                        len(rows), (frames.shape[1], frames.shape[2]), len(rows), rows, pipe))
        return items

    # ---------------------------------------------------------------------------------------------- budget
    def _fit(self, items: list[_Item], budget: int | None, sample: int, *, log: bool = True) -> None:
        """Lower the items' resolution, then the videos' frame counts, until the sample fits ``budget`` tokens."""
        if budget is None or not items:
            return
        need = sum(self._tokens(it) for it in items)
        if need <= budget:
            return

        def at_scale(s: float) -> int:
            return sum(self._tokens(it, cap=int(it.cap * s)) for it in items)

        if at_scale(0.0) <= budget:
            lo, hi = 0.0, 1.0
            for _ in range(40):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if at_scale(mid) <= budget else (lo, mid)
            for it in items:
                it.cap = max(it.floor, int(it.cap * lo))
            if log:
                    logger.info("sample %d: %d visual tokens over max_visual_tokens=%d; pixel caps scaled by %.3f -> %d "
                            "tokens", sample, need, budget, lo, sum(self._tokens(it) for it in items))
            return
        for it in items:
            it.cap = it.floor
        videos = [it for it in items if it.modality == "video"]
        tp = self.temporal_patch_size

        def frames_at(it: _Item, f: float) -> int:
            least = min(it.count, max(tp, math.ceil(self.min_frames / tp) * tp))
            return max(least, int(it.count * f) // tp * tp)

        def at_frames(f: float) -> int:
            return sum(self._tokens(it, keep=frames_at(it, f) if it.modality == "video" else None) for it in items)

        if not videos or at_frames(0.0) > budget:
            raise ProcessorInputError(
                f"sample {sample} needs at least {at_frames(0.0)} visual tokens (every item at its minimum resolution, "
                f"videos at {self.min_frames} frames), over the budget max_visual_tokens={budget}; pass fewer "
                f"images/videos, lower min_pixels / video_min_pixels / min_frames, or raise max_visual_tokens"
            )
        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if at_frames(mid) <= budget else (lo, mid)
        for it in videos:
            keep = frames_at(it, lo)
            idx = np.linspace(0, it.count - 1, keep).round().astype(int).tolist()
            it.rows = [(it.rows or list(range(it.count)))[i] for i in idx]
            it.timestamps, it.keep = [it.timestamps[i] for i in idx] if it.timestamps else None, keep
        if not log:
            return
        logger.info(
            "sample %d: %d visual tokens over max_visual_tokens=%d; minimum resolution and %s frames -> %d tokens",
            sample, need, budget, [it.keep for it in videos], sum(self._tokens(it) for it in items),
        )

    # ---------------------------------------------------------------------------------------------- pixels
    def _normalizer(self) -> _Normalizer:
        """Rescale + normalize as transformers' PIL path computes it (a fused ``v * scale + shift`` differs from it in
        the last bit for ~70 % of the values)."""
        return _Normalizer.build(self.rescale_factor, self.image_mean, self.image_std)

    def _pixels(self, it: _Item) -> tuple[torch.Tensor, list[int]]:
        H, W = it.size
        h, w = smart_resize(H, W, self.factor, it.floor, max(it.floor, it.cap), max_ratio=self.max_aspect_ratio)
        tp, p, m = self.temporal_patch_size, self.patch_size, self.merge_size
        rows = it.rows if it.rows is not None else list(range(it.frames.shape[0]))
        if it.pipeline is not None:  # resized and patched while decoding, if that plan is the one chosen
            done = it.pipeline.result(h, w, rows, it.frames.shape[0])
            if done is not None:
                return done, [len(rows) // tp, h // p, w // p]
        frames = it.frames if len(rows) == it.frames.shape[0] else it.frames[rows]
        if (h, w) != (H, W):
            frames = _pil_resize(frames, h, w, self.resample)
        if pad := -frames.shape[0] % tp:  # images: repeated over the temporal patch; videos: last frame repeated
            frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
        T, C = frames.shape[0], frames.shape[3]
        t, gh, gw = T // tp, h // p, w // p
        out = torch.empty((t, gh // m, gw // m, m, m, C, tp, p, p), dtype=torch.float32)
        _patch_rows(frames, out, p, tp, m, self._normalizer())
        return out.view(t * gh * gw, C * tp * p * p), [t, gh, gw]

    def _second_per_grid(self, it: _Item) -> float:
        ts = it.timestamps or []
        if len(ts) > 1 and ts[-1] > ts[0]:
            return self.temporal_patch_size * (ts[-1] - ts[0]) / (len(ts) - 1)
        return self.temporal_patch_size / (self.video_fps or ARRAY_FPS)

    def _encode(self, items: dict[str, list[_Item]]) -> tuple[dict[str, Any], dict[str, list[int]]]:
        data: dict[str, Any] = {}
        tokens: dict[str, list[int]] = {}
        for modality, pix, grid in (("image", "pixel_values", "image_grid_thw"),
                                    ("video", "pixel_values_videos", "video_grid_thw")):
            if not items[modality]:
                continue
            rows, grids = zip(*(self._pixels(it) for it in items[modality]))
            data[pix] = rows[0] if len(rows) == 1 else torch.cat(rows)
            data[grid] = torch.tensor(grids, dtype=torch.long)
            tokens[modality] = [t * h * w // self.merge_size**2 for t, h, w in grids]
            if modality == "video":
                data["video_second_per_grid"] = torch.tensor([self._second_per_grid(it) for it in items["video"]])
        return data, tokens

    # ---------------------------------------------------------------------------------------------- stages
    def _scan(self, text, given) -> list[Sample]:
        samples = super()._scan(text, given)
        self.__dict__["_samples"] = samples  # read by _process_media of the same call (the budget is per sample)
        return samples

    def _process_media(self, given: dict[str, list]) -> tuple[dict[str, Any], dict[str, list]]:
        samples = self.__dict__.pop("_samples", None)
        if samples is None:
            members = [{m: list(range(len(given.get(m, [])))) for m in ("image", "video")}]
        else:
            members = [s.items for s in samples]
        items = self._load(given, members)
        for b, s in enumerate(members):
            self._fit([items[m][i] for m in ("image", "video") for i in s.get(m, [])], self.max_visual_tokens, b)
        return self._encode(items)

    def _process_images(self, images: list) -> tuple[dict[str, Any], list[int]]:
        """Images processed as one sample (budget shared)."""
        items = self._load({"image": images}, [{"image": list(range(len(images)))}])
        self._fit(items["image"], self.max_visual_tokens, 0)
        data, tokens = self._encode(items)
        return data, tokens.get("image", [])

    def _process_videos(self, videos: list) -> tuple[dict[str, Any], list[int]]:
        items = self._load({"video": videos}, [{"video": list(range(len(videos)))}])
        self._fit(items["video"], self.max_visual_tokens, 0)
        data, tokens = self._encode(items)
        return data, tokens.get("video", [])
