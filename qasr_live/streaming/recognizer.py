"""The streaming recognizer: partial results while the user speaks, append-only commits, a final result at the
endpoint. Synchronous and sans-I/O: the daemon owns threads, clocks and sockets and calls these methods from one
worker thread (architecture.md §4).

Per utterance::

    begin()                      a new utterance (prefills the system turn and the decoder memory)
    add_audio(pcm) ...           16 kHz mono int16/float32; cheap: the audio is only retained
    tick() -> Tick               a partial decode of the audio so far: new commits + the uncommitted tail
    finish() -> Final            the endpoint: final decode, everything committed, utterance into memory
    cancel()                     or: drop it (nothing committed later, nothing into memory)

**Incremental encoding.** The encoder's frontend works on 1 s chunks (100 mel frames) and its backend attends
within 8 s windows (104 rows), so finished audio need not be encoded again. A chunk is *final* once every sample
its centred STFT frames see has arrived (16000 * (c + 1) + 40 samples); its raw log10 mel is computed once and
cached. Whisper's normalisation clamps at the clip's global maximum - 8, so a chunk's frontend input is a function
of that maximum too: the frontend rows of a final chunk are cached with the clamp they were made with and re-run
only when a growing maximum changes its clamped values (usually never: only frames 80 dB below the peak are
clamped). The backend re-runs the open (last, incomplete) window on every update; a window whose 8 chunks are all
final is computed once and frozen (again unless its clamps change). The rows equal
`encoder.encode(log_mel(audio))` of the audio so far (the *exact* mode, `streaming.reencode_open_window: true`).

`reencode_open_window: false` is the cheaper approximation: a final chunk's frontend runs once, clamped with the
maximum known then, and its backend rows are computed once, when it first is final, by a backend run over its
window's rows available then (earlier chunks, itself, and the provisional tail); they are never revised. Only
the provisional tail (frames that are not final yet) is new at each update, so the decoder re-prefills only the
rows after the last final chunk instead of the whole open window. The encoder does the same work as the exact
mode; the decoder saves up to 104 rows of prefill per tick and at the endpoint. Rows of a chunk see less of
their window than in the exact mode (no right context beyond what had arrived).

**KV-cache reuse.** The decoder keeps what its sequence holds (system turn, rows, tail tokens, generated tokens);
each decode keeps the longest unchanged prefix (`Decoder.rewind`, i.e. `llama_memory_seq_rm`) and feeds only the
rest: the system turn, the memory and the frozen windows are not fed again. The committed text follows the audio,
so it is fed again whenever a row changed (bounded by the rollover). The previous decode's uncommitted tail is
passed to generation as a draft: the tokens it reproduces are verified in one batch instead of one decode each.

**Rollback and commits.** Each decode re-generates only the tail after the committed prefix (the committed ids
follow the header as assistant text). A tick commits the tail minus its last `rollback_tokens` tokens, cut back to
a word boundary (the next token starts with whitespace, or the boundary touches a CJK character), and with
`agreement: true` only what an earlier tick's tail agrees with (LocalAgreement-2): the latest tick that heard at
least `agreement_ms` less audio. Comparing with a tick only a few hundred ms older lets a model that runs ahead
of the audio (the likeliest continuation of a sentence it has not heard yet) agree with itself; with more
audio between them the words actually spoken are there to contradict the guess. finish() commits the rest.
Commits are append-only, and an utterance's commits concatenate to Final.text (the first one has its leading
whitespace stripped, the last one its trailing whitespace).

**Language.** A forced language writes the header. Auto-detect: the model states it (`language X<asr_text>`) on
every decode until something is committed, then the stated language is written as the header (fixed for the
utterance). With decoder memory the memory's language is the header, as for the offline pipeline's segments.

**No speech.** `language None`, an empty answer, or a repetition-guard cut with nothing committed end the
utterance with Final(no_speech=True, text=""); a tick that says `language None` or loops publishes nothing.

**Long utterances.** The prompt must fit `engine.n_ctx` with room for generation. When the current part of an
utterance exceeds `engine.segment_seconds`, or the prompt would not fit (memory entries are dropped from the
utterance's prompt first), the utterance *rolls over* like the offline pipeline's segments: its audio up to the
last completed window (or chunk) is decoded, all but `rollback_tokens` of its text committed, and it becomes the
memory of the rest, which is encoded as a new clip. One decode per rollover; nothing is lost or repeated.

**Encoder worker resilience.** If the encoder worker dies (EncoderCrashed), it is restarted and the failed encoding
is redone from the retained audio (everything encoded before lives in this process and stays valid).

Threads: begin/tick/finish/cancel from one thread at a time; add_audio may run concurrently with tick/finish (what
it adds is seen by the next call). `last_prompt`, `last_generation` and `last_rows` are diagnostics for tests and
benchmarks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import numpy as np

from qasr_live.config import EngineConfig, StreamingConfig
from qasr_live.engine.encoder import CHUNK_FRAMES, ROWS_PER_CHUNK, WINDOW_ROWS
from qasr_live.engine.features import HOP, N_FFT, SAMPLE_RATE, feature_output_length, log_mel_raw, normalize_log_mel
from qasr_live.engine.generation import Generation, generate
from qasr_live.engine.kv_cache import PrefixCache, common_prefix
from qasr_live.engine.model_dir import ModelDir
from qasr_live.engine.pipeline import MIN_SECONDS, forced_length, open_decoder, stop_ids
from qasr_live.engine.prompt import ASR_TEXT, Prompt, build_prompt, prompt_head, prompt_tail, split_answer
from qasr_live.errors import AudioError, EncoderCrashed
from qasr_live.streaming.memory import DecoderMemory, MemoryEntry

_LOGGER = logging.getLogger(__name__)

PARTIAL_MAX_NEW_TOKENS = 32  # per tick, as the official streaming loop; the final decode gets engine.max_new_tokens
MAX_ENCODER_RESTARTS = 2  # per encoding; a worker that dies again at once is a real error
CHUNK_SAMPLES = CHUNK_FRAMES * HOP  # 16000: one frontend chunk
CHUNKS_PER_WINDOW = WINDOW_ROWS // ROWS_PER_CHUNK  # 8
_LOOKAHEAD = N_FFT // 2 - HOP  # 40: samples after a chunk's end that its last (centred) frame sees
_MIN_TICK_SAMPLES = int(MIN_SECONDS * SAMPLE_RATE)


# --- results --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Commit:
    """Text that will never change. `idx` counts an utterance's commits from 0, without gaps."""

    idx: int
    text: str


