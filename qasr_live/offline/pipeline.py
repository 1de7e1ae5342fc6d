"""Offline transcription of audio of any length: features -> encoder -> decoder, segment by segment.

The encoder always attends within its 8 s windows. The decoder works on segments of `segment_seconds`, cut in
the middle of the longest quiet stretch near each boundary. A cut inside a pause (`is_pause`) splits no word:
the segments on either side are decoded independently, as the official pipeline decodes its chunks, and each
commits all its text. A cut inside speech gives the next segment the previous segment's audio rows and
committed text as memory: the model continues that text over [previous audio + new audio]. The last
`SEGMENT_ROLLBACK_TOKENS` tokens before such a cut are not committed; the next segment, which hears the same
audio again, re-generates them, so a word cut by the boundary is neither lost nor repeated. Memory serves those
cuts only: re-reading the previous audio invites a model to repeat or skip text at the join (measured:
docs/demo-model.md, "Segment joins").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass

import numpy as np

from qasr_live.audio.pcm import SAMPLE_RATE
from qasr_live.config import EngineConfig
from qasr_live.engine.encoder import Encoder
from qasr_live.engine.features import log_mel
from qasr_live.engine.generation import AnswerLength, Generation, generate, with_fallback
from qasr_live.engine.kv_cache import PrefixCache
from qasr_live.engine.loading import MIN_SECONDS, open_decoder, stop_ids
from qasr_live.engine.model_dir import ModelDir
from qasr_live.engine.prompt import ASR_TEXT, build_prompt, split_answer
from qasr_live.errors import AudioError
from qasr_live.itn import normalize
from qasr_live.offline.transcript import Segment, Stats, Transcript

_LOGGER = logging.getLogger(__name__)
SEGMENT_ROLLBACK_TOKENS = 5
_SEARCH_SECONDS = 5.0
_ENERGY_WINDOW = SAMPLE_RATE // 10
PAUSE_SECONDS = 0.2  # longer than the gaps inside a sentence
PAUSE_DB = 30.0  # below the speech level: silence or a faint noise floor, not a soft consonant


def check_audio(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise AudioError(f"audio must be mono (one dimension), got shape {audio.shape}; average the channels.")
    if audio.size == 0:
        raise AudioError(
            "the audio is empty (0 samples): nothing to transcribe; check that the recording or file is not empty."
        )
    bad = ~np.isfinite(audio)
    if bad.any():
        first = int(np.argmax(bad))
        raise AudioError(
            f"the audio has {int(bad.sum())} NaN/infinite samples (first at {first / SAMPLE_RATE:.3f} s): the source"
            " is corrupt or was decoded wrongly; re-record or re-export it (or replace them, e.g. np.nan_to_num)."
        )
    return audio


def segment_bounds(n_samples: int, segment_seconds: float, audio: np.ndarray | None = None) -> list[tuple[int, int]]:
    """Sample ranges of at most `segment_seconds`, cut in the middle of the longest quiet stretch (100 ms windows
    within 10 dB of the quietest) in the last `_SEARCH_SECONDS` (at most a quarter of a segment) before each
    nominal boundary."""
    seg = int(segment_seconds * SAMPLE_RATE)
    search = min(int(_SEARCH_SECONDS * SAMPLE_RATE), seg // 4)
    bounds, start = [], 0
    while n_samples - start > seg:
        end = start + seg
        cut = end
        if audio is not None and search >= _ENERGY_WINDOW:
            energy = _window_power(audio[end - search : end])
            # windows within 10 dB of the quietest (a noise floor varies); of their stretches the longest is the
            # pause between sentences rather than a gap inside one, and its middle is farthest from the speech
            quiet = np.concatenate(([False], energy <= energy.min() * 10 + 1e-12, [False]))
            edges = np.flatnonzero(quiet[1:] != quiet[:-1])
            starts, stops = edges[::2], edges[1::2]
            longest = int(np.argmax(stops - starts))
            cut = end - search + (starts[longest] + stops[longest] - 1) // 2 + _ENERGY_WINDOW // 2
        bounds.append((start, cut))
        start = cut
    bounds.append((start, n_samples))
    return bounds


def is_pause(audio: np.ndarray, at: int, start: int = 0) -> bool:
    """Whether the `PAUSE_SECONDS` around sample `at` are at least `PAUSE_DB` quieter than the speech of
    audio[start:at] (the 90th percentile of its 100 ms windows; `start` at least 200 ms before `at`)."""
    half = int(PAUSE_SECONDS * SAMPLE_RATE) // 2
    if at - start < 2 * _ENERGY_WINDOW or at + half > len(audio):
        return False
    level = np.percentile(_window_power(audio[start:at])[::_ENERGY_WINDOW], 90)  # abutting windows suffice
    quiet = np.mean(audio[at - half : at + half].astype(np.float64) ** 2)
    return bool(quiet <= level * 10 ** (-PAUSE_DB / 10))


def _window_power(audio: np.ndarray) -> np.ndarray:
    """Mean power of every 100 ms window (one per start sample)."""
    total = np.concatenate(([0.0], np.cumsum(audio.astype(np.float64) ** 2)))
    return (total[_ENERGY_WINDOW:] - total[:-_ENERGY_WINDOW]) / _ENERGY_WINDOW


@dataclass(slots=True)
class _Memory:
    rows: np.ndarray | None = None
    text_ids: tuple[int, ...] = ()


class Transcriber:
    """Owns a decoder; borrows an encoder (in-process AudioEncoder or EncoderWorker, same methods).

    `answer_length` (benchmarks): seconds of a segment's audio -> the number of tokens its answer is forced to
    (None: stop at end-of-sequence). A forced answer has no stop tokens and no repetition guard; given at
    construction, the decoder samples only whole words (`open_decoder(words_only=True)`)."""

    def __init__(
        self, model: ModelDir, engine: EngineConfig, encoder: Encoder, *, answer_length: AnswerLength | None = None
    ) -> None:
        self.model = model
        self.engine = engine
        self.encoder = encoder
        self.answer_length = answer_length
        self.decoder = open_decoder(model, engine, words_only=answer_length is not None)
        self.asr_text_id = self.decoder.token_id(ASR_TEXT)
        self.stop_ids = stop_ids(self.decoder)
        # A segment's prompt starts with the previous segment's rows as memory, which the previous prompt held at
        # the same positions: those stay in the KV cache (a third of the prefill of long audio).
        self._kv = PrefixCache(self.decoder)

    def close(self) -> None:
        self.decoder.close()

    def transcribe(
        self,
        audio: np.ndarray,
        language: str | None = None,
        context: str = "",
        on_segment: Callable[[Segment], None] | None = None,
        *,
        itn: bool = False,
    ) -> Transcript:
        """Transcribe samples held in memory (16 kHz mono float32); `on_segment` sees each segment as it is
        decoded. `itn`: Chinese inverse text normalisation of the text (qasr_live.itn)."""
        run = self.stream([check_audio(audio)], language, context, itn=itn)
        while True:
            try:
                segment = next(run)
            except StopIteration as done:
                result: Transcript = done.value
                return result
            if on_segment is not None:
                on_segment(segment)

    def stream(
        self,
        blocks: Iterable[np.ndarray],
        language: str | None = None,
        context: str = "",
        *,
        itn: bool = False,
        offset: float = 0.0,
    ) -> Generator[Segment, None, Transcript]:
        """Transcribe audio arriving in blocks (16 kHz mono float32, e.g. `AudioFile.blocks()`), yielding each
        segment as it is decoded; the generator returns the Transcript. Only a segment's audio and the next
        block are held, never the whole file: cuts and pauses are found in the same places as on the whole.
        `offset`: the time of the first sample in the input (a cut file): segment times count from there."""
        t_start = time.perf_counter()
        stats = Stats()
        source = iter(blocks)
        buffer = np.zeros(0, np.float32)  # audio from sample `done` on
        done, eof, seconds = 0, False, offset
        seg = int(self.engine.segment_seconds * SAMPLE_RATE)
        lookahead = int(PAUSE_SECONDS * SAMPLE_RATE) // 2 + 1  # is_pause looks this far past a cut
        memory = _Memory()
        detected: str | None = language
        segments: list[Segment] = []
        all_ids: list[int] = []
        committed: list[int] = []
        while True:
            while not eof and len(buffer) <= seg + lookahead:
                block = next(source, None)
                if block is None:
                    eof = True
                    break
                block = check_audio(block) if len(block) else block
                buffer = np.concatenate((buffer, block.astype(np.float32, copy=False)))
            if eof and done == 0 and len(buffer) == 0:
                check_audio(buffer)  # the empty-audio error
            total = done + len(buffer)
            if eof and len(buffer) <= seg:
                if done == 0 and len(buffer) < MIN_SECONDS * SAMPLE_RATE:
                    buffer = np.pad(buffer, (0, int(MIN_SECONDS * SAMPLE_RATE) - len(buffer)))
                a, b, closed = 0, len(buffer), True
            else:
                a, b = segment_bounds(len(buffer), self.engine.segment_seconds, buffer)[0]
                # a cut in a pause splits no word: commit everything, and decode the next segment on its own
                closed = is_pause(buffer, b, a)
            t0 = time.perf_counter()
            rows = self.encoder.encode(log_mel(buffer[a:b]))
            stats.encoder_seconds += time.perf_counter() - t0
            generated, text_ids, seg_language = self._decode_segment(
                rows, (b - a) / SAMPLE_RATE, memory, context, language, detected, stats
            )
            all_ids += generated
            if detected is None and seg_language:
                detected = seg_language
            last = eof and b == len(buffer)
            keep = text_ids if closed or last else text_ids[: max(0, len(text_ids) - SEGMENT_ROLLBACK_TOKENS)]
            committed += keep
            text = self.decoder.detokenize(keep).strip()
            segment = Segment(
                seconds + (done + a) / SAMPLE_RATE,
                seconds + min(done + b, total) / SAMPLE_RATE,
                normalize(text) if itn and detected == "Chinese" else text,
            )
            segments.append(segment)
            yield segment
            memory = _Memory() if closed or seg_language == "" else _Memory(rows, tuple(keep))
            if last:
                break
            buffer, done = buffer[b:], done + b
        stats.audio_seconds = total / SAMPLE_RATE
        stats.wall_seconds = time.perf_counter() - t_start
        text = self.decoder.detokenize(committed).strip()
        if itn and detected == "Chinese":
            text = normalize(text)
        return Transcript(text=text, language=detected or None, segments=segments, token_ids=all_ids, stats=stats)

    def _decode_segment(
        self,
        rows: np.ndarray,
        seconds: float,
        memory: _Memory,
        context: str,
        forced: str | None,
        detected: str | None,
        stats: Stats,
    ) -> tuple[list[int], list[int], str | None]:
        """Prefill and generate one segment. Returns (generated ids, text ids, language the model stated:
        None if it stated none, "" for no speech)."""
        d = self.decoder
        # With memory, the earlier answer is continued: its language header is already known.
        header_language = forced or (detected if memory.text_ids else None)
        blocks = [rows] if memory.rows is None else [memory.rows, rows]
        prompt = build_prompt(d.tokenize, context, header_language, blocks, memory.text_ids)
        t0 = time.perf_counter()
        stats.prefill_tokens += prompt.n_positions - self._kv.feed(prompt)
        stats.prefill_seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        length = self.answer_length(seconds) if self.answer_length is not None else None
        sampled: list[int] = []
        if length is None:
            gen = generate(
                d, self.stop_ids, self.engine.max_new_tokens, self.engine.repetition_guard, on_token=sampled.append
            )
        else:
            gen = generate(d, set(), length, repetition_guard=False, on_token=sampled.append)
        self._kv.extend(sampled[: d.n_past - prompt.n_positions])
        stats.generated_tokens += len(gen.tokens)
        if gen.stopped == "repetition" and self.engine.fallback_retries:

            def again() -> Generation:
                self._kv.feed(prompt)  # back to the end of the prompt, with its logits
                del sampled[:]
                retry = generate(d, self.stop_ids, self.engine.max_new_tokens, True, on_token=sampled.append)
                self._kv.extend(sampled[: d.n_past - prompt.n_positions])
                stats.generated_tokens += len(retry.tokens)
                return retry

            e = self.engine
            gen, tries = with_fallback(d, again, gen, e.fallback_retries, e.temperature, e.seed)
            stats.fallbacks += tries
            _LOGGER.info(
                "segment looped: %d re-decode(s) at higher temperature, kept one that %s",
                tries,
                "looped too" if gen.stopped == "repetition" else f"ended by {gen.stopped}",
            )
        stats.generate_seconds += time.perf_counter() - t0
        if length is None and gen.stopped != "eos":
            _LOGGER.warning("segment ended by %s after %d tokens", gen.stopped, len(gen.tokens))
        if header_language:
            return gen.tokens, gen.tokens, header_language
        language, text_ids = split_answer(gen.tokens, self.asr_text_id, d.detokenize)
        return gen.tokens, text_ids, language
