"""Temperature fallback (the seed's recipe): a decode the repetition guard cut is decoded again at temperature
+0.3, +0.6, ... (seeded), up to engine.fallback_retries times, and the best kept: offline segments and the
daemon's final decode, on a tiny random model that loops on a pure tone (real llama.cpp decoding)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from qasr_live.config import EngineConfig, StreamingConfig
from qasr_live.engine.encoder import AudioEncoder
from qasr_live.engine.generation import FALLBACK_STEP, Generation, is_looping, with_fallback
from qasr_live.engine.model_dir import open_model_dir
from qasr_live.offline.pipeline import Transcriber
from qasr_live.streaming.recognizer import StreamingRecognizer

SR = 16000
ENGINE = EngineConfig(max_new_tokens=48, kv_cache_type="f32", decoder_threads=1, repetition_guard=True)
TONE = (0.3 * np.sin(np.arange(3 * SR) / SR * 2 * np.pi * 440)).astype(np.float32)


class Sampling:
    """Stands in for the decoder: records the sampling each attempt ran with."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int]] = []

    def set_sampling(self, temperature: float, seed: int = 0) -> None:
        self.calls.append((temperature, seed))


def test_fallback_steps_seeds_and_keeps_the_first_decode_without_a_loop():
    dec = Sampling()
    script = iter([Generation([1, 2], "repetition"), Generation([5, 6, 7], "eos"), Generation([9], "eos")])
    best, tries = with_fallback(dec, lambda: next(script), Generation([1], "repetition"), 4, 0.0, 7)  # type: ignore[arg-type]
    assert (best.tokens, best.stopped, tries) == ([5, 6, 7], "eos", 2)
    assert dec.calls == [(FALLBACK_STEP, 8), (2 * FALLBACK_STEP, 9), (0.0, 7)]  # back to greedy afterwards


def test_fallback_keeps_the_longest_when_every_decode_loops():
    dec = Sampling()
    lengths = iter([2, 6, 3, 1])
    best, tries = with_fallback(
        dec,  # type: ignore[arg-type]
        lambda: Generation(list(range(next(lengths))), "repetition"),
        Generation([1, 2, 3, 4], "repetition"),
        4,
        0.5,
        0,
    )
    assert tries == 4 and best.tokens == list(range(6))
    assert [round(t, 2) for t, _ in dec.calls] == [0.8, 1.1, 1.4, 1.7, 0.5]


def test_no_fallback_for_a_decode_that_did_not_loop():
    dec = Sampling()
    first = Generation([1, 2, 3], "eos")
    assert with_fallback(dec, lambda: pytest.fail("no re-decode"), first, 4, 0.0, 0) == (first, 0)  # type: ignore[arg-type]
    assert dec.calls == []


@pytest.fixture(scope="module")
def model(tiny_models):
    return open_model_dir(tiny_models["tied"], "fp32", "f32")


@pytest.fixture(scope="module")
def encoder(model):
    return AudioEncoder(model.frontend, model.backend)


def transcribe(model, encoder, **engine):
    t = Transcriber(model, dataclasses.replace(ENGINE, **engine), encoder)
    try:
        return t.transcribe(TONE, language="English")
    finally:
        t.close()


def test_offline_looping_segment_is_decoded_again_reproducibly(model, encoder, report, caplog):
    cut = transcribe(model, encoder, fallback_retries=0)
    assert cut.stats.fallbacks == 0 and "segment ended by repetition" in caplog.text  # the model loops
    first = transcribe(model, encoder)
    again = transcribe(model, encoder)
    assert 1 <= first.stats.fallbacks <= 4
    assert first.token_ids == again.token_ids and first.text == again.text  # seeded: the same every run
    assert first.token_ids != cut.token_ids
    if first.stats.fallbacks < 4:  # a re-decode ended without the guard: that one is kept
        assert not is_looping(first.token_ids)
    assert len(first.token_ids) >= len(cut.token_ids) or first.stats.fallbacks < 4
    other_seed = transcribe(model, encoder, seed=1)
    report(
        f"temperature fallback, offline tone: {first.stats.fallbacks} re-decode(s), "
        f"{len(cut.token_ids)} -> {len(first.token_ids)} tokens (seed 1: {other_seed.stats.fallbacks} re-decodes)"
    )


def recognize(model, encoder, **engine):
    rec = StreamingRecognizer(
        model, dataclasses.replace(ENGINE, **engine), StreamingConfig(), encoder, language="English"
    )
    try:
        rec.begin()
        for i in range(0, len(TONE), SR // 2):
            rec.add_audio(TONE[i : i + SR // 2])
            rec.tick()
        return rec.finish()
    finally:
        rec.close()


def test_the_daemons_looping_utterance_is_decoded_again_not_dropped(model, encoder, report):
    dropped = recognize(model, encoder, fallback_retries=0)
    assert dropped.no_speech and dropped.stats.stopped == "repetition" and dropped.stats.fallbacks == 0
    final = recognize(model, encoder)
    assert 1 <= final.stats.fallbacks <= 4
    assert not final.no_speech and final.text  # the utterance is kept
    assert final.text == "".join(c.text for c in final.commits)
    assert recognize(model, encoder).text == final.text  # seeded
    report(f"temperature fallback, streaming tone: {final.stats.fallbacks} re-decode(s), kept {len(final.text)} chars")
