"""Long utterances: keeping a streaming utterance's prompt within ``engine.n_ctx`` and its current clip within
``engine.segment_seconds`` (recognizer.py, "Long utterances"). Memory entries leave the utterance's prompt first;
then the utterance *rolls over* like the offline pipeline's segments: its audio up to the last completed window
(or chunk) is decoded, all but ``rollback_tokens`` of its text committed, and it becomes the carried memory of a
new clip holding the rest. A mixin of :class:`~qasr_live.streaming.recognizer.StreamingRecognizer`: it uses the
recognizer's encode, decode and commit steps (:class:`_Recognizer` names them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from qasr_live.audio.pcm import SAMPLE_RATE
from qasr_live.config import EngineConfig
from qasr_live.engine.decoder import Decoder
from qasr_live.engine.encoder import ROWS_PER_CHUNK
from qasr_live.engine.features import HOP, feature_output_length
from qasr_live.engine.incremental import CHUNK_SAMPLES, CHUNKS_PER_WINDOW, ClipEncoder
from qasr_live.streaming.results import Commit, StatsSum
from qasr_live.streaming.utterance import Decoded, Utterance

__all__ = ["LongUtterances"]

_LOGGER = logging.getLogger("qasr_live.streaming.recognizer")  # the recognizer's logger: one name for its logs


class _Recognizer(Protocol):
    """What the mixin uses of the recognizer."""

    decoder: Decoder
    engine: EngineConfig

    def _require(self) -> Utterance: ...

    def _overhead(self) -> int: ...

    def _encode(self, clip: ClipEncoder, audio: np.ndarray, stats: StatsSum) -> list[np.ndarray]: ...

    def _decode(self, blocks: Sequence[np.ndarray], budget: int, stats: StatsSum, *, fallback: bool) -> Decoded: ...

    def _commit(self, ids: list[int], language: str | None, final: bool) -> list[Commit]: ...

    def _needs_fit(self, n: int) -> bool: ...

    def _make_room(self, rows: int) -> None: ...

    def _roll_over(self, final: int, stats: StatsSum) -> list[Commit]: ...


class LongUtterances:
    """The context budget and the rollover of :class:`~qasr_live.streaming.recognizer.StreamingRecognizer`."""

    def _needs_fit(self: _Recognizer, n: int) -> bool:
        """Whether _fit_context(n) would change anything (drop memory, roll over)."""
        clip_samples = n - self._require().clip.start
        over = self._overhead() + feature_output_length(clip_samples // HOP) > self.decoder.n_ctx
        return over or clip_samples > self.engine.segment_seconds * SAMPLE_RATE

    def _fit_context(self: _Recognizer, n: int, stats: StatsSum) -> list[Commit]:
        """Keep the prompt within n_ctx (with room to generate) and the current clip within segment_seconds:
        drop memory entries from this utterance's prompt, then roll over."""
        utt = self._require()
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

    def _make_room(self: _Recognizer, rows: int) -> None:
        """Last resort for a prompt that cannot fit otherwise: forget the carried clip (rows and text), then the
        oldest prompt text (which may make the model repeat it: only reachable with absurd n_ctx settings)."""
        utt = self._require()
        if utt.carry and self._overhead() + rows > self.decoder.n_ctx:
            _LOGGER.warning("the decoder context is full: the carried audio and its text leave the prompt")
            utt.carry, utt.text_start = [], utt.clip.text_start
        excess = self._overhead() + rows - self.decoder.n_ctx
        if excess > 0:
            _LOGGER.warning("the decoder context is full: %d tokens of committed text leave the prompt", excess)
            utt.text_start = min(len(utt.committed), utt.text_start + excess)

    def _roll_over(self: _Recognizer, final: int, stats: StatsSum) -> list[Commit]:
        """Close the current clip at its last completed window (or chunk) that fits the context, decode it, commit
        all but the rollback tokens, and make it the carried memory of a new clip holding the rest of the audio."""
        utt = self._require()
        clip = utt.clip
        self._make_room(ROWS_PER_CHUNK)
        fit = max(1, (self.decoder.n_ctx - self._overhead()) // ROWS_PER_CHUNK)
        cut_chunks = min(final, fit, max(1, int(self.engine.segment_seconds * SAMPLE_RATE) // CHUNK_SAMPLES))
        cut_chunks = (cut_chunks // CHUNKS_PER_WINDOW) * CHUNKS_PER_WINDOW or cut_chunks
        cut = clip.start + cut_chunks * CHUNK_SAMPLES
        blocks = self._encode(clip, utt.audio.view()[clip.start : cut], stats)
        dec = self._decode(blocks, self.engine.max_new_tokens, stats, fallback=True)
        commits: list[Commit] = []
        looped = dec.stopped == "repetition" and not self.engine.fallback_retries  # else re-decoded: keep the best
        if dec.language != "" and not looped:
            tail = dec.text_ids
            k = utt.policy.rollover(tail)
            commits = self._commit(tail[:k], dec.language, final=False)
            utt.draft = tail[k:]
        utt.policy.forget()
        utt.carry = list(blocks)
        utt.text_start = clip.text_start
        utt.clip = ClipEncoder(clip.exact, start=cut, text_start=len(utt.committed))
        stats.add(rollovers=1)
        _LOGGER.info("long utterance: rolled over at %.1f s", cut / SAMPLE_RATE)
        return commits