@dataclass(frozen=True, slots=True)
class Partial:
    """The whole not-yet-committed tail: committed text + `text` is the current hypothesis. `rev` counts the
    utterance's published partials from 1."""

    rev: int
    text: str


@dataclass(frozen=True, slots=True)
class Stats:
    """What one tick() or finish() did (summed over its decodes when a rollover adds one)."""

    audio_s: float = 0.0  # audio of the utterance so far
    rows: int = 0  # audio rows in the prompt (memory + utterance)
    encoder_ms: float = 0.0
    frontend_chunks: int = 0  # 1 s chunks through the encoder frontend
    backend_rows: int = 0  # rows through the encoder backend
    encoder_restarts: int = 0
    prompt_tokens: int = 0  # decoder positions of the prompt(s)
    reused_tokens: int = 0  # positions kept in the KV cache (not fed again)
    prefill_tokens: int = 0  # positions fed: prompt_tokens - reused_tokens
    prefill_ms: float = 0.0
    generated_tokens: int = 0
    drafted_tokens: int = 0  # of those, verified in one batch from the previous decode's tail (no decode each)
    generate_ms: float = 0.0
    stopped: str = ""  # how the (last) generation ended: eos, max_tokens, repetition; "" = no decode
    rollovers: int = 0
    total_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Tick:
    commits: list[Commit]  # new this tick, in order
    partial: Partial | None  # None: nothing new to show (no decode, no speech, a loop, or the same text)
    language: str | None  # forced, fixed or stated so far; None when unknown or no speech
    stats: Stats


@dataclass(frozen=True, slots=True)
class Final:
    commits: list[Commit]  # the commits finish() made (the ones ticks made came with those ticks)
    text: str  # the utterance's whole text: all its commits concatenated ("" for no speech)
    no_speech: bool
    language: str | None
    stats: Stats


