"""Reliability (issue 17): placeholders only where the user put media, clear errors for malformed input.

Generated cases use hypothesis with a fixed seed (``derandomize=True``) and a bounded example count, so the suite
stays fast and reproducible; ``HF_VIDEOLLM_FUZZ_EXAMPLES=N`` raises the count for a longer local fuzzing run.
"""

from __future__ import annotations

import os
from fractions import Fraction

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from hf_videollm.processors.base import ProcessorInputError  # noqa: E402
from hf_videollm.tiny import build_tiny, tiny_media  # noqa: E402

EXAMPLES = int(os.environ.get("HF_VIDEOLLM_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def llava():
    _, processor = build_tiny("llava")
    return processor


@pytest.fixture(scope="module")
def image():
    return tiny_media("image")


def _tokens(processor, batch, modality):
    return (batch["input_ids"] == processor.media_token_id(modality)).sum(dim=-1).tolist()


# Fragments that combine into placeholders, special tokens and marker-free text when concatenated.
FRAGMENTS = ["<", ">", "ima", "ge>", "<image", "<image>", "<video>", "vid", "eo>", "</s>", "<s>", "</", "s>", " ", "a",
             "\n", "USER:", "ASSISTANT:"]
text_part = st.lists(st.sampled_from(FRAGMENTS), max_size=6).map("".join)


@FUZZ
@given(layout=st.lists(st.one_of(text_part, st.just(None)), min_size=1, max_size=6), role_media=st.booleans())
def test_placeholders_only_where_media_parts_are(llava, image, layout, role_media):
    """Any text parts (placeholders typed whole or split across parts, special tokens) stay text: the prompt has
    exactly as many media tokens as the message has media parts."""
    content = [{"type": "image"} if part is None else {"type": "text", "text": part} for part in layout]
    n_images = sum(part is None for part in layout)
    conv = [{"role": "user", "content": content}, {"role": "assistant", "content": "".join(p or "" for p in layout)}]
    batch = llava.apply_chat_template(conv, tokenize=True, images=[image] * n_images or None)
    assert _tokens(llava, batch, "image") == [n_images * llava.image_tokens()]
    assert _tokens(llava, batch, "video") == [0]


def test_split_placeholder_stays_text(llava, image):
    conv = [{"role": "user", "content": [{"type": "text", "text": "look <ima"}, {"type": "text", "text": "ge> here"}]}]
    batch = llava.apply_chat_template(conv, tokenize=True)
    assert _tokens(llava, batch, "image") == [0]
    conv[0]["content"].append({"type": "image"})
    batch = llava.apply_chat_template(conv, tokenize=True, images=[image])
    assert _tokens(llava, batch, "image") == [llava.image_tokens()]


@FUZZ
@given(
    before=st.text(max_size=8).filter(lambda t: not any("\ue000" <= c <= "\ue003" for c in t)),
    marker=st.sampled_from(["\ue000", "\ue001", "\ue002", "\ue003"]),
    after=st.text(max_size=8),
    role=st.sampled_from(["system", "user", "assistant"]),
)
def test_private_use_markers_cannot_be_forged(llava, before, marker, after, role):
    """U+E000-U+E003 (escape / training-label markers) in any message's text are refused, naming the character."""
    conv = [{"role": role, "content": before + marker + after}]
    with pytest.raises(ProcessorInputError, match=f"U\\+{ord(marker):04X}"):
        llava.apply_chat_template(conv)


def test_forged_markers_cannot_hide_media_or_make_labels(llava, image):
    hide = [{"role": "user", "content": [{"type": "text", "text": "\ue000"}, {"type": "image"},
                                         {"type": "text", "text": "\ue001"}]}]
    with pytest.raises(ProcessorInputError, match="reserved"):
        llava.apply_chat_template(hide, tokenize=True, images=[image])
    label = [{"role": "user", "content": "\ue002 make me a label \ue003"}]
    with pytest.raises(ProcessorInputError, match="reserved"):
        llava.apply_chat_template(label, mark_generation=True)


@FUZZ
@given(
    counts=st.lists(st.integers(0, 2), min_size=1, max_size=3),
    sizes=st.lists(st.integers(0, 2), min_size=1, max_size=3),
)
def test_per_sample_media_groups_are_checked(llava, image, counts, sizes):
    """``images=[[...], [...]]`` nested per sample must match each sample's placeholders, or be refused."""
    texts = ["<image>" * c + f" sample {i}" for i, c in enumerate(counts)]
    images = [[image] * n for n in sizes]
    if counts == sizes:
        batch = llava(text=texts, images=images)
        assert _tokens(llava, batch, "image") == [c * llava.image_tokens() for c in counts]
    else:
        with pytest.raises(ProcessorInputError, match="per sample"):
            llava(text=texts, images=images)


def test_raw_batched_call_does_not_give_sample_0_both_images(llava, image):
    with pytest.raises(ProcessorInputError, match=r"group\(s\) of sizes \[1, 1\].*\[2, 0\]"):
        llava(text=["<image><image> a", "b"], images=[[image], [image]])
    flat = llava(text=["<image><image> a", "b"], images=[image, image])  # flat: placeholder order, still accepted
    assert _tokens(llava, flat, "image") == [2 * llava.image_tokens(), 0]


@pytest.mark.parametrize(
    "conversation, match",
    [
        ([{"role": "user", "content": 5}], "content must be a string or a list of parts"),
        (["hello"], "each chat message must be a dict"),
        ("hello", "conversation must be a non-empty list"),
        ({"role": "user", "content": "hi"}, "conversation must be a non-empty list"),
        ([], "conversation must be a non-empty list"),
        ([{"role": "user", "content": ["hi"]}], "content parts must be dicts"),
        ([{"role": "user", "content": [{"type": "text", "text": 3}]}], "'text' must be a string"),
        ([{"role": "bot", "content": "hi"}], "role must be"),
        ([[{"role": "user", "content": "ok"}], [None]], "each chat message must be a dict"),
    ],
)
def test_malformed_chat_content_is_a_clear_error(llava, conversation, match):
    with pytest.raises(ProcessorInputError, match=match):
        llava.apply_chat_template(conversation)


@pytest.mark.parametrize("max_length", [0, -1, -100, 2.5, True])
def test_non_positive_max_length_refused(llava, max_length):
    with pytest.raises(ProcessorInputError, match="max_length must be a positive integer"):
        llava(text="hello there", max_length=max_length, truncation=True)


# ------------------------------------------------------------------------------------------ frames are what was asked
import numpy as np  # noqa: E402
from media_helpers import decoded_indices as _decoded_indices  # noqa: E402
from media_helpers import grey_ramp as _grey_ramp  # noqa: E402
from media_helpers import videollama2_frame_sample as _videollama2_frame_sample  # noqa: E402

from hf_videollm.media.video_read import VideoDecodeError, load_video  # noqa: E402
from hf_videollm.media.video_write import write_video  # noqa: E402

# MKV / WebM / MOV: tests/test_reliability_containers.py (frames selected by index at a constant frame rate).
CONTAINERS = {"mp4": None, "avi": "mpeg4", "y4m": "rawvideo"}
VIDEO_FUZZ = settings(
    max_examples=max(4, EXAMPLES // 3), derandomize=True, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)








@VIDEO_FUZZ
@given(total=st.integers(2, 30), n=st.integers(1, 12), rate=st.sampled_from([5, 10, 24, 25, 30, Fraction(30000, 1001)]),
       sampling=st.sampled_from(["uniform", "linspace", "index_midpoints", "segment_index_midpoints"]))
def test_every_container_gives_the_mp4_frames(tmp_path_factory, total, n, rate, sampling):
    """AVI / Y4M (time base = one tick per frame) return the same frames as MP4 for the same content, and
    ``index_midpoints`` is VideoLLaMA 2's own sampling in every container (MKV / WebM / MOV: the generated test of
    tests/test_reliability_containers.py)."""
    step = 255 // total
    frames = _grey_ramp(total, step)
    folder = tmp_path_factory.mktemp("containers")
    got = {}
    for ext, codec in CONTAINERS.items():
        path = folder / f"v.{ext}"
        write_video(path, frames, rate, codec=codec)
        video, meta = load_video(path, num_frames=n, sampling=sampling)
        got[ext] = _decoded_indices(video, step)
        assert got[ext] == meta.frame_indices, ext
    assert all(got[ext] == got["mp4"] for ext in CONTAINERS), got
    if sampling == "index_midpoints":
        assert got["mp4"] == _videollama2_frame_sample(total, n)


def test_avi_reproducer_matches_mp4(tmp_path):
    frames = _grey_ramp(20, 12)
    write_video(tmp_path / "r.mp4", frames, 10)
    write_video(tmp_path / "r.avi", frames, 10, codec="mpeg4")
    mp4, _ = load_video(tmp_path / "r.mp4", num_frames=8)
    avi, meta = load_video(tmp_path / "r.avi", num_frames=8)
    assert _decoded_indices(avi, 12) == _decoded_indices(mp4, 12) == [1, 3, 6, 8, 11, 13, 16, 18]
    _, meta = load_video(tmp_path / "r.avi", num_frames=8, sampling="index_midpoints")
    assert meta.frame_indices == _videollama2_frame_sample(20, 8)


# ------------------------------------------------------------------------------------------ bounded resources
@pytest.fixture(scope="module")
def short_mp4(tmp_path_factory):
    path = tmp_path_factory.mktemp("short") / "short.mp4"
    write_video(path, _grey_ramp(20, 12), 10)
    return path


@pytest.mark.parametrize("kwargs", [{"num_frames": 10**6}, {"fps": 1e9}, {"num_frames": 10**12}, {"fps": 1e300}])
def test_huge_requests_refused_before_allocating(short_mp4, kwargs):
    """Checked against the window's frame count before any target list or output array exists (a 10**12-target
    list or a 3 GB array would hang or exhaust memory first)."""
    with pytest.raises(VideoDecodeError, match="window holds about 20"):
        load_video(short_mp4, **kwargs)


@pytest.mark.parametrize("kwargs", [{"num_frames": 10**12, "max_frames": 5}, {"fps": 1e9, "max_frames": 8}])
def test_huge_requests_with_max_frames_are_resampled(short_mp4, kwargs):
    video, meta = load_video(short_mp4, **kwargs)
    assert video.shape[0] == kwargs["max_frames"]
    assert meta.frame_indices == sorted(meta.frame_indices) and meta.frame_indices[-1] >= 16  # covers the window


def test_repeating_a_few_frames_is_still_allowed(short_mp4):
    video, meta = load_video(short_mp4, num_frames=64)  # fixed num_frames on a short clip repeats frames
    assert video.shape[0] == 64 and sorted(set(meta.frame_indices)) == list(range(20))


@pytest.mark.parametrize(
    "kwargs, like",
    [({"fps": np.float32(2.0)}, {"fps": 2.0}), ({"num_frames": np.int64(5)}, {"num_frames": 5}),
     ({"num_frames": 4, "start": np.float32(0.5), "end": np.float64(1.5)}, {"num_frames": 4, "start": 0.5, "end": 1.5}),
     ({"num_frames": 9, "max_frames": np.int32(3)}, {"num_frames": 9, "max_frames": 3})],
)
def test_numpy_scalars_accepted(short_mp4, kwargs, like):
    video, meta = load_video(short_mp4, **kwargs)
    ref, ref_meta = load_video(short_mp4, **like)
    assert meta.frame_indices == ref_meta.frame_indices and torch.equal(video, ref)


# ------------------------------------------------------------------------------------------ clear errors
from hf_videollm.media.frames import load_frames  # noqa: E402
from hf_videollm.media.image_io import ImageLoadError, load_image  # noqa: E402


def test_damaged_sample_description_is_a_clear_error(tmp_path):
    """A .mov whose codec entry is damaged: FFmpeg opens it without a decoder (was AttributeError thread_type)."""
    path = tmp_path / "v.mov"
    write_video(path, _grey_ramp(10, 20), 10)
    data = bytearray(path.read_bytes())
    tag = data.find(b"avc1")
    assert tag > 0
    data[tag : tag + 4] = b"zzzz"
    path.write_bytes(bytes(data))
    with pytest.raises(VideoDecodeError, match="no decoder for its video stream"):
        load_video(path, num_frames=4)


def _frames(video):
    return load_frames(video, index=2, num_frames=None, fps=None, max_frames=None)


@pytest.mark.parametrize(
    "video, error, match",
    [
        ([], VideoDecodeError, "video 2: the video has no frames"),
        (np.zeros((0, 8, 8, 3), np.uint8), VideoDecodeError, "video 2: the video has no frames"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)], VideoDecodeError,
         "frame 0 is 8x8 .*frame 1 is 8x9"),
        (np.zeros((3, 8, 8), np.uint8), VideoDecodeError, r"grey video \(T, H, W\)\? add a channel axis"),
        (np.full((2, 8, 8, 3), 300, np.uint16), ImageLoadError, "video 2: frame 0: .*outside 0..255"),
        (torch.zeros((2, 8, 8, 3), device="meta"), ImageLoadError, "meta device"),
        (torch.zeros((2, 8, 8, 3)).to_sparse(), ImageLoadError, "sparse_coo tensor"),
    ],
)
def test_bad_frames_name_the_input(video, error, match):
    with pytest.raises(error, match=match):
        _frames(video)


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, np.uint16, np.uint32])
def test_wide_unsigned_frames_in_range_are_accepted(dtype):
    if isinstance(dtype, torch.dtype):
        video = torch.full((2, 8, 8, 3), 7, dtype=torch.int64).to(dtype)
    else:
        video = np.full((2, 8, 8, 3), 7, dtype=dtype)
    out = _frames(video)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 8, 8) and int(out.max()) == 7


