"""The streaming recognizer: partial results while the user speaks, append-only commits, a final result at the
endpoint. Synchronous and sans-I/O: the daemon owns threads, clocks and sockets and calls these methods from one
worker thread (architecture.md §4).

Per utterance::

    begin()                      a new utterance (prefills the system turn and the decoder memory)
    add_audio(pcm) ...           16 kHz mono int16/float32; cheap: the audio is only retained
    tick() -> Tick               a partial decode of the audio so far: new commits + the uncommitted tail
    finish() -> Final            the endpoint: final decode, everything committed, utterance into memory
    cancel()                     or: drop it (nothing committed later, nothing into memory)

**Incremental encoding** (engine/incremental.py): each final 1 s chunk goes through the encoder frontend once, the
backend re-runs only the open 8 s window; `streaming.reencode_open_window: false` freezes rows earlier.

**KV-cache reuse.** The decoder keeps what its sequence holds (system turn, rows, tail tokens, generated tokens);
each decode keeps the longest unchanged prefix (`Decoder.rewind`, i.e. `llama_memory_seq_rm`) and feeds only the
rest: the system turn, the memory rows and the frozen windows are not fed again. The text follows the audio, so a
changed row invalidates it; with `streaming.memory_kv_reuse` (the default) the header and the memory's text are
not fed again anyway: their KV entries are parked in a spare sequence while the new rows are fed and moved after
them (PrefixCache.feed_until `reuse`), and an utterance leaving the memory moves the others down instead of
prefilling them again (`shift`). A decode then costs the changed rows and the current utterance's text, whatever
the history (docs/performance.md, "Streaming latency over a session"); `false` keeps every prompt bit-exact with
a fresh prefill. The previous decode's uncommitted tail is passed to generation as a draft: the tokens it
reproduces are verified in one batch instead of one decode each. A partial decode's prefill stops between
batches when the endpoint comes (`interrupt`), so the final decode does not wait for it.

**Rollback and commits** (commit_policy.py): each decode re-generates only the tail after the committed prefix
(the committed ids follow the header as assistant text); a tick commits what left the rollback window, at a word
boundary, and with `agreement: true` only what an earlier tick agrees with. finish() commits the rest. Commits
are append-only, and an utterance's commits concatenate to Final.text (the first one has its leading whitespace
stripped, the last one its trailing whitespace).

**Language.** A forced language writes the header. Auto-detect: the model states it (`language X<asr_text>`) on
every decode until something is committed, then the stated language is written as the header (fixed for the
utterance). With decoder memory the memory's language is the header, as for the offline pipeline's segments.

**No speech.** `language None` or an empty answer with nothing committed end the utterance with
Final(no_speech=True, text=""); a tick that says `language None` or loops publishes nothing. A final decode the
repetition guard cut is decoded again at higher temperatures (`engine.fallback_retries`, seeded) and the best
kept: a looping utterance is re-decoded, never dropped (with the fallback off, a loop is no speech).

**Long utterances** (rollover.py). The prompt must fit `engine.n_ctx` with room for generation. When the current
part of an utterance exceeds `engine.segment_seconds`, or the prompt would not fit (memory entries are dropped from the
utterance's prompt first), the utterance *rolls over* like the offline pipeline's segments: its audio up to the
last completed window (or chunk) is decoded, all but `rollback_tokens` of its text committed, and it becomes the
memory of the rest, which is encoded as a new clip. One decode per rollover; nothing is lost or repeated.

**Encoder worker resilience.** If the encoder worker dies (EncoderCrashed), it is restarted and the failed encoding
is redone from the retained audio (everything encoded before lives in this process and stays valid).

Threads: see StreamingRecognizer. `last_prompt`, `last_generation` and `last_rows` are diagnostics for tests and
benchmarks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import numpy as np

from qasr_live.audio.pcm import SAMPLE_RATE
from qasr_live.config import EngineConfig, StreamingConfig
from qasr_live.engine.encoder import Encoder
from qasr_live.engine.generation import AnswerLength, Generation, generate, with_fallback
from qasr_live.engine.incremental import ClipEncoder
from qasr_live.engine.kv_cache import PrefixCache
from qasr_live.engine.loading import MIN_SECONDS, context_size, open_decoder, stop_ids
from qasr_live.engine.model_dir import ModelDir
from qasr_live.engine.prompt import ASR_TEXT, Prompt, build_prompt, prompt_head, prompt_tail, split_answer
from qasr_live.errors import ConfigError, EncoderCrashed
from qasr_live.streaming.commit_policy import CommitPolicy
from qasr_live.streaming.memory import DecoderMemory, MemoryEntry
from qasr_live.streaming.results import Commit, Final, Partial, StatsSum, Tick
from qasr_live.streaming.rollover import LongUtterances
from qasr_live.streaming.utterance import Decoded, Utterance

_LOGGER = logging.getLogger(__name__)

PARTIAL_MAX_NEW_TOKENS = 32  # per tick, as the official streaming loop; the final decode gets engine.max_new_tokens
MAX_ENCODER_RESTARTS = 2  # per encoding; a worker that dies again at once is a real error
_MIN_TICK_SAMPLES = int(MIN_SECONDS * SAMPLE_RATE)


class StreamingRecognizer(LongUtterances):
    """Owns a Decoder; borrows the encoder (AudioEncoder or EncoderWorker: frontend/backend, and restart() for a
    worker). Methods other than add_audio must be called from one thread at a time; add_audio may run
    concurrently with tick()/finish() (the audio it adds is seen by the next one).

    `answer_length` (benchmarks): seconds of the utterance so far -> the number of tokens its answer is forced to
    (None: stop at end-of-sequence); each decode generates the tail up to that length, without stop tokens or
    repetition guard. Given at construction, the decoder samples only whole words (`open_decoder`)."""

    def __init__(
        self,
        model: ModelDir,
        engine: EngineConfig,
        streaming: StreamingConfig,
        encoder: Encoder,
        *,
        language: str | None = None,
        context: str = "",
        answer_length: AnswerLength | None = None,
    ) -> None:
        self.model = model
        self.engine = engine
        self.streaming = streaming
        self.encoder = encoder
        self.answer_length = answer_length
        # The KV cache is sized from what one utterance can need (decoder memory + one segment), not a fixed
        # 2048: unused positions are resident memory (docs/performance.md "Memory budget").
        n_ctx = context_size(engine, memory_tokens=streaming.memory_tokens)
        self.decoder = open_decoder(
            model,
            engine,
            n_ctx=n_ctx,
            words_only=answer_length is not None,
            spare_sequence=streaming.memory_kv_reuse,
        )
        self.asr_text_id = self.decoder.token_id(ASR_TEXT)
        self.stop_ids = stop_ids(self.decoder)
        self.memory = DecoderMemory(streaming.memory_tokens, streaming.memory_utterances)
        self._agreement_samples = streaming.agreement_ms * SAMPLE_RATE // 1000
        self._language, self._context = language, ""
        self._utt: Utterance | None = None
        self._kv = PrefixCache(self.decoder)
        self._interrupt = threading.Event()
        self._pieces: dict[int, bytes] = {}
        self._token_cache: dict[str, list[int]] = {}
        # Diagnostics (tests, benchmarks): the last decode's prompt and generation, the rows of the last clip.
        self.last_prompt: Prompt | None = None
        self.last_generation: Generation | None = None
        self.last_rows: np.ndarray | None = None
        try:
            self.set_recognition(language, context)  # config.yaml's context: refused at start, like a message's
        except BaseException:
            self.decoder.close()
            raise

    # --- public surface ---------------------------------------------------------------------------------------
    def set_recognition(self, language: str | None, context: str) -> None:
        """Forced language (None: auto-detect) and context for the next utterances (not the current one).
        A context the prompt cannot hold is refused (``ConfigError``) and nothing changes."""
        self.check_context(context)
        self._language, self._context = language, context

    def check_context(self, context: str) -> None:
        """Refuse a context that is not text (a lone surrogate cannot be encoded) or that takes more than a quarter
        of the decoder's context window: every utterance would fail (or hear nothing) until it is changed."""
        try:
            context.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ConfigError(
                f"recognition.context: not valid text ({e.reason} at character {e.start}); send UTF-8 text"
            ) from None
        limit = self.decoder.n_ctx // 4
        n = len(self.decoder.tokenize(prompt_head(context))) - len(self._tokenize(prompt_head("")))
        if n > limit:
            raise ConfigError(
                f"recognition.context: {n} tokens ({len(context)} characters) is too long; at most {limit} tokens "
                f"(a quarter of engine.n_ctx {self.decoder.n_ctx}): shorten it to the names and terms that matter"
            )

    @property
    def active(self) -> bool:
        return self._utt is not None

    def interrupt(self) -> None:
        """Make a running (or the next) tick() return at once with nothing new: the endpoint has come and the final
        decode should not wait for a partial nobody will see. Thread-safe; speculate(), finish(), cancel() and begin()
        reset it."""
        self._interrupt.set()

    def begin(self) -> None:
        """Start an utterance. Prefills the system turn and the decoder memory (kept from the previous utterance's
        KV cache where unchanged), so that ticks pay only for the new audio."""
        if self._utt is not None:
            raise RuntimeError("begin() while an utterance is active: call finish() or cancel() first")
        self._interrupt.clear()
        header, entries = self.memory.select(self._language)
        self._utt = Utterance(
            language=self._language,
            context=self._context,
            memory=entries,
            header=header,
            header_fixed=self._language is not None or bool(entries),
            clip=ClipEncoder(self.streaming.reencode_open_window),
            policy=CommitPolicy(
                self._piece,
                self.streaming.rollback_tokens,
                self._agreement_samples if self.streaming.agreement else None,
            ),
        )
        if self._utt.header_fixed:
            self._utt.language_now = header
        try:
            self._prefill_memory(self._utt.context, entries)
        except BaseException:
            self._utt = None  # a failed begin() leaves no utterance behind: the next one can begin
            raise

    def prepare(self) -> None:
        """Prefill the next utterance's system turn and decoder memory now, between utterances, so that begin()
        finds them in the KV cache: otherwise each begin() pays for them (up to memory_tokens positions, over a
        second on 2 cores for a 0.6B model) before the first partial."""
        if self._utt is None:
            self._prefill_memory(self._context, self.memory.select(self._language)[1])

    def _prefill_memory(self, context: str, entries: Sequence[MemoryEntry]) -> None:
        prompt = Prompt(self._tokenize(prompt_head(context)), [e.rows for e in entries], [])
        self._kv.feed(prompt, shift=self.streaming.memory_kv_reuse and bool(entries))

    def add_audio(self, pcm: np.ndarray) -> None:
        """Append 16 kHz mono samples (int16, or float32 in [-1, 1]). No computation."""
        self._require().audio.append(pcm)

    def tick(self) -> Tick:
        """Decode the audio so far: commits that left the rollback window, and the uncommitted tail."""
        t0 = time.perf_counter()
        utt = self._require()
        audio = utt.audio.view()  # what add_audio appends from now on is for the next tick
        n = len(audio)
        stats = StatsSum()
        if n == utt.decoded_samples or n < _MIN_TICK_SAMPLES or self._interrupt.is_set():
            return Tick([], None, utt.language_now, stats.freeze(t0))
        commits = self._fit_context(n, stats)
        blocks = self._encode(utt.clip, audio[utt.clip.start :], stats)
        if self._interrupt.is_set():
            return Tick(commits, None, utt.language_now, stats.freeze(t0))
        dec = self._decode(blocks, PARTIAL_MAX_NEW_TOKENS, stats, self._interrupt)
        if dec.stopped == "interrupted":
            return Tick(commits, None, utt.language_now, stats.freeze(t0))
        utt.decoded_samples = n
        partial = None
        if dec.silent:
            utt.policy.forget()
            if dec.language == "":
                utt.language_now = None
        else:
            tail = dec.text_ids
            k = utt.policy.tick(n, dec.language, tail)
            commits += self._commit(tail[:k], dec.language, final=False)
            if utt.header_fixed:  # the next prompt ends with the committed ids: expect the rest again
                utt.draft = tail[k:]
            utt.language_now = dec.language
            partial = self._partial(tail[k:], bool(commits))
        return Tick(commits, partial, utt.language_now, stats.freeze(t0))

    def speculate(self) -> bool:
        """Endpoint speculation: the final decode of the audio so far, run now (at the first silence, while the VAD
        hangover runs) and kept, committing nothing. When the utterance then ends with nothing but silence after
        it, finish(use_speculation=True) commits this decode instead of decoding again. False (nothing kept) when
        the audio is too short or would need a rollover first."""
        utt = self._require()
        self._interrupt.clear()  # the tick it interrupted is over: later ticks (if speech resumes) run again
        utt.speculation = None
        n = len(utt.audio)
        if n < _MIN_TICK_SAMPLES or self._needs_fit(n):
            return False
        stats = StatsSum()
        blocks = self._encode(utt.clip, utt.audio.view()[utt.clip.start : n], stats)
        utt.speculation = self._decode(blocks, self.engine.max_new_tokens, stats)
        utt.speculation_stats = stats
        return True

    def finish(self, use_speculation: bool = False) -> Final:
        """The endpoint: decode all the audio, commit everything, put the utterance into the decoder memory.
        `use_speculation`: the caller knows that only silence came after the last speculate(): its decode is
        the final one (the audio after it is not decoded). The utterance is over even when this fails (a decoder
        error): the next begin() must not find it still active."""
        try:
            return self._finish(use_speculation)
        finally:
            self._utt = None

    def _finish(self, use_speculation: bool) -> Final:
        t0 = time.perf_counter()
        utt = self._require()
        self._interrupt.clear()
        stats = StatsSum()
        commits: list[Commit] = []
        if use_speculation and utt.speculation is not None and utt.speculation.stopped != "repetition":
            dec = utt.speculation
            # the profile of the decode that made the text (total_ms stays this call's own, near zero)
            stats = utt.speculation_stats or stats
            stats.set(audio_s=len(utt.audio) / SAMPLE_RATE, stopped=dec.stopped)
        else:
            if len(utt.audio) < _MIN_TICK_SAMPLES:  # as the offline pipeline: zero-padded to MIN_SECONDS
                utt.audio.append(np.zeros(_MIN_TICK_SAMPLES - len(utt.audio), np.float32))
            audio = utt.audio.view()
            commits = self._fit_context(len(audio), stats)
            blocks = self._encode(utt.clip, audio[utt.clip.start :], stats)
            dec = self._decode(blocks, self.engine.max_new_tokens, stats, fallback=True)
        if dec.stopped == "repetition":
            _LOGGER.warning("final decode ended by the repetition guard (%d tokens kept)", len(dec.text_ids))
        # `language None` with nothing committed is no speech; so is a loop when there is no temperature fallback.
        # With it, the loop was decoded again hotter: what the best decode kept is speech, never dropped.
        silent = dec.language == "" or (dec.stopped == "repetition" and not self.engine.fallback_retries)
        if not (silent and not utt.committed):
            commits += self._commit(dec.text_ids, dec.language, final=True)
        if not utt.text and utt.memory and not utt.carry:
            commits += self._without_memory(stats)
        no_speech = not utt.text
        self.last_rows = utt.clip.rows
        if not no_speech and self.memory.max_tokens > 0:
            self.memory.add(
                MemoryEntry(
                    self.last_rows,
                    tuple(utt.committed[utt.clip.text_start :]),
                    utt.header if utt.header_fixed else dec.language,
                )
            )
        language = None if no_speech else (utt.header if utt.header_fixed else dec.language)
        self._utt = None
        return Final(commits, utt.text, no_speech, language, stats.freeze(t0))

    def _without_memory(self, stats: StatsSum) -> list[Commit]:
        """The final decode once more, without the memory. With memory a model can take new speech for text it
        has already written (memory text running past its audio, after a misrecognition) and answer nothing;
        as that memory stays, so would the silence, utterance after utterance. If the model hears speech without
        it, the memory goes."""
        utt = self._require()
        utt.memory, utt.header, utt.header_fixed = [], self._language, self._language is not None
        dec = self._decode(utt.clip.blocks, self.engine.max_new_tokens, stats)
        if dec.silent:
            return []
        commits = self._commit(dec.text_ids, dec.language, final=True)
        if utt.text:
            _LOGGER.info("the decoder memory silenced an utterance; it was heard without it, memory cleared")
            self.memory.clear()
        return commits

    def cancel(self) -> None:
        """Drop the current utterance (if any): nothing more is committed, nothing goes into memory."""
        self._utt = None
        self._interrupt.clear()

    def reset_memory(self) -> None:
        self.memory.clear()

    def close(self) -> None:
        """Free the decoder (the encoder is borrowed and stays open)."""
        self._utt = None
        self.decoder.close()

    # --- internals --------------------------------------------------------------------------------------------
    def _require(self) -> Utterance:
        if self._utt is None:
            raise RuntimeError("no active utterance: call begin() first")
        return self._utt

    def _tokenize(self, text: str) -> list[int]:
        if text not in self._token_cache:
            self._token_cache[text] = self.decoder.tokenize(text)
        return list(self._token_cache[text])

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.decoder.piece(token)
        return piece

    def _text(self, ids: Sequence[int]) -> str:
        return b"".join(self._piece(t) for t in ids).decode("utf-8", "replace")

    def _encode(self, clip: ClipEncoder, audio: np.ndarray, stats: StatsSum) -> list[np.ndarray]:
        restarts = 0
        while True:
            t0 = time.perf_counter()
            try:
                blocks = clip.update(audio, self.encoder)
            except EncoderCrashed as e:
                restart = getattr(self.encoder, "restart", None)
                if restart is None or restarts >= MAX_ENCODER_RESTARTS:
                    raise
                _LOGGER.warning("%s; restarting it and encoding again from the retained audio", e)
                restart()
                restarts += 1
                stats.add(encoder_restarts=1, encoder_ms=(time.perf_counter() - t0) * 1000)
                continue
            stats.add(
                encoder_ms=(time.perf_counter() - t0) * 1000,
                frontend_chunks=clip.frontend_chunks,
                backend_rows=clip.backend_rows,
            )
            stats.set(audio_s=(clip.start + len(audio)) / SAMPLE_RATE)
            return blocks

    def _prompt(self, blocks: Sequence[np.ndarray]) -> Prompt:
        utt = self._require()
        rows = [e.rows for e in utt.memory] + utt.carry + list(blocks)
        memory_text = [t for e in utt.memory for t in e.text_ids]
        text = memory_text + utt.committed[utt.text_start :]
        header = utt.header if utt.header_fixed else None
        return build_prompt(self._tokenize, utt.context, header, rows, text, stable_text=len(memory_text))

    def _decode(
        self,
        blocks: Sequence[np.ndarray],
        budget: int,
        stats: StatsSum,
        interrupt: threading.Event | None = None,
        fallback: bool = False,
    ) -> Decoded:
        """Prefill what changed and generate. `fallback`: a generation the repetition guard cut is done again at
        higher temperatures (engine.fallback_retries) and the best kept (final decodes; ticks stay cheap)."""
        utt, d = self._require(), self.decoder
        prompt = self._prompt(blocks)
        t0 = time.perf_counter()
        reuse = self.streaming.memory_kv_reuse and bool(utt.memory)
        until = interrupt.is_set if interrupt is not None else None
        keep = self._kv.feed_until(prompt, until, shift=reuse, reuse=reuse)
        t1 = time.perf_counter()
        if keep is None:  # the endpoint came during the prefill: what was fed stays in the KV cache
            stats.add(prefill_ms=(t1 - t0) * 1000, prefill_tokens=self.decoder.n_past)
            return Decoded(utt.language_now, [], "interrupted")
        budget = min(budget, d.n_ctx - prompt.n_positions)
        stops, guard = self.stop_ids, self.engine.repetition_guard
        forced = self.answer_length(stats.values["audio_s"]) if self.answer_length is not None else None
        if forced is not None:  # benchmarks: the tail up to the forced length of the utterance so far
            budget = min(budget, max(1, forced - len(utt.committed)))
            stops, guard = set(), False
        sampled: list[int] = []
        if budget > 0:
            gen = generate(d, stops, budget, guard, on_token=sampled.append, draft=utt.draft, interrupt=interrupt)
        else:
            _LOGGER.warning("the prompt fills the decoder context (%d positions): nothing generated", d.n_past)
            gen = Generation([], "max_tokens")
        self._kv.extend(sampled[: d.n_past - prompt.n_positions])
        generated = len(sampled)
        if fallback and gen.stopped == "repetition" and forced is None and self.engine.fallback_retries:

            def again() -> Generation:
                nonlocal generated
                self._kv.feed(prompt)  # back to the end of the prompt, with its logits
                sampled.clear()
                retry = generate(d, stops, budget, guard, on_token=sampled.append)
                self._kv.extend(sampled[: d.n_past - prompt.n_positions])
                generated += len(sampled)
                return retry

            e = self.engine
            gen, tries = with_fallback(d, again, gen, e.fallback_retries, e.temperature, e.seed)
            stats.add(fallbacks=tries)
            _LOGGER.info("the utterance looped: %d re-decode(s) at higher temperature (%s)", tries, gen.stopped)
        t2 = time.perf_counter()
        stats.add(
            rows=prompt.n_rows,
            prompt_tokens=prompt.n_positions,
            reused_tokens=keep,
            prefill_tokens=prompt.n_positions - keep,
            prefill_ms=(t1 - t0) * 1000,
            generated_tokens=generated,
            drafted_tokens=gen.drafted,
            generate_ms=(t2 - t1) * 1000,
        )
        stats.set(stopped=gen.stopped)
        self.last_prompt, self.last_generation = prompt, gen
        utt.draft = [] if gen.stopped == "repetition" else list(gen.tokens)  # what the next decode may repeat
        if utt.header_fixed:
            return Decoded(utt.header, list(gen.tokens), gen.stopped)
        language, text_ids = split_answer(list(gen.tokens), self.asr_text_id, d.detokenize)
        return Decoded(language, list(text_ids), gen.stopped)

    def _commit(self, ids: list[int], language: str | None, final: bool) -> list[Commit]:
        utt = self._require()
        if not ids:
            return []
        if not utt.header_fixed:  # the first commit fixes the language the model stated
            utt.header, utt.header_fixed = language, True
        utt.committed += ids
        text = self._text(ids)
        if not utt.text:
            text = text.lstrip()
        if final:
            text = text.rstrip()
        if not text:
            return []
        commit = Commit(len(utt.commits), text)
        utt.commits.append(commit)
        utt.text += text
        return [commit]

    def _partial(self, ids: list[int], committed: bool) -> Partial | None:
        utt = self._require()
        text = b"".join(self._piece(t) for t in ids).decode("utf-8", "ignore")  # drops a char cut at the end
        if not utt.text:
            text = text.lstrip()
        if text == (utt.partial_text or "") and not committed:
            return None
        utt.partial_rev += 1
        utt.partial_text = text
        return Partial(utt.partial_rev, text)

    # --- long utterances (the rest in rollover.py) ----------------------------------------------------------
    def _overhead(self) -> int:
        """Positions a decode needs besides the current clip's rows: system turn, memory, carried rows, header,
        text, and room to generate."""
        utt = self._require()
        n_ctx = self.decoder.n_ctx
        return (
            len(self._tokenize(prompt_head(utt.context)))
            + sum(e.tokens for e in utt.memory)
            + sum(len(b) for b in utt.carry)
            + len(self._tokenize(prompt_tail(utt.header if utt.header_fixed else None)))
            + len(utt.committed)
            - utt.text_start
            + min(self.engine.max_new_tokens, max(PARTIAL_MAX_NEW_TOKENS, n_ctx // 8))
        )
