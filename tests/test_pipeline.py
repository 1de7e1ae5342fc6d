"""Long-audio segmentation, the segment memory, the encoder worker process and q4_k export."""

from __future__ import annotations

import itertools
import os
import signal

import numpy as np
import pytest

from qasr_live.config import EngineConfig
from qasr_live.engine.encoder import AudioEncoder, window_batch
from qasr_live.engine.features import log_mel
from qasr_live.engine.model_dir import open_model_dir
from qasr_live.engine.worker import EncoderWorker
from qasr_live.errors import DecoderError, EncoderCrashed
from qasr_live.offline.pipeline import SEGMENT_ROLLBACK_TOKENS, Transcriber, is_pause, segment_bounds

SR = 16000


def per_second(rate: float):
    """A forced answer length (what the benchmarks pass): `rate` tokens per second of audio."""
    return lambda seconds: max(1, round(rate * seconds))


def noise_with_gaps(seconds: float, gaps: list[float], seed: int = 0, level: float = 0.0) -> np.ndarray:
    """Loud noise with 0.3 s stretches scaled by `level` (0: silence, i.e. pauses; 0.2: dips, still "speech")."""
    audio = np.random.default_rng(seed).standard_normal(int(seconds * SR)).astype(np.float32) * 0.2
    for g in gaps:
        audio[int((g - 0.15) * SR) : int((g + 0.15) * SR)] *= level
    return audio


def test_segments_tile_the_audio_and_cut_in_pauses():
    audio = noise_with_gaps(95.0, gaps=[27.4, 55.0, 83.1])
    bounds = segment_bounds(len(audio), 30.0, audio)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(audio)
    assert all(b[1] == c[0] for b, c in itertools.pairwise(bounds))
    assert all(0 < (b - a) <= 30 * SR for a, b in bounds)
    cuts = [b / SR for _, b in bounds[:-1]]
    assert cuts == pytest.approx([27.4, 55.0, 83.1], abs=0.02)


def test_cuts_land_mid_pause_over_a_noise_floor():
    """A pause is rarely digital silence: over a faint noise floor (-50 dB) the cut still lands in the middle of
    the pause, and `is_pause` tells it from a dip inside speech (-14 dB)."""
    audio = noise_with_gaps(95.0, gaps=[27.4, 55.0, 83.1], level=0.003)
    bounds = segment_bounds(len(audio), 30.0, audio)
    cuts = [b for _, b in bounds[:-1]]
    assert [c / SR for c in cuts] == pytest.approx([27.4, 55.0, 83.1], abs=0.05)
    assert all(is_pause(audio, c) for c in cuts)
    dips = noise_with_gaps(95.0, gaps=[27.4, 55.0, 83.1], level=0.2)
    assert not any(is_pause(dips, b) for _, b in segment_bounds(len(dips), 30.0, dips)[:-1])


def test_a_long_silence_is_a_pause():
    """Speech level is measured over the segment before the cut, not only the seconds next to it, which may be
    silent throughout."""
    audio = noise_with_gaps(40.0, gaps=[])
    audio[24 * SR : 32 * SR] = 0.0
    (start, cut), _ = segment_bounds(len(audio), 30.0, audio)
    assert 25 * SR < cut < 30 * SR
    assert is_pause(audio, cut, start)


def test_short_audio_is_one_segment():
    assert segment_bounds(5 * SR, 30.0, np.zeros(5 * SR, np.float32)) == [(0, 5 * SR)]


def test_window_batch_is_block_diagonal():
    rows = np.random.default_rng(0).standard_normal((250, 8)).astype(np.float32)
    batch, mask = window_batch(rows)
    assert batch.shape == (3, 104, 8) and mask.shape == (3, 1, 104, 104)
    assert np.array_equal(batch.reshape(-1, 8)[:250], rows)
    assert not mask[:2].any()  # full windows attend everywhere inside themselves
    tail = 250 - 208
    assert not mask[2, :, :, :tail].any() and (mask[2, :, :, tail:] < -1e8).all()


@pytest.fixture(scope="module")
def tiny_model(tiny_models):
    return open_model_dir(tiny_models["tied"], "fp32", "f32")


