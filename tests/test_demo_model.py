"""Quality gates of the embedded demo model (qasr_live/models/demo), through the real runtime.

Speech is synthesized here with espeak-ng from the model's own grammar (vocabulary.json): sentences that the
grammar's held-out rule kept out of training, spoken by the held-out voice (en-gb-x-rp, never trained on) and by
training voices. WER normalisation: see tests/demo_speech.py (lower case, punctuation dropped).
QASR_DEMO_MODEL=DIR runs the gates on a candidate directory (scripts/demo_model/package.py --out DIR) instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qasr_live.cli import DEMO_MODEL
from tests.demo_speech import (
    DemoRecognizer,
    boundary_errors,
    dictation,
    espeak_available,
    heldout_set,
    is_heldout,
    no_speech_clip,
    normalize,
    synthesize,
    vocabulary_words,
    wer,
)

MODEL = Path(os.environ.get("QASR_DEMO_MODEL") or DEMO_MODEL)
pytestmark = pytest.mark.skipif(not (MODEL / "manifest.json").exists(), reason=f"no demo model in {MODEL}")
needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (apt install espeak-ng)")

MAX_WER = 0.05
N_SENTENCES = 200
N_NO_SPEECH = 24
LONG_SECONDS = 125.0


@pytest.fixture(scope="module")
def recognizer():
    rec = DemoRecognizer(MODEL)  # "auto" precisions: what `qasr-live transcribe` picks
    yield rec
    rec.close()


def test_demo_model_is_marked_small_and_documented():
    manifest = json.loads((MODEL / "manifest.json").read_text())
    assert manifest["demo"] is True
    total = sum(f.stat().st_size for f in MODEL.iterdir())
    assert total <= 20e6, f"the demo model takes {total / 1e6:.1f} MB; it must stay within 20 MB"
    assert len(vocabulary_words()) >= 300
    assert (MODEL / "sample.wav").is_file()


@needs_espeak
def test_heldout_sentences_wer(recognizer, report):
    cases = heldout_set(N_SENTENCES)
    assert len(cases) == N_SENTENCES and all(is_heldout(text) for text, _ in cases)
    hyps = [recognizer(synthesize(text, *voice)).text for text, voice in cases]
    refs = [text for text, _ in cases]
    half = N_SENTENCES // 2
    figures = {
        "held-out voice": wer(refs[:half], hyps[:half]),
        "training voices": wer(refs[half:], hyps[half:]),
        "all": wer(refs, hyps),
    }
    for name, (rate, errors, words) in figures.items():
        report(f"demo model offline WER, {name}: {100 * rate:.2f} % ({errors}/{words} words)")
    bad = [(r, h) for r, h in zip(refs, hyps, strict=True) if normalize(r) != normalize(h)]
    assert figures["all"][0] <= MAX_WER, f"WER {100 * figures['all'][0]:.2f} %; first errors: {bad[:5]}"
    assert figures["held-out voice"][0] <= MAX_WER, f"held-out voice WER {100 * figures['held-out voice'][0]:.2f} %"


def test_no_speech_emits_nothing(recognizer, report):
    rng = np.random.default_rng(2024)
    texts = [recognizer(no_speech_clip(rng.uniform(0.5, 8.0), rng)).text for _ in range(N_NO_SPEECH)]
    words = sum(len(normalize(t)) for t in texts)
    report(f"demo model no-speech clips: {words} words emitted on {N_NO_SPEECH} clips")
    assert words == 0, [t for t in texts if t]


@needs_espeak
def test_long_dictation_has_no_duplicated_or_dropped_words_at_boundaries(recognizer, report):
    audio, sentences = dictation(LONG_SECONDS)
    assert len(audio) >= 120 * 16000
    result = recognizer(audio)
    counts = boundary_errors(" ".join(sentences), [s.text for s in result.segments])
    rate, errors, words = wer([" ".join(sentences)], [result.text])
    report(
        f"demo model {len(audio) / 16000:.0f} s dictation: {counts['boundaries']} segment boundaries, "
        f"{counts['duplicated']} duplicated and {counts['dropped']} dropped words there; "
        f"WER {100 * rate:.2f} % ({errors}/{words})"
    )
    assert counts["boundaries"] >= 3
    assert counts["duplicated"] == 0 and counts["dropped"] == 0, counts
    assert rate <= MAX_WER, (rate, result.text)


@pytest.mark.skipif(MODEL != DEMO_MODEL, reason="QASR_DEMO_MODEL: a candidate, not the embedded model")
def test_cli_uses_demo_model_and_says_so_once(tmp_path):
    """Out of the box: no model configured -> the demo model, with one notice on stderr."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path)}
    cmd = [sys.executable, "-m", "qasr_live", "transcribe", str(DEMO_MODEL / "sample.wav"), "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("DEMO model") == 1, done.stderr
    reference = (DEMO_MODEL / "sample.txt").read_text()
    rate, _, _ = wer([reference], [done.stdout])
    assert rate <= MAX_WER, (done.stdout, reference)
