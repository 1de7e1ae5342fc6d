"""Word times in live captions: each finished utterance is aligned in the background and its words published.

The daemon hands this class what it already sees: every audio block it pumps (kept in a ring buffer indexed by
the session's audio clock, the clock of `utterance_start.audio_start`), every commit, and every
`utterance_start` / `utterance_end`. When an utterance with text ends, its audio and text go to the forced
aligner on a thread of its own, so the commit, the typing and the next utterance never wait for it; the result
is published as an `utterance_words` event whose times are on the session clock. An utterance the aligner
refuses (text it cannot place, audio already overwritten) is logged, and publishes no words.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qasr_live.audio.pcm import SAMPLE_RATE
from qasr_live.bus import EventHub
from qasr_live.engine.align_text import display_words
from qasr_live.engine.aligner import MAX_SECONDS, Aligner
from qasr_live.engine.model_dir import ModelDir
from qasr_live.errors import QasrError
from qasr_live.events import CommitEvent, ServerEvent, UtteranceEndEvent, UtteranceStartEvent, UtteranceWordsEvent

_LOGGER = logging.getLogger(__name__)
KEEP_SECONDS = MAX_SECONDS + 30.0  # the longest utterance the aligner takes, and the audio pumped meanwhile


@dataclass(slots=True)
class _Utterance:
    start: float
    texts: list[str] = field(default_factory=list)


class LiveWordTimes:
    """Owns the aligner (loaded on its own thread) and the audio ring buffer; publishes on the event loop."""

    def __init__(
        self,
        model: ModelDir,
        hub: EventHub,
        threads: int = 1,
        keep_seconds: float = KEEP_SECONDS,
        n_gpu_layers: int = 0,
    ) -> None:
        self._model = model
        self._n_gpu_layers = n_gpu_layers
        self._hub = hub
        self._threads = threads
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="qasr-aligner")
        self._aligner: Aligner | None = None
        self._ring = np.zeros(int(keep_seconds * SAMPLE_RATE), dtype=np.int16)
        self._written = 0  # samples pumped so far: the session clock, in samples
        self._utterances: dict[str, _Utterance] = {}
        self._pending: set[asyncio.Future[Any]] = set()

    async def start(self) -> None:
        """Load the aligner (a second model: seconds) off the event loop."""
        loop = asyncio.get_running_loop()
        self._aligner = await loop.run_in_executor(
            self._thread,
            lambda: Aligner(self._model, threads=self._threads, n_ctx=2048, n_gpu_layers=self._n_gpu_layers),
        )

    async def close(self) -> None:
        """Finish the alignments already queued (their words are published), then free the aligner."""
        if self._pending:
            await asyncio.wait(set(self._pending))
        aligner, self._aligner = self._aligner, None
        if aligner is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, aligner.close)
        self._thread.shutdown(wait=True)

    # --- what the daemon shows it -----------------------------------------------------------------------------
    def feed(self, block: np.ndarray) -> None:
        """One pumped block of 16 kHz int16 audio, in capture order."""
        block = np.asarray(block, dtype=np.int16).reshape(-1)[-len(self._ring) :]
        at = self._written % len(self._ring)
        first = min(len(block), len(self._ring) - at)
        self._ring[at : at + first] = block[:first]
        self._ring[: len(block) - first] = block[first:]
        self._written += len(block)

    def observe(self, event: ServerEvent) -> None:
        """An event the daemon publishes or delivers: utterance_start, commit, utterance_end matter."""
        if isinstance(event, UtteranceStartEvent):
            self._utterances[event.utterance_id] = _Utterance(event.audio_start)
        elif isinstance(event, CommitEvent):
            utt = self._utterances.get(event.utterance_id)
            if utt is not None:
                utt.texts.append(event.text)
        elif isinstance(event, UtteranceEndEvent):
            utt = self._utterances.pop(event.utterance_id, None)
            text = "".join(utt.texts).strip() if utt is not None else ""
            if utt is None or not display_words(text, event.language):
                return
            seconds = event.latency.get("audio_ms", 0.0) / 1000.0
            audio = self._audio(utt.start, seconds)
            if audio is None:
                _LOGGER.warning("no word times for utterance %s: its audio is no longer kept", event.utterance_id)
                return
            self._submit(event.utterance_id, utt.start, audio, text, event.language)

    def _audio(self, start: float, seconds: float) -> np.ndarray | None:
        a = round(start * SAMPLE_RATE)
        b = min(a + round(seconds * SAMPLE_RATE), self._written)
        if b <= a or a < self._written - len(self._ring):
            return None
        idx = np.arange(a, b) % len(self._ring)
        return self._ring[idx].astype(np.float32) / 32768.0

    def _submit(self, utterance_id: str, start: float, audio: np.ndarray, text: str, language: str | None) -> None:
        loop = asyncio.get_running_loop()

        def align() -> UtteranceWordsEvent | None:
            if self._aligner is None:
                return None
            t0 = time.perf_counter()
            try:
                words = self._aligner.align(audio, text, language)
            except QasrError as e:  # a text the aligner cannot place: the utterance just has no word times
                _LOGGER.warning("no word times for utterance %s: %s", utterance_id, e)
                return None
            shown = display_words(text, language)
            limit = len(audio) / SAMPLE_RATE  # a slot past the utterance's audio is no time in it
            return UtteranceWordsEvent(
                utterance_id=utterance_id,
                language=language,
                words=shown,
                start=[round(start + min(w.start, limit), 3) for w in words],
                end=[round(start + min(w.end, limit), 3) for w in words],
                align_ms=round((time.perf_counter() - t0) * 1000, 1),
            )

        future = loop.run_in_executor(self._thread, align)
        self._pending.add(future)

        def done(f: asyncio.Future[UtteranceWordsEvent | None]) -> None:
            self._pending.discard(f)
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                _LOGGER.error("aligner: internal error", exc_info=exc)
            elif (event := f.result()) is not None:
                self._hub.publish(event)

        future.add_done_callback(done)
