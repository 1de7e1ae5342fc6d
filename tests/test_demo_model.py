"""Quality gates of the embedded demo model (qasr_live/models/demo), through the real runtime.

Speech is synthesized here with espeak-ng from the model's own grammar (vocabulary.json): sentences that the
grammar's held-out rule kept out of training, spoken by the held-out voice (en-gb-x-rp, never trained on) and by
training voices. WER normalisation: see devkit/demo_speech.py (lower case, punctuation dropped).
QASR_DEMO_MODEL=DIR runs the gates on a candidate directory (`python -m training.demo_model.package --out DIR`)
instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from devkit.daemon_checks import check_event_stream, commits_by_utterance
from devkit.daemon_harness import RunningDaemon, write_config
from devkit.demo_speech import (
    HELDOUT_VOICES,
    SAMPLE_RATE,
    DemoRecognizer,
    boundary_errors,
    dictation,
    espeak_available,
    heldout_sentences,
    heldout_set,
    is_heldout,
    no_speech_clip,
    normalize,
    synthesize,
    vocabulary_words,
    wer,
)
from devkit.pulse import PulseAudio, require_pulse
from qasr_live.model_store import DEMO_MODEL
from qasr_live.offline.pipeline import is_pause

MODEL = Path(os.environ.get("QASR_DEMO_MODEL") or DEMO_MODEL)
pytestmark = pytest.mark.skipif(not (MODEL / "manifest.json").exists(), reason=f"no demo model in {MODEL}")
needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (apt install espeak-ng)")

MAX_WER = 0.05
N_SENTENCES = 200
N_NO_SPEECH = 24
LONG_SECONDS = 125.0
DAEMON_SECONDS = 125.0
MAX_DAEMON_WER_GAP = 0.02


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


@pytest.fixture(scope="module")
def long_dictation(recognizer):
    """A >= 2-minute continuous dictation (held-out voice and sentences, short pauses) through the long-audio
    path: 30 s segments, cut in pauses here (pipeline.is_pause), so decoded independently."""
    if not espeak_available():
        pytest.skip("espeak-ng is not installed (apt install espeak-ng)")
    audio, sentences = dictation(LONG_SECONDS)
    assert len(audio) >= 120 * 16000
    return audio, " ".join(sentences), recognizer(audio)


def test_long_dictation_has_no_duplicated_or_dropped_words_at_boundaries(long_dictation, report):
    audio, reference, result = long_dictation
    counts = boundary_errors(reference, [s.text for s in result.segments])
    report(
        f"demo model {len(audio) / 16000:.0f} s dictation: {counts['boundaries']} segment boundaries, "
        f"{counts['duplicated']} duplicated and {counts['dropped']} dropped words there"
    )
    assert counts["boundaries"] >= 3
    # the path the docstring names: every cut lies in a pause (a cut inside speech would bring the memory back)
    assert all(is_pause(audio, round(s.end * 16000), round(s.start * 16000)) for s in result.segments[:-1])
    assert counts["duplicated"] == 0 and counts["dropped"] == 0, counts


@pytest.mark.xfail(
    strict=True,
    reason="not met by the committed model: continuous dictation in 30 s segments is decoded less accurately "
    "than single sentences (docs/demo-model.md, 'Known limits'); strict: the day it passes, this fails and the "
    "target can become a plain test",
)
def test_long_dictation_wer(long_dictation, report):
    audio, reference, result = long_dictation
    rate, errors, words = wer([reference], [result.text])
    report(f"demo model {len(audio) / 16000:.0f} s dictation: WER {100 * rate:.2f} % ({errors}/{words})")
    assert rate <= MAX_WER, (rate, result.text)


@needs_espeak
def test_memory_that_silences_speech_is_dropped(recognizer, report):
    """A decoder memory whose text runs past its audio (the previous utterance misrecognized as longer than it
    was: here it already holds the sentence about to be spoken) makes the model answer nothing for new speech,
    and would for every utterance after it. The recognizer asks once more without the memory, and drops it."""
    from qasr_live.config import EngineConfig, StreamingConfig
    from qasr_live.engine.features import log_mel
    from qasr_live.streaming.memory import MemoryEntry
    from qasr_live.streaming.recognizer import StreamingRecognizer

    encoder = recognizer.encoder
    texts = heldout_sentences(20, seed=3)
    refs, hyps = [], []
    for before, now in zip(texts[::2], texts[1::2], strict=True):
        rec = StreamingRecognizer(recognizer.model, EngineConfig(), StreamingConfig(), encoder)
        try:
            rows = encoder.encode(log_mel(synthesize(before, *HELDOUT_VOICES[0])))
            rec.memory.add(MemoryEntry(rows, tuple(rec.decoder.tokenize(f"{before} {now}")), "English"))
            rec.begin()
            rec.add_audio(synthesize(now, *HELDOUT_VOICES[0]))
            final = rec.finish()
            assert not final.no_speech, (before, now)
            assert [e.text_ids for e in rec.memory.entries] == [tuple(rec.decoder.tokenize(final.text))]
        finally:
            rec.close()
        refs.append(now)
        hyps.append(final.text)
    rate, errors, words = wer(refs, hyps)
    report(f"demo model, utterances after a misleading memory: WER {100 * rate:.2f} % ({errors}/{words})")
    # one utterance after a reset memory is decoded as a first one; short first utterances are this model's
    # weak point (it tends to extend them), hence a looser bound than the gate's
    assert rate <= 0.25, list(zip(refs, hyps, strict=True))


@needs_espeak
def test_daemon_through_pulseaudio_matches_offline(recognizer, tmp_path, report):
    """Two minutes of dictation played into a PulseAudio microphone while the real daemon listens (continuous
    mode: VAD endpoints, streaming partials, the memory of previous utterances). Pauses of 0.3-1.5 s end some
    utterances (the VAD hangover is 0.6 s) and not others. The committed text must be as accurate as offline
    transcription of the same sentences (within 2 points of WER). Words inserted or dropped near the joins between
    utterances are reported; with utterances of one or two sentences nearly every word is near a join, so they
    are the model's errors as much as the daemon's (the boundary gate is the long offline dictation's)."""
    require_pulse()
    audio, sentences = dictation(DAEMON_SECONDS, seed=7, pauses=(0.3, 1.5))
    reference = " ".join(sentences)
    # the yardstick: the same sentences transcribed offline one by one (the continuous audio through the offline
    # long-audio path is reported too: that path is this model's weak point, see the xfail above)
    offline_rate, _, _ = wer(sentences, [recognizer(synthesize(s, *HELDOUT_VOICES[0])).text for s in sentences])
    continuous_rate, _, _ = wer([reference], [recognizer(audio).text])
    with PulseAudio(tmp_path / "pulse") as pulse:
        config = write_config(
            tmp_path / "config.yaml",
            MODEL,
            tmp_path,
            # out of the box when this is the embedded model: no model configured
            model={"dir": None if MODEL == DEMO_MODEL else str(MODEL)},
            audio={"device": pulse.device_name},
            trigger={"mode": "continuous"},
            hotkeys={"enabled": False},
            typing={"enabled": False},
        )
        daemon = RunningDaemon(config, tmp_path, env=pulse.child_env())
        client = daemon.subscribe()
        try:
            pulse.play(np.concatenate([audio, np.zeros(SAMPLE_RATE, np.float32)]), timeout=len(audio) / 16000 + 60)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # every utterance ended (its final commits published)
                starts = {e["utterance_id"] for e in client.of_type("utterance_start")}
                if starts and starts == {e["utterance_id"] for e in client.of_type("utterance_end")}:
                    break
                time.sleep(0.2)
        finally:
            client.close()
            code = daemon.stop()
        assert code == 0, daemon.log()
    check_event_stream(client.events)
    segments = list(commits_by_utterance(client.events).values())
    rate, errors, words = wer([reference], [" ".join(segments)])
    counts = boundary_errors(reference, segments)
    report(
        f"demo model through the daemon (PulseAudio microphone, VAD): {len(audio) / 16000:.0f} s, "
        f"{len(segments)} utterances; WER {100 * rate:.2f} % ({errors}/{words}) vs offline {100 * offline_rate:.2f} % "
        f"(sentence by sentence; {100 * continuous_rate:.2f} % on the continuous audio); "
        f"{counts['duplicated']} duplicated and {counts['dropped']} dropped words at {counts['boundaries']} joins"
    )
    assert daemon.log().count("DEMO model") == 1
    assert len(segments) >= 10, segments
    assert rate <= offline_rate + MAX_DAEMON_WER_GAP, (rate, offline_rate, segments)


@pytest.mark.skipif(MODEL != DEMO_MODEL, reason="QASR_DEMO_MODEL: a candidate, not the embedded model")
def test_cli_uses_demo_model_and_says_so_once(tmp_path):
    """Out of the box: no model configured -> the demo model, with one notice on stderr."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
    cmd = [sys.executable, "-m", "qasr_live", "transcribe", str(DEMO_MODEL / "sample.wav"), "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("DEMO model") == 1, done.stderr
    reference = (DEMO_MODEL / "sample.txt").read_text()
    rate, _, _ = wer([reference], [done.stdout])
    assert rate <= MAX_WER, (done.stdout, reference)


@needs_espeak
@pytest.mark.parametrize(("shortcut", "exact"), [("memory_kv_reuse", False), ("reencode_open_window", True)])
def test_streaming_shortcuts_cost_no_accuracy(recognizer, report, shortcut, exact):
    """Each shortcut of the streaming recognizer against its exact setting: the same held-out sentences dictated
    one after another (partials every 0.5 s, the memory full and evicting), the WER stays within a point.
    memory_kv_reuse: true: the memory's KV entries are moved after new rows instead of recomputed.
    reencode_open_window: false: each second's encoder rows are computed once and never revised."""
    from qasr_live.config import EngineConfig, StreamingConfig
    from qasr_live.streaming.recognizer import StreamingRecognizer

    sentences = heldout_sentences(10, seed=11)
    audio = [synthesize(text, *HELDOUT_VOICES[0]) for text in sentences]
    rates = {}
    for value in (not exact, exact):
        settings = StreamingConfig(**{shortcut: value})
        rec = StreamingRecognizer(recognizer.model, EngineConfig(), settings, recognizer.encoder)
        hyps = []
        try:
            for pcm in audio:
                rec.begin()
                for i in range(0, len(pcm), SAMPLE_RATE // 2):
                    rec.add_audio(pcm[i : i + SAMPLE_RATE // 2])
                    rec.tick()
                hyps.append(rec.finish().text)
                rec.prepare()
            assert len(rec.memory.entries) < len(sentences) - 1  # the memory was full and evicted
        finally:
            rec.close()
        rates[value == exact] = wer(sentences, hyps)
    report(
        f"demo model, 10 sentences dictated in a row: WER with streaming.{shortcut}: {not exact} "
        f"{100 * rates[False][0]:.2f} % ({rates[False][1]}/{rates[False][2]}), exact {100 * rates[True][0]:.2f} %"
    )
    assert rates[False][0] <= rates[True][0] + 0.01
