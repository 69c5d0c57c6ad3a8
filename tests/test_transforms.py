"""Image loading and torch image/frame transforms: Pillow parity, golden preprocessing fixtures, bad inputs."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fixture_case, load_case, load_tensors
from PIL import Image

from hf_videollm.media import transforms as T
from hf_videollm.media.image_io import DEFAULT_MAX_PIXELS, ImageLoadError, check_aspect_ratio, load_image
from hf_videollm.media.transforms import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ImageTransform,
    center_crop,
    from_clip_preprocessor_config,
    merge_window_patches,
    normalize,
    pad_to_square,
    rescale,
    resize,
    resize_shortest_edge,
    shortest_edge_size,
    smart_resize,
    to_float,
)

PIXEL_ATOL = 1e-5
PIL_CODES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


@contextlib.contextmanager
def _one_thread():
    """Many tiny resizes: keep them off the intra-op pool (slow on a busy 2-core machine), restore afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _pil_resize(arr_hwc: np.ndarray, out_h: int, out_w: int, name: str) -> np.ndarray:
    return np.asarray(Image.fromarray(arr_hwc).resize((out_w, out_h), resample=PIL_CODES[name]))


def _ours(arr_hwc: np.ndarray, out_h: int, out_w: int, name: str, **kw) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(arr_hwc)).permute(2, 0, 1)
    return resize(t, (out_h, out_w), name, **kw).permute(1, 2, 0).numpy()


