"""Read an audio file into float32 mono samples at 16 kHz, in [-1, 1].

WAV files (8-bit unsigned, 16/24/32-bit integer, 32/64-bit float PCM, WAVE_FORMAT_EXTENSIBLE, any channel
count, any sample rate) are read with ``scipy.io.wavfile``; channels are averaged and the signal is resampled
with ``scipy.signal.resample_poly``. Anything else (mp3, flac, ogg, m4a, compressed WAV, ...) is decoded by
the ``ffmpeg`` executable when it is on PATH. Every failure is an ``AudioError`` naming the file and the fix.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
from scipy.io import wavfile
from scipy.signal import resample_poly

from qasr_live.audio.pcm import SAMPLE_RATE
from qasr_live.errors import AudioError

__all__ = ["load_audio"]

_FFMPEG_HINT = "install ffmpeg (`sudo apt install ffmpeg` or `brew install ffmpeg`) or convert the file to WAV"


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Return the samples of ``path`` as a 1-D float32 array at ``sample_rate`` Hz, mono, in [-1, 1]."""
    path = Path(path)
    _check_readable(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # WavFileWarning about unknown chunks is not the user's problem
            rate, data = wavfile.read(path)
    except (ValueError, EOFError, OSError, TypeError) as exc:  # not a WAV scipy understands
        samples = _decode_ffmpeg(path, sample_rate, reason=str(exc))
        _check_samples(path, samples.reshape(-1, 1), sample_rate)
        clipped: np.ndarray = np.clip(samples, -1.0, 1.0)
        return clipped
    frames = _to_float(path, data)
    _check_samples(path, frames, rate)
    mono = frames.mean(axis=1, dtype=np.float64)
    if rate != sample_rate:
        g = math.gcd(int(rate), int(sample_rate))
        mono = resample_poly(mono, sample_rate // g, int(rate) // g)
    out: np.ndarray = np.clip(mono, -1.0, 1.0).astype(np.float32)
    return out


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: no such file; check the path (relative paths start at {Path.cwd()})")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file; pass the path of a file inside it")
    try:
        with open(path, "rb") as f:
            first = f.read(1)
    except PermissionError as exc:
        raise AudioError(f"{path}: permission denied; make the file readable (e.g. `chmod a+r {path}`)") from exc
    except OSError as exc:
        raise AudioError(f"{path}: cannot be read ({exc.strerror or exc}); check the file and the disk") from exc
    if not first:
        raise AudioError(f"{path}: the file is empty (0 bytes); record or copy the audio again")


def _to_float(path: Path, data: np.ndarray) -> np.ndarray:
    """Scale scipy's array to float (frames, channels) in [-1, 1]; integers are left-justified by scipy."""
    if data.ndim == 1:
        data = data[:, None]
    kind, bits = data.dtype.kind, data.dtype.itemsize * 8
    if kind == "f":
        return data.astype(np.float64)
    if kind == "u" and bits == 8:
        return (data.astype(np.float64) - 128.0) / 128.0
    if kind == "i":
        return data.astype(np.float64) / float(2 ** (bits - 1))
    raise AudioError(f"{path}: unsupported WAV sample type {data.dtype}; convert the file to 16-bit PCM WAV")


def _check_samples(path: Path, frames: np.ndarray, rate: int) -> None:
    """Reject empty (< 1 ms) audio and audio holding NaN or infinite samples. ``frames`` is (n, channels)."""
    n = frames.shape[0]
    if n == 0 or n / rate < 0.001:
        raise AudioError(
            f"{path}: holds no audio ({n} samples at {rate} Hz, less than 1 ms); "
            "check that the recording is not empty or truncated"
        )
    bad = ~np.isfinite(frames).all(axis=1)
    count = int(bad.sum())
    if count:
        first = int(np.argmax(bad)) / rate
        raise AudioError(
            f"{path}: {count} sample(s) are NaN or infinite, the first at {first:.3f} s; "
            "the file is corrupt — re-export or re-record it"
        )


def _decode_ffmpeg(path: Path, sample_rate: int, reason: str) -> np.ndarray:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        kind = path.suffix.lstrip(".").lower() or "this"
        raise AudioError(
            f"{path}: the {kind} format needs ffmpeg to decode (it is not a WAV file this program can read "
            f"directly: {reason}); {_FFMPEG_HINT}"
        )
    # -rematrix_maxval 1: for float output ffmpeg would otherwise downmix stereo as (L + R) / sqrt(2), 3 dB
    # louder than the WAV path's average and clipping at full scale; normalised, stereo gives (L + R) / 2.
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-rematrix_maxval", "1"]
    cmd += ["-f", "f32le", "-ac", "1", "-ar", str(sample_rate), "-"]
    try:
        proc = subprocess.run(cmd, capture_output=True, check=False)
    except OSError as exc:
        raise AudioError(f"{path}: could not run {ffmpeg} ({exc}); check the ffmpeg installation") from exc
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise AudioError(
            f"{path}: ffmpeg could not decode the file: {last}; "
            "check that it is a complete audio file, or convert it to WAV"
        )
    usable = len(proc.stdout) - len(proc.stdout) % 4
    return np.frombuffer(proc.stdout[:usable], dtype="<f4").astype(np.float32)
