"""Synthetic English speech for the demo model: its grammar, espeak-ng synthesis, no-speech clips and WER.

Shared by the demo model's data generation (training/demo_model/data.py) and its quality gates
(tests/test_demo_model.py); the daemon tests can reuse it (`heldout_sentences`, `synthesize`, `wer`).

Text normalisation for WER (`normalize`): lower case, every character other than a letter, a digit or an
apostrophe becomes a space ("a.m." -> "a m", "o'clock" stays), then words are split on whitespace.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np

VOCABULARY = Path(__file__).resolve().parents[1] / "qasr_live" / "models" / "demo" / "vocabulary.json"
SAMPLE_RATE = 16000
ESPEAK_RATE = 22050

# Voices of the training data: espeak-ng English voices x variants, with speeds and pitches drawn per utterance.
TRAIN_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
TRAIN_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
TRAIN_SPEEDS = (125, 210)  # words per minute, uniform
TRAIN_PITCHES = (25, 75)
# Never used in training: a whole voice (Received Pronunciation), at a fixed speed and pitch per variant.
HELDOUT_VOICES = (("en-gb-x-rp", "m3", 165, 45), ("en-gb-x-rp", "f2", 180, 60))


@lru_cache(maxsize=1)
def grammar() -> dict:
    return json.loads(VOCABULARY.read_text(encoding="utf-8"))


def is_heldout(text: str) -> bool:
    """Held-out sentences (see `heldout_rule` in vocabulary.json): never trained on."""
    return zlib.crc32(text.encode("utf-8")) % 10 == 0


def expand(symbol: str, rng: np.random.Generator) -> str:
    rules = grammar()["rules"]
    alternatives = rules[symbol] if symbol in rules else grammar()[symbol]
    text = alternatives[int(rng.integers(len(alternatives)))]
    return re.sub(r"\{(\w+)\}", lambda m: expand(m.group(1), rng), text)


def sentence(rng: np.random.Generator) -> str:
    text = expand("start", rng)
    return text[0].upper() + text[1:]


def sentences(n: int, seed: int, heldout: bool) -> list[str]:
    """n distinct sentences of the grammar, all held out (heldout=True) or all trainable."""
    rng = np.random.default_rng(seed)
    out: dict[str, None] = {}
    for _ in range(200 * n):
        text = sentence(rng)
        if is_heldout(text) == heldout:
            out.setdefault(text)
            if len(out) == n:
                break
    return list(out)


def heldout_sentences(n: int, seed: int = 1234) -> list[str]:
    return sentences(n, seed, heldout=True)


def vocabulary_words() -> set[str]:
    words: set[str] = set()
    for alternatives in grammar()["rules"].values():
        for text in alternatives:
            words.update(normalize(re.sub(r"\{\w+\}", " ", text)))
    return words


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def synthesize(text: str, voice: str = "en-us", variant: str = "", speed: int = 160, pitch: int = 50) -> np.ndarray:
    """espeak-ng speech as float32 mono at 16 kHz (deterministic for a given espeak-ng version)."""
    from scipy.signal import resample_poly

    name = f"{voice}+{variant}" if variant else voice
    cmd = ["espeak-ng", "-v", name, "-s", str(speed), "-p", str(pitch), "--stdout", text]
    raw = subprocess.run(cmd, check=True, capture_output=True).stdout
    pcm = np.frombuffer(raw[44 : 44 + (len(raw) - 44) // 2 * 2], dtype="<i2").astype(np.float32) / 32768.0
    return resample_poly(pcm, 320, 441).astype(np.float32)  # 22050 Hz -> 16 kHz


def colored_noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS white, pink (1/f) or brown (1/f^2) noise."""
    white = rng.standard_normal(n)
    if color != "white":
        spectrum = np.fft.rfft(white)
        f = np.arange(len(spectrum), dtype=np.float64)
        f[0] = 1.0
        spectrum /= np.sqrt(f) if color == "pink" else f
        white = np.fft.irfft(spectrum, n)
    return (white / (np.sqrt(np.mean(white**2)) + 1e-12)).astype(np.float32)