def _random_cases(seed: int, n: int):
    """Random sizes: up/down/mixed scaling, odd sizes, 1-pixel sides, smooth and noisy content."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = (int(v) for v in rng.integers(1, 80, 2))
        oh, ow = (int(v) for v in rng.integers(1, 120, 2))
        if i % 9 == 0:
            h = 1
        if i % 11 == 0:
            ow = 1
        if i % 13 == 0:
            oh, ow = h, int(rng.integers(1, 120))  # one axis unchanged
        if i % 3 == 0:
            yy, xx = np.mgrid[0:h, 0:w]
            arr = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
            arr = arr.astype(np.uint8)
        else:
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        yield arr, oh, ow


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.double() - b.double()).abs().max())


# ----------------------------------------------------------------------------------------------------------------------
# resize: bit-exact Pillow parity
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bicubic", "bilinear", "nearest"])
def test_resize_uint8_matches_pil_random_sizes(name):
    mismatches = []
    with _one_thread():
        for arr, oh, ow in _random_cases(seed=PIL_CODES[name], n=250):
            ref = _pil_resize(arr, oh, ow, name)
            out = _ours(arr, oh, ow, name)
            if not np.array_equal(ref, out):
                mismatches.append((arr.shape[:2], (oh, ow), int(np.abs(ref.astype(int) - out).max())))
    assert not mismatches, f"{len(mismatches)} size pairs differ from PIL, e.g. {mismatches[:5]}"


@pytest.mark.parametrize("name", ["box", "hamming", "lanczos"])
def test_resize_uint8_matches_pil_other_filters(name):
    with _one_thread():
        for arr, oh, ow in _random_cases(seed=10 + PIL_CODES[name], n=80):
            assert np.array_equal(_pil_resize(arr, oh, ow, name), _ours(arr, oh, ow, name)), (arr.shape, oh, ow)


def test_resize_large_scale_factors_and_typical_sizes():
    rng = np.random.default_rng(1)
    cases = [((240, 320), (336, 448)), ((240, 320), (224, 224)), ((720, 1280), (336, 597)), ((1080, 1920), (13, 7)),
             ((7, 3), (500, 700)), ((600, 40), (30, 41)), ((1, 1), (5, 9)), ((333, 555), (1, 1))]
    with _one_thread():
        for (h, w), (oh, ow) in cases:
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            for name in ("bicubic", "bilinear", "nearest"):
                assert np.array_equal(_pil_resize(arr, oh, ow, name), _ours(arr, oh, ow, name)), ((h, w), (oh, ow), name)


try:  # property-based variant (hypothesis is a dev dependency)
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None

if given is not None:

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(
        h=st.integers(1, 48), w=st.integers(1, 48), oh=st.integers(1, 72), ow=st.integers(1, 72),
        name=st.sampled_from(["bicubic", "bilinear", "nearest"]), seed=st.integers(0, 2**16),
    )
    def test_resize_uint8_matches_pil_hypothesis(h, w, oh, ow, name, seed):
        arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
        with _one_thread():
            assert np.array_equal(_pil_resize(arr, oh, ow, name), _ours(arr, oh, ow, name))

else:  # pragma: no cover

    def test_resize_uint8_matches_pil_hypothesis():
        pytest.skip("needs hypothesis (pip install hypothesis); the seeded random sweeps above cover the same check")


def test_resize_pass_order():
    """Pillow >= 13 runs the vertical pass first when the height loses > 2x as many pixels as the width."""
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    t = torch.from_numpy(arr).permute(2, 0, 1)
    # 100x100 -> 10x70: in_h - out_h = 90 > 2 * (100 - 70) = 60
    assert T._vertical_first(100, 100, 10, 70, "pillow13")
    assert not T._vertical_first(100, 100, 10, 70, "horizontal_first")
    assert not T._vertical_first(100, 100, 40, 70, "pillow13")  # 60 > 60 is false
    assert not T._vertical_first(100, 100, 150, 200, "pillow13")  # never when the height grows
    v_first = resize(resize(t, (10, 100)), (10, 70))
    h_first = resize(resize(t, (100, 70)), (10, 70))
    assert torch.equal(resize(t, (10, 70), pass_order="pillow13"), v_first)
    assert torch.equal(resize(t, (10, 70), pass_order="horizontal_first"), h_first)
    assert not torch.equal(v_first, h_first)  # the order matters in the last bit
    assert np.array_equal(_ours(arr, 10, 70, "bicubic"), _pil_resize(arr, 10, 70, "bicubic"))  # default = installed PIL
    with pytest.raises(ValueError, match="pass_order"):
        resize(t, (10, 70), pass_order="sideways")


def test_resize_float_matches_pil_mode_f():
    rng = np.random.default_rng(4)
    with _one_thread():
        for _ in range(60):
            h, w = (int(v) for v in rng.integers(1, 50, 2))
            oh, ow = (int(v) for v in rng.integers(1, 70, 2))
            a = rng.random((h, w)).astype(np.float32)
            for name in ("bicubic", "bilinear", "nearest", "lanczos"):
                ref = np.asarray(Image.fromarray(a, mode="F").resize((ow, oh), resample=PIL_CODES[name]))
                out = resize(torch.from_numpy(a)[None], (oh, ow), name)
                assert out.dtype == torch.float32
                np.testing.assert_allclose(out[0].numpy(), ref, atol=1e-6, rtol=0)


def test_resize_batched_frames_equal_per_frame_and_chunking(monkeypatch):
    rng = np.random.default_rng(5)
    frames = torch.from_numpy(rng.integers(0, 256, (5, 3, 37, 61), dtype=np.uint8))
    for name in ("bicubic", "nearest"):
        batched = resize(frames, (29, 90), name)
        assert batched.shape == (5, 3, 29, 90) and batched.dtype == torch.uint8
        assert torch.equal(batched, torch.stack([resize(f, (29, 90), name) for f in frames]))
    monkeypatch.setattr(T, "_CHUNK_ELEMENTS", 1)  # one plane per chunk
    assert torch.equal(resize(frames, (29, 90)), torch.stack([resize(f, (29, 90)) for f in frames]))
    # any leading dims
    assert resize(frames.reshape(5, 3, 1, 37, 61), (10, 10)).shape == (5, 3, 1, 10, 10)


def test_resize_misc():
    img = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    same = resize(img, (20, 30))
    assert torch.equal(same, img) and same.data_ptr() != img.data_ptr()
    assert resize(img, 16).shape == (3, 16, 16)
    assert torch.equal(resize(img, (10, 10), 3), resize(img, (10, 10), "bicubic"))  # Pillow codes
    assert torch.equal(resize(img, (10, 10), Image.Resampling.BILINEAR), resize(img, (10, 10), "bilinear"))
    # torch-nearest = F.interpolate(mode="nearest") (LongVLM), different from Pillow's pixel-centre rule
    ref = torch.nn.functional.interpolate(img[None].float(), size=(45, 7), mode="nearest")[0].to(torch.uint8)
    assert torch.equal(resize(img, (45, 7), "torch-nearest"), ref)
    # antialias=False keeps the unscaled kernel when downscaling: differs from Pillow
    assert not torch.equal(resize(img, (5, 7), antialias=False), resize(img, (5, 7)))
    with pytest.raises(ValueError, match="unknown resample"):
        resize(img, (5, 5), "cubic-spline")
    with pytest.raises(TypeError, match="uint8 or floating"):
        resize(img.to(torch.int16), (5, 5))
    with pytest.raises(ValueError, match="positive"):
        resize(img, (0, 5))


# ----------------------------------------------------------------------------------------------------------------------
# geometry helpers vs transformers / PIL
# ----------------------------------------------------------------------------------------------------------------------


def test_shortest_edge_size_matches_transformers():
    from transformers.image_transforms import get_resize_output_image_size
    from transformers.image_utils import ChannelDimension

    rng = np.random.default_rng(6)
    sizes = [(240, 320), (320, 240), (336, 336), (1, 1000), (1000, 1), (719, 1281)]
    sizes += [tuple(int(v) for v in rng.integers(1, 3000, 2)) for _ in range(200)]
    for h, w in sizes:
        for s in (224, 336, 384):
            dummy = np.zeros((1, h, w), dtype=np.uint8)
            ref = get_resize_output_image_size(
                dummy, size=s, default_to_square=False, input_data_format=ChannelDimension.FIRST
            )
            assert shortest_edge_size(h, w, s) == tuple(ref), (h, w, s)


def test_center_crop_matches_transformers():
    from transformers.image_transforms import center_crop as hf_center_crop
    from transformers.image_utils import ChannelDimension

    rng = np.random.default_rng(7)
    for h, w, ch, cw in [(10, 10, 4, 4), (11, 10, 4, 5), (448, 336, 336, 336), (7, 9, 12, 4), (5, 5, 8, 9), (3, 8, 3, 3)]:
        img = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
        ref = hf_center_crop(img, (ch, cw), input_data_format=ChannelDimension.FIRST)
        out = center_crop(torch.from_numpy(img), (ch, cw))
        assert out.shape == (3, ch, cw)
        assert np.array_equal(out.numpy(), ref), (h, w, ch, cw)
    batch = torch.from_numpy(rng.integers(0, 256, (2, 3, 9, 12), dtype=np.uint8))
    assert torch.equal(center_crop(batch, 6)[1], center_crop(batch[1], 6))


def _expand2square(pil_img: Image.Image, background_color):
    """LLaVA's expand2square, restated with PIL for the comparison."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


