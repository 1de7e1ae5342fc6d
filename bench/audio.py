"""Speech for the benchmarks: espeak-ng sentences of the demo grammar joined into utterances of a given length.

Random weights do not care what is said, but the VAD does: utterances must be continuous speech (pauses
shorter than the hangover) so that VAD-mode latencies are measured on real speech onsets and ends.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from devkit.demo_speech import heldout_sentences, synthesize

RATE = 16000
GAP_S = 0.15  # between sentences inside one utterance (the VAD hangover is 0.6 s)
_LEVEL = 10 ** (-20 / 20)  # peak -20 dBFS: a normal dictation level


@lru_cache(maxsize=1)
def _sentences() -> tuple[np.ndarray, ...]:
    out = []
    for text in heldout_sentences(40, seed=99):
        pcm = synthesize(text)
        voiced = np.flatnonzero(np.abs(pcm) > 0.01)
        pcm = pcm[voiced[0] : voiced[-1] + 1]
        out.append(pcm / np.abs(pcm).max() * _LEVEL)
    return tuple(out)


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Exactly `seconds` of continuous speech (float32, 16 kHz), ending inside a word when it must."""
    rng = np.random.default_rng(seed)
    parts, n, total = [], int(seconds * RATE), 0
    pool = _sentences()
    while total < n:
        pcm = pool[int(rng.integers(len(pool)))]
        parts += [pcm, np.zeros(int(GAP_S * RATE), np.float32)]
        total += len(pcm) + int(GAP_S * RATE)
    audio = np.concatenate(parts)[:n]
    voiced = np.flatnonzero(np.abs(audio) > 0.01)  # end on speech, not in a gap
    return audio[: voiced[-1] + 1].astype(np.float32)


def to_int16(pcm: np.ndarray) -> np.ndarray:
    return np.clip(np.round(pcm * 32767), -32768, 32767).astype(np.int16)