@pytest.mark.parametrize("image", [np.zeros((4, 5, 2), np.uint8), np.zeros((10, 12, 2), np.uint8),
                                   torch.zeros((8, 8, 2), dtype=torch.uint8)])
def test_grey_alpha_images_refused_with_how_to_pass_them(image):
    with pytest.raises(ImageLoadError, match=r"grey \+ alpha.*x\[\.\.\., 0\]"):
        load_image(image)


def test_3d_array_as_a_video_is_ambiguous(llava):
    with pytest.raises(ProcessorInputError, match=r"ambiguous.*x\[\.\.\., None\]"):
        llava(text="<video> what", videos=np.zeros((3, 32, 32), np.uint8))



@FUZZ
@given(
    t=st.integers(1, 20), h=st.integers(2, 12), w=st.integers(2, 12), torch_tensor=st.booleans(),
    entry=st.sampled_from(["videos=[x]", "videos=[[x]]", "chat template"]),
)
def test_grey_video_wrapped_in_a_list_is_refused_in_every_entry_point(llava, t, h, w, torch_tensor, entry):
    """A grey video (T, H, W) in a list is never read as one (C, H, W) frame of T channels (which T = 1, 3, 4 used
    to be) nor fails with a bare frame-layout error: every entry point says how to pass it. (H, W, C) frames in a
    list stay accepted."""
    x = np.arange(t * h * w, dtype=np.uint8).reshape(t, h, w)
    if torch_tensor:
        x = torch.from_numpy(x)
    if w in (1, 3, 4):  # (T, H, C): a legitimate one-frame video in channels-last layout
        return
    with pytest.raises((VideoDecodeError, ProcessorInputError), match=r"ambiguous.*x\[\.\.\., None\]"):
        if entry == "videos=[x]":
            llava(text="<video> what", videos=[x])
        elif entry == "videos=[[x]]":
            llava(text=["<video> what"], videos=[[x]])
        else:
            msgs = [{"role": "user", "content": [{"type": "video", "video": [x]}, {"type": "text", "text": "what"}]}]
            llava.apply_chat_template(msgs, tokenize=True, return_dict=True)

