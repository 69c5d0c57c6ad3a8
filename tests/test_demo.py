"""The main job: ``hf-videollm demo`` / ``bench-synthetic`` train a tiny video model that must use time.

The full demo (default settings) is run by the README's first command and recorded in bench/RESULTS.md; here a
shortened run checks that training through the package's own Trainer path learns a kind that needs several frames
(``order``) while the single-frame baseline of the same model stays near chance, and that the whole demo path
(train -> save -> reload with the Auto classes in a fresh process -> generate on a new file -> report) works.
"""

from __future__ import annotations

import json

import pytest

from hf_videollm.demo import BenchSettings, check_targets, format_table, run_benchmark


def test_shortened_benchmark_learns_to_use_time(tmp_path):
    report = run_benchmark(
        BenchSettings(kinds=["order"], train_per_kind=400, test_per_kind=80, max_steps=300,
                      workdir=str(tmp_path), progress=False)
    )
    acc = report["accuracy"]
    # the clip: learned (chance is 50 %); one frame: the middle frame shows either colour with equal probability
    assert acc["video"]["order"] >= 0.85, report
    assert acc["single_frame"]["order"] <= 0.70, report
    assert report["train_loss"]["last"] < report["train_loss"]["first"]
    # per answer: 80 balanced questions = 20 per colour, so the mean over answers is the kind's accuracy
    by_answer = acc["video_by_answer"]["order"]
    assert set(by_answer) == {"red", "green", "blue", "yellow"}
    assert sum(by_answer.values()) / 4 == pytest.approx(acc["video"]["order"])
    assert (tmp_path / "model" / "config.json").is_file()


def test_videollama2_stc_connector_learns_motion_direction(tmp_path):
    """VideoLLaMA 2's STC connector (Conv3d over pairs of frames) learns motion direction from scratch, which the
    middle frame cannot tell (torus scene). About 100 s on 2 cores; bench/RESULTS.md has the full-size runs."""
    report = run_benchmark(
        BenchSettings(model="videollama2", kinds=["direction"], train_per_kind=1000, test_per_kind=60, max_steps=800,
                      workdir=str(tmp_path), progress=False)
    )
    acc = report["accuracy"]
    assert acc["video"]["direction"] >= 0.80, report  # chance 25 %; measured 93 % (100 held-out videos)
    assert acc["single_frame"]["direction"] <= 0.45, report


def test_demo_command_runs_the_whole_path(tmp_path, capsys):
    from hf_videollm.cli import main

    report = tmp_path / "report.json"
    rc = main(["demo", "--workdir", str(tmp_path / "w"), "--report", str(report), "--train-per-kind", "8",
               "--test-per-kind", "4", "--max-steps", "3", "--quiet"])
    assert rc == 0
    data = json.loads(report.read_text())
    out = capsys.readouterr().out
    # every video kind is evaluated with the clip and the single-frame baseline and printed in the table
    assert set(data["accuracy"]["video"]) == {"appearance", "direction", "order", "count"}
    assert set(data["accuracy"]["single_frame"]) == set(data["accuracy"]["video"])
    assert "1 frame" in out and "direction" in out
    # new video files, answered by the reloaded model in a fresh process
    assert len(data["new_videos"]) == 4
    for item in data["new_videos"]:
        assert (tmp_path / "w" / "new_videos").is_dir() and item["video"].endswith(".mp4")
        assert isinstance(item["answer"], str) and item["expected"]
    assert (tmp_path / "w" / "model" / "model.safetensors").is_file()
    assert data["seconds"]["total"] > 0 and "targets" in data


def test_strict_demo_fails_when_targets_are_missed(tmp_path):
    from hf_videollm.cli import main

    # 2 steps cannot reach the targets: --strict turns that into exit code 1
    rc = main(["demo", "--workdir", str(tmp_path), "--kinds", "direction", "--train-per-kind", "4",
               "--test-per-kind", "4", "--max-steps", "2", "--quiet", "--strict"])
    assert rc == 1


@pytest.mark.parametrize(
    "settings, message",
    [
        (BenchSettings(model="nope"), "no tiny model named 'nope'"),
        (BenchSettings(kinds=["colour"]), "unknown kind"),
        (BenchSettings(kinds=["pitch"]), "hears no audio"),
        (BenchSettings(num_frames=32), "more than the 16 frames"),
        (BenchSettings(max_steps=0), "max_steps must be >= 1"),
        (BenchSettings(train_per_kind=0), "train_per_kind must be >= 1 for every kind, got 0 for 'appearance'"),
        (BenchSettings(kinds=["order"], train_per_kind={"direction": 5}), r"names kind\(s\) \['direction'\]"),
    ],
)
def test_bad_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        settings.resolve()


def test_training_counts_per_kind():
    from hf_videollm.demo import parse_per_kind
    from hf_videollm.tiny import TINY_BUILDERS

    preset = TINY_BUILDERS["llava"].demo
    default = BenchSettings().resolve().train_per_kind
    assert default == {k: preset.train_counts.get(k, preset.train_per_kind) for k in default}
    # kind=count pairs update the preset's counts; one count replaces them all
    updated = BenchSettings(train_per_kind=parse_per_kind("order=7, count=9")).resolve().train_per_kind
    assert updated == {**default, "order": 7, "count": 9}
    assert BenchSettings(train_per_kind=parse_per_kind("12")).resolve().train_per_kind == dict.fromkeys(default, 12)
    with pytest.raises(ValueError, match="give one count"):
        parse_per_kind("order=many")


def test_targets_and_table():
    acc = {
        "video": {"appearance": 0.97, "direction": 0.85, "order": 1.0},
        "single_frame": {"appearance": 0.97, "direction": 0.26, "order": 0.70},
        "chance": {"appearance": 1 / 3, "direction": 0.25, "order": 0.5},
        "count": {"appearance": 100.0, "direction": 100.0, "order": 100.0},
    }
    got = {(t["kind"], t["what"]): t["met"] for t in check_targets(acc)}
    assert got == {
        ("appearance", "video >="): True,
        ("direction", "video >="): False,
        ("order", "video >="): True,
        ("direction", "single frame <="): True,
        ("order", "single frame <="): False,
    }
    table = format_table(acc)
    assert "85.0%" in table and "26.0%" in table and table.count("\n") == 3
