"""The streaming recognizer on tiny random-weight models: incremental encoding (exact and approximate), KV-cache
reuse, rollback commits, language header, no speech, decoder memory, encoder worker crashes, long utterances.

Random weights make the text meaningless but every mechanism observable: the tests compare rows, token ids,
prompt layouts and counters, never the words.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal

import numpy as np
import pytest

from qasr_live.config import EngineConfig, StreamingConfig
from qasr_live.engine.encoder import WINDOW_ROWS, AudioEncoder
from qasr_live.engine.features import feature_output_length, log_mel
from qasr_live.engine.generation import Generation, generate
from qasr_live.engine.incremental import ClipEncoder
from qasr_live.engine.loading import open_decoder, stop_ids
from qasr_live.engine.model_dir import open_model_dir
from qasr_live.engine.prompt import prompt_head, prompt_tail
from qasr_live.engine.worker import EncoderWorker
from qasr_live.errors import ConfigError
from qasr_live.streaming import recognizer as rec_module
from qasr_live.streaming.commit_policy import CommitPolicy, starts_word, word_boundary
from qasr_live.streaming.memory import DecoderMemory, MemoryEntry
from qasr_live.streaming.recognizer import StreamingRecognizer

SR = 16000
# One decoder thread: on a shared 2-core machine llama.cpp's thread barriers turn any contention into stalls.
ENGINE = EngineConfig(max_new_tokens=24, repetition_guard=False, kv_cache_type="f32", decoder_threads=1)


def per_second(rate: float):
    """A forced answer length (what the benchmarks pass): `rate` tokens per second of audio."""
    return lambda seconds: max(1, round(rate * seconds))


def speechy(seconds: float, seed: int = 0, growing: bool = False) -> np.ndarray:
    """Noise with a syllable-like envelope. growing=True: 1 s of digital silence first, then ever louder, so
    Whisper's clamp (clip maximum - 8) keeps rising and changes chunks that were already encoded."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    envelope = np.repeat(rng.uniform(0.2, 1.0, n // 1600 + 1), 1600)[:n]
    audio = rng.standard_normal(n) * envelope * (np.linspace(0.01, 0.5, n) if growing else 0.1)
    if growing:
        audio[:SR] = 0.0
    return audio.astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of corresponding rows."""
    return float(np.mean(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


@pytest.fixture(scope="module")
def model(tiny_models):
    return open_model_dir(tiny_models["tied"], "fp32", "f32")


@pytest.fixture(scope="module")
def encoder(model):
    return AudioEncoder(model.frontend, model.backend)


@pytest.fixture
def make(model, encoder):
    made = []

    def factory(engine=ENGINE, enc=None, language="English", context="", answer_length=None, **streaming):
        r = StreamingRecognizer(
            model,
            engine,
            StreamingConfig(**streaming),
            enc or encoder,
            language=language,
            context=context,
            answer_length=answer_length,
        )
        made.append(r)
        return r

    yield factory
    for r in made:
        r.close()


@pytest.fixture
def realistic_text_rate(monkeypatch):
    """Random weights emit a token per step, ~50 tokens/s of audio at 0.5 s ticks; speech has ~3-5. A smaller
    per-tick budget keeps the text/rows ratio of the prompt realistic for the context-budget tests."""
    monkeypatch.setattr(rec_module, "PARTIAL_MAX_NEW_TOKENS", 8)


def run(rec, audio, step_s=0.5, ticks=True, after_tick=None, tick_last=True):
    """One utterance in blocks of step_s, a tick after each (tick_last=False: not after the last one, as when the
    endpoint comes between two ticks); returns (ticks, final, all commits)."""
    rec.begin()
    step, out, commits = int(step_s * SR), [], []
    for i in range(0, len(audio), step):
        rec.add_audio(audio[i : i + step])
        if ticks and (tick_last or i + step < len(audio)):
            out.append(rec.tick())
            commits += out[-1].commits
            if after_tick is not None:
                after_tick(len(out))
    final = rec.finish()
    return out, final, commits + final.commits


def test_forced_length_answers_the_utterance_so_far(make):
    """Benchmarks: each decode answers up to 4 tokens per second of the audio so far, end-of-sequence ignored."""
    rec = make(engine=dataclasses.replace(ENGINE, max_new_tokens=512), answer_length=per_second(4.0))
    eos = rec.decoder.token_id("<|im_end|>")
    rec.decoder.sample = lambda index=-1: eos  # a model that would stop at once
    ticks, _, _ = run(rec, speechy(3.0))
    assert [t.stats.generated_tokens for t in ticks] == [round(4 * t.stats.audio_s) for t in ticks]
    assert len(rec.last_generation.tokens) == 12


def test_interrupt_abandons_a_running_tick_and_loses_nothing(make):
    """At the endpoint the daemon interrupts a tick in progress: it returns before its generation is done, with
    no partial, and the final decode that follows gives the same text as a run without the interrupted tick."""
    import threading
    import time

    audio = speechy(3.0, seed=5)
    plain = make()
    expected = run(plain, audio, ticks=False)[1].text

    rec = make()
    rec.answer_length = per_second(8.0)  # a long tick (the same decoder)
    real_sample = rec.decoder.sample
    rec.decoder.sample = lambda index=-1: (time.sleep(0.05), real_sample(index))[1]  # a slow model: ~1 s a tick
    rec.begin()
    rec.add_audio(audio)
    timer = threading.Timer(0.2, rec.interrupt)
    timer.start()
    t0 = time.perf_counter()
    tick = rec.tick()
    elapsed = time.perf_counter() - t0
    timer.join()
    assert tick.partial is None and tick.stats.stopped == "interrupted"
    assert elapsed < 0.6 and 0 < tick.stats.generated_tokens < 24
    rec.decoder.sample = real_sample
    rec.answer_length = None
    assert rec.finish().text == expected
    rec.begin()  # a new utterance is not interrupted
    rec.add_audio(audio)
    assert rec.tick().stats.stopped != "interrupted"
    rec.cancel()


def test_speculation_is_the_final_decode_of_the_audio_it_saw(make):
    """Endpoint speculation: speculate() decodes the audio so far and commits nothing; finish(use_speculation=True)
    then commits exactly that decode (what a finish() right there would have given) without decoding again,
    while finish() without it decodes all the audio, the silence after the speculation included."""
    speech = speechy(3.0, seed=6)
    silence = np.zeros(SR // 2, np.float32)
    # exact rows: a decode of the same audio gives the same text, however the audio arrived
    exact = functools.partial(make, reencode_open_window=True)
    expected = run(exact(), speech, ticks=False)[1].text
    expected_all = run(exact(), np.concatenate([speech, silence]), ticks=False)[1].text

    for use, text in ((True, expected), (False, expected_all)):
        rec = exact()
        rec.begin()
        rec.add_audio(speech)
        assert rec.speculate() and not rec._utt.commits
        rec.add_audio(silence)  # the hangover
        spent = rec._utt.speculation_stats.values
        decodes = []
        real = rec._decode
        rec._decode = lambda *a, _real=real, _seen=decodes, **k: (_seen.append(1), _real(*a, **k))[1]
        final = rec.finish(use_speculation=use)
        assert final.text == text
        assert (not decodes) == use  # no second decode when the speculation is used
        if use:  # its profile is the speculation's: what the text cost
            assert final.stats.generated_tokens == spent["generated_tokens"] > 0
            assert final.stats.prefill_tokens == spent["prefill_tokens"] > 0
    rec = make()
    rec.begin()
    rec.add_audio(speech[: SR // 4])
    assert not rec.speculate()  # too short to decode on its own: finish() pads it as usual
    rec.cancel()


# --- 1. incremental encoding ----------------------------------------------------------------------------------


def test_incremental_encoding_equals_encoding_the_whole_clip(encoder):
    """After every update (random block sizes), the rows equal encode(log_mel(audio so far)). The audio starts
    with digital silence and keeps getting louder, so the clamp of already encoded chunks changes: the approximate
    mode, which never revisits a chunk, is far off on the same input, so the re-runs are what makes this exact."""
    audio = speechy(19.3, 1, growing=True)
    rng = np.random.default_rng(5)
    exact, approx = ClipEncoder(exact=True), ClipEncoder(exact=False)
    n, worst, approx_worst, refronted = 0, 0.0, 0.0, 0
    while n < len(audio):
        n = min(len(audio), n + int(rng.integers(800, 14000)))
        ref = encoder.encode(log_mel(audio[:n]))
        got = np.concatenate(exact.update(audio[:n], encoder))
        assert got.shape == ref.shape == (feature_output_length(n // 160), ref.shape[1])
        worst = max(worst, float(np.abs(got - ref).max()))
        approx_worst = max(approx_worst, float(np.abs(np.concatenate(approx.update(audio[:n], encoder)) - ref).max()))
        new_final = ClipEncoder.final_chunks(n) - ClipEncoder.final_chunks(n - 1)
        refronted += exact.frontend_chunks > new_final + 2
    assert worst < 1e-5
    assert approx_worst > 1e-2 and refronted > 0


@pytest.mark.parametrize("n", [16000 + 40, 32000 + 159, 3 * 16000 + 100])
def test_audio_ending_right_after_a_final_chunk_has_no_tail(encoder, n):
    """Lengths where every frame belongs to a final chunk (the tail is empty): the rows are still exact. The
    daemon's blocks hit such a length about once per second of speech."""
    audio = speechy(n / 16000, 4)[:n]
    clip = ClipEncoder(exact=True)
    clip.update(audio[: n - 5000], encoder)
    assert n // 160 == ClipEncoder.final_chunks(n) * 100
    rows = np.concatenate(clip.update(audio, encoder))
    np.testing.assert_allclose(rows, encoder.encode(log_mel(audio)), atol=1e-5)


