"""Audio features: decode (soundfile), resample, 80-bin Kaldi filterbanks, utterance CMVN, SpecAugment.

Filterbanks follow the Kaldi / torchaudio ``compliance.kaldi.fbank`` convention that S2T models are trained
with: 16-bit sample scale, 25 ms frames every 10 ms, povey window, no dither (so features are
deterministic). SpecAugment draws from a caller-supplied generator so that masks depend only on the seed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile

from modaloom.errors import ConfigError, DataError


def decode_audio(data: bytes | np.ndarray, where: str = "") -> tuple[np.ndarray, int]:
    """Decode wav / flac / ogg bytes to a mono float32 waveform in [-1, 1] and its sample rate."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    try:
        wave, sample_rate = soundfile.read(io.BytesIO(raw), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError, ValueError, TypeError) as exc:
        prefix = f"{where}: " if where else ""
        raise DataError(f"{prefix}cannot decode audio ({len(raw)} bytes): {exc}") from exc
    if wave.shape[0] == 0:
        prefix = f"{where}: " if where else ""
        raise DataError(f"{prefix}audio has no samples")
    return np.ascontiguousarray(wave.mean(axis=1, dtype=np.float32)), int(sample_rate)


def resample(wave: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling through the real FFT: keep (or zero-pad) the spectrum below the new
    Nyquist frequency. Exact for periodic signals; edges of short clips ring slightly, which is harmless
    for filterbank features."""
    if source_rate == target_rate:
        return wave.astype(np.float32, copy=False)
    if source_rate <= 0 or target_rate <= 0:
        raise DataError(f"sample rates must be positive, got {source_rate} -> {target_rate}")
    num_in = wave.shape[0]
    num_out = max(1, round(num_in * target_rate / source_rate))
    spectrum = np.fft.rfft(wave.astype(np.float64))
    bins_out = num_out // 2 + 1
    resized = np.zeros(bins_out, dtype=np.complex128)
    keep = min(bins_out, spectrum.shape[0])
    resized[:keep] = spectrum[:keep]
    if num_out % 2 == 0 and keep == bins_out:
        # The new Nyquist bin of a real signal must be real: fold its imaginary part away.
        resized[-1] = resized[-1].real
    out = np.fft.irfft(resized, n=num_out) * (num_out / num_in)
    return out.astype(np.float32)


def kaldi_fbank(wave: np.ndarray, sample_rate: int, num_bins: int = 80) -> np.ndarray:
    """(T, num_bins) log-mel filterbank frames (25 ms window, 10 ms shift) with kaldi-native-fbank."""
    import kaldi_native_fbank as knf

    options = knf.FbankOptions()
    options.frame_opts.samp_freq = float(sample_rate)
    options.frame_opts.dither = 0.0
    options.frame_opts.snip_edges = True
    options.mel_opts.num_bins = num_bins
    computer = knf.OnlineFbank(options)
    computer.accept_waveform(float(sample_rate), (wave.astype(np.float32) * 32768.0).tolist())
    computer.input_finished()
    frames = computer.num_frames_ready
    if frames == 0:
        return np.zeros((0, num_bins), dtype=np.float32)
    return np.stack([np.asarray(computer.get_frame(i), dtype=np.float32) for i in range(frames)])


def normalize_utterance(features: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Utterance-level cepstral mean and variance normalisation, per feature bin."""
    if features.shape[0] == 0:
        return features
    mean = features.mean(axis=0, keepdims=True)
    std = np.sqrt(np.maximum(features.var(axis=0, keepdims=True), eps * eps))
    return ((features - mean) / std).astype(np.float32)


@dataclass
class SpecAugment:
    """SpecAugment (Park et al. 2019) on (T, F) features, S2T's "LB" policy by default.

    ``freq_mask_n`` bands of width in [0, freq_mask_f] and ``time_mask_n`` spans of width in
    [0, min(time_mask_t, time_mask_p * T)] are set to the utterance mean; ``time_warp_w`` > 0 warps the
    time axis around a random centre by up to that many frames.
    """

    freq_mask_f: int = 27
    freq_mask_n: int = 2
    time_mask_t: int = 100
    time_mask_n: int = 2
    time_mask_p: float = 1.0
    time_warp_w: int = 0

    def __post_init__(self) -> None:
        if min(self.freq_mask_f, self.freq_mask_n, self.time_mask_t, self.time_mask_n, self.time_warp_w) < 0:
            raise ConfigError(f"SpecAugment sizes must be non-negative: {self}")
        if not 0.0 <= self.time_mask_p <= 1.0:
            raise ConfigError(f"SpecAugment time_mask_p must be in [0, 1], got {self.time_mask_p}")

    def __call__(self, features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.array(features, dtype=np.float32, copy=True)
        num_frames, num_bins = out.shape
        if num_frames == 0:
            return out
        if self.time_warp_w > 0:
            out = time_warp(out, self.time_warp_w, rng)
        fill = float(out.mean())
        for _ in range(self.freq_mask_n):
            width = int(rng.integers(0, min(self.freq_mask_f, num_bins) + 1))
            start = int(rng.integers(0, num_bins - width + 1))
            out[:, start : start + width] = fill
        max_time = min(self.time_mask_t, int(self.time_mask_p * num_frames))
        for _ in range(self.time_mask_n):
            width = int(rng.integers(0, max_time + 1))
            start = int(rng.integers(0, num_frames - width + 1))
            out[start : start + width, :] = fill
        return out


def time_warp(features: np.ndarray, window: int, rng: np.random.Generator) -> np.ndarray:
    """Piecewise-linear warp of the time axis: the frame at a random centre moves by up to ``window``
    frames, the two sides stretch or shrink linearly to meet it."""
    num_frames = features.shape[0]
    if num_frames <= 2 * window + 1:
        return features
    centre = int(rng.integers(window, num_frames - window))
    target = centre + int(rng.integers(-window + 1, window))
    if target == centre or target <= 0 or target >= num_frames - 1:
        return features
    positions = np.arange(num_frames, dtype=np.float64)
    # Output frame t reads source position s(t): [0, target] -> [0, centre], [target, T-1] -> [centre, T-1].
    source = np.where(
        positions <= target,
        positions * centre / target,
        centre + (positions - target) * (num_frames - 1 - centre) / (num_frames - 1 - target),
    )
    low = np.clip(np.floor(source).astype(np.int64), 0, num_frames - 1)
    high = np.clip(low + 1, 0, num_frames - 1)
    frac = (source - low)[:, None].astype(np.float32)
    return (features[low] * (1.0 - frac) + features[high] * frac).astype(np.float32)


@dataclass
class AudioFeatures:
    """Encoded audio bytes -> (T, num_bins) float32 features: decode, resample, fbank, CMVN, crop."""

    sample_rate: int = 16000
    num_bins: int = 80
    normalize: bool = True
    max_frames: int = 0

    def __call__(self, data: bytes | np.ndarray, where: str = "") -> np.ndarray:
        wave, rate = decode_audio(data, where)
        wave = resample(wave, rate, self.sample_rate)
        features = kaldi_fbank(wave, self.sample_rate, self.num_bins)
        if features.shape[0] == 0:
            raise DataError(f"{where + ': ' if where else ''}audio shorter than one 25 ms frame")
        if self.normalize:
            features = normalize_utterance(features)
        if self.max_frames > 0:
            features = features[: self.max_frames]
        return features