# ------------------------------------------------------------------------------------------ crash-safe conversion
import json  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from hf_videollm.conversion import ConversionError  # noqa: E402
from hf_videollm.conversion.sources import CheckpointSource  # noqa: E402

_RELEASE = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from hf_videollm.conversion import CheckpointSource, KeyTable, Release, Rename, expected_from_model, write_converted
    from hf_videollm.modeling.llava import VideoLLMLlavaForConditionalGeneration
    from hf_videollm.tiny import build_tiny

    def release(seed, hang_marker=None):
        model, processor = build_tiny("llava", seed=seed)
        weights = {k: v for k, v in model.state_dict().items() if k in expected_from_model(model)}
        if hang_marker is not None:  # the processor is the last file written: hang there until killed
            save = processor.save_pretrained
            def hanging_save(path, *a, **k):
                save(path, *a, **k)
                Path(hang_marker).write_text(str(path))
                time.sleep(600)
            object.__setattr__(processor, "save_pretrained", hanging_save)
        return Release(VideoLLMLlavaForConditionalGeneration, model.config,
                       sources=[(CheckpointSource.from_state_dict(weights), KeyTable("same", [Rename(r"^", "")]))],
                       processor=processor, converted_from="test/tiny", converter="test")

    if __name__ == "__main__":
        out, seed, marker = sys.argv[1], int(sys.argv[2]), (sys.argv[3] if len(sys.argv) > 3 else None)
        write_converted(release(seed, marker), out, progress=False)