def test_pad_to_square_matches_expand2square():
    rng = np.random.default_rng(8)
    fill = (122, 116, 104)
    for h, w in [(240, 320), (320, 240), (5, 8), (8, 5), (7, 7), (1, 4)]:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = np.asarray(_expand2square(Image.fromarray(arr), fill))
        out = pad_to_square(torch.from_numpy(arr).permute(2, 0, 1), fill).permute(1, 2, 0).numpy()
        assert np.array_equal(out, ref), (h, w)
    frames = torch.zeros(2, 3, 4, 6, dtype=torch.uint8)
    out = pad_to_square(frames, fill)
    assert out.shape == (2, 3, 6, 6) and out[1, :, 0, 0].tolist() == list(fill) and out[1, :, 1:5].eq(0).all()
    with pytest.raises(ValueError, match="channels"):
        pad_to_square(frames, (1, 2))
    with pytest.raises(ValueError, match="uint8"):
        pad_to_square(frames, (300, 0, 0))


def test_rescale_normalize_to_float_match_reference_implementations():
    from transformers.image_transforms import normalize as hf_normalize
    from transformers.image_transforms import rescale as hf_rescale
    from transformers.image_utils import ChannelDimension

    rng = np.random.default_rng(9)
    img = rng.integers(0, 256, (3, 17, 23), dtype=np.uint8)
    ours = normalize(rescale(torch.from_numpy(img)), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    ref = hf_normalize(
        hf_rescale(img, 1 / 255, input_data_format=ChannelDimension.FIRST), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
        input_data_format=ChannelDimension.FIRST,
    )
    assert ours.dtype == torch.float32
    assert torch.equal(ours, torch.from_numpy(ref))
    # torchvision ToTensor: uint8 -> float32 / 255
    t = torch.from_numpy(img)
    assert torch.equal(to_float(t), t.to(torch.float32).div(255))
    assert torch.equal(to_float(to_float(t)), to_float(t))
    with pytest.raises(TypeError, match="rescale"):
        normalize(t, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    with pytest.raises(ValueError, match="one per channel"):
        normalize(to_float(t), (0.5, 0.5), (0.5, 0.5))
    with pytest.raises(ValueError, match="non-zero"):
        normalize(to_float(t), 0.5, 0.0)


def test_smart_resize_qwen2_vl_rule_matches_transformers():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

    rng = np.random.default_rng(10)
    sizes = [(240, 320), (28, 28), (10, 10), (4000, 3000), (56, 56 * 150), (1, 150), (21, 35)]
    sizes += [tuple(int(v) for v in rng.integers(1, 5000, 2)) for _ in range(300)]
    for h, w in sizes:
        if max(h, w) / min(h, w) > 200:
            with pytest.raises(ValueError, match="aspect ratio"):
                smart_resize(h, w)
            continue
        for factor, min_px, max_px in [(28, 56 * 56, 28 * 28 * 1280), (28, 3136, 12845056), (14, 4 * 196, 64 * 196)]:
            assert smart_resize(h, w, factor, min_px, max_px) == hf_smart_resize(h, w, factor, min_px, max_px)


def test_smart_resize_videollama3_rule_matches_fixture_targets():
    case = load_case(fixture_case("videollama3", "preprocess"))
    cfg = case["original"]["preprocessor_config"]
    targets = case["smart_resize_targets_(h,w)"]
    assert len(targets) >= 18
    for key, expected in targets.items():
        hw, rest = key.split("_", 1)
        h, w = (int(v) for v in hw.split("x"))
        merge, num_images = {"merge1": (1, 1), "merge2": (2, 1), "video180frames_merge2": (2, 180)}[rest]
        f = cfg["patch_size"] * merge
        got = smart_resize(
            h, w, f, cfg["min_tokens"] * f * f, cfg["max_tokens"] * f * f // num_images, rule="videollama3"
        )
        assert got == tuple(expected), key
    # the two rules differ: VideoLLaMA3 has no lower bound of one factor when scaling down
    assert smart_resize(20, 4000, 28, 16, 28 * 28 * 2, rule="videollama3") != smart_resize(
        20, 4000, 28, 16, 28 * 28 * 2
    )


def test_merge_window_patches_layout():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    rows, grid = merge_window_patches(x, patch_size=2, merge_size=1)
    assert grid == (2, 2, 3) and rows.shape == (12, 12)
    assert torch.equal(rows[4], x[0, :, 2:4, 2:4].reshape(-1))  # frame 0, patch (1, 1)
    rows2, grid2 = merge_window_patches(x, patch_size=1, merge_size=2)
    assert grid2 == (2, 4, 6)
    # first merge window of frame 0: patches (0,0), (0,1), (1,0), (1,1)
    assert torch.equal(rows2[:4], torch.stack([x[0, :, 0, 0], x[0, :, 0, 1], x[0, :, 1, 0], x[0, :, 1, 1]]))
    with pytest.raises(ValueError, match="multiple"):
        merge_window_patches(x, patch_size=4, merge_size=1)


# ----------------------------------------------------------------------------------------------------------------------
# ImageTransform
# ----------------------------------------------------------------------------------------------------------------------


def test_image_transform_dict_roundtrip_and_config_parsing():
    tf = ImageTransform(336, "shortest_edge", crop_size=336, pad_to_square=True)
    assert tf.fill == (122, 116, 104) and tf.crop_size == (336, 336)
    d = tf.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert ImageTransform.from_dict(d) == tf
    with pytest.raises(ValueError, match="unknown ImageTransform fields"):
        ImageTransform.from_dict({**d, "do_magic": True})
    assert tf.output_size(240, 320) == (336, 336)
    assert ImageTransform((224, 448), "exact").output_size(10, 10) == (224, 448)
    assert ImageTransform(224).output_size(240, 320) == (224, 298)

    clip = from_clip_preprocessor_config(
        {"size": {"shortest_edge": 224}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
         "resample": 3, "image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6], "rescale_factor": 0.5}
    )
    assert (clip.size, clip.resize_mode, clip.crop_size) == (224, "shortest_edge", (224, 224))
    assert clip.mean == (0.1, 0.2, 0.3) and clip.std == (0.4, 0.5, 0.6) and clip.rescale_factor == 0.5
    siglip = from_clip_preprocessor_config({"image_processor_type": "SiglipImageProcessor", "size": 384, "resample": 2})
    assert (siglip.size, siglip.resize_mode, siglip.crop_size, siglip.resample) == ((384, 384), "exact", None, "bilinear")
    assert siglip.mean == (0.5, 0.5, 0.5)
    bare = from_clip_preprocessor_config({"do_normalize": False, "do_rescale": False, "do_resize": False})
    out = bare(torch.full((3, 8, 8), 7, dtype=torch.uint8))
    assert out.dtype == torch.float32 and out.shape == (3, 8, 8) and out.eq(7).all()  # default crop 224 absent
    assert ImageTransform.from_clip_preprocessor_config({"size": 32, "crop_size": 32}) == from_clip_preprocessor_config(
        {"size": 32, "crop_size": 32}
    )

    with pytest.raises(ValueError, match="resize_mode"):
        ImageTransform(224, "fit")
    with pytest.raises(ValueError, match="positive int"):
        ImageTransform((224, 224), "shortest_edge")
    with pytest.raises(TypeError, match="uint8"):
        ImageTransform(16)(torch.rand(3, 20, 20))


def test_image_transform_batch_equals_per_frame():
    rng = np.random.default_rng(11)
    frames = torch.from_numpy(rng.integers(0, 256, (3, 3, 30, 50), dtype=np.uint8))
    tf = ImageTransform(24, "shortest_edge", crop_size=24, pad_to_square=True)
    out = tf(frames)
    assert out.shape == (3, 3, 24, 24) and out.dtype == torch.float32
    assert torch.equal(out, torch.stack([tf(f) for f in frames]))


# ----------------------------------------------------------------------------------------------------------------------
# golden fixtures of the original preprocessing
# ----------------------------------------------------------------------------------------------------------------------


def _fixture_image(model: str) -> torch.Tensor:
    case_dir = fixture_case(model, "preprocess")
    img = load_image(case_dir / "image.png")
    inputs_path = case_dir / "inputs.safetensors"
    if inputs_path.exists():  # the decoded image the original saw
        assert torch.equal(img, load_tensors(inputs_path)["image"].permute(2, 0, 1))
    return img


def _config(model: str, name: str = "preprocessor_config.json") -> dict:
    return json.loads((fixture_case(model, "preprocess") / name).read_text())


def _decode_all_frames(path: Path) -> torch.Tensor:
    av = pytest.importorskip("av", reason="needs PyAV to decode video.mp4")
    with av.open(str(path)) as container:
        frames = [torch.from_numpy(f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
    return torch.stack(frames).permute(0, 3, 1, 2).contiguous()


def test_fixture_llava_v1():
    img = _fixture_image("llava_v1")
    expected = load_tensors(fixture_case("llava_v1", "preprocess") / "expected.safetensors")
    tf = from_clip_preprocessor_config(_config("llava_v1"))
    assert (tf.size, tf.crop_size, tf.resize_mode) == (224, (224, 224), "shortest_edge")
    diff = _max_diff(tf(img)[None], expected["pixel_values"])
    assert diff <= PIXEL_ATOL, diff


def test_fixture_llava_v1_5_pad_to_square():
    img = _fixture_image("llava_v1_5")
    case_dir = fixture_case("llava_v1_5", "preprocess")
    expected = load_tensors(case_dir / "expected.safetensors")
    tf = from_clip_preprocessor_config(_config("llava_v1_5"), pad_to_square=True)
    assert tf.fill == tuple(load_case(case_dir)["fill_color"]) == (122, 116, 104)
    assert torch.equal(pad_to_square(img, tf.fill).permute(1, 2, 0), expected["padded_image"])
    diff = _max_diff(tf(img)[None], expected["pixel_values"])
    assert diff <= PIXEL_ATOL, diff


@pytest.mark.parametrize("model", ["blip2", "instructblip", "qwen_vl"])
def test_fixture_exact_resize_models(model):
    """LAVIS Blip(2)ImageEvalProcessor / Qwen-VL image_transform: Resize((S, S), bicubic) + ToTensor + Normalize."""
    img = _fixture_image(model)
    case_dir = fixture_case(model, "preprocess")
    cfg = load_case(case_dir)["original_config"]
    expected = load_tensors(case_dir / "expected.safetensors")["pixel_values"]
    s = cfg["image_size"]
    tf = ImageTransform((s, s), "exact", mean=cfg["mean"], std=cfg["std"])
    diff = _max_diff(tf(img)[None], expected)
    assert diff <= PIXEL_ATOL, diff
    # the torchvision formulation (ToTensor = float32 / 255) gives the same pixels
    tv = normalize(to_float(resize(img, (s, s), "bicubic")), cfg["mean"], cfg["std"])
    assert _max_diff(tv[None], expected) <= PIXEL_ATOL


def test_fixture_video_llama_image_and_frame_transform():
    img = _fixture_image("video_llama")
    expected = load_tensors(fixture_case("video_llama", "preprocess") / "expected.safetensors")
    pixel = ImageTransform((224, 224), "exact")(img)[None, :, None]  # .unsqueeze(0).unsqueeze(2)
    assert _max_diff(pixel, expected["image_pixel_values"]) <= PIXEL_ATOL
    # AlproVideoEvalProcessor on the decoded frames: ToTensorVideo (/255) + NormalizeVideo, layout (1, C, T, H, W).
    # (The original resizes to 224 inside decord; that decoder-side step is not part of the fixture.)
    frames = expected["video_frames_uint8"].permute(0, 3, 1, 2)
    video = normalize(to_float(frames), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD).permute(1, 0, 2, 3)[None]
    assert _max_diff(video, expected["video_pixel_values"]) <= PIXEL_ATOL


def test_fixture_videollama2_image_clip336_and_siglip384():
    img = _fixture_image("videollama2")
    expected = load_tensors(fixture_case("videollama2", "preprocess") / "expected.safetensors")
    clip = from_clip_preprocessor_config(_config("videollama2", "clip336_preprocessor_config.json"))
    siglip = from_clip_preprocessor_config(_config("videollama2", "siglip384_preprocessor_config.json"))
    assert siglip.resize_mode == "exact" and siglip.size == (384, 384) and siglip.crop_size is None
    assert _max_diff(clip(img)[None], expected["image_clip336_pixel_values"]) <= PIXEL_ATOL
    assert _max_diff(siglip(img)[None], expected["image_siglip384_pixel_values"]) <= PIXEL_ATOL


def test_fixture_videollama2_video8_clip336_frames():
    expected = load_tensors(fixture_case("videollama2", "preprocess") / "expected.safetensors")
    clip = from_clip_preprocessor_config(_config("videollama2", "clip336_preprocessor_config.json"))
    video = clip(expected["video_frames_8_uint8"].permute(0, 3, 1, 2))  # frames decoded by decord in the original
    assert list(video.shape) == expected["video8_clip336_shape"].tolist()
    assert _max_diff(video.mean((2, 3)), expected["video8_clip336_mean_per_frame_channel"]) <= PIXEL_ATOL
    assert _max_diff(video.std((2, 3)), expected["video8_clip336_std_per_frame_channel"]) <= PIXEL_ATOL


def test_fixture_videollama2_video16_siglip384_frames():
    case_dir = fixture_case("videollama2", "preprocess")
    expected = load_tensors(case_dir / "expected.safetensors")
    frames = _decode_all_frames(case_dir / "video.mp4")
    idx = expected["video_frame_indices_8"]
    assert torch.equal(frames[idx].permute(0, 2, 3, 1), expected["video_frames_8_uint8"]), "PyAV != decord frames"
    siglip = from_clip_preprocessor_config(_config("videollama2", "siglip384_preprocessor_config.json"))
    # frame indices: the fixture's (sampling itself is the video loader's job)
    video = siglip(frames[expected["video_frame_indices_16"]])
    assert list(video.shape) == expected["video16_siglip384_shape"].tolist()
    assert _max_diff(video.mean((2, 3)), expected["video16_siglip384_mean_per_frame_channel"]) <= PIXEL_ATOL
    assert _max_diff(video.std((2, 3)), expected["video16_siglip384_std_per_frame_channel"]) <= PIXEL_ATOL


def _videollama3_transform(cfg: dict, size: tuple[int, int]) -> ImageTransform:
    return ImageTransform(
        size, "exact", resample=cfg["resample"], mean=cfg["image_mean"], std=cfg["image_std"],
        rescale_factor=cfg["rescale_factor"],
    )


@pytest.mark.parametrize("source", ["array", "path"])
def test_fixture_videollama3_image(source):
    img = _fixture_image("videollama3")
    case_dir = fixture_case("videollama3", "preprocess")
    cfg = load_case(case_dir)["original"]["preprocessor_config"]
    expected = load_tensors(case_dir / "expected.safetensors")
    h, w = img.shape[-2:]
    if source == "path":  # the hub processor reads PIL's (W, H) as (h, w): the target comes out transposed
        h, w = w, h
    f = cfg["patch_size"]  # image merge size 1
    target = smart_resize(h, w, f, cfg["min_tokens"] * f * f, cfg["max_tokens"] * f * f, rule="videollama3")
    rows, grid = merge_window_patches(_videollama3_transform(cfg, target)(img)[None], cfg["patch_size"], 1)
    assert [list(grid)] == expected[f"image_via_{source}_grid_sizes"].tolist()
    diff = _max_diff(rows, expected[f"image_via_{source}_pixel_values"])
    assert diff <= PIXEL_ATOL, diff


def test_fixture_videollama3_video_frames():
    case_dir = fixture_case("videollama3", "preprocess")
    cfg = load_case(case_dir)["original"]["preprocessor_config"]
    expected = load_tensors(case_dir / "expected.safetensors")
    frames = expected["video_frames_uint8"]  # (t, 3, H, W) from the original ffmpeg loader
    t, merge = frames.shape[0], 2
    f = cfg["patch_size"] * merge
    target = smart_resize(
        frames.shape[-2], frames.shape[-1], f, cfg["min_tokens"] * f * f, cfg["max_tokens"] * f * f // t,
        rule="videollama3",
    )
    rows, grid = merge_window_patches(_videollama3_transform(cfg, target)(frames), cfg["patch_size"], merge)
    assert [list(grid)] == expected["video_grid_sizes"].tolist()
    diff = _max_diff(rows, expected["video_pixel_values"])
    assert diff <= PIXEL_ATOL, diff


def test_fixture_longvlm_frames_nearest_224():
    case_dir = fixture_case("longvlm", "preprocess")
    expected = load_tensors(case_dir / "expected.safetensors")
    frames = _decode_all_frames(case_dir / "video.mp4")
    assert frames.shape[0] == int(load_tensors(case_dir / "inputs.safetensors")["num_frames_in_video"][0])
    # LongVLM's loader: F.interpolate(size=(224, 224)) (nearest) on the sampled frames (indices from the fixture)
    out = resize(frames[expected["sampled_indices"]], (224, 224), "torch-nearest")
    assert torch.equal(out[[0, -1]].permute(0, 2, 3, 1), expected["eval_loader_frames_first_last_uint8"])
    means = out.double().mean((2, 3))
    assert _max_diff(means, expected["eval_loader_checksums_mean_per_frame_channel"]) <= 1e-4
    # Pillow's nearest rule would pick other source pixels
    assert not torch.equal(resize(frames[:2], (224, 224), "nearest"), resize(frames[:2], (224, 224), "torch-nearest"))


# ----------------------------------------------------------------------------------------------------------------------
# load_image
# ----------------------------------------------------------------------------------------------------------------------


def _png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _pil_rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_load_image_sources(tmp_path):
    rng = np.random.default_rng(12)
    arr = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    data = _png_bytes(Image.fromarray(arr))
    p = tmp_path / "img.png"
    p.write_bytes(data)
    chw = torch.from_numpy(arr).permute(2, 0, 1)
    for source in (str(p), p, data, bytearray(data), memoryview(data), io.BytesIO(data), open(p, "rb"),  # noqa: SIM115
                   Image.open(p), Image.fromarray(arr), arr, chw, chw.permute(1, 2, 0), arr.astype(np.float64) / 255,
                   chw.float() / 255, arr.astype(np.int64)):
        out = load_image(source)
        if hasattr(source, "close"):
            source.close()
        assert out.dtype == torch.uint8 and out.shape == (3, 13, 17) and out.is_contiguous(), type(source)
        assert torch.equal(out, chw), type(source)
    # grey and RGBA arrays follow PIL's convert("RGB")
    grey = arr[..., 0]
    assert np.array_equal(load_image(grey).permute(1, 2, 0).numpy(), np.asarray(Image.fromarray(grey).convert("RGB")))
    assert torch.equal(load_image(grey[..., None]), load_image(grey))
    rgba = np.concatenate([arr, rng.integers(0, 256, (13, 17, 1), dtype=np.uint8)], -1)
    ref = np.asarray(Image.fromarray(rgba, mode="RGBA").convert("RGB"))
    assert np.array_equal(load_image(rgba).permute(1, 2, 0).numpy(), ref)
    assert torch.equal(load_image(torch.from_numpy(rgba).permute(2, 0, 1)), load_image(rgba))
    # the result never aliases the caller's tensor
    out = load_image(chw)
    out[0, 0, 0] ^= 1
    assert chw[0, 0, 0] != out[0, 0, 0]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "PA", "1", "I;16", "I", "CMYK", "YCbCr"])
def test_load_image_modes_match_pil_convert_rgb(mode, tmp_path):
    rng = np.random.default_rng(13)
    base = Image.fromarray(rng.integers(0, 256, (9, 11, 4), dtype=np.uint8), mode="RGBA")
    if mode == "P":
        img = base.convert("RGB").quantize(16)
        img.info["transparency"] = 3
    elif mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (9, 11), dtype=np.uint16))
    elif mode == "I":
        img = Image.fromarray(rng.integers(0, 255, (9, 11), dtype=np.int32))
    else:
        img = base.convert(mode)
    assert np.array_equal(load_image(img).permute(1, 2, 0).numpy(), np.asarray(img.convert("RGB"))), mode
    data = None
    for fmt in {"CMYK": ("JPEG", "TIFF"), "YCbCr": ("JPEG",)}.get(mode, ("PNG", "TIFF")):
        with contextlib.suppress(OSError, KeyError, ValueError):
            data = _png_bytes(img, fmt)
            break
    if data is None:
        pytest.skip(f"Pillow cannot write mode {mode} to a file here")
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    assert np.array_equal(load_image(path).permute(1, 2, 0).numpy(), _pil_rgb(data)), mode


def test_load_image_does_not_apply_exif_orientation(tmp_path):
    arr = np.zeros((4, 6, 3), dtype=np.uint8)
    arr[0, 0] = 255
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    data = _png_bytes(img, "JPEG", exif=exif.tobytes(), quality=100)
    assert tuple(load_image(data).shape) == (3, 4, 6)  # like Image.open(p).convert("RGB") in the originals


def _raises(source, *fragments, **kw):
    with pytest.raises(ImageLoadError) as info:
        load_image(source, **kw)
    msg = str(info.value)
    for frag in fragments:
        assert frag.lower() in msg.lower(), msg
    return msg


def test_load_image_errors(tmp_path):
    rng = np.random.default_rng(14)
    arr = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    png = _png_bytes(Image.fromarray(arr))
    jpg = _png_bytes(Image.fromarray(arr), "JPEG", quality=90)

    _raises(tmp_path / "missing.png", "does not exist", "missing.png")
    _raises(tmp_path, "directory")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    _raises(empty, "empty (0 bytes)")
    _raises(b"", "empty")
    text = tmp_path / "notes.txt"
    text.write_text("<html>404 not found</html>")
    _raises(text, "not an image", "html")
    mp4_like = tmp_path / "clip.png"
    mp4_like.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    _raises(mp4_like, "video")
    _raises(png[: len(png) // 2], "corrupt or truncated")
    _raises(jpg[: len(jpg) // 2], "corrupt or truncated", "LOAD_TRUNCATED_IMAGES")
    broken = bytearray(png)
    broken[60:80] = b"\xff" * 20  # garbage inside the IDAT stream
    _raises(bytes(broken), "corrupt")
    _raises("https://example.com/cat.png", "URL", "download")
    _raises("data:image/png;base64,AAAA", "base64")
    _raises(io.StringIO("abc"), "text mode")
    exhausted = io.BytesIO(png)
    exhausted.read()
    _raises(exhausted, "seek(0)")
    _raises(12345, "cannot load an image from int")
    _raises(Image.new("RGB", (0, 5)), "empty")
    _raises(np.zeros((0, 5, 3), dtype=np.uint8), "empty")
    _raises(np.zeros((5, 6, 7), dtype=np.uint8), "channel")
    _raises(np.zeros((2, 4, 5, 3), dtype=np.uint8), "shape", "each frame")
    _raises(np.full((6, 5, 3), 2.0), "[0, 1]", "uint8")
    _raises(np.full((6, 5, 3), np.nan), "NaN")
    _raises(np.full((6, 5, 3), 300, dtype=np.int32), "0..255")
    _raises(np.zeros((6, 5, 3), dtype=bool), "boolean")
    _raises(np.array([["a"]]), "not an image")
    msg = _raises(arr, "2,000 pixels", "max_pixels=1,000", "max_pixels=2000", max_pixels=1000)
    assert "None" in msg
    _raises(png, "max_pixels", max_pixels=100)
    assert load_image(png, max_pixels=None).shape == (3, 40, 50)
    assert load_image(png, max_pixels=2000).shape == (3, 40, 50)
    _raises(png, "positive int", max_pixels=0)
    assert DEFAULT_MAX_PIXELS == 178_956_970


def test_load_image_limit_above_pillows_own(monkeypatch):
    """A max_pixels above Pillow's decompression-bomb limit lets Pillow open the image (limit restored after)."""
    data = _png_bytes(Image.new("RGB", (40, 30), (1, 2, 3)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1200 pixels > 2 x 100: Pillow itself would refuse
    assert load_image(data, max_pixels=5000)[:, 0, 0].tolist() == [1, 2, 3]
    assert Image.MAX_IMAGE_PIXELS == 100
    _raises(data, "max_pixels", max_pixels=50)


def test_check_aspect_ratio():
    assert check_aspect_ratio(10, 20, 3) == 2.0
    assert math.isclose(check_aspect_ratio(300, 2, 200), 150.0)
    with pytest.raises(ImageLoadError, match=r"aspect ratio of 250\.0:1.*more than the supported 200:1"):
        check_aspect_ratio(2, 500, 200)
    with pytest.raises(ImageLoadError, match="empty"):
        check_aspect_ratio(0, 5, 10)


def test_resize_shortest_edge_and_full_clip_chain_match_pil_reference():
    """The whole CLIP chain against a PIL/numpy restatement on odd sizes (not only the fixture's 320x240)."""
    rng = np.random.default_rng(15)
    mean, std = np.array(OPENAI_CLIP_MEAN, np.float32), np.array(OPENAI_CLIP_STD, np.float32)
    tf = ImageTransform(32, "shortest_edge", crop_size=32)
    for h, w in [(45, 61), (61, 45), (32, 32), (7, 100), (200, 33)]:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        nh, nw = shortest_edge_size(h, w, 32)
        res = np.asarray(Image.fromarray(arr).resize((nw, nh), resample=3)).astype(np.float64) * (1 / 255)
        top, left = (nh - 32) // 2, (nw - 32) // 2
        ref = ((res[top : top + 32, left : left + 32].astype(np.float32) - mean) / std).transpose(2, 0, 1)
        out = tf(torch.from_numpy(arr).permute(2, 0, 1))
        assert resize_shortest_edge(torch.from_numpy(arr).permute(2, 0, 1), 32).shape[-2:] == (nh, nw)
        assert _max_diff(out, torch.from_numpy(np.ascontiguousarray(ref))) <= 1e-6, (h, w)


# ----------------------------------------------------------------------------------------------------------------------
# uint8 fast path (Pillow on worker threads + lookup-table normalisation) == the torch reference path
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(size=32, crop_size=32),
        dict(size=32, crop_size=32, pad_to_square=True),
        dict(size=(24, 40), resize_mode="exact", resample="bilinear"),
        dict(size=20, crop_size=(16, 12), resample="lanczos", mean=None, std=None),
        dict(size=16, crop_size=64),  # crop larger than the image: zero padding (the torch path)
        dict(size=25, resample="nearest", rescale_factor=None),
        dict(size=(37, 53), resize_mode="exact", resample="box", pad_to_square=True, fill=(1, 2, 3)),
    ],
)
@pytest.mark.parametrize("layout", ["chw", "hwc_view", "single"])
def test_image_transform_fast_path_matches_torch_path(monkeypatch, kwargs, layout):
    import hf_videollm.media.transforms as T

    g = torch.Generator().manual_seed(3)
    hwc = torch.randint(0, 256, (3, 45, 71, 3), generator=g, dtype=torch.uint8)
    img = hwc.permute(0, 3, 1, 2)
    if layout == "chw":
        img = img.contiguous()
    elif layout == "single":
        img = img[1].contiguous()
    tf = T.ImageTransform(**kwargs)
    torch.set_num_threads(2)  # several worker threads even under OMP_NUM_THREADS=1
    try:
        fast = tf(img)
    finally:
        torch.set_num_threads(1)
    calls = []
    monkeypatch.setattr(T, "_pillow_path_applies", lambda *a: calls.append(a) and False)
    ref = tf(img)
    assert calls, "the reference run must take the torch path"
    assert fast.dtype == ref.dtype == torch.float32 and fast.shape == ref.shape
    assert torch.equal(fast, ref)


def test_image_transform_fast_path_grey_and_four_channels(monkeypatch):
    import hf_videollm.media.transforms as T

    g = torch.Generator().manual_seed(4)
    for c in (1, 4):
        img = torch.randint(0, 256, (2, c, 30, 50), generator=g, dtype=torch.uint8)
        tf = T.ImageTransform(24, crop_size=20, mean=(0.5,) * c, std=(0.25,) * c)
        fast = tf(img)
        with monkeypatch.context() as m:
            m.setattr(T, "_pillow_path_applies", lambda *a: False)
            assert torch.equal(fast, tf(img))


def test_load_frames_uint8_video_is_a_view_with_the_same_frames():
    from hf_videollm.media.frames import load_frames

    g = torch.Generator().manual_seed(5)
    thwc = torch.randint(0, 256, (4, 10, 12, 3), generator=g, dtype=torch.uint8)
    frames = load_frames(thwc, index=0, num_frames=None, fps=None, max_frames=8)
    assert frames.shape == (4, 3, 10, 12) and frames.data_ptr() == thwc.data_ptr()
    per_frame = load_frames(list(thwc.numpy()), index=0, num_frames=None, fps=None, max_frames=8)
    assert torch.equal(frames, per_frame)
    tchw = thwc.permute(0, 3, 1, 2).contiguous()
    assert torch.equal(load_frames(tchw, index=0, num_frames=None, fps=None, max_frames=8), per_frame)
    with pytest.raises(Exception, match="max_frames"):
        load_frames(thwc, index=0, num_frames=None, fps=None, max_frames=2)


@pytest.mark.parametrize("resample", ["bicubic", "bilinear", "lanczos", "hamming", "box", "nearest"])
def test_padded_resize_without_the_canvas_equals_pillow_on_the_canvas(resample, monkeypatch):
    """LLaVA's pad-to-square of a wide frame: the canvas' bands are not resampled horizontally; same bytes as Pillow
    resizing the whole canvas, for wide / tall / tiny images, down- and up-scaling, and sizes where Pillow 13 would
    shrink the height first (then the canvas is resized as is)."""
    from PIL import Image

    import hf_videollm.media.transforms as T

    rng = np.random.default_rng(11)
    sizes = [((72, 128), (33, 33)), ((45, 71), (20, 20)), ((45, 71), (90, 90)), ((3, 50), (7, 7)), ((71, 45), (20, 20)),
             ((40, 100), (10, 80)), ((40, 100), (30, 12))]
    shortcut = []
    real = T._pillow_resize
    monkeypatch.setattr(T, "_pillow_resize", lambda x, size, r: shortcut.append(x.shape[:2]) or real(x, size, r))
    for (h, w), size in sizes:
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        for channels in (3, 1):
            shape = (h, w, 3) if channels == 3 else (h, w)
            x = rng.integers(0, 256, shape, dtype=np.uint8)
            fill = np.array([122, 116, 104][:channels], np.uint8) if channels == 3 else 7
            canvas = np.empty((side, side, *shape[2:]), np.uint8)
            canvas[...] = fill
            canvas[top : top + h, left : left + w] = x
            pil = Image.fromarray(canvas, "RGB" if channels == 3 else "L")
            expected = np.asarray(pil.resize((size[1], size[0]), T._PILLOW_CODES[resample]))
            got = T._pillow_resize_padded(x, top, left, side, fill, size, resample)
            assert np.array_equal(got, expected), ((h, w), size, channels)
    if resample != "nearest":  # the wide images took the shortcut: a horizontal pass over their own rows only
        assert (72, 128) in shortcut and (3, 50) in shortcut