def record_decoding(transcriber: Transcriber, monkeypatch) -> tuple[list, list]:
    """What the transcriber feeds its decoder (("rows", n) and ("tokens", ids)) and every generation's result."""
    from qasr_live.engine.generation import generate
    from qasr_live.offline import pipeline

    decoder = transcriber.decoder
    fed, generations = [], []
    real_tokens, real_rows = decoder.feed_tokens, decoder.feed_embeddings
    monkeypatch.setattr(
        decoder,
        "feed_tokens",
        lambda ids, want_logits=True, **kw: (fed.append(("tokens", list(ids))), real_tokens(ids, want_logits, **kw))[1],
    )
    monkeypatch.setattr(
        decoder,
        "feed_embeddings",
        lambda rows, want_logits=False, **kw: (fed.append(("rows", len(rows))), real_rows(rows, **kw))[1],
    )

    def recording_generate(*args, **kwargs):
        generations.append(generate(*args, **kwargs))
        return generations[-1]

    monkeypatch.setattr(pipeline, "generate", recording_generate)
    return fed, generations


SEGMENTED = EngineConfig(segment_seconds=5.0, max_new_tokens=12, repetition_guard=False, kv_cache_type="f32")


def test_cut_inside_speech_uses_previous_segment_as_memory(tiny_model, monkeypatch):
    """Three decoder segments cut inside speech (no pause near the boundaries): each later one is prefilled with
    the previous segment's rows and committed text, and a non-final segment commits all but its last
    SEGMENT_ROLLBACK_TOKENS text tokens."""
    from qasr_live.engine.prompt import prompt_tail

    encoder = AudioEncoder(tiny_model.frontend, tiny_model.backend)
    transcriber = Transcriber(tiny_model, SEGMENTED, encoder)
    decoder = transcriber.decoder
    fed, generations = record_decoding(transcriber, monkeypatch)
    audio = noise_with_gaps(13.0, gaps=[4.6, 9.5], level=0.2)
    result = transcriber.transcribe(audio, language="English")

    assert len(result.segments) == 3
    assert result.segments[0].start == 0 and result.segments[-1].end == pytest.approx(13.0)
    own_rows = [encoder.encode(log_mel(audio[int(s.start * SR) : int(s.end * SR)])).shape[0] for s in result.segments]
    # segment 2 starts with segment 1's rows, which the KV cache still holds at the same positions
    assert [n for kind, n in fed if kind == "rows"] == [own_rows[0], own_rows[1], own_rows[1] + own_rows[2]]
    tail = decoder.tokenize(prompt_tail("English"))
    prefills = [ids for kind, ids in fed if kind == "tokens" and ids[: len(tail)] == tail]
    assert len(prefills) == 3
    committed = [g.tokens[:-SEGMENT_ROLLBACK_TOKENS] for g in generations[:2]] + [generations[2].tokens]
    assert prefills[0] == tail
    assert prefills[1] == tail + committed[0] and prefills[2] == tail + committed[1]
    assert result.token_ids == [t for g in generations for t in g.tokens]
    assert result.text == decoder.detokenize([t for c in committed for t in c]).strip()
    transcriber.close()
    # KV reuse changes nothing: the same segments, every prompt fed from position 0, give the same ids
    fresh = Transcriber(tiny_model, SEGMENTED, encoder)
    real_feed = fresh._kv.feed
    monkeypatch.setattr(fresh._kv, "feed", lambda prompt: (fresh._kv.invalidate(), real_feed(prompt))[1])
    assert fresh.transcribe(audio, language="English").token_ids == result.token_ids
    fresh.close()


def test_cut_in_a_pause_decodes_segments_independently(tiny_model, monkeypatch):
    """The same audio with silent pauses at the cuts: every segment is prefilled with its own rows only and no
    earlier text, and commits all it generates (no word spans a pause, so nothing needs re-generating)."""
    from qasr_live.engine.prompt import prompt_tail

    encoder = AudioEncoder(tiny_model.frontend, tiny_model.backend)
    transcriber = Transcriber(tiny_model, SEGMENTED, encoder)
    fed, generations = record_decoding(transcriber, monkeypatch)
    audio = noise_with_gaps(13.0, gaps=[4.6, 9.5])
    result = transcriber.transcribe(audio, language="English")

    assert len(result.segments) == 3
    own_rows = [encoder.encode(log_mel(audio[int(s.start * SR) : int(s.end * SR)])).shape[0] for s in result.segments]
    assert [n for kind, n in fed if kind == "rows"] == own_rows
    tail = transcriber.decoder.tokenize(prompt_tail("English"))
    assert [ids for kind, ids in fed if kind == "tokens" and ids[: len(tail)] == tail] == [tail] * 3
    assert all(len(g.tokens) > SEGMENT_ROLLBACK_TOKENS for g in generations)  # so a rollback would show
    assert [s.text for s in result.segments] == [transcriber.decoder.detokenize(g.tokens).strip() for g in generations]
    assert result.text == transcriber.decoder.detokenize([t for g in generations for t in g.tokens]).strip()
    transcriber.close()