def no_speech_clip(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Silence, low noise, coloured noise or mains hum: audio with no speech in it."""
    n = int(seconds * SAMPLE_RATE)
    kind = int(rng.integers(5))
    if kind == 0:
        return np.zeros(n, dtype=np.float32)
    if kind == 4:
        t = np.arange(n) / SAMPLE_RATE
        base = 50.0 if rng.random() < 0.5 else 60.0
        x = sum(np.sin(2 * np.pi * base * h * t + rng.uniform(0, 6.3)) / h for h in (1, 2, 3, 5))
        x = x / np.sqrt(np.mean(x**2)) + 0.1 * colored_noise(n, "white", rng)
    else:
        x = colored_noise(n, ("white", "pink", "brown")[kind - 1], rng)
    level_db = rng.uniform(-65.0, -22.0)
    return (x * 10 ** (level_db / 20)).astype(np.float32)


def normalize(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9']+", " ", text.lower()).split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(refs: list[str], hyps: list[str]) -> tuple[float, int, int]:
    """Corpus word error rate over pairs of texts: (rate, errors, reference words)."""
    errors = words = 0
    for ref, hyp in zip(refs, hyps, strict=True):
        r, h = normalize(ref), normalize(hyp)
        errors += edit_distance(r, h)
        words += len(r)
    return errors / max(words, 1), errors, words


def heldout_set(n: int, seed: int = 1234) -> list[tuple[str, tuple[str, str, int, int]]]:
    """n held-out sentences with the voice (voice, variant, speed, pitch) that speaks each: the first half on the
    held-out voices, the rest on training voices at speeds and pitches drawn from the training ranges."""
    rng = np.random.default_rng(seed + 1)
    out = []
    for i, text in enumerate(heldout_sentences(n, seed)):
        if i < n // 2:
            voice = HELDOUT_VOICES[i % len(HELDOUT_VOICES)]
        else:
            voice = (
                TRAIN_VOICES[int(rng.integers(len(TRAIN_VOICES)))],
                TRAIN_VARIANTS[int(rng.integers(len(TRAIN_VARIANTS)))],
                int(rng.integers(TRAIN_SPEEDS[0], TRAIN_SPEEDS[1] + 1)),
                int(rng.integers(TRAIN_PITCHES[0], TRAIN_PITCHES[1] + 1)),
            )
        out.append((text, voice))
    return out


def dictation(
    seconds: float,
    voice: tuple[str, str, int, int] = HELDOUT_VOICES[0],
    seed: int = 99,
    pauses: tuple[float, float] = (0.25, 0.7),
) -> tuple[np.ndarray, list[str]]:
    """At least `seconds` of continuous held-out sentences by one voice, separated by pauses drawn from `pauses`
    (seconds; short by default), over a faint noise floor. Returns the audio and the sentences in order."""
    rng = np.random.default_rng(seed)
    parts, texts, total = [], [], 0
    for text in heldout_sentences(400, seed):
        if total >= seconds * SAMPLE_RATE:
            break
        speech = synthesize(text, *voice)
        speech = speech / (np.max(np.abs(speech)) + 1e-9) * 0.5
        parts += [speech, np.zeros(int(rng.uniform(*pauses) * SAMPLE_RATE), dtype=np.float32)]
        texts.append(text)
        total += len(parts[-2]) + len(parts[-1])
    audio = np.concatenate(parts)
    return audio + 3e-4 * colored_noise(len(audio), "pink", rng), texts


def align(ref: list[str], hyp: list[str]) -> list[tuple[str, int, int]]:
    """Levenshtein alignment as (op, ref index, hyp index), op in ok/sub/ins/del; for `del` the hyp index is
    where the word is missing, for `ins` the ref index is where the extra word sits."""
    n, m = len(ref), len(hyp)
    d = np.zeros((n + 1, m + 1), dtype=np.int32)
    d[:, 0], d[0, :] = np.arange(n + 1), np.arange(m + 1)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]))
    ops, i, j = [], n, m
    while i or j:
        if i and j and d[i, j] == d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            ops.append(("ok" if ref[i - 1] == hyp[j - 1] else "sub", i - 1, j - 1))
            i, j = i - 1, j - 1
        elif i and d[i, j] == d[i - 1, j] + 1:
            ops.append(("del", i - 1, j))
            i -= 1
        else:
            ops.append(("ins", i, j - 1))
            j -= 1
    return ops[::-1]


def boundary_errors(ref_text: str, segment_texts: list[str], radius: int = 4) -> dict[str, int]:
    """Words inserted (duplicated) or deleted (dropped) within `radius` words of a join between two segments'
    texts, and in the whole text."""
    ref = normalize(ref_text)
    seg_words = [normalize(t) for t in segment_texts]
    hyp = [w for s in seg_words for w in s]
    joins = list(np.cumsum([len(s) for s in seg_words])[:-1])
    ops = align(ref, hyp)

    def near(j: int) -> bool:
        return any(abs(j - b) <= radius or abs(j + 1 - b) <= radius for b in joins)

    return {
        "boundaries": len(joins),
        "duplicated": sum(1 for op, _, j in ops if op == "ins" and near(j)),
        "dropped": sum(1 for op, _, j in ops if op == "del" and near(j)),
        "insertions": sum(1 for op, _, _ in ops if op == "ins"),
        "deletions": sum(1 for op, _, _ in ops if op == "del"),
        "substitutions": sum(1 for op, _, _ in ops if op == "sub"),
        "words": len(ref),
    }


class DemoRecognizer:
    """The real runtime (pipeline.Transcriber, in-process ONNX encoder) on an exported model directory."""

    def __init__(self, model_dir, encoder: str = "auto", decoder: str = "auto", **engine) -> None:
        from qasr_live.config import EngineConfig
        from qasr_live.engine.encoder import AudioEncoder
        from qasr_live.engine.model_dir import open_model_dir
        from qasr_live.offline.pipeline import Transcriber

        self.model = open_model_dir(model_dir, encoder, decoder)
        self.encoder = AudioEncoder(self.model.frontend, self.model.backend, threads=1)
        self.transcriber = Transcriber(self.model, EngineConfig(**engine), self.encoder)

    def __call__(self, audio: np.ndarray, language: str | None = None):
        return self.transcriber.transcribe(audio, language)

    def close(self) -> None:
        self.transcriber.close()


def known_sentences(model_dir, n: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """The first n held-out sentences (held-out voice) that offline transcription gets exactly right, with their
    audio: material on which any error of another path (the daemon, a desktop) is that path's own."""
    recognizer = DemoRecognizer(model_dir)
    out = []
    try:
        for text in heldout_sentences(20 * n, seed):
            audio = synthesize(text, *HELDOUT_VOICES[0])
            if normalize(recognizer(audio).text) == normalize(text):
                out.append((text, audio))
                if len(out) == n:
                    return out
    finally:
        recognizer.close()
    raise AssertionError(f"offline transcription got fewer than {n} of {20 * n} held-out sentences right")
