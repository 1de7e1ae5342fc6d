"""Log-mel features exactly as Whisper's feature extractor computes them (the Qwen3-ASR processor uses it).

n_fft 400 (25 ms), hop 160 (10 ms), periodic Hann window, centred frames with reflect padding, power
spectrum, 128 Slaney-normalised Slaney-scale mel filters over 0-8 kHz, log10 clamped at 1e-10, dynamic range
limited to the utterance maximum minus 8, then (x + 4) / 4. The last STFT frame is dropped, so N samples give
N // 160 frames. numpy only: no torch at run time.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt

from qasr_live.audio.pcm import SAMPLE_RATE

N_FFT = 400
HOP = 160
N_MELS = 128


def _hz_to_mel(hz: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Slaney scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = 3.0 * hz / 200.0
    log_region = hz >= 1000.0
    return np.where(log_region, 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * (27.0 / np.log(6.4)), mel)


def _mel_to_hz(mel: npt.ArrayLike) -> npt.NDArray[np.float64]:
    mel = np.asarray(mel, dtype=np.float64)
    hz = 200.0 * mel / 3.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0)), hz)


@lru_cache(maxsize=4)
def mel_filters(n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE) -> npt.NDArray[np.float64]:
    """Triangular filters, shape (n_fft // 2 + 1, n_mels), each normalised to unit area (Slaney)."""
    fft_freqs = np.linspace(0, sample_rate // 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
    slopes = edges[None, :] - fft_freqs[:, None]
    widths = np.diff(edges)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    filters *= 2.0 / (edges[2 : n_mels + 2] - edges[:n_mels])
    filters.setflags(write=False)
    return filters


@lru_cache(maxsize=1)
def _window() -> npt.NDArray[np.float64]:
    n = np.arange(N_FFT)
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / N_FFT)  # periodic Hann (divides by N, not N - 1)


def mel_power(audio: np.ndarray, first: int = 0, stop: int | None = None) -> npt.NDArray[np.float64]:
    """Mel power spectrogram (n_mels, stop - first) before the log, float64, of frames [first, stop) of the clip
    `audio` (default: all len(audio) // HOP frames). Each frame is computed exactly as in the spectrogram of the
    whole clip (centred, reflect-padded at the clip's two ends), so a growing clip can be analysed piecewise."""
    audio = np.asarray(audio)
    n = len(audio)
    stop = n // HOP if stop is None else stop
    if not 0 <= first <= stop <= n // HOP:
        raise ValueError(f"frames [{first}, {stop}) are not within the {n // HOP} frames of {n} samples")
    if stop == first:
        return np.zeros((N_MELS, 0))
    half = N_FFT // 2
    lo, hi = first * HOP - half, (stop - 1) * HOP + half  # the samples these frames see, in clip coordinates
    if lo >= 0 and hi <= n:
        padded = np.asarray(audio[lo:hi], dtype=np.float64)
    elif n > half:  # reflect at the clip's ends (index -j is sample j; index n - 1 + j is sample n - 1 - j)
        index = np.abs(np.arange(lo, hi))
        padded = np.asarray(audio[np.where(index >= n, 2 * (n - 1) - index, index)], dtype=np.float64)
    else:  # a clip shorter than the padding: numpy's repeated reflection, as for the whole clip
        padded = np.pad(np.asarray(audio, dtype=np.float64), half, mode="reflect")[first * HOP : hi + half]
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    power = np.abs(np.fft.rfft(frames * _window(), axis=-1)) ** 2
    mel: npt.NDArray[np.float64] = mel_filters().T @ power.T
    return mel


def log_mel_raw(audio: np.ndarray, first: int = 0, stop: int | None = None) -> npt.NDArray[np.float64]:
    """log10 mel power of frames [first, stop), floored at 1e-10, before the clip-wide normalisation."""
    raw: npt.NDArray[np.float64] = np.log10(np.maximum(mel_power(audio, first, stop), 1e-10))
    return raw


def normalize_log_mel(raw: np.ndarray, peak: float) -> npt.NDArray[np.float32]:
    """Whisper's normalisation given the clip's maximum `peak` of log_mel_raw: dynamic range limited to peak - 8,
    then (x + 4) / 4, float32. Frames of one clip may be normalised separately with the same peak."""
    clamped: npt.NDArray[np.float64] = np.maximum(raw, peak - 8.0)
    return ((clamped + 4.0) / 4.0).astype(np.float32)


def log_mel(audio: np.ndarray) -> npt.NDArray[np.float32]:
    """Whisper-normalised log-mel features, shape (128, len(audio) // 160), float32."""
    raw = log_mel_raw(audio)
    return normalize_log_mel(raw, raw.max() if raw.size else 0.0)


def feature_output_length(n_frames: int) -> int:
    """Encoder rows produced for n_frames mel frames: 13 per full 100-frame chunk plus the conv stack's
    ceil-halving (x3) of the remainder. Same formula as the official processor."""
    rest = n_frames % 100
    feat = (rest - 1) // 2 + 1
    return ((feat - 1) // 2 + 1 - 1) // 2 + 1 + (n_frames // 100) * 13