@dataclass(slots=True)
class _StatsSum:
    values: dict = field(default_factory=lambda: {f.name: f.default for f in fields(Stats)})

    def add(self, **kwargs) -> None:
        for key, value in kwargs.items():
            self.values[key] += value

    def set(self, **kwargs) -> None:
        self.values.update(kwargs)

    def freeze(self, t0: float) -> Stats:
        return Stats(**{**self.values, "total_ms": (time.perf_counter() - t0) * 1000})


# --- audio ----------------------------------------------------------------------------------------------------


class _AudioBuffer:
    """The utterance's samples as float32 in a growing array. Samples before `len` never change, so a view of
    them stays valid while more are appended (from another thread, under the lock)."""

    def __init__(self) -> None:
        self._data = np.zeros(4 * SAMPLE_RATE, dtype=np.float32)
        self._n = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._n

    def append(self, pcm: np.ndarray) -> None:
        samples = _as_float_mono(pcm)
        with self._lock:
            end = self._n + len(samples)
            if end > len(self._data):
                grown = np.zeros(max(end, 2 * len(self._data)), dtype=np.float32)
                grown[: self._n] = self._data[: self._n]
                self._data = grown
            self._data[self._n : end] = samples
            self._n = end

    def view(self) -> np.ndarray:
        with self._lock:
            return self._data[: self._n]