def test_steady_audio_runs_each_chunk_through_the_frontend_once_and_freezes_windows(encoder):
    """Without clamp changes, a final chunk goes through the frontend once, and the backend re-runs only the
    open window (plus, once, a window the moment it completes)."""
    audio = speechy(18.0, 2)
    clip = ClipEncoder(exact=True)
    frozen, frozen_blocks = set(), []
    for n in range(3000, len(audio) + 1, 7000):
        prev_final = ClipEncoder.final_chunks(clip.n_samples)
        blocks = clip.update(audio[:n], encoder)
        final = ClipEncoder.final_chunks(n)
        tail_frames = n // 160 - final * 100
        assert clip.frontend_chunks == (final - prev_final) + -(-tail_frames // 100)
        completed = final // 8
        just_completed = completed - prev_final // 8
        open_rows = sum(len(b) for b in blocks) - completed * WINDOW_ROWS
        assert clip.backend_rows == open_rows + just_completed * WINDOW_ROWS
        for w in frozen:  # completed windows are the very same arrays from update to update
            assert blocks[w] is frozen_blocks[w]
        frozen_blocks = blocks
        frozen = set(range(completed))
    np.testing.assert_allclose(np.concatenate(blocks), encoder.encode(log_mel(audio[:n])), atol=1e-5)


def test_rows_used_at_finish_are_exact_after_any_schedule(make, encoder):
    audio = speechy(11.7, 3, growing=True)
    rec = make(memory_tokens=0, reencode_open_window=True)
    rng = np.random.default_rng(7)
    rec.begin()
    i = 0
    while i < len(audio):
        j = min(len(audio), i + int(rng.integers(500, 20000)))
        rec.add_audio(audio[i:j])
        i = j
        if rng.random() < 0.6:
            rec.tick()
    final = rec.finish()
    assert not final.no_speech
    np.testing.assert_allclose(rec.last_rows, encoder.encode(log_mel(audio)), atol=1e-5)
    assert rec.last_prompt.n_rows == len(rec.last_rows)  # memory off: the prompt's audio is the utterance


def test_approximate_mode_accuracy_and_cost(make, encoder, report, realistic_text_rate):
    """reencode_open_window: false against the exact mode, same audio and tick schedule: row error, token
    agreement of the final text, and decoder positions prefilled (ticks and endpoint)."""
    lines = []
    for label, audio in (("steady", speechy(12.3, 4)), ("growing", speechy(12.3, 4, growing=True))):
        results = {}
        for exact in (True, False):
            rec = make(reencode_open_window=exact, agreement=False)  # random weights rarely agree: text to compare
            ticks, final, _ = run(rec, audio, tick_last=False)
            results[exact] = (
                rec.last_rows,
                list(rec.memory.entries[-1].text_ids),
                sum(t.stats.prefill_tokens for t in ticks),
                final.stats.prefill_tokens,
                np.mean([t.stats.total_ms for t in ticks]),
            )
        (rows_e, ids_e, pre_e, fin_e, ms_e), (rows_a, ids_a, pre_a, fin_a, ms_a) = results[True], results[False]
        np.testing.assert_allclose(rows_e, encoder.encode(log_mel(audio)), atol=1e-5)
        diff = np.abs(rows_a - rows_e)
        front = encoder.frontend_rows(log_mel(audio))  # for scale: a backend over each 1 s chunk alone
        alone = np.concatenate([encoder.backend(front[i : i + 13]) for i in range(0, len(front), 13)])
        same = sum(a == b for a, b in zip(ids_e, ids_a, strict=False)) / max(len(ids_e), len(ids_a))
        prefix = next((i for i, (a, b) in enumerate(zip(ids_e, ids_a, strict=False)) if a != b), len(ids_e))
        lines.append(
            f"streaming approx vs exact ({label}, 12.3 s, ticks 0.5 s): rows max|d| {diff.max():.3g} mean|d| "
            f"{diff.mean():.3g} cos {cosine(rows_a, rows_e):.4f} (a backend per 1 s chunk alone: max|d| "
            f"{np.abs(alone - rows_e).max():.3g} cos {cosine(alone, rows_e):.4f}); final ids (random weights) agree "
            f"{same:.0%} by position, first {prefix} of {len(ids_e)} identical; prefill positions ticks {pre_e} -> "
            f"{pre_a}, endpoint {fin_e} -> {fin_a}; tick {ms_e:.1f} -> {ms_a:.1f} ms"
        )
        assert pre_a < pre_e and fin_a < fin_e
        assert diff.max() > 0  # it is an approximation
    for line in lines:
        report(line)


# --- 2. KV-cache reuse ----------------------------------------------------------------------------------------


def test_kv_cache_keeps_the_unchanged_prefix_and_matches_a_fresh_prefill(make, model, report, realistic_text_rate):
    """Ticks feed only what changed after the system turn, the memory rows and the frozen windows, and generate
    exactly the token ids a from-scratch prefill of the same prompt gives (exact mode: no memory KV reuse)."""
    rec = make(memory_kv_reuse=False)
    run(rec, speechy(3.0, 5), ticks=False)  # an utterance in memory
    memory_rows = len(rec.memory.entries[-1].rows)
    head = len(rec.decoder.tokenize(prompt_head("")))
    fresh = open_decoder(model, ENGINE)
    stops = stop_ids(fresh)
    audio = speechy(12.3, 6)
    rec.begin()
    saved, drafted, generated = [], 0, 0
    for i in range(0, 12 * SR, SR // 2):
        rec.add_audio(audio[i : i + SR // 2])
        tick = rec.tick()
        s = tick.stats
        if s.prompt_tokens == 0:
            continue
        assert s.prefill_tokens == s.prompt_tokens - s.reused_tokens
        frozen = (ClipEncoder.final_chunks(i) // 8) * WINDOW_ROWS  # frozen before this tick
        assert s.reused_tokens >= head + memory_rows + frozen
        saved.append(s.reused_tokens / s.prompt_tokens)
        drafted, generated = drafted + s.drafted_tokens, generated + s.generated_tokens
        prompt = rec.last_prompt
        fresh.rewind(0)
        fresh.feed_tokens(prompt.head, want_logits=False)
        fresh.feed_embeddings(np.concatenate(prompt.rows))
        fresh.feed_tokens(prompt.tail)
        assert generate(fresh, stops, len(rec.last_generation.tokens) or 1, False).tokens[
            : len(rec.last_generation.tokens)
        ] == list(rec.last_generation.tokens)
    rec.add_audio(audio[12 * SR :])  # the endpoint comes 0.3 s after the last tick
    final = rec.finish()
    fresh.close()
    assert final.stats.reused_tokens >= head + memory_rows + WINDOW_ROWS
    report(
        f"streaming KV reuse (exact, 12 s + {memory_rows} memory rows, ticks 0.5 s): {np.mean(saved):.0%} of prompt "
        f"positions kept per tick (min {min(saved):.0%}); endpoint fed {final.stats.prefill_tokens} of "
        f"{final.stats.prompt_tokens}; {drafted} of {generated} generated tokens verified from the previous tail"
    )


def test_memory_kv_reuse_feeds_only_the_current_utterance(make, report):
    """With memory_kv_reuse (the default) a decode after the current rows changed feeds those rows and the current
    utterance's text, not the header and the memory's text after them (moved, not recomputed); the same session
    in exact mode feeds them every time. The cache stays consistent: one sequence, no parked entries left."""
    fed = {}
    for reuse in (True, False):
        rec = make(memory_kv_reuse=reuse)
        for seed in (5, 7):  # two utterances in memory
            run(rec, speechy(3.0, seed), ticks=False)
        stable = None
        rec.begin()
        audio, prefills = speechy(6.3, 9), []
        for i in range(0, 6 * SR, SR // 2):
            rec.add_audio(audio[i : i + SR // 2])
            s = rec.tick().stats
            if s.prompt_tokens:
                prompt = rec.last_prompt
                stable = prompt.stable_tail
                prefills.append(s.prefill_tokens)
                changed_rows = prompt.n_rows - (s.reused_tokens - len(prompt.head)) if not reuse else None
                assert reuse or s.prefill_tokens == changed_rows + len(prompt.tail)
        rec.add_audio(audio[6 * SR :])  # the final decode has new audio too
        final = rec.finish()
        prefills.append(final.stats.prefill_tokens)
        d = rec.decoder
        assert d._llama.llama_memory_seq_pos_max(d._memory, 0) == d.n_past - 1
        if reuse:
            assert d._llama.llama_memory_seq_pos_max(d._memory, 1) == -1  # nothing left parked
        fed[reuse] = prefills
        assert stable is not None and stable > 10  # the header and two utterances' text
        rec.close()
    saved = [exact - reused for reused, exact in zip(fed[True], fed[False], strict=True)]
    report(f"memory KV reuse: positions fed per decode {fed[True]} against {fed[False]} in exact mode")
    assert min(saved[1:]) >= stable - 1  # every decode after the first row change skips the stable tail


@pytest.mark.parametrize("n_batch", [512, 8])
def test_draft_verification_generates_the_same_tokens_in_fewer_decodes(model, encoder, n_batch):
    """The previous decode's tail as a draft: accepted while it is what greedy decoding gives, one batch at a time
    (a draft longer than the decoder's batch is verified in pieces, not refused)."""
    d = open_decoder(model, dataclasses.replace(ENGINE, n_batch=n_batch))
    stops = stop_ids(d)
    rows = encoder.encode(log_mel(speechy(3.0, 23)))
    prompt = [*d.tokenize(prompt_head("")), None, *d.tokenize(prompt_tail("English"))]

    def decode(draft):
        d.rewind(0)
        d.feed_tokens(prompt[: prompt.index(None)], want_logits=False)
        d.feed_embeddings(rows)
        d.feed_tokens(prompt[prompt.index(None) + 1 :])
        calls = []
        real = d.feed_tokens
        d.feed_tokens = lambda ids, **kw: (calls.append(len(ids)), real(ids, **kw))[1]
        try:
            gen = generate(d, stops, 24, False, draft=draft)
        finally:
            del d.feed_tokens
        return gen, len(calls), d.n_past

    ref, ref_calls, ref_past = decode(())
    assert ref.drafted == 0 and ref_calls == len(ref.tokens) - 1 and len(ref.tokens) == 24
    for draft, least in ((ref.tokens, 20), (ref.tokens[:6] + [ref.tokens[0]] * 9, 5), ([-1, *ref.tokens], 0)):
        gen, calls, past = decode(draft)
        assert gen.tokens == ref.tokens and past == ref_past  # same tokens, same sequence
        assert gen.drafted >= least and calls <= ref_calls - gen.drafted + 1
    d.close()


# --- 3. rollback, commits, language ---------------------------------------------------------------------------


def test_commits_are_append_only_word_aligned_and_hold_back_the_rollback(make):
    rec = make(rollback_tokens=5, memory_tokens=10_000, agreement=False)  # the rollback rule alone
    tail_ids = rec.decoder.tokenize(prompt_tail("English"))
    committed: list[int] = []
    history = []

    def check(_n):
        prompt, gen = rec.last_prompt, list(rec.last_generation.tokens)
        assert prompt.tail == tail_ids + committed  # only the tail after the committed prefix is re-generated
        new = rec._utt.committed[len(committed) :]
        assert new == gen[: len(new)] and len(new) <= len(gen) - 5  # the last 5 tokens stay uncommitted
        if new:
            assert starts_word(gen, len(new), rec.decoder.piece)  # never half a word
        committed.extend(new)
        history.append(len(new))

    ticks, final, commits = run(rec, speechy(6.0, 8), after_tick=check)
    assert [c.idx for c in commits] == list(range(len(commits)))
    assert "".join(c.text for c in commits) == final.text and final.text
    all_ids = list(rec.memory.entries[-1].text_ids)  # every committed id of the utterance
    assert all_ids[: len(committed)] == committed and rec.decoder.detokenize(all_ids).strip() == final.text
    assert sum(history) > 0 and final.language == "English"
    for t in ticks:  # committed text + partial = hypothesis; partials are numbered
        if t.partial is not None:
            assert t.partial.rev >= 1


def test_word_boundaries(make):
    rec = make()
    tok, piece = rec.decoder.tokenize, rec.decoder.piece
    ids = tok(" hello world again")  # ' ', 'h', 'el', 'lo', ' world', ' ', 'ag', 'a', 'in'
    assert [k for k in range(1, len(ids)) if starts_word(ids, k, piece)] == [4, 5]
    assert (
        word_boundary(ids, len(ids), piece) == 5
        and word_boundary(ids, 4, piece) == 4
        and word_boundary(ids, 3, piece) == 0
    )
    cjk = tok("你好世界。")  # multi-byte characters split over tokens: boundaries only between characters
    pieces = [rec.decoder.piece(t) for t in cjk]
    good = [k for k in range(1, len(cjk)) if starts_word(cjk, k, piece)]
    assert good and all(not 0x80 <= pieces[k][0] < 0xC0 for k in good)
    accented = tok(" café über")
    assert [k for k in range(1, len(accented)) if starts_word(accented, k, piece)] == [6]


WORD_PIECES = {**{i: f" w{i}".encode() for i in range(10)}, 10: b"ty"}  # 10 continues the word before it


def test_commit_policy_holds_back_the_rollback_window_at_word_boundaries():
    """The pure policy, no decoder: all but `rollback_tokens` of the tail, cut back to where a word starts."""
    policy = CommitPolicy(WORD_PIECES.__getitem__, rollback_tokens=2, agreement_samples=None)
    assert policy.tick(8000, "English", [0, 1, 2, 3, 4]) == 3
    assert policy.tick(9000, "English", [0, 1, 2, 10, 10, 3]) == 2  # not inside the word "w2tyty"
    assert policy.tick(9500, "English", [0, 10, 10, 1]) == 0  # the only word boundary is inside the window
    assert policy.rollover([0, 1, 2, 10, 10, 3]) == 2


def test_commit_policy_agrees_with_a_tick_that_heard_less_audio():
    """LocalAgreement-2 over `agreement_samples`: a tick commits what the latest tick that heard at least that
    much less audio agrees on (same language); earlier ticks keep only what did not get committed."""
    policy = CommitPolicy(WORD_PIECES.__getitem__, rollback_tokens=0, agreement_samples=4000)
    assert policy.tick(8000, "English", [0, 1, 2]) == 0  # nothing earlier to agree with
    assert policy.tick(10000, "English", [0, 1, 5]) == 0  # only 2000 samples earlier: too close to compare
    assert policy.tick(12000, "English", [0, 1, 6, 7]) == 2  # agrees with the tick at 8000 on [0, 1]
    assert [h.tail for h in policy.heard] == [(2,), (5,), (6, 7)]  # after the committed prefix
    assert policy.tick(14000, "English", [6, 7, 8]) == 0  # the tick at 10000 said 5
    assert policy.tick(16000, "German", [6, 7, 8]) == 0  # the tick at 12000 agrees, in another language
    assert policy.tick(20000, "German", [6, 7, 9]) == 2
    policy.forget()
    assert policy.tick(30000, "German", [9]) == 0


def test_local_agreement_commits_only_what_two_ticks_agree_on(make):
    rec = make(rollback_tokens=0, agreement=True, agreement_ms=0, memory_tokens=0)  # the previous tick
    state = {"prev": None, "committed": 0, "made": 0}

    def check(_n):
        utt = rec._utt
        if rec.last_generation is None:  # the first 0.25 s: too short to decode
            return
        gen = list(rec.last_generation.tokens)
        new = utt.committed[state["committed"] :]
        if new:
            assert state["prev"] is not None and state["prev"][: len(new)] == new == gen[: len(new)]
            state["made"] += 1
        state["committed"] = len(utt.committed)
        state["prev"] = gen[len(new) :]

    _, final, commits = run(rec, speechy(6.0, 9), step_s=0.25, after_tick=check)
    assert "".join(c.text for c in commits) == final.text


@pytest.mark.parametrize("agreement_ms", [0, 400])
def test_agreement_needs_more_audio_than_a_guess_of_words_not_yet_spoken(make, monkeypatch, agreement_ms):
    """A model that runs ahead of the audio can guess the same continuation on two ticks 300 ms apart. Compared
    with the previous tick (agreement_ms 0) the guess is committed; with a tick that heard 400 ms less audio the
    words actually spoken (decodes from 1.2 s on) contradict it and only they are committed."""
    guess, spoken = "Please find the file by the end of the day.", "Please find the agenda tonight."
    rec = make(rollback_tokens=1, agreement=True, agreement_ms=agreement_ms, memory_tokens=0)
    calls = []

    def fake(decoder, stops, budget, guard=True, on_token=None, draft=(), interrupt=None):
        calls.append(len(rec._utt.audio))
        ids = decoder.tokenize(guess if calls[-1] < 1.2 * SR else spoken)  # the decodes at 0.6 and 0.9 s guess
        return Generation(ids[len(rec._utt.committed) :], "eos")

    monkeypatch.setattr(rec_module, "generate", fake)
    _, final, commits = run(rec, speechy(3.0, 3), step_s=0.3)
    assert calls[:3] == [int(0.3 * SR * k) for k in range(2, 5)]  # ticks from 0.6 s (MIN_SECONDS) on
    early = "".join(c.text for c in commits[: len(commits) - len(final.commits)])  # the ticks' commits
    if agreement_ms == 0:
        assert "file" in early  # the guess agreed with itself
    else:
        assert early and spoken.startswith(early) and final.text == spoken
        assert "".join(c.text for c in commits) == spoken


def scripted(monkeypatch, answers):
    """The generation seam: the real decoder is prefilled, then `answers` (strings, one per decode, the last one
    repeated) stand in for what the model generates. Only for behaviour random weights cannot produce."""
    calls = []

    def fake(decoder, stops, budget, guard=True, on_token=None, draft=(), interrupt=None):
        text = answers[min(len(calls), len(answers) - 1)]
        calls.append(text)
        return Generation(decoder.tokenize(text)[:budget], "eos")

    monkeypatch.setattr(rec_module, "generate", fake)
    return calls


def test_auto_language_header_is_fixed_at_the_first_commit(make, monkeypatch):
    rec = make(language=None, memory_tokens=0, agreement=False)  # random weights rarely agree
    tok = rec.decoder.tokenize
    words = " one two three four five six seven eight nine ten"
    scripted(monkeypatch, ["language English<asr_text>" + words, words])
    rec.begin()
    rec.add_audio(speechy(1.0, 10))
    first = rec.tick()
    assert rec.last_prompt.tail == tok(prompt_tail(None))  # the model states the language
    assert first.commits and first.language == "English"
    rec.add_audio(speechy(0.5, 11))
    committed = list(rec._utt.committed)
    rec.tick()
    assert rec.last_prompt.tail == tok(prompt_tail("English")) + committed  # now written as the header
    final = rec.finish()
    assert final.language == "English" and final.text.startswith(first.commits[0].text)


def test_forced_language_writes_the_header(make):
    rec = make(language="German")
    rec.begin()
    rec.add_audio(speechy(1.0, 12))
    tick = rec.tick()
    assert rec.last_prompt.tail[: len(rec.decoder.tokenize(prompt_tail("German")))] == rec.decoder.tokenize(
        prompt_tail("German")
    )
    assert tick.language == "German"
    rec.cancel()


# --- 4. no speech ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("language", "answer"), [(None, "language None<asr_text>"), ("English", "")])
def test_no_speech_answers_publish_nothing(make, monkeypatch, language, answer):
    rec = make(language=language)
    scripted(monkeypatch, [answer])
    ticks, final, commits = run(rec, speechy(2.0, 13))
    assert all(t.partial is None and not t.commits for t in ticks)
    assert final.no_speech and final.text == "" and final.language is None and not commits
    assert rec.memory.entries == ()  # no-speech utterances never enter the memory


def test_a_looping_model_is_no_speech_without_the_fallback(make):
    """Real decoder output: the tiny model loops on a pure tone; the repetition guard cuts it, ticks publish
    nothing and, with the temperature fallback off, the utterance ends as no speech (with it on, the utterance
    is decoded again: tests/test_fallback.py)."""
    rec = make(engine=dataclasses.replace(ENGINE, repetition_guard=True, fallback_retries=0))
    tone = (0.3 * np.sin(np.arange(3 * SR) / SR * 2 * np.pi * 440)).astype(np.float32)
    ticks, final, commits = run(rec, tone)
    assert all(t.stats.stopped == "repetition" and t.partial is None for t in ticks)
    assert final.stats.stopped == "repetition"
    assert final.no_speech and final.text == "" and not commits and rec.memory.entries == ()


# --- 5. decoder memory ----------------------------------------------------------------------------------------


def entry(rows: int, ids: int, language="English") -> MemoryEntry:
    return MemoryEntry(np.full((rows, 4), rows, np.float32), tuple(range(ids)), language)


def test_memory_budget_and_language():
    memory = DecoderMemory(max_tokens=140, max_utterances=3)
    assert memory.add(entry(50, 10)) and memory.add(entry(40, 10)) and memory.add(entry(30, 5))
    assert [len(e.rows) for e in memory.entries] == [40, 30]  # 60 + 50 + 35 > 140: the oldest went
    assert memory.tokens == 85
    assert memory.add(entry(5, 5)) and memory.add(entry(6, 1))
    assert [len(e.rows) for e in memory.entries] == [30, 5, 6]  # at most 3 utterances
    assert not memory.add(entry(140, 20)) and not memory.add(entry(3, 0))  # over budget alone; no text
    assert [len(e.rows) for e in memory.entries] == [30, 5, 6]
    memory.add(entry(7, 1, "German"))
    assert memory.select(None) == ("German", [memory.entries[-1]])  # auto: the newest entry's language
    header, used = memory.select("English")
    assert header == "English" and used == []  # only the newest run of one language
    memory.clear()
    assert memory.select("English") == ("English", []) and memory.select(None) == (None, [])


def test_previous_utterances_are_placed_before_the_current_one(make):
    rec = make(memory_tokens=400, memory_utterances=2)
    tok = rec.decoder.tokenize
    _, first, _ = run(rec, speechy(3.0, 14))
    mem = rec.memory.entries[-1]
    assert np.array_equal(mem.rows, rec.last_rows) and rec.decoder.detokenize(list(mem.text_ids)).strip() == first.text
    rec.begin()
    rec.add_audio(speechy(1.0, 15))
    tick = rec.tick()
    prompt = rec.last_prompt
    assert prompt.rows[0] is mem.rows  # memory rows, then the current rows: one audio block
    assert prompt.n_rows == len(mem.rows) + feature_output_length(SR // 160)
    assert prompt.tail[: len(tok(prompt_tail("English"))) + len(mem.text_ids)] == tok(prompt_tail("English")) + list(
        mem.text_ids
    )
    head = len(tok(prompt_head("")))
    assert tick.stats.reused_tokens >= head + len(mem.rows)  # primed by begin(), not fed by the tick
    final = rec.finish()
    assert len(rec.memory.entries) == 2 and not final.no_speech
    run(rec, speechy(2.0, 16), ticks=False)
    assert len(rec.memory.entries) == 2  # memory_utterances
    rec.reset_memory()
    assert rec.memory.entries == ()
    off = make(memory_tokens=0)
    run(off, speechy(1.0, 17))
    assert off.memory.entries == ()


# --- 6. encoder worker crash ----------------------------------------------------------------------------------


def test_prepare_moves_the_memory_prefill_out_of_begin(make):
    """Between utterances prepare() prefills what the next begin() needs (system turn and decoder memory), so
    that begin() feeds nothing; without it begin() pays exactly that prefill."""

    def counted(rec) -> list[int]:
        fed, real = [], rec.decoder.feed_embeddings

        def feed(rows, want_logits=False, **kw):
            fed.append(len(rows))
            return real(rows, want_logits, **kw)

        rec.decoder.feed_embeddings = feed
        return fed

    twins = [make(memory_utterances=1, memory_kv_reuse=False), make(memory_utterances=1, memory_kv_reuse=False)]
    for rec in twins:  # two utterances each: the second one replaces the first in the one-entry memory
        for seed in (7, 8):
            run(rec, speechy(2.0, seed=seed), ticks=False)
    prepared, plain = twins
    fed_prepared, fed_plain = counted(prepared), counted(plain)
    prepared.prepare()
    assert sum(fed_prepared) == len(prepared.memory.select("English")[1][0].rows)
    fed_prepared.clear()
    prepared.begin()
    plain.begin()
    assert fed_prepared == [] and fed_plain == [len(plain.memory.select("English")[1][0].rows)]
    for rec in twins:
        rec.cancel()


def test_encoder_worker_crash_loses_nothing(make, model):
    """Kill the real worker process between ticks and just before the endpoint: it is restarted, the encoding is
    redone from the retained audio, and text and rows are those of an uninterrupted run."""
    audio = speechy(9.0, 18, growing=True)
    with EncoderWorker(model.frontend, model.backend) as worker:
        rec = make(enc=worker, memory_tokens=0)
        _, expected, _ = run(rec, audio)
        expected_rows = rec.last_rows
        _, expected_at_once, _ = run(rec, audio, ticks=False)

        def kill(n):
            if n in (6, 12):
                os.kill(worker.pid, signal.SIGKILL)

        ticks, final, commits = run(rec, audio, after_tick=kill)
        restarted = [i for i, t in enumerate(ticks) if t.stats.encoder_restarts]
        assert restarted == [6, 12] and final.stats.encoder_restarts == 0  # the ticks after the kills
        assert final.text == expected.text and "".join(c.text for c in commits) == final.text
        np.testing.assert_allclose(rec.last_rows, expected_rows, atol=1e-6)
        rec.begin()
        rec.add_audio(audio)
        os.kill(worker.pid, signal.SIGKILL)
        at_once = rec.finish()
        assert at_once.stats.encoder_restarts == 1 and at_once.text == expected_at_once.text
        assert worker.restarts == 3 and worker.alive


# --- 7. long utterances ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ticks", [True, False])
def test_long_utterances_roll_over_within_the_context(make, ticks, realistic_text_rate):
    engine = dataclasses.replace(ENGINE, n_ctx=512, segment_seconds=5.0, max_new_tokens=8)
    rec = make(engine=engine, memory_tokens=0)
    out, final, commits = run(rec, speechy(21.0, 19), ticks=ticks)  # the decoder raises if n_ctx overflows
    rollovers = sum(t.stats.rollovers for t in out) + final.stats.rollovers
    assert rollovers >= 3
    assert all(t.stats.prompt_tokens <= 512 for t in [*out, final] if not t.stats.rollovers)
    assert "".join(c.text for c in commits) == final.text and [c.idx for c in commits] == list(range(len(commits)))


def test_context_budget_drops_memory_then_rolls_over(make, realistic_text_rate):
    engine = dataclasses.replace(ENGINE, n_ctx=512, max_new_tokens=8)
    rec = make(engine=engine, memory_tokens=300)
    run(rec, speechy(8.0, 20), ticks=False)
    assert rec.memory.entries
    used = []
    out, final, _ = run(rec, speechy(40.0, 21), step_s=1.0, after_tick=lambda _n: used.append(len(rec._utt.memory)))
    assert used[0] == 1 and used[-1] == 0  # the memory left the prompt first
    assert max(t.stats.prompt_tokens for t in out if not t.stats.rollovers) <= 512
    assert sum(t.stats.rollovers for t in out) + final.stats.rollovers >= 1


# --- 8. surface -----------------------------------------------------------------------------------------------


def test_surface_and_stats(make, report):
    rec = make(context="qasr, llama.cpp", reencode_open_window=True)  # rows compared with an offline encoding
    with pytest.raises(RuntimeError):
        rec.tick()
    audio = speechy(5.0, 22)
    rec.begin()
    with pytest.raises(RuntimeError):
        rec.begin()
    pcm16 = (audio[:SR] * 32768).astype(np.int16)
    rec.add_audio(pcm16)  # int16 and float32 alike
    rec.add_audio(audio[SR:])
    assert rec.tick().stats.prompt_tokens > 0
    fed = np.concatenate([pcm16 / np.float32(32768), audio[SR:]])
    np.testing.assert_allclose(np.concatenate(rec.last_prompt.rows), rec.encoder.encode(log_mel(fed)), atol=1e-5)
    assert rec.last_prompt.head == rec.decoder.tokenize(prompt_head("qasr, llama.cpp"))
    rec.cancel()
    assert rec.memory.entries == () and not rec.active
    rec.set_recognition("English", "")  # the next utterance
    ticks, final, _ = run(rec, audio)
    assert rec.last_prompt.head == rec.decoder.tokenize(prompt_head(""))
    np.testing.assert_allclose(rec.last_rows, rec.encoder.encode(log_mel(audio)), atol=1e-5)
    s = ticks[-1].stats
    assert s.encoder_ms > 0 and s.prefill_ms > 0 and s.generate_ms > 0 and s.generated_tokens > 0
    assert s.rows == feature_output_length(len(audio) // 160) and s.audio_s == pytest.approx(5.0)
    median = {k: np.median([getattr(t.stats, k) for t in ticks]) for k in ("total_ms", "encoder_ms", "prefill_ms")}
    report(
        f"streaming tick on the tiny model (5 s, ticks 0.5 s): median {median['total_ms']:.1f} ms (encoder "
        f"{median['encoder_ms']:.1f}, prefill {median['prefill_ms']:.1f}); endpoint {final.stats.total_ms:.1f} ms"
    )


def test_bad_context_is_refused_and_a_failed_begin_leaves_no_utterance(make) -> None:
    """Issue #24 item 2: a context the prompt cannot hold is refused before anything changes, and an utterance
    whose start fails (here: a prefill that cannot encode its context) leaves the recognizer free."""
    rec = make(context="qasr")
    limit = rec.decoder.n_ctx // 4
    for context, message in (("\ud800", "not valid text"), ("word " * (2 * limit), f"at most {limit} tokens")):
        with pytest.raises(ConfigError, match=message):
            rec.set_recognition("English", context)
        with pytest.raises(ConfigError, match=message):
            make(context=context)
    rec.begin()
    rec.add_audio(speechy(1.0, 3))
    rec.finish()
    assert rec.last_prompt.head == rec.decoder.tokenize(prompt_head("qasr"))  # unchanged by the refusals
    rec._context = "\ud800"  # past the check: what any failure inside begin()'s prefill does
    with pytest.raises(UnicodeEncodeError):
        rec.begin()
    assert not rec.active
    rec._context = ""
    rec.begin()  # not "begin() while an utterance is active"
    rec.add_audio(speechy(1.0, 4))
    assert rec.finish().stats.audio_s == pytest.approx(1.0)
