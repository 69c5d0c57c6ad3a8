"""The VideoLLaMA 2.1-AV audio front end on a 10-minute video's audio track (decode -> mono 16 kHz -> 8 clips of
2 s -> 30 s crop/pad -> Kaldi fbank -> bf16 rounding), and its parts; plus the audio tokens of 30 s.

    python bench/bench_audio_frontend.py --workdir /tmp/bench_cache --repeats 3

The video (10 min, 64x48 at 1 fps, AAC 44.1 kHz stereo tone + noise) is generated once under --workdir. Runs of the
parts are interleaved (decode, front end, fbank, decode, ...) so load drift affects them alike; medians reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def make_video(path: Path, seconds: int, rate: int = 44100) -> Path:
    from hf_videollm.media import write_video

    if path.is_file():
        return path
    t = np.arange(seconds * rate) / rate
    rng = np.random.default_rng(0)
    left = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.01 * rng.standard_normal(t.shape)
    audio = np.stack([left, 0.5 * left]).astype(np.float32)
    frames = (np.full((48, 64, 3), (i * 7) % 255, dtype=np.uint8) for i in range(seconds))
    return write_video(path, frames, fps=1, audio=audio, audio_rate=rate)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=".bench_cache")
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from hf_videollm.media.audio import kaldi_fbank, load_audio
    from hf_videollm.processors.videollama2_av import VideoAudioTrack
    from hf_videollm.tiny import build_tiny

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    video = make_video(work / f"av_{args.seconds}s.mp4", args.seconds)
    made = time.perf_counter() - t
    _, processor = build_tiny("videollama2_av", processor={"audio_seconds": 30.0})
    runs: dict[str, list[float]] = {"decode (load_audio, mono 16 kHz)": [], "front end (whole)": [],
                                    "front end (audio_seek_min_seconds=120)": [], "fbank of 30 s": []}
    wave30 = torch.zeros(480000).uniform_(-0.5, 0.5)
    for _ in range(args.repeats):
        t = time.perf_counter()
        load_audio(video)
        runs["decode (load_audio, mono 16 kHz)"].append(time.perf_counter() - t)
        t = time.perf_counter()
        feats, counts = processor._process_audios([VideoAudioTrack(str(video))])
        runs["front end (whole)"].append(time.perf_counter() - t)
        processor.audio_seek_min_seconds = 120.0
        t = time.perf_counter()
        processor._process_audios([VideoAudioTrack(str(video))])
        runs["front end (audio_seek_min_seconds=120)"].append(time.perf_counter() - t)
        processor.audio_seek_min_seconds = None
        t = time.perf_counter()
        kaldi_fbank(wave30 * 2**15)
        runs["fbank of 30 s"].append(time.perf_counter() - t)
    result = {
        "video": str(video), "video_seconds": args.seconds, "generate_seconds": round(made, 2),
        "input_features": list(feats["input_features"].shape), "audio_tokens_30s": counts[0],
        "median_s": {k: round(statistics.median(v), 3) for k, v in runs.items()},
        "runs_s": {k: [round(x, 3) for x in v] for k, v in runs.items()},
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
