"""The audio front end in torch (``hf_videollm.media.audio``): Kaldi fbank against kaldi-native-fbank (an independent
Kaldi implementation), FFT resampling against scipy, the original's clip sampling and 30 s crop / pad, reading a
video's own audio track."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hf_videollm.media.audio import clip_sample_waveform, crop_or_pad, kaldi_fbank, load_audio, resample_fft


def _knf_fbank(wave: np.ndarray, rate: int, bins: int) -> np.ndarray:
    knf = pytest.importorskip("kaldi_native_fbank")
    opts = knf.FbankOptions()  # set to torchaudio.compliance.kaldi.fbank's defaults
    fo = opts.frame_opts
    fo.dither, fo.samp_freq, fo.snip_edges, fo.window_type = 0.0, rate, True, "povey"
    fo.preemph_coeff, fo.remove_dc_offset, fo.round_to_power_of_two = 0.97, True, True
    fo.frame_length_ms, fo.frame_shift_ms = 25.0, 10.0
    opts.mel_opts.num_bins, opts.mel_opts.low_freq, opts.mel_opts.high_freq = bins, 20.0, 0.0
    opts.use_energy, opts.use_log_fbank, opts.use_power = False, True, True
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(rate, wave.tolist())
    fb.input_finished()
    return np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)])


def _signal(rate: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / rate
    chirp = np.sin(2 * np.pi * (200 + 1500 * t / max(t[-1], 1e-9)) * t)
    wave = 0.3 * chirp + 0.2 * np.sin(2 * np.pi * 440 * t) + 0.02 * rng.standard_normal(n) + 0.05  # + a DC offset
    return (wave * 2**15).astype(np.float32)


# kaldi(-native-fbank) refuses 128 bins at 16 kHz (some of the lowest filters contain no FFT bin); 80 bins there,
# 128 bins at the rates where every filter is non-empty.
@pytest.mark.parametrize("rate,n,bins", [
    (16000, 16000, 80), (16000, 12345, 80), (16000, 400, 80), (16000, 48000, 64),
    (22050, 30000, 128), (44100, 44100, 128), (48000, 50001, 128), (8000, 5000, 23),
])
def test_fbank_matches_kaldi_native_fbank(rate, n, bins):
    wave = _signal(rate, n, seed=n)
    ref = _knf_fbank(wave, rate, bins)
    ours = kaldi_fbank(torch.from_numpy(wave), sample_frequency=rate, num_mel_bins=bins)
    assert ours.shape == ref.shape == (1 + (n - int(rate * 0.025)) // int(rate * 0.010), bins)
    assert ours.dtype == torch.float32
    diff = (ours.numpy() - ref).__abs__().max()
    assert diff <= 1e-3, f"max |log fbank diff| {diff}"


def test_fbank_128_bins_at_16k_empty_filters_are_log_eps():
    """What torchaudio (the original's call) gives where Kaldi refuses: filters without an FFT bin are log(eps)."""
    wave = torch.from_numpy(_signal(16000, 16000, 0))
    fb = kaldi_fbank(wave)
    assert fb.shape == (98, 128)
    eps = math.log(torch.finfo(torch.float32).eps)
    mel = lambda f: 1127 * math.log1p(f / 700)  # noqa: E731
    lo, hi = mel(20), mel(8000)
    delta = (hi - lo) / 129
    fft_mels = [mel(16000 / 512 * k) for k in range(256)]
    for b in range(128):
        left, right = lo + b * delta, lo + (b + 2) * delta
        empty = not any(left < m < right for m in fft_mels)
        column = fb[:, b]
        assert bool((column == eps).all()) == empty, f"bin {b}"
    assert (fb[:, 40:] > eps + 1).all()  # the rest carries the signal


def test_fbank_30s_is_2998_frames_and_bad_input():
    assert kaldi_fbank(torch.zeros(480000)).shape == (2998, 128)
    with pytest.raises(ValueError, match="fewer than one"):
        kaldi_fbank(torch.zeros(100))
    with pytest.raises(ValueError, match="mono"):
        kaldi_fbank(torch.zeros(2, 1000))


@pytest.mark.parametrize("n", [1000, 1001, 22050])
@pytest.mark.parametrize("rates", [(22050, 16000), (44100, 16000), (8000, 16000), (48000, 16000)])
def test_resample_fft_equals_scipy_resample(n, rates):
    signal = pytest.importorskip("scipy.signal")
    x = np.random.default_rng(n).standard_normal(n)
    orig, new = rates
    ref = signal.resample(x, int(np.ceil(n * new / orig)))
    ours = resample_fft(torch.from_numpy(x), orig, new).numpy()
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-10)


def test_resample_keeps_a_tone():
    t = torch.arange(44100) / 44100
    y = resample_fft(torch.sin(2 * math.pi * 1000 * t), 44100, 16000)
    assert y.shape == (16000,)
    expected = torch.sin(2 * math.pi * 1000 * torch.arange(16000) / 16000)
    assert (y - expected).abs()[100:-100].max() < 1e-3


def test_crop_or_pad():
    x = torch.arange(10.0)
    assert crop_or_pad(x, 4).tolist() == [3.0, 4.0, 5.0, 6.0]  # deterministic centre window (inference)
    assert crop_or_pad(x, 4, "start").tolist() == [0.0, 1.0, 2.0, 3.0]
    g = torch.Generator().manual_seed(0)
    r = crop_or_pad(x, 4, "random", generator=g)
    assert r.shape == (4,) and int(r[0]) < 6 and torch.equal(r, torch.arange(r[0], r[0] + 4))
    assert crop_or_pad(x, 12).tolist() == [*range(10), 0, 0]  # zero padding at the end
    with pytest.raises(ValueError, match="crop"):
        crop_or_pad(x, 4, "middle")


def test_clip_sampling_matches_constant_clips_per_video():
    rate = 100
    wave = torch.arange(30 * rate, dtype=torch.float32)  # 30 s: clips start at i * 28/7 = 4 i seconds
    out = clip_sample_waveform(wave, rate, clips=8, clip_seconds=2.0)
    assert out.shape == (8 * 2 * rate,)
    starts = out.view(8, 2 * rate)[:, 0].tolist()
    assert starts == [4 * i * rate for i in range(8)]
    # shorter than one clip: the whole track 8 times (the sampler's start stays at 0)
    short = torch.arange(150.0)
    assert torch.equal(clip_sample_waveform(short, rate), short.repeat(8))
    # 10 s: starts at i * 8/7 s, sliced with int(start * rate)
    ten = torch.arange(10 * rate, dtype=torch.float32)
    starts = clip_sample_waveform(ten, rate).view(8, -1)[:, 0].tolist()
    assert starts == [int(i * 8 / 7 * rate) for i in range(8)]


def test_video_audio_track_and_native_rate(tmp_path):
    from hf_videollm.media import write_video

    frames = np.zeros((10, 32, 32, 3), dtype=np.uint8)
    t = np.arange(22050) / 22050
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = write_video(tmp_path / "a.mp4", frames, fps=10, audio=tone, audio_rate=22050)
    wave, rate = load_audio(path, sampling_rate=None)
    assert rate == 22050 and abs(wave.shape[0] - 22050) < 2048
    wave16, rate16 = load_audio(path)
    assert rate16 == 16000 and abs(wave16.shape[0] - 16000) < 1500
    silent = write_video(tmp_path / "silent.mp4", frames, fps=10)
    from hf_videollm.media import AudioDecodeError

    with pytest.raises(AudioDecodeError, match="no audio stream"):
        load_audio(silent)
