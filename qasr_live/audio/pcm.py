"""PCM samples as the program passes them around: 16 kHz mono, as int16 or as float in [-1, 1].

The one :data:`SAMPLE_RATE` and the one set of conversions. Capture, files and the VAD speak int16 (what a
sound card delivers and webrtcvad reads); the engine computes on float32. Full scale is 32768 both ways, so
int16 → float → int16 is exact.

Two input checks, with different contracts because their callers differ:

* :func:`as_mono_int16` (the VAD) only accepts int16 and never converts: float audio reaching it is a bug
  upstream, reported as ``TypeError``/``ValueError``.
* :func:`as_float_mono` (the streaming recognizer) accepts int16 or float and returns float32; bad audio is an
  :class:`~qasr_live.errors.AudioError` (it came from outside: a capture, a file, a client).
"""

from __future__ import annotations

import numpy as np

from qasr_live.errors import AudioError

__all__ = [
    "INT16_FULL_SCALE",
    "SAMPLE_RATE",
    "as_float_mono",
    "as_mono_int16",
    "block_samples",
    "float_to_int16",
    "int16_to_float",
]

SAMPLE_RATE = 16000
INT16_FULL_SCALE = 32768.0  # int16 sample value of float 1.0


def block_samples(block_ms: int, rate: int = SAMPLE_RATE) -> int:
    """Samples in a block of ``block_ms`` milliseconds at ``rate`` Hz (at least 1)."""
    return max(1, round(rate * block_ms / 1000))


def float_to_int16(x: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] to int16 (×32768, rounded, clipped); exact for audio that came from int16."""
    scaled = np.rint(np.asarray(x, dtype=np.float64) * INT16_FULL_SCALE)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def int16_to_float(x: np.ndarray) -> np.ndarray:
    """int16 samples to float32 in [-1, 1) (÷32768): the inverse of :func:`float_to_int16`."""
    return np.asarray(x).astype(np.float32) / np.float32(INT16_FULL_SCALE)


def as_mono_int16(pcm: np.ndarray) -> np.ndarray:
    """``pcm`` as a 1-D int16 array (shape (n,) or (n, 1) accepted), without converting anything.

    Raises ``TypeError`` for any other dtype and ``ValueError`` for more than one channel.
    """
    arr = np.asarray(pcm)
    if arr.dtype != np.int16:
        raise TypeError(f"expected int16 PCM, got dtype {arr.dtype}; convert float audio with float_to_int16()")
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"expected mono PCM, shape (n,) or (n, 1); got shape {arr.shape}")
    return arr


def as_float_mono(pcm: np.ndarray) -> np.ndarray:
    """``pcm`` (int16, float32 or float64; shape (n,) or (n, 1)) as 1-D float32 in [-1, 1].

    int16 is scaled by :func:`int16_to_float`; float is taken as it is (float32 input is not copied). Raises
    :class:`AudioError` for another dtype, more than one channel, or NaN/infinite samples.
    """
    arr = np.asarray(pcm)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise AudioError(f"audio must be mono, shape (n,) or (n, 1); got {arr.shape}")
    if arr.dtype == np.int16:
        return int16_to_float(arr)
    if arr.dtype not in (np.float32, np.float64):
        raise AudioError(f"audio must be int16 or float32 PCM, got {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise AudioError("audio holds NaN or infinite samples: the capture or resampler is broken")
    return arr