def test_forced_length_ignores_end_of_sequence(tiny_model, monkeypatch):
    """Benchmarks force the answer length: a model that says end-of-sequence at once still answers 4 tokens per
    second of audio; without the option the same model answers nothing."""
    encoder = AudioEncoder(tiny_model.frontend, tiny_model.backend)
    transcriber = Transcriber(tiny_model, EngineConfig(kv_cache_type="f32"), encoder, answer_length=per_second(4.0))
    eos = transcriber.decoder.token_id("<|im_end|>")
    monkeypatch.setattr(transcriber.decoder, "sample", lambda index=-1: eos)
    audio = noise_with_gaps(3.0, gaps=[])
    assert transcriber.transcribe(audio, language="English").token_ids == [eos] * 12
    transcriber.answer_length = None
    assert transcriber.transcribe(audio, language="English").token_ids == []
    transcriber.close()


def test_forced_answers_are_made_of_words(tiny_model):
    """Random weights answer any token; forced (benchmark) answers only whole words with their leading space, so
    that streaming commits happen at word boundaries as with speech."""
    encoder = AudioEncoder(tiny_model.frontend, tiny_model.backend)
    audio = noise_with_gaps(3.0, gaps=[])
    forced = per_second(8.0)

    def is_word(piece: bytes) -> bool:
        return piece[:1] == b" " and piece[1:].isalpha()

    answers = {}
    for opened_forced in (False, True):  # the decoder opened for forced answers, or a plain one told to force
        transcriber = Transcriber(tiny_model, EngineConfig(), encoder, answer_length=forced if opened_forced else None)
        transcriber.answer_length = forced
        ids = transcriber.transcribe(audio, language="English").token_ids
        answers[opened_forced] = [transcriber.decoder.piece(t) for t in ids]
        transcriber.close()
    assert len(answers[True]) == len(answers[False]) == 24
    assert all(is_word(p) for p in answers[True])
    assert not all(is_word(p) for p in answers[False])  # what the random weights answer on their own


def test_encoder_worker_matches_in_process_and_survives_a_crash(tiny_model):
    mel = log_mel(np.random.default_rng(1).standard_normal(3 * SR).astype(np.float32) * 0.1)
    expected = AudioEncoder(tiny_model.frontend, tiny_model.backend).encode(mel)
    with EncoderWorker(tiny_model.frontend, tiny_model.backend) as worker:
        assert np.allclose(worker.encode(mel), expected, atol=1e-6)
        os.kill(worker.pid, signal.SIGKILL)
        with pytest.raises(EncoderCrashed):
            worker.encode(mel)
        worker.restart()
        assert worker.restarts == 1 and worker.alive
        assert np.allclose(worker.encode(mel), expected, atol=1e-6)


def test_q4_k_export_loads_and_transcribes(tiny_checkpoints, tmp_path):
    from qasr_live.export.exporter import export_checkpoint

    out = export_checkpoint(
        tiny_checkpoints["untied_gqa"], tmp_path / "q4", encoders=["int4"], decoders=["q4_k"], progress=lambda _l: None
    )
    model = open_model_dir(out)
    assert (model.encoder_precision, model.decoder_precision) == ("int4", "q4_k")
    assert sorted(p.name for p in out.iterdir()) == [
        "decoder.q4_k.gguf",
        "encoder_backend.int4.onnx",
        "encoder_frontend.int4.onnx",
        "manifest.json",
    ]
    transcriber = Transcriber(model, EngineConfig(max_new_tokens=8), AudioEncoder(model.frontend, model.backend))
    result = transcriber.transcribe(np.random.default_rng(2).standard_normal(2 * SR).astype(np.float32) * 0.1)
    transcriber.close()
    assert 0 < result.stats.generated_tokens <= 8


def test_q8_0_kv_cache_on_a_head_size_it_cannot_hold_names_the_fix(tiny_model, tiny_models):
    """q8_0 blocks of 32 must divide the head size: the "tied" tiny model's is 16, and llama.cpp refuses the
    context (it once read "out of memory? lower engine.n_ctx"); a 32 one works."""
    from qasr_live.engine.loading import open_decoder

    with pytest.raises(DecoderError, match=r"kv_cache_type q8_0 needs an attention head size divisible by 32.* 16;"):
        open_decoder(tiny_model, EngineConfig(kv_cache_type="q8_0"))
    decoder = open_decoder(open_model_dir(tiny_models["untied_gqa"], "fp32", "f16"), EngineConfig(kv_cache_type="q8_0"))
    decoder.close()