''')


def _convert_and_kill(tmp_path: Path, out: Path, seed: int) -> Path:
    """Run a conversion in a subprocess, SIGKILL it while it writes the processor (weights and config already in
    staging); returns the staging dir it was writing."""
    script = tmp_path / "convert_release.py"
    script.write_text(_RELEASE)
    marker = tmp_path / f"hang-{seed}"
    _run_and_kill(script, [out, seed], marker, "the conversion never reached the processor")
    return Path(marker.read_text())


def _run_and_kill(script: Path, args: list, marker: Path, never: str, timeout: float = 300) -> None:
    """Run ``script args... marker`` in a subprocess until it writes ``marker`` (it then hangs where the test wants
    it), and SIGKILL it there."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), *map(str, args), str(marker)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, never
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _load_script(tmp_path):
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib

        return importlib.import_module("convert_release")
    finally:
        sys.path.remove(str(tmp_path))


def test_kill_9_during_conversion_leaves_old_or_nothing(tmp_path, caplog):
    from hf_videollm.conversion import write_converted
    from hf_videollm.modeling.llava import VideoLLMLlavaForConditionalGeneration

    out = tmp_path / "out"
    staging = _convert_and_kill(tmp_path, out, seed=1)
    assert staging.parent == tmp_path and ".out.converting-" in staging.name and staging.is_dir()
    assert (staging / "config.json").is_file()  # config is written before the swap, not after
    assert not out.exists()  # killed before the swap: no output at all, not a half one
    # the next run removes the dead run's staging dir, says so, and writes a complete output
    mod = _load_script(tmp_path)
    with caplog.at_level("WARNING", logger="hf_videollm.conversion.engine"):
        write_converted(mod.release(seed=2), out, progress=False)
    assert not staging.exists() and "left incomplete by a killed conversion" in caplog.text
    assert {"config.json", "model.safetensors", "processor_config.json"} <= set(os.listdir(out))
    first = {f: (out / f).read_bytes() for f in os.listdir(out) if (out / f).is_file()}
    # re-conversion into the existing output killed mid-way: the old output is untouched, file for file
    _convert_and_kill(tmp_path, out, seed=3)
    assert {f: (out / f).read_bytes() for f in os.listdir(out) if (out / f).is_file()} == first
    VideoLLMLlavaForConditionalGeneration.from_pretrained(out)


def test_swap_interrupted_between_renames_is_restored(tmp_path, caplog):
    from hf_videollm.conversion.engine import _clean_stale_staging

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    aside = tmp_path / f".out.replaced-{dead.pid}-abc"
    (aside / "old").mkdir(parents=True)
    (aside / "old" / "config.json").write_text("{}")
    new = tmp_path / f".out.converting-{dead.pid}-def"
    new.mkdir()
    (new / "model.safetensors").write_text("partial")
    with caplog.at_level("WARNING", logger="hf_videollm.conversion.engine"):
        _clean_stale_staging(out)
    assert os.listdir(out) == ["config.json"] and not aside.exists() and not new.exists()
    assert "restored" in caplog.text
    live = tmp_path / f".out.converting-{os.getppid()}-ghi"  # a running process's staging dir is left alone
    live.mkdir()
    _clean_stale_staging(out)
    assert live.exists()


@pytest.mark.parametrize("shard", ["/etc/passwd", "../outside.safetensors", "sub/../../x.safetensors",
                                   "..\\\\x.safetensors"])
def test_shard_index_pointing_outside_is_refused(tmp_path, shard):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": shard}}))
    with pytest.raises(ConversionError, match="points outside its directory"):
        CheckpointSource.open(ckpt)


# ------------------------------------------------------------------------------------------ crash-safe checkpoints
_TRAIN_KILLED_IN_SAVE = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from hf_videollm.training import TrainConfig, train
    from hf_videollm.training.trainer import VideoLLMTrainer

    save_rng = VideoLLMTrainer._save_rng_state
    def hang_in_second_save(self, output_dir):
        save_rng(self, output_dir)
        if self.state.global_step == 4:  # model + optimizer of checkpoint-4 are on disk, trainer state is not
            Path(sys.argv[3]).write_text(output_dir)
            time.sleep(600)
    VideoLLMTrainer._save_rng_state = hang_in_second_save
    train(TrainConfig(model="tiny:llava", data=[sys.argv[1]], output_dir=sys.argv[2], stage="stage2", max_steps=6,
                      save_steps=2, per_device_train_batch_size=2, learning_rate=1e-3))
''')


