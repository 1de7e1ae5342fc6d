"""The model's answer: language header parsing, no-speech, the repetition backstop and sampling."""

from __future__ import annotations

import numpy as np
import pytest

from qasr_live.config import EngineConfig
from qasr_live.engine.encoder import AudioEncoder
from qasr_live.engine.generation import GUARD_WINDOW, Generation, generate, is_looping
from qasr_live.engine.model_dir import open_model_dir
from qasr_live.engine.prompt import parse_answer
from qasr_live.offline import pipeline


@pytest.mark.parametrize(
    ("raw", "forced", "language", "text"),
    [
        ("language English<asr_text>Hello world.", None, "English", "Hello world."),
        ("language Chinese\n<asr_text>你好", None, "Chinese", "你好"),
        ("language None<asr_text>", None, "", ""),
        ("no header at all", None, None, "no header at all"),
        ("  just the words ", "German", "German", "just the words"),
    ],
)
def test_parse_answer(raw, forced, language, text):
    answer = parse_answer(raw, forced)
    assert (answer.language, answer.text) == (language, text)
    assert answer.no_speech == (language == "" and text == "")


class ScriptedDecoder:
    """Stands in for the llama.cpp decoder in pure-logic tests of the generation loop."""

    def __init__(self, script):
        self.script, self.fed = list(script), []

    def sample(self):
        return self.script.pop(0)

    def feed_tokens(self, ids, want_logits=True):
        self.fed += ids


def test_generate_stops_at_stop_token_and_budget():
    assert generate(ScriptedDecoder([5, 6, 99, 7]), {99}, 10) == Generation([5, 6], "eos")
    assert generate(ScriptedDecoder([5, 6, 7, 8]), {99}, 3) == Generation([5, 6, 7], "max_tokens")


def test_repetition_backstop_cuts_the_loop():
    words = list(range(10, 30))
    loop = [1, 2] * 20
    result = generate(ScriptedDecoder(words + loop), {99}, 100)
    assert result.stopped == "repetition"
    assert result.tokens == words
    assert not is_looping(words) and is_looping(words + [1] * (GUARD_WINDOW + 1))
    unguarded = generate(ScriptedDecoder(words + loop), {99}, 50, repetition_guard=False)
    assert unguarded.stopped == "max_tokens" and len(unguarded.tokens) == 50


@pytest.fixture(scope="module")
def transcriber(tiny_models):
    model = open_model_dir(tiny_models["tied"], "fp32", "f32")
    t = pipeline.Transcriber(model, EngineConfig(max_new_tokens=8), AudioEncoder(model.frontend, model.backend))
    yield t
    t.close()


@pytest.mark.parametrize(
    ("answer", "language", "text"),
    [("language English<asr_text> the words", "English", "the words"), ("language None<asr_text>", None, "")],
)
def test_pipeline_reports_the_stated_language(transcriber, monkeypatch, answer, language, text):
    ids = transcriber.decoder.tokenize(answer)
    monkeypatch.setattr(pipeline, "generate", lambda *a, **k: Generation(ids, "eos"))
    result = transcriber.transcribe(np.zeros(16000, np.float32))
    assert (result.language, result.text) == (language, text)
    assert result.token_ids == ids


def test_temperature_sampling_is_seeded(tiny_models):
    model = open_model_dir(tiny_models["tied"], "fp32", "f32")
    audio = np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 0.1
    runs = []
    for seed in (1, 1, 2):
        engine = EngineConfig(max_new_tokens=16, temperature=5.0, seed=seed, repetition_guard=False)
        t = pipeline.Transcriber(model, engine, AudioEncoder(model.frontend, model.backend))
        runs.append(t.transcribe(audio).token_ids)
        t.close()
    assert runs[0] == runs[1] and runs[0] != runs[2]