def _as_float_mono(pcm: np.ndarray) -> np.ndarray:
    arr = np.asarray(pcm)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise AudioError(f"streaming audio must be mono, shape (n,) or (n, 1); got {arr.shape}")
    if arr.dtype == np.int16:
        return arr.astype(np.float32) / 32768.0
    if arr.dtype not in (np.float32, np.float64):
        raise AudioError(f"streaming audio must be int16 or float32 PCM, got {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise AudioError("streaming audio holds NaN or infinite samples: the capture or resampler is broken")
    return arr


# --- incremental encoding -------------------------------------------------------------------------------------


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


@dataclass(slots=True, eq=False)
class _Chunk:
    """A final 1 s chunk: raw log10 mel (computed once), its extremes, and its encodings."""

    raw: np.ndarray  # (128, 100) float64
    peak: float
    low: float
    clamp: float | None = None  # max(floor, low) its frontend rows were made with: equal clamps, equal input
    front: np.ndarray | None = None  # (13, d_model)
    out: np.ndarray | None = None  # approximate mode: its frozen backend rows


class ClipEncoder:
    """Incremental encoding of one clip (an utterance, or its part after a rollover) whose samples only grow.

    `update(audio, encoder)` returns the clip's rows as a list of read-only blocks (frozen blocks are the same
    objects from update to update). Exact mode: their concatenation equals `encoder.encode(log_mel(audio))`.
    An update is transactional: if the encoder fails, the state is as before and the update can be retried.
    """

    def __init__(self, exact: bool, start: int = 0, text_start: int = 0) -> None:
        self.exact = exact
        self.start = start  # first sample of the clip within the utterance
        self.text_start = text_start  # committed ids of the utterance before this clip became current
        self.blocks: list[np.ndarray] = []
        self.n_samples = 0
        self._chunks: list[_Chunk] = []
        self._windows: dict[int, tuple[tuple, np.ndarray]] = {}  # exact mode: frozen window -> (clamps, rows)
        self.frontend_chunks = 0  # work of the last update
        self.backend_rows = 0

    @property
    def rows(self) -> np.ndarray:
        return np.concatenate(self.blocks) if self.blocks else np.zeros((0, 0), np.float32)

    @staticmethod
    def final_chunks(n_samples: int) -> int:
        """Chunks none of whose frames can change when more samples arrive."""
        return max(0, (n_samples - _LOOKAHEAD) // CHUNK_SAMPLES)

    def update(self, audio: np.ndarray, encoder) -> list[np.ndarray]:
        n = len(audio)
        n_frames = n // HOP
        final = self.final_chunks(n)
        chunks = self._chunks[:final]  # fewer only when a rollover truncates the clip
        windows = {w: v for w, v in self._windows.items() if (w + 1) * CHUNKS_PER_WINDOW <= final}
        if final > len(chunks):
            first = len(chunks)
            raw = log_mel_raw(audio, first * CHUNK_FRAMES, final * CHUNK_FRAMES)
            for c in range(final - first):
                part = raw[:, c * CHUNK_FRAMES : (c + 1) * CHUNK_FRAMES]
                chunks.append(_Chunk(part, float(part.max()), float(part.min())))
        tail_raw = log_mel_raw(audio, final * CHUNK_FRAMES, n_frames)
        if n_frames == 0:
            self._commit_state(chunks, windows, [], n, 0, 0)
            return []
        peak = max([c.peak for c in chunks] + ([float(tail_raw.max())] if tail_raw.size else []))
        floor = peak - 8.0

        # Frontend: final chunks whose clamped input changed (or never computed), then the provisional tail.
        if self.exact:
            stale = [c for c in range(final) if chunks[c].clamp != max(floor, chunks[c].low)]
        else:
            stale = [c for c in range(final) if chunks[c].front is None]
        tail_frames = tail_raw.shape[1]
        n_tail_chunks = -(-tail_frames // CHUNK_FRAMES)
        tail_mel = np.zeros((n_tail_chunks * CHUNK_FRAMES, tail_raw.shape[0]), np.float32)
        tail_mel[:tail_frames] = normalize_log_mel(tail_raw, peak).T
        batch = [normalize_log_mel(chunks[c].raw, peak) for c in stale]
        if n_tail_chunks:  # none when the audio ends within a final chunk's lookahead
            batch += list(tail_mel.reshape(n_tail_chunks, CHUNK_FRAMES, -1).transpose(0, 2, 1))
        front = encoder.frontend(np.stack(batch)) if batch else None
        new_front = {c: front[i] for i, c in enumerate(stale)}
        n_tail_rows = feature_output_length(n_frames) - final * ROWS_PER_CHUNK
        tail_front = front[len(stale) :].reshape(-1, front.shape[-1])[:n_tail_rows] if n_tail_chunks else None
        clamps = {c: max(floor, chunks[c].low) for c in stale}

        def front_rows(c: int) -> np.ndarray:
            return new_front[c] if c in new_front else chunks[c].front

        backend_rows = 0
        if self.exact:
            n_windows = -(-feature_output_length(n_frames) // WINDOW_ROWS)
            todo, blocks = [], []
            for w in range(n_windows):
                cs = range(w * CHUNKS_PER_WINDOW, min(final, (w + 1) * CHUNKS_PER_WINDOW))
                complete = (w + 1) * CHUNKS_PER_WINDOW <= final
                key = tuple(clamps.get(c, chunks[c].clamp) for c in cs)
                if complete and w in windows and windows[w][0] == key:
                    blocks.append(windows[w][1])
                    continue
                rows = [front_rows(c) for c in cs]
                if not complete and tail_front is not None:
                    rows.append(tail_front)
                todo.append((w, complete, key, np.concatenate(rows)))
                blocks.append(None)
            if todo:  # one backend run: complete windows are 104 rows each, only the last may be shorter
                stacked = np.concatenate([rows for *_, rows in todo])
                out = encoder.backend(stacked)
                backend_rows = len(stacked)
                offset = 0
                for w, complete, key, rows in todo:
                    block = _readonly(np.array(out[offset : offset + len(rows)], dtype=np.float32))
                    offset += len(rows)
                    blocks[w] = block
                    if complete:
                        windows[w] = (key, block)
                    else:
                        windows.pop(w, None)
            chunk_out = {}
        else:
            pending = [c for c in range(final) if chunks[c].out is None]
            chunk_out, tail_out = {}, None
            if pending or tail_front is not None:  # one backend run from the window of the first new row
                w0 = (pending[0] if pending else final) // CHUNKS_PER_WINDOW
                rows = [front_rows(c) for c in range(w0 * CHUNKS_PER_WINDOW, final)]
                if tail_front is not None:
                    rows.append(tail_front)
                stacked = np.concatenate(rows)
                out = encoder.backend(stacked)
                backend_rows = len(stacked)
                base = w0 * CHUNKS_PER_WINDOW
                for c in pending:
                    i = (c - base) * ROWS_PER_CHUNK
                    chunk_out[c] = _readonly(np.array(out[i : i + ROWS_PER_CHUNK], dtype=np.float32))
                if tail_front is not None:
                    i = (final - base) * ROWS_PER_CHUNK
                    tail_out = _readonly(np.array(out[i:], dtype=np.float32))
            blocks = [chunk_out.get(c, chunks[c].out) for c in range(final)]
            if tail_out is not None:
                blocks.append(tail_out)

        # Commit the new state only now: an encoder failure above leaves the encoder as it was.
        for c in stale:
            chunks[c].front, chunks[c].clamp = new_front[c], clamps[c]
        for c, rows in chunk_out.items():
            chunks[c].out = rows
        self._commit_state(chunks, windows, blocks, n, len(batch), backend_rows)
        return blocks

    def _commit_state(self, chunks, windows, blocks, n, frontend_chunks, backend_rows) -> None:
        self._chunks, self._windows, self.blocks, self.n_samples = chunks, windows, blocks, n
        self.frontend_chunks, self.backend_rows = frontend_chunks, backend_rows


# --- KV-cache reuse -------------------------------------------------------------------------------------------


# --- the recognizer -------------------------------------------------------------------------------------------

_CJK_RANGES = (
    (0x2E80, 0x2FDF),  # radicals
    (0x3000, 0x303F),  # CJK symbols and punctuation
    (0x3040, 0x30FF),  # hiragana, katakana
    (0x3100, 0x31FF),  # bopomofo, katakana extensions
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0xFF00, 0xFFEF),  # fullwidth forms and punctuation
    (0x20000, 0x3FFFF),
)


def _is_cjk(ch: str) -> bool:
    """A character of a script written without spaces between words (Chinese, Japanese), or its punctuation."""
    if not ch:
        return False
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _utf8_length(lead: int) -> int:
    return 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


@dataclass(slots=True, eq=False)
class _Utterance:
    language: str | None  # forced
    context: str
    memory: list[MemoryEntry]  # used before the audio, oldest first
    header: str | None  # the header written in the prompt once fixed
    header_fixed: bool
    clip: ClipEncoder
    audio: _AudioBuffer = field(default_factory=_AudioBuffer)
    carry: list[np.ndarray] = field(default_factory=list)  # rows of the clip before a rollover
    text_start: int = 0  # committed[text_start:] is the utterance's text in the prompt
    committed: list[int] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    text: str = ""
    heard: list[_Heard] = field(default_factory=list)  # recent ticks' tails, oldest first, for the agreement
    draft: list[int] = field(default_factory=list)  # what the last decode generated after the prompt's end
    partial_rev: int = 0
    partial_text: str | None = None
    decoded_samples: int = -1
    language_now: str | None = None
    speculation: _Decoded | None = None  # speculate()'s final decode, kept for finish(use_speculation=True)


@dataclass(slots=True)
class _Heard:
    """What a tick decoded after the committed prefix, and how much audio it had heard."""

    samples: int
    language: str | None
    tail: list[int]


@dataclass(frozen=True, slots=True)
class _Decoded:
    language: str | None  # "" = language None
    text_ids: list[int]  # after the committed prefix
    stopped: str

    @property
    def silent(self) -> bool:
        """Nothing to publish: the model heard no speech, or looped."""
        return self.language == "" or self.stopped == "repetition"


class StreamingRecognizer:
    """Owns a Decoder; borrows the encoder (AudioEncoder or EncoderWorker: frontend/backend, and restart() for a
    worker). Methods other than add_audio must be called from one thread at a time; add_audio may run
    concurrently with tick()/finish() (the audio it adds is seen by the next one)."""

    def __init__(
        self,
        model: ModelDir,
        engine: EngineConfig,
        streaming: StreamingConfig,
        encoder,
        *,
        language: str | None = None,
        context: str = "",
    ) -> None:
        self.model = model
        self.engine = engine
        self.streaming = streaming
        self.encoder = encoder
        self.decoder = open_decoder(model, engine)
        self.asr_text_id = self.decoder.token_id(ASR_TEXT)
        self.stop_ids = stop_ids(self.decoder)
        self.memory = DecoderMemory(streaming.memory_tokens, streaming.memory_utterances)
        self._agreement_samples = streaming.agreement_ms * SAMPLE_RATE // 1000
        self._language, self._context = language, context
        self._utt: _Utterance | None = None
        self._kv = PrefixCache(self.decoder)
        self._interrupt = threading.Event()
        self._pieces: dict[int, bytes] = {}
        self._token_cache: dict[str, list[int]] = {}
        # Diagnostics (tests, benchmarks): the last decode's prompt and generation, the rows of the last clip.
        self.last_prompt: Prompt | None = None
        self.last_generation: Generation | None = None
        self.last_rows: np.ndarray | None = None

    # --- public surface ---------------------------------------------------------------------------------------
    def set_recognition(self, language: str | None, context: str) -> None:
        """Forced language (None: auto-detect) and context for the next utterances (not the current one)."""
        self._language, self._context = language, context

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
        self._utt = _Utterance(
            language=self._language,
            context=self._context,
            memory=entries,
            header=header,
            header_fixed=self._language is not None or bool(entries),
            clip=ClipEncoder(self.streaming.reencode_open_window),
        )
        if self._utt.header_fixed:
            self._utt.language_now = header
        self._prefill_memory(self._utt.context, entries)

    def prepare(self) -> None:
        """Prefill the next utterance's system turn and decoder memory now, between utterances, so that begin()
        finds them in the KV cache: otherwise each begin() pays for them (up to memory_tokens positions, over a
        second on 2 cores for a 0.6B model) before the first partial."""
        if self._utt is None:
            self._prefill_memory(self._context, self.memory.select(self._language)[1])

    def _prefill_memory(self, context: str, entries: Sequence[MemoryEntry]) -> None:
        self._kv.feed(Prompt(self._tokenize(prompt_head(context)), [e.rows for e in entries], []))

    def add_audio(self, pcm: np.ndarray) -> None:
        """Append 16 kHz mono samples (int16, or float32 in [-1, 1]). No computation."""
        self._require().audio.append(pcm)

    def tick(self) -> Tick:
        """Decode the audio so far: commits that left the rollback window, and the uncommitted tail."""
        t0 = time.perf_counter()
        utt = self._require()
        audio = utt.audio.view()  # what add_audio appends from now on is for the next tick
        n = len(audio)
        stats = _StatsSum()
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
            utt.heard.clear()
            if dec.language == "":
                utt.language_now = None
        else:
            tail = dec.text_ids
            limit = len(tail) - self.streaming.rollback_tokens
            if self.streaming.agreement:
                limit = min(limit, self._agreed(n, dec.language, tail))
            k = self._word_boundary(tail, limit)
            commits += self._commit(tail[:k], dec.language, final=False)
            if utt.header_fixed:  # the next prompt ends with the committed ids: expect the rest again
                utt.draft = tail[k:]
            self._remember_heard(_Heard(n, dec.language, tail), k)
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
        stats = _StatsSum()
        blocks = self._encode(utt.clip, utt.audio.view()[utt.clip.start : n], stats)
        utt.speculation = self._decode(blocks, self.engine.max_new_tokens, stats)
        return True

    def finish(self, use_speculation: bool = False) -> Final:
        """The endpoint: decode all the audio, commit everything, put the utterance into the decoder memory.
        `use_speculation`: the caller knows that only silence came after the last speculate(): its decode is
        the final one (the audio after it is not decoded)."""
        t0 = time.perf_counter()
        utt = self._require()
        self._interrupt.clear()
        stats = _StatsSum()
        commits: list[Commit] = []
        if use_speculation and utt.speculation is not None:
            dec = utt.speculation
            stats.set(audio_s=len(utt.audio) / SAMPLE_RATE, stopped=dec.stopped)
        else:
            if len(utt.audio) < _MIN_TICK_SAMPLES:  # as the offline pipeline: zero-padded to MIN_SECONDS
                utt.audio.append(np.zeros(_MIN_TICK_SAMPLES - len(utt.audio), np.float32))
            audio = utt.audio.view()
            commits = self._fit_context(len(audio), stats)
            blocks = self._encode(utt.clip, audio[utt.clip.start :], stats)
            dec = self._decode(blocks, self.engine.max_new_tokens, stats)
        if dec.stopped == "repetition":
            _LOGGER.warning("final decode ended by the repetition guard (%d tokens kept)", len(dec.text_ids))
        if not (dec.silent and not utt.committed):  # a loop or `language None` with nothing committed: no speech
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

    def _without_memory(self, stats: _StatsSum) -> list[Commit]:
        """The final decode once more, without the memory. With memory a model can take new speech for text it
        has already written (memory text running past its audio, after a misrecognition) and answer nothing;
        as that memory stays, so would the silence, utterance after utterance. If the model hears speech without
        it, the memory goes."""
        utt = self._utt
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
    def _require(self) -> _Utterance:
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

    def _encode(self, clip: ClipEncoder, audio: np.ndarray, stats: _StatsSum) -> list[np.ndarray]:
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
        utt = self._utt
        rows = [e.rows for e in utt.memory] + utt.carry + list(blocks)
        text = [t for e in utt.memory for t in e.text_ids] + utt.committed[utt.text_start :]
        return build_prompt(self._tokenize, utt.context, utt.header if utt.header_fixed else None, rows, text)

    def _decode(
        self, blocks: Sequence[np.ndarray], budget: int, stats: _StatsSum, interrupt: threading.Event | None = None
    ) -> _Decoded:
        utt, d = self._utt, self.decoder
        prompt = self._prompt(blocks)
        t0 = time.perf_counter()
        keep = self._kv.feed(prompt)
        t1 = time.perf_counter()
        budget = min(budget, d.n_ctx - prompt.n_positions)
        stops, guard = self.stop_ids, self.engine.repetition_guard
        forced = forced_length(self.engine, stats.values["audio_s"])
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
        t2 = time.perf_counter()
        stats.add(
            rows=prompt.n_rows,
            prompt_tokens=prompt.n_positions,
            reused_tokens=keep,
            prefill_tokens=prompt.n_positions - keep,
            prefill_ms=(t1 - t0) * 1000,
            generated_tokens=len(sampled),
            drafted_tokens=gen.drafted,
            generate_ms=(t2 - t1) * 1000,
        )
        stats.set(stopped=gen.stopped)
        self.last_prompt, self.last_generation = prompt, gen
        utt.draft = [] if gen.stopped == "repetition" else list(gen.tokens)  # what the next decode may repeat
        if utt.header_fixed:
            return _Decoded(utt.header, list(gen.tokens), gen.stopped)
        language, text_ids = split_answer(list(gen.tokens), self.asr_text_id, d.detokenize)
        return _Decoded(language, list(text_ids), gen.stopped)

    def _word_boundary(self, ids: list[int], limit: int) -> int:
        """The largest k <= limit such that ids[:k] ends at a word boundary (0 if none)."""
        for k in range(min(limit, len(ids) - 1), 0, -1):
            if self._starts_word(ids, k):
                return k
        return 0

    def _starts_word(self, ids: list[int], k: int) -> bool:
        """Whether a word starts at ids[k]: its first character is whitespace or CJK, or the character before it is
        CJK; never inside a UTF-8 sequence split over tokens."""
        piece = self._piece(ids[k])
        if not piece or 0x80 <= piece[0] < 0xC0:
            return False
        after = b""
        for t in ids[k : k + 4]:
            after += self._piece(t)
            if len(after) >= _utf8_length(piece[0]):
                break
        first = after[: _utf8_length(piece[0])].decode("utf-8", "ignore")[:1]
        before = b"".join(self._piece(t) for t in ids[max(0, k - 4) : k])[-4:].decode("utf-8", "ignore")[-1:]
        return first.isspace() or _is_cjk(first) or _is_cjk(before)

    def _agreed(self, n: int, language: str | None, tail: list[int]) -> int:
        """How many leading tokens of `tail` the latest tick that heard `agreement_ms` less audio agrees on."""
        ref = next((h for h in reversed(self._utt.heard) if h.samples <= n - self._agreement_samples), None)
        return common_prefix(ref.tail, tail) if ref is not None and ref.language == language else 0

    def _remember_heard(self, heard: _Heard, committed: int) -> None:
        """Keep `heard` and the ticks a later agreement may still compare with, minus the `committed` tokens just
        committed from heard.tail (a tick whose tail does not start with them disagrees with the commits: gone)."""
        utt = self._utt
        older = heard.samples - self._agreement_samples  # the latest tick at or before it serves the next tick too
        first = max((i for i, h in enumerate(utt.heard) if h.samples <= older), default=0)
        done = heard.tail[:committed]
        utt.heard = [
            _Heard(h.samples, h.language, h.tail[committed:])
            for h in [*utt.heard[first:], heard]
            if h.tail[:committed] == done
        ]

    def _commit(self, ids: list[int], language: str | None, final: bool) -> list[Commit]:
        utt = self._utt
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
        utt = self._utt
        text = b"".join(self._piece(t) for t in ids).decode("utf-8", "ignore")  # drops a char cut at the end
        if not utt.text:
            text = text.lstrip()
        if text == (utt.partial_text or "") and not committed:
            return None
        utt.partial_rev += 1
        utt.partial_text = text
        return Partial(utt.partial_rev, text)

    # --- long utterances --------------------------------------------------------------------------------------
    def _overhead(self) -> int:
        """Positions a decode needs besides the current clip's rows: system turn, memory, carried rows, header,
        text, and room to generate."""
        utt = self._utt
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

    def _needs_fit(self, n: int) -> bool:
        """Whether _fit_context(n) would change anything (drop memory, roll over)."""
        clip_samples = n - self._utt.clip.start
        over = self._overhead() + feature_output_length(clip_samples // HOP) > self.decoder.n_ctx
        return over or clip_samples > self.engine.segment_seconds * SAMPLE_RATE

    def _fit_context(self, n: int, stats: _StatsSum) -> list[Commit]:
        """Keep the prompt within n_ctx (with room to generate) and the current clip within segment_seconds:
        drop memory entries from this utterance's prompt, then roll over."""
        utt = self._utt
        n_ctx = self.decoder.n_ctx
        commits: list[Commit] = []
        while True:
            if not self._needs_fit(n):
                return commits
            clip_samples = n - utt.clip.start
            over = self._overhead() + feature_output_length(clip_samples // HOP) > n_ctx
            if over and utt.memory:
                utt.memory.pop(0)
                continue
            final = ClipEncoder.final_chunks(clip_samples)
            if final >= 1:
                commits += self._roll_over(final, stats)
                continue
            if over:  # less than a second of new audio and still too much: make room in what is carried
                self._make_room(feature_output_length(clip_samples // HOP))
            return commits

    def _make_room(self, rows: int) -> None:
        """Last resort for a prompt that cannot fit otherwise: forget the carried clip (rows and text), then the
        oldest prompt text (which may make the model repeat it: only reachable with absurd n_ctx settings)."""
        utt = self._utt
        if utt.carry and self._overhead() + rows > self.decoder.n_ctx:
            _LOGGER.warning("the decoder context is full: the carried audio and its text leave the prompt")
            utt.carry, utt.text_start = [], utt.clip.text_start
        excess = self._overhead() + rows - self.decoder.n_ctx
        if excess > 0:
            _LOGGER.warning("the decoder context is full: %d tokens of committed text leave the prompt", excess)
            utt.text_start = min(len(utt.committed), utt.text_start + excess)

    def _roll_over(self, final: int, stats: _StatsSum) -> list[Commit]:
        """Close the current clip at its last completed window (or chunk) that fits the context, decode it, commit
        all but the rollback tokens, and make it the carried memory of a new clip holding the rest of the audio."""
        utt = self._utt
        clip = utt.clip
        self._make_room(ROWS_PER_CHUNK)
        fit = max(1, (self.decoder.n_ctx - self._overhead()) // ROWS_PER_CHUNK)
        cut_chunks = min(final, fit, max(1, int(self.engine.segment_seconds * SAMPLE_RATE) // CHUNK_SAMPLES))
        cut_chunks = (cut_chunks // CHUNKS_PER_WINDOW) * CHUNKS_PER_WINDOW or cut_chunks
        cut = clip.start + cut_chunks * CHUNK_SAMPLES
        blocks = self._encode(clip, utt.audio.view()[clip.start : cut], stats)
        dec = self._decode(blocks, self.engine.max_new_tokens, stats)
        commits: list[Commit] = []
        if not dec.silent:
            tail = dec.text_ids
            k = self._word_boundary(tail, len(tail) - self.streaming.rollback_tokens)
            commits = self._commit(tail[:k], dec.language, final=False)
            utt.draft = tail[k:]
        utt.carry = list(blocks)
        utt.text_start = clip.text_start
        utt.clip = ClipEncoder(clip.exact, start=cut, text_start=len(utt.committed))
        utt.heard.clear()
        stats.add(rollovers=1)
        _LOGGER.info("long utterance: rolled over at %.1f s", cut / SAMPLE_RATE)
        return commits
