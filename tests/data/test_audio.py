"""Audio features: decoding formats, resampling, Kaldi filterbanks, CMVN and SpecAugment."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from modaloom.data.audio import (
    AudioFeatures,
    SpecAugment,
    decode_audio,
    kaldi_fbank,
    normalize_utterance,
    resample,
    time_warp,
)
from modaloom.errors import ConfigError, DataError


def tone(frequency: float, rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    wave = (0.4 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def encode(wave: np.ndarray, rate: int, fmt: str) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, wave, rate, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
def test_decode_formats_to_mono_float(fmt: str) -> None:
    wave, rate = decode_audio(encode(tone(440, 16000, 0.5, channels=2), 16000, fmt))
    assert rate == 16000 and wave.ndim == 1 and wave.dtype == np.float32
    assert abs(len(wave) - 8000) <= 64
    assert 0.3 < np.abs(wave).max() < 0.5


def test_corrupt_audio_is_a_data_error_naming_where() -> None:
    with pytest.raises(DataError, match="clips.tsv:7: cannot decode audio"):
        decode_audio(b"RIFF....garbage", where="clips.tsv:7")


def test_resample_keeps_the_frequency_and_duration() -> None:
    out = resample(tone(440, 22050, 1.0), 22050, 16000)
    assert len(out) == 16000
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) == 440  # 1 Hz bins for a one-second clip
    assert abs(np.abs(out).max() - 0.4) < 0.02
    up = resample(tone(300, 8000, 0.5), 8000, 16000)
    assert len(up) == 8000 and np.argmax(np.abs(np.fft.rfft(up))) == 150


def test_fbank_frames_and_peak_bin_follow_the_tone() -> None:
    low = kaldi_fbank(tone(300, 16000, 1.0), 16000)
    high = kaldi_fbank(tone(3000, 16000, 1.0), 16000)
    assert low.shape == (98, 80) and low.dtype == np.float32  # 1 + (16000 - 400) // 160 frames
    assert np.argmax(low.mean(axis=0)) < np.argmax(high.mean(axis=0))


def test_utterance_normalisation_zero_mean_unit_variance() -> None:
    feats = normalize_utterance(np.random.default_rng(0).normal(5, 3, size=(200, 80)).astype(np.float32))
    np.testing.assert_allclose(feats.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(feats.std(axis=0), 1, atol=1e-3)


def test_specaugment_masks_bands_and_spans_deterministically() -> None:
    feats = np.random.default_rng(0).normal(size=(300, 80)).astype(np.float32)
    augment = SpecAugment(freq_mask_f=27, freq_mask_n=2, time_mask_t=100, time_mask_n=2)
    a = augment(feats, np.random.default_rng(3))
    b = augment(feats, np.random.default_rng(3))
    assert np.array_equal(a, b) and a.shape == feats.shape
    assert not np.array_equal(a, feats)
    changed = a != feats
    masked_bins = changed.all(axis=0).sum()
    masked_frames = changed.all(axis=1).sum()
    assert masked_bins <= 2 * 27 and masked_frames <= 2 * 100
    assert masked_bins + masked_frames > 0
    assert np.array_equal(feats, np.random.default_rng(0).normal(size=(300, 80)).astype(np.float32))


def test_time_mask_respects_p() -> None:
    feats = np.random.default_rng(1).normal(size=(50, 80)).astype(np.float32)
    augment = SpecAugment(freq_mask_n=0, time_mask_t=100, time_mask_n=1, time_mask_p=0.2)
    for seed in range(20):
        assert (augment(feats, np.random.default_rng(seed)) != feats).all(axis=1).sum() <= 10
    with pytest.raises(ConfigError):
        SpecAugment(time_mask_p=1.5)


def test_time_warp_keeps_shape_and_endpoints() -> None:
    feats = np.cumsum(np.ones((120, 4), np.float32), axis=0)
    warped = time_warp(feats, 10, np.random.default_rng(0))
    assert warped.shape == feats.shape
    assert warped[0, 0] == feats[0, 0] and warped[-1, 0] == feats[-1, 0]
    assert np.all(np.diff(warped[:, 0]) > 0)  # monotone: order of frames is kept


def test_audio_features_end_to_end_from_44k_stereo() -> None:
    features = AudioFeatures(max_frames=50)(encode(tone(440, 44100, 1.0, channels=2), 44100, "WAV"))
    assert features.shape == (50, 80) and np.isfinite(features).all()