def _dataset(tmp_path, n=8):
    rows = [{"messages": [{"role": "user", "content": [{"type": "image", "path": str(tmp_path / f"{i}.png")},
                                                       {"type": "text", "text": f"what is {i}"}]},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(n)]
    from PIL import Image

    for i in range(n):
        Image.fromarray(np.full((20, 20, 3), i * 20, np.uint8)).save(tmp_path / f"{i}.png")
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_kill_9_during_checkpoint_save_is_skipped_by_resume_and_export(tmp_path, caplog):
    from hf_videollm.training import TrainConfig, train
    from hf_videollm.training.checkpoints import COMPLETE_MARKER, resolve_resume
    from hf_videollm.training.export import export_model

    data = _dataset(tmp_path)
    run, marker = tmp_path / "run", tmp_path / "hang"
    script = tmp_path / "train_killed.py"
    script.write_text(_TRAIN_KILLED_IN_SAVE)
    _run_and_kill(script, [data, run], marker, "the run never reached checkpoint-4's save")
    done, broken = run / "checkpoint-2", run / "checkpoint-4"
    assert (done / COMPLETE_MARKER).is_file() and (broken / "model.safetensors").is_file()
    assert not (broken / COMPLETE_MARKER).exists()  # looks loadable, but is not complete
    with caplog.at_level("WARNING", logger="hf_videollm.training.checkpoints"):
        assert resolve_resume(True, run) == str(done)
    assert "skipping" in caplog.text and "checkpoint-4" in caplog.text
    with pytest.raises(ValueError, match="checkpoint-4 is incomplete"):
        resolve_resume(str(broken), run)
    with pytest.raises(FileNotFoundError, match=r"checkpoint-4 is incomplete.*\['checkpoint-2'\]"):
        export_model(broken, tmp_path / "export")
    # resuming picks checkpoint-2 and finishes the run
    train(TrainConfig(model="tiny:llava", data=[str(data)], output_dir=str(run), stage="stage2", max_steps=6,
                      save_steps=2, per_device_train_batch_size=2, learning_rate=1e-3, resume_from_checkpoint=True))
    assert (run / "model.safetensors").is_file() and (run / "checkpoint-6" / COMPLETE_MARKER).is_file()


_TRAIN_KILLED_IN_FINAL_SAVE = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    from hf_videollm.training import TrainConfig, train
    from hf_videollm.training import checkpoints

    replace = os.replace
    def hang_after_the_weights(src, dst):
        replace(src, dst)
        if Path(dst).name == "model.safetensors" and Path(dst).parent == Path(sys.argv[2]):
            Path(sys.argv[3]).write_text(str(dst))  # new weights in place, old config/processor/metadata around them
            time.sleep(600)
    checkpoints.os.replace = hang_after_the_weights
    train(TrainConfig(model="tiny:llava", data=[sys.argv[1]], output_dir=sys.argv[2], stage="stage2", max_steps=4,
                      save_steps=2, per_device_train_batch_size=2, learning_rate=1e-3, resume_from_checkpoint=True))
''')


def test_kill_9_during_the_final_save_is_refused_by_every_loader(tmp_path):
    """The run's final model is published under a sentinel: killed half-way, the run dir (new weights, the previous
    run's config and metadata) is refused by export, push and from_pretrained, naming the complete checkpoints; the
    next run finishes it."""
    from transformers import AutoModelForImageTextToText

    from hf_videollm.training import TrainConfig, train
    from hf_videollm.training.checkpoints import COMPLETE_MARKER, FINAL_INCOMPLETE
    from hf_videollm.training.export import export_model
    from hf_videollm.training.hub import push_to_hub

    data = _dataset(tmp_path)
    run, marker = tmp_path / "run", tmp_path / "hang"
    cfg = dict(model="tiny:llava", data=[str(data)], output_dir=str(run), stage="stage2", save_steps=2,
               per_device_train_batch_size=2, learning_rate=1e-3)
    train(TrainConfig(max_steps=2, **cfg))  # a complete earlier final save
    assert (run / "model.safetensors").is_file() and not (run / FINAL_INCOMPLETE).exists()
    script = tmp_path / "train_killed_final.py"
    script.write_text(_TRAIN_KILLED_IN_FINAL_SAVE)
    _run_and_kill(script, [data, run], marker, "the run never reached its final save")
    assert (run / FINAL_INCOMPLETE).is_file() and (run / "checkpoint-4" / COMPLETE_MARKER).is_file()
    named = r"final save was interrupted.*checkpoint-2, .*checkpoint-4\)"
    with pytest.raises(OSError, match=named):
        export_model(run, tmp_path / "export")
    with pytest.raises(OSError, match=named):
        push_to_hub(run, "user/never-pushed")
    with pytest.raises(OSError, match=named):
        AutoModelForImageTextToText.from_pretrained(run)
    export_model(run / "checkpoint-4", tmp_path / "export")  # the complete checkpoint named in the message works
    # the next run (resuming from checkpoint-4) publishes a complete final model again
    train(TrainConfig(max_steps=6, resume_from_checkpoint=True, **cfg))
    assert not (run / FINAL_INCOMPLETE).exists() and not (run / ".final-save").exists()
    assert json.loads((run / "hf_videollm_training.json").read_text())["hyperparameters"]["max_steps"] == 6
    AutoModelForImageTextToText.from_pretrained(run)


# ------------------------------------------------------------------------------------------ training data
from hf_videollm.training.data import DataFileError, VideoLLMDataset, load_records  # noqa: E402


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "the file is empty"),
        (b"  \n\n", "the file is empty"),
        (b"[]", "empty list: no records"),
        (b'{"messages": []}\n{"x"\n', "line 2 column 5: invalid JSON"),
        (b'{"a": "\xff"}\n', "line 1: not UTF-8 .*0xff"),
        (b"[1, 2]", "record 0 is int, expected an object"),
        (b"5\n", "line 1: a record must be a JSON object"),
        (b'[{"messages": [}]', "line 1 column 16: invalid JSON"),
    ],
)
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_bad_data_files_are_one_clear_line(tmp_path, content, match, suffix):
    path = tmp_path / f"data{suffix}"
    path.write_bytes(content)
    with pytest.raises(DataFileError, match=match) as e:
        load_records(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


_GOOD_JSONL = b"".join(
    json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}).encode()
    + b"\n" for i in range(3)
)


@settings(max_examples=max(10, EXAMPLES // 2), derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(cut=st.integers(0, len(_GOOD_JSONL)), noise=st.binary(max_size=6), at=st.integers(0, len(_GOOD_JSONL)))
def test_damaged_jsonl_never_gives_a_traceback(tmp_path_factory, cut, noise, at):
    """Truncated / corrupted JSON Lines either load (every record an object) or raise one DataFileError line."""
    data = _GOOD_JSONL[:cut]
    data = data[:at] + noise + data[at:]
    path = tmp_path_factory.mktemp("fuzz") / "data.jsonl"
    path.write_bytes(data)
    try:
        records = load_records(path)
    except DataFileError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)
    else:
        assert len(records) >= 1


def test_undecodable_and_empty_media_listed_before_training(tmp_path):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video at all" * 10)
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    write_video(tmp_path / "ok.mp4", _grey_ramp(4, 40), 4)

    def sample(kind, name):
        return {"messages": [{"role": "user", "content": [{"type": kind, "path": str(tmp_path / name)},
                                                          {"type": "text", "text": "what"}]},
                             {"role": "assistant", "content": "that"}]}

    records = [sample("image", "good.png"), sample("video", "empty.mp4"), sample("video", "junk.mp4"),
               sample("image", "junk.png"), sample("video", "ok.mp4")]
    from hf_videollm.training.data import InvalidDataError

    with pytest.raises(InvalidDataError) as e:
        VideoLLMDataset(records)
    msg = str(e.value)
    assert "3 of 5 training samples are invalid" in msg
    assert "sample 1: video file" in msg and "empty file (0 bytes)" in msg
    assert "sample 2: video file" in msg and "sample 3: image file" in msg and "cannot be decoded" in msg
    kept = VideoLLMDataset(records, skip_invalid=True)
    assert kept.indices == [0, 4]


def test_export_is_swapped_in_whole(tmp_path, monkeypatch):
    """export_model writes + verifies in a staging dir: a failure (or kill) before the swap leaves the old output
    file for file; a later export replaces it whole and removes a dead run's staging dir."""
    from hf_videollm.training import export as export_mod
    from hf_videollm.training.export import export_model

    model, processor = build_tiny("llava")
    src = tmp_path / "trained"
    model.save_pretrained(src)
    processor.save_pretrained(src)
    out = tmp_path / "exported"
    out.mkdir()
    (out / "README.md").write_text("keep me")
    (out / "model.safetensors").write_text("old weights")

    def fail(path, dtype):
        raise RuntimeError("simulated crash before the swap")

    monkeypatch.setattr(export_mod, "_verify", fail)
    with pytest.raises(RuntimeError, match="simulated crash"):
        export_model(src, out, dtype="float32")
    assert sorted(os.listdir(out)) == ["README.md", "model.safetensors"]
    assert (out / "model.safetensors").read_text() == "old weights"
    assert [p.name for p in tmp_path.iterdir() if ".exporting-" in p.name] == []
    monkeypatch.undo()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".exported.exporting-{dead.pid}-x").mkdir()  # left by a killed export
    export_model(src, out, dtype="float32")
    assert (out / "README.md").read_text() == "keep me" and (out / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".exported.")] == []


# ------------------------------------------------------------------------------------------ truncated files
def _fragmented_mp4(path: Path, frames: np.ndarray, rate: int = 10) -> bytes:
    import av

    with av.open(str(path), "w", options={"movflags": "frag_keyframe+empty_moov"}) as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.codec_context.gop_size = 5
        for a in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path.read_bytes()


@pytest.fixture(scope="module")
def fragmented(tmp_path_factory):
    path = tmp_path_factory.mktemp("frag") / "full.mp4"
    return _fragmented_mp4(path, np.repeat(np.repeat(_grey_ramp(40, 6), 2, axis=1), 2, axis=2))  # 32x32


def test_truncated_fragmented_mp4_warns_and_says_so_in_metadata(tmp_path, fragmented, caplog):
    path = tmp_path / "cut.mp4"
    path.write_bytes(fragmented[: int(len(fragmented) * 0.8)])
    with caplog.at_level("WARNING", logger="hf_videollm.media.video_read"):
        video, meta = load_video(path, num_frames=8)
    assert meta.corrupt_packets > 0 and "flagged" in caplog.text and "truncated" in caplog.text
    assert meta.total_frames < 40
    full = tmp_path / "full.mp4"
    full.write_bytes(fragmented)
    caplog.clear()
    _, meta = load_video(full, num_frames=8)
    assert meta.corrupt_packets == 0 and "flagged" not in caplog.text


@VIDEO_FUZZ
@given(keep=st.floats(0.05, 1.0))
def test_truncated_video_is_refused_or_flagged(tmp_path_factory, fragmented, keep):
    """Cut anywhere: refused with VideoDecodeError, or returned with corrupt_packets > 0, or (nothing flagged) every
    returned frame is the frame its metadata names."""
    path = tmp_path_factory.mktemp("cut") / "cut.mp4"
    path.write_bytes(fragmented[: max(1, int(len(fragmented) * keep))])
    try:
        video, meta = load_video(path, num_frames=8)
    except VideoDecodeError:
        return
    if meta.corrupt_packets == 0:
        assert _decoded_indices(video, 6) == meta.frame_indices


@pytest.fixture(scope="module")
def faststart(tmp_path_factory):
    import av

    path = tmp_path_factory.mktemp("faststart") / "full.mp4"
    frames = np.repeat(np.repeat(_grey_ramp(40, 6), 2, axis=1), 2, axis=2)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:  # index first: it promises all 40 frames
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 32, 32, "yuv420p"
        s.codec_context.gop_size = 5
        for a in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path.read_bytes()


@pytest.mark.parametrize("keep", [0.8, 0.95])
@pytest.mark.parametrize("kwargs", [{"num_frames": 8}, {"num_frames": 8, "mode": "keyframe"}, {"fps": 2.0}])
def test_indexed_mp4_missing_its_last_frames_is_refused_in_every_mode(tmp_path, faststart, keep, kwargs):
    """Exact and keyframe mode agree: an index promising frames that are not there is refused (keyframe mode
    returned frame 0 for the later targets before)."""
    path = tmp_path / "cut.mp4"
    path.write_bytes(faststart[: int(len(faststart) * keep)])
    with pytest.raises(VideoDecodeError, match="ends at .* but its header declares 4.00s"):
        load_video(path, **kwargs)
