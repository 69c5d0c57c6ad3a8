"""Tests for hf_videollm.synthetic: determinism, files, balance, split seeds and "a single frame does not answer"."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_videollm import synthetic as S
from hf_videollm.media import load_audio, load_video, write_video

T = 16
MID = T // 2


# ----------------------------------------------------------------------------------------------------------------------
# Feature extraction from frames (what a trivial "model" could read from pixels)
# ----------------------------------------------------------------------------------------------------------------------


def object_mask(frame: np.ndarray) -> np.ndarray:
    """Pixels of a coloured object: the background never gets above ~80, object colours have a channel >= 200."""
    return np.asarray(frame).max(axis=-1) > 110


def circular_position(frame: np.ndarray) -> tuple[float, float] | None:
    """Object centre (x, y) by circular mean (correct for objects split across the wrap-around edges)."""
    mask = object_mask(frame)
    if mask.sum() < 5:
        return None
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    out = []
    for coords, n in ((xs, w), (ys, h)):
        ang = 2 * np.pi * (coords + 0.5) / n
        out.append(float(np.arctan2(np.sin(ang).mean(), np.cos(ang).mean()) % (2 * np.pi) * n / (2 * np.pi)))
    return out[0], out[1]


def visible_color(frame: np.ndarray) -> str | None:
    mask = object_mask(frame)
    if mask.sum() < 5:
        return None
    mean = np.asarray(frame)[mask].astype(float).mean(axis=0)
    return min(S.COLORS, key=lambda c: float(np.sum((np.array(S.COLORS[c]) - mean) ** 2)))


def histogram_classifier(train_x: list, train_y: list, test_x: list) -> list:
    """Bayes classifier over a discrete feature: predict the most frequent training label of the feature value."""
    table: dict = {}
    for x, y in zip(train_x, train_y, strict=True):
        table.setdefault(x, Counter())[y] += 1
    prior = Counter(train_y).most_common(1)[0][0]
    return [table[x].most_common(1)[0][0] if x in table else prior for x in test_x]


def nearest_centroid(train_x: np.ndarray, train_y: list, test_x: np.ndarray) -> list:
    labels = sorted(set(train_y))
    ys = np.array(train_y)
    centroids = np.stack([train_x[ys == c].mean(axis=0) for c in labels])
    d = ((test_x[:, None, :] - centroids[None]) ** 2).sum(-1)
    return [labels[i] for i in d.argmin(axis=1)]


def accuracy(pred: list, truth: list) -> float:
    return float(np.mean([p == t for p, t in zip(pred, truth, strict=True)]))


def balanced_samples(kind: str, n: int, offset: int = 0) -> list[tuple]:
    classes = S.answer_classes(kind)
    return [S.make_sample(kind, offset + i, answer=classes[i % len(classes)]) for i in range(n)]


# ----------------------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """3 samples of every kind (video + audio kinds), written as MP4."""
    out = tmp_path_factory.mktemp("synthetic")
    return S.generate_dataset(out, split="test", samples_per_kind=3, kinds=S.KINDS, seed=7)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------------------------
# Determinism, API, vocabulary
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", S.KINDS)
def test_deterministic_by_seed(kind):
    a = S.make_sample(kind, 123)
    b = S.make_sample(kind, 123)
    c = S.make_sample(kind, 124)
    assert a[0].dtype == np.uint8 and a[0].shape == (T, 64, 64, 3)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[2:] == b[2:]
    if kind in S.KINDS_AUDIO:
        assert a[1].dtype == np.float32 and a[1].shape == (2 * S.AUDIO_RATE,)
        np.testing.assert_array_equal(a[1], b[1])
        assert np.abs(a[1]).max() <= 1.0
    else:
        assert a[1] is None
        assert S.make_sample(kind, 123, audio=True)[1].shape == (2 * S.AUDIO_RATE,)
    assert not np.array_equal(a[0], c[0])
    # dark background, never pure black
    assert (a[0] == 0).mean() < 1e-3 and 15 < np.median(a[0]) < 70


@pytest.mark.parametrize("kind", S.KINDS)
def test_forced_answer_only_changes_the_answer_part(kind):
    for answer in S.answer_classes(kind):
        frames, _, question, got, choices, meta = S.make_sample(kind, 5, answer=answer)
        assert got == answer and answer in choices
    with pytest.raises(ValueError, match="not a"):
        S.make_sample(kind, 5, answer="purple")


def test_questions_and_answers_use_the_vocabulary():
    vocab = set(S.VOCABULARY)
    assert S.VOCABULARY == sorted(vocab)
    seen = set()
    for kind in S.KINDS:
        for i, forced in enumerate(S.answer_classes(kind) * 3):
            _, _, question, answer, choices, _ = S.make_sample(kind, i, answer=forced)
            assert answer in choices and answer == answer.lower() and S.words(answer) == [answer]
            assert all(len(S.words(c)) == 1 for c in choices)
            tokens = S.words(question) + [answer] + choices
            assert set(tokens) <= vocab, set(tokens) - vocab
            seen.update(tokens)
    assert seen == vocab  # nothing in the vocabulary is unreachable


def test_other_sizes_and_lengths():
    for kind in S.KINDS:
        frames, wave, *_ = S.make_sample(kind, 1, size=(32, 48), num_frames=8, fps=4)
        assert frames.shape == (8, 32, 48, 3)
        if wave is not None:
            assert wave.shape == (2 * S.AUDIO_RATE,)
    for k, word in enumerate(S.NUMBER_WORDS, 1):
        frames, *_ = S.make_sample("count", 3, size=32, num_frames=8, answer=word)
        assert count_flashes(frames) == k


def test_invalid_arguments():
    with pytest.raises(ValueError, match="unknown kind"):
        S.make_sample("colour", 0)
    with pytest.raises(ValueError, match="even"):
        S.make_sample("direction", 0, size=63)
    with pytest.raises(ValueError, match="num_frames"):
        S.make_sample("direction", 0, num_frames=4)
    with pytest.raises(ValueError, match="audio kinds need"):
        S.make_sample("beeps", 0, num_frames=8, fps=16)
    with pytest.raises(ValueError, match="split"):
        S.sample_seed(0, "dev", "count", 0)
    with pytest.raises(ValueError, match="audio=False"):
        next(S.build_samples(split="train", samples_per_kind=1, kinds=["pitch"], audio=False))


def test_single_frame_baseline():
    frames = S.make_sample("direction", 3)[0]
    out = S.single_frame_baseline(frames)
    assert out.shape == frames.shape and out.dtype == frames.dtype
    assert all(np.array_equal(f, frames[MID]) for f in out)
    tout = S.single_frame_baseline(torch.from_numpy(frames))
    assert isinstance(tout, torch.Tensor) and torch.equal(tout, torch.from_numpy(out))


# ----------------------------------------------------------------------------------------------------------------------
# Datasets: balance, seeds, files
# ----------------------------------------------------------------------------------------------------------------------


def test_answers_balanced_within_each_kind(tmp_path):
    path = S.generate_dataset(tmp_path, split="train", samples_per_kind=10, kinds=S.KINDS, write_files=False)
    rows = read_rows(path)
    assert len(rows) == 10 * len(S.KINDS)
    assert not (tmp_path / "train" / "videos").exists()
    for kind in S.KINDS:
        counts = Counter(r["answer"] for r in rows if r["kind"] == kind)
        assert set(counts) == set(S.answer_classes(kind))
        assert max(counts.values()) - min(counts.values()) <= 1, (kind, counts)
        answers = [r["answer"] for r in rows if r["kind"] == kind]
        assert answers != sorted(answers)  # shuffled
    # deterministic: same arguments, same rows
    again = S.generate_dataset(tmp_path / "again", split="train", samples_per_kind=10, kinds=S.KINDS, write_files=False)
    assert read_rows(again) == rows


def test_counts_per_kind(tmp_path):
    counts = {"direction": 6, "order": 2, "count": 0}
    path = S.generate_dataset(tmp_path, split="train", samples_per_kind=counts, kinds=list(counts), write_files=False)
    assert Counter(r["kind"] for r in read_rows(path)) == {"direction": 6, "order": 2}
    # a kind's samples do not depend on the other kinds' counts
    alone = S.generate_dataset(tmp_path / "alone", split="train", samples_per_kind=6, kinds=["direction"],
                               write_files=False)
    assert read_rows(alone) == [r for r in read_rows(path) if r["kind"] == "direction"]
    with pytest.raises(ValueError, match=r"missing \['order'\], not asked for \['pitch'\]"):
        next(S.build_samples(split="train", samples_per_kind={"direction": 1, "pitch": 1}, kinds=["direction", "order"]))
    with pytest.raises(ValueError, match=r"samples_per_kind\['order'\] must be a non-negative integer"):
        next(S.build_samples(split="train", samples_per_kind={"order": -1}, kinds=["order"]))


def test_train_and_test_seeds_disjoint():
    seeds = {split: [S.sample_seed(0, split, kind, i) for kind in S.KINDS for i in range(2000)] for split in S.SPLITS}
    for split, values in seeds.items():
        assert len(set(values)) == len(values)
        assert {v % 3 for v in values} == {S.SPLITS.index(split)}
        assert all(0 <= v < 2**53 for v in values)
    assert not set(seeds["train"]) & set(seeds["test"])
    assert not set(seeds["train"]) & set(seeds["val"])
    # also through datasets, and for different base seeds
    train = [s.seed for s in S.build_samples(split="train", samples_per_kind=5, seed=1)]
    test = [s.seed for s in S.build_samples(split="test", samples_per_kind=5, seed=1)]
    other = [s.seed for s in S.build_samples(split="train", samples_per_kind=5, seed=2)]
    assert train == [S.sample_seed(1, "train", k, i) for k in S.KINDS_VIDEO for i in range(5)]
    assert not set(train) & set(test)
    assert not set(train) & set(other)


def test_jsonl_rows_and_files(dataset):
    rows = read_rows(dataset)
    assert len(rows) == 3 * len(S.KINDS)
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert list(r) == ["id", "kind", "answer", "choices", "seed", "messages"]
        user, assistant = r["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        video, text = user["content"]
        assert video["type"] == "video" and text["type"] == "text"
        assert video["video"] == f"videos/{r['kind']}_{r['id'].rsplit('_', 1)[1]}.mp4"
        assert (dataset.parent / video["video"]).is_file()
        assert assistant["content"] == [{"type": "text", "text": r["answer"]}]
        assert r["answer"] in r["choices"]
        assert text["text"].endswith("Answer with one word.")
    # readable by `datasets` (the training data loader) despite the varying content parts
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("json", data_files=str(dataset), split="train")
    assert len(ds) == len(rows) and ds[0]["messages"][0]["content"][0]["video"].startswith("videos/")


def test_written_video_matches_generated_frames(dataset):
    for r in read_rows(dataset):
        frames, wave, question, *_ = S.make_sample(r["kind"], r["seed"], answer=r["answer"])
        assert question == r["messages"][0]["content"][1]["text"]
        video, meta = load_video(dataset.parent / r["messages"][0]["content"][0]["video"])
        assert video.shape == (T, 64, 64, 3) and meta.total_frames == T
        assert abs(meta.fps - 8) < 1e-6
        mad = np.abs(video.numpy().astype(np.int16) - frames.astype(np.int16)).mean()
        assert mad < 8, (r["id"], mad)
        if r["kind"] in S.KINDS_AUDIO:
            audio, rate = load_audio(dataset.parent / r["messages"][0]["content"][0]["video"])
            assert rate == S.AUDIO_RATE and abs(len(audio) - len(wave)) < 0.05 * S.AUDIO_RATE


def test_written_files_are_reproducible(dataset, tmp_path):
    again = S.generate_dataset(tmp_path, split="test", samples_per_kind=3, kinds=S.KINDS, seed=7)
    assert again.read_bytes() == dataset.read_bytes()
    for r in read_rows(dataset):  # identical bytes (one encoder thread; x264 with threads is not reproducible)
        rel = r["messages"][0]["content"][0]["video"]
        assert (again.parent / rel).read_bytes() == (dataset.parent / rel).read_bytes(), rel


def test_worker_processes_write_the_same_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "_MIN_CHUNK", 4)  # so that 16 samples are split over two worker processes
    kw = dict(split="train", samples_per_kind={"order": 9, "count": 7}, kinds=["order", "count"], seed=3)
    calls = {1: [], 2: []}
    one = S.generate_dataset(tmp_path / "one", progress=lambda *a: calls[1].append(a), **kw)
    two = S.generate_dataset(tmp_path / "two", workers=2, progress=lambda *a: calls[2].append(a), **kw)
    assert two.read_bytes() == one.read_bytes()
    for seen in calls.values():  # progress in order, more than one step, ending with every sample done
        done = [d for d, _ in seen]
        assert len(seen) > 1 and done == sorted(set(done)) and seen[-1] == (16, 16) and {t for _, t in seen} == {16}
    for r in read_rows(one):
        rel = r["messages"][0]["content"][0]["video"]
        assert (two.parent / rel).read_bytes() == (one.parent / rel).read_bytes(), rel
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        S.generate_dataset(tmp_path / "bad", workers=0, **kw)


# ----------------------------------------------------------------------------------------------------------------------
# direction: no single frame tells it, first + last frame do
# ----------------------------------------------------------------------------------------------------------------------


def cell(pos: tuple[float, float], n: int = 3, size: int = 64) -> tuple[int, int]:
    return int(pos[0] * n / size) % n, int(pos[1] * n / size) % n


def wrapped(d: float, size: int = 64) -> float:
    return (d + size / 2) % size - size / 2


def test_direction_single_frame_is_uninformative():
    samples = balanced_samples("direction", 400)
    labels = [s[3] for s in samples]
    train, test = slice(0, 200), slice(200, 400)
    positions = {t: [circular_position(s[0][t]) for s in samples] for t in (0, MID, T - 1)}
    for t, pos in positions.items():
        assert all(p is not None for p in pos)
        # the recovered position is the true one (wrap-aware)
        true = [s[5]["positions"][t] for s in samples]
        err = [max(abs(wrapped(p[0] - q[0])), abs(wrapped(p[1] - q[1]))) for p, q in zip(pos, true, strict=True)]
        assert max(err) < 2.5
        cells = [cell(p) for p in pos]
        assert len(set(cells)) == 9  # positions spread over the whole frame
        acc = accuracy(histogram_classifier(cells[train], labels[train], cells[test]), labels[test])
        assert acc < 0.40, (t, acc)  # chance = 0.25
        xy = np.array(pos)
        acc = accuracy(nearest_centroid(xy[train], labels[train], xy[test]), labels[test])
        assert acc < 0.40, (t, acc)
    # first vs last frame: the wrapped displacement gives the direction exactly
    disp = np.array(
        [[wrapped(b[0] - a[0]), wrapped(b[1] - a[1])] for a, b in zip(positions[0], positions[T - 1], strict=True)]
    )
    assert accuracy(nearest_centroid(disp[train], labels[train], disp[test]), labels[test]) == 1.0
    # colour and shape do not depend on the answer either
    for attr in ("color", "shape"):
        feats = [s[5][attr] for s in samples]
        acc = accuracy(histogram_classifier(feats[train], labels[train], feats[test]), labels[test])
        assert acc < 0.40, (attr, acc)


def test_direction_from_decoded_video(dataset):
    for r in read_rows(dataset):
        if r["kind"] != "direction":
            continue
        video, _ = load_video(dataset.parent / r["messages"][0]["content"][0]["video"])
        a, b = circular_position(video[0].numpy()), circular_position(video[-1].numpy())
        dx, dy = wrapped(b[0] - a[0]), wrapped(b[1] - a[1])
        got = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert got == r["answer"]


# ----------------------------------------------------------------------------------------------------------------------
# order: the middle frame is at chance, the sequence answers it
# ----------------------------------------------------------------------------------------------------------------------


def test_order_layouts_balance_the_middle_frame_exactly():
    for t in range(8, 65):
        m = t // 2
        for gap, layouts in S._order_layouts(t).items():
            first = sum(w1[0] <= m < w1[1] for w1, _ in layouts)
            second = sum(w2[0] <= m < w2[1] for _, w2 in layouts)
            assert first == second, (t, gap)
            assert all(0 <= w1[0] < w1[1] <= w2[0] < w2[1] <= t for w1, w2 in layouts)


def order_first_colour(frames: np.ndarray) -> str | None:
    for f in frames:
        c = visible_color(f)
        if c is not None:
            return c
    return None


def test_order_single_frame_is_uninformative():
    samples = balanced_samples("order", 400, offset=1000)
    # target: is the answer the first colour named in the question? (choices = the two named colours, chance 1/2)
    labels = [s[3] == s[4][0] for s in samples]
    train, test = slice(0, 200), slice(200, 400)
    feats, shown = [], 0
    for frames, _, _, _, choices, meta in samples:
        c = visible_color(frames[MID])
        assert c is None or c in choices
        shown += c is not None
        pos = circular_position(frames[MID])
        feats.append((None if c is None else choices.index(c), None if pos is None else cell(pos)))
        # a frame never shows both objects
        w1, w2 = (o["window"] for o in meta["objects"])
        assert w1[1] <= w2[0]
    assert shown > 0.5 * len(samples)  # the middle frame usually shows an object
    acc = accuracy(histogram_classifier(feats[train], labels[train], feats[test]), labels[test])
    assert abs(acc - 0.5) < 0.12, acc
    # the answer is always the colour of the earliest object: the sequence answers it perfectly
    assert all(order_first_colour(s[0]) == s[3] for s in samples)
    # naming order carries nothing
    named_first = [s[4][0] for s in samples]
    assert 0.4 < np.mean([a == n for a, n in zip([s[3] for s in samples], named_first, strict=True)]) < 0.6


def test_order_from_decoded_video(dataset):
    for r in read_rows(dataset):
        if r["kind"] == "order":
            video, _ = load_video(dataset.parent / r["messages"][0]["content"][0]["video"])
            assert order_first_colour(video.numpy()) == r["answer"]


# ----------------------------------------------------------------------------------------------------------------------
# count
# ----------------------------------------------------------------------------------------------------------------------


def count_flashes(frames) -> int:
    on = [int(object_mask(np.asarray(f)).sum() > 20) for f in frames]
    return sum(1 for a, b in zip([0, *on], on, strict=False) if b and not a)


def test_count_flashes_in_decoded_video(dataset, tmp_path):
    checked = 0
    for r in read_rows(dataset):
        if r["kind"] == "count":
            video, _ = load_video(dataset.parent / r["messages"][0]["content"][0]["video"])
            assert count_flashes(video.numpy()) == S.NUMBER_WORDS.index(r["answer"]) + 1
            checked += 1
    for k, word in enumerate(S.NUMBER_WORDS, 1):
        frames, *_, meta = S.make_sample("count", 40 + k, answer=word)
        path = write_video(tmp_path / f"count{k}.mp4", frames, 8)
        video, _ = load_video(path)
        assert count_flashes(video.numpy()) == k == len(meta["flashes"])
        checked += 1
    assert checked == 6


def test_count_on_time_does_not_depend_on_k():
    on_frames = {k: [] for k in (1, 2, 3)}
    for frames, *_, meta in balanced_samples("count", 150, offset=5000):
        k = meta["k"]
        assert count_flashes(frames) == k
        on = [object_mask(f).sum() > 20 for f in frames]
        on_frames[k].append(sum(on))
        assert not on[0] and not on[-1]
        runs = np.diff(np.flatnonzero(np.diff(np.r_[0, on, 0])))
        assert runs.min() >= 2  # every flash and inner gap lasts >= 2 frames
    means = [np.mean(v) for v in on_frames.values()]
    assert max(means) - min(means) < 0.5, means


# ----------------------------------------------------------------------------------------------------------------------
# audio kinds
# ----------------------------------------------------------------------------------------------------------------------


def dominant_frequency(wave: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spec) * rate / len(wave))


def count_beeps(wave: np.ndarray, rate: int) -> int:
    hop = rate // 100  # 10 ms
    n = len(wave) // hop
    rms = np.sqrt((wave[: n * hop].reshape(n, hop) ** 2).mean(axis=1))
    on = rms > 0.3 * rms.max()
    return int(np.sum(on[1:] & ~on[:-1]) + on[0])


def test_audio_kinds_decoded(dataset, tmp_path):
    files = []
    for r in read_rows(dataset):
        if r["kind"] in S.KINDS_AUDIO:
            files.append((r["kind"], r["answer"], dataset.parent / r["messages"][0]["content"][0]["video"]))
    for kind in S.KINDS_AUDIO:
        for answer in S.answer_classes(kind):
            frames, wave, *_ = S.make_sample(kind, 77, answer=answer)
            path = write_video(tmp_path / f"{kind}_{answer}.mp4", frames, 8, audio=wave, audio_rate=S.AUDIO_RATE)
            files.append((kind, answer, path))
    for kind, answer, path in files:
        wave, rate = load_audio(path)
        wave = wave.numpy()
        assert abs(len(wave) / rate - 2.0) < 0.05
        if kind == "pitch":
            f = dominant_frequency(wave, rate)
            assert ("high" if f > 700 else "low") == answer, (path, f)
            assert (1000 < f < 1400) if answer == "high" else (250 < f < 350)
        else:
            assert count_beeps(wave, rate) == S.NUMBER_WORDS.index(answer) + 1, path
