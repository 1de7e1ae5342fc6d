"""Committed text to the user, in one order: journal (fsynced) → event bus → typed into the focused window.

Nothing is typed that is not in the journal, and nothing is published twice. Keystroke injection blocks (X
round trips, subprocesses), so it runs on one typing thread that takes commits in order; each typed commit's
outcome is published as an ``output`` event.

Each commit goes through the voice commands and text rules (:class:`~qasr_live.outputs.typing.rules.TextRules`)
*before* it is journaled, so the journal line and the ``commit`` event carry both the model's text (``text``) and
what is typed (``typed``, ``scratch``). The rules hold back trailing white space and words that could begin a
command until more text of the same utterance follows; what is still held when the utterance ends is let out by
:meth:`Delivery.end` as one more journaled commit with empty ``text``. The typist puts ``typing.separator``
between utterances.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from qasr_live.bus import EventHub
from qasr_live.config import TypingConfig
from qasr_live.events import CommitEvent, OutputEvent
from qasr_live.notifications import Notifier
from qasr_live.outputs.journal import Journal
from qasr_live.outputs.typing import OutputResult, Typist
from qasr_live.outputs.typing.rules import Release, TextRules

_LOGGER = logging.getLogger(__name__)


def rules_for(config: TypingConfig, language: str | None) -> TextRules:
    """The text rules of a ``typing`` section, for speech in ``language`` (None: auto-detected, every table)."""
    return TextRules(
        voice_commands=config.voice_commands,
        punctuation_words=config.punctuation_words,
        replacements=config.replacements,
        language=language,
    )


class Delivery:
    """Owns the journal and the typist for a running daemon (either may be off in config.yaml)."""

    def __init__(
        self,
        bus: EventHub,
        journal: Journal | None,
        typist: Typist | None,
        rules: TextRules | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self._bus = bus
        self._journal = journal
        self._typist = typist
        self.rules = rules or rules_for(TypingConfig(), None)
        self._notifier = notifier
        self._typing_thread = ThreadPoolExecutor(1, thread_name_prefix="qasr-typing") if typist else None
        self._typing: set[asyncio.Future[None]] = set()
        self._released: dict[str, deque[Release]] = {}  # per utterance: what each commit let out, until typed
        self._next: dict[str, tuple[int, float, float]] = {}  # per utterance: next idx, its audio span

    def start(self, utterance_id: str) -> None:
        """Dictation of an utterance starts: the typist remembers the focused window (on the typing thread, in
        order with the typing of earlier utterances)."""
        if self._typist is None or self._typing_thread is None:
            return
        future = asyncio.get_running_loop().run_in_executor(self._typing_thread, self._typist.mark_target, utterance_id)
        self._typing.add(future)
        future.add_done_callback(self._typing_done)

    def commit(self, event: CommitEvent, audio_start: float, audio_end: float) -> None:
        """Apply the text rules, journal, then publish: a subscriber never sees a commit that a crash could lose."""
        release = self.rules.feed(event.utterance_id, event.text)
        self._record(event, release, audio_start, audio_end)
        self._released.setdefault(event.utterance_id, deque()).append(release)

    def _record(self, event: CommitEvent, release: Release, audio_start: float, audio_end: float) -> None:
        typed = CommitEvent(
            utterance_id=event.utterance_id,
            idx=event.idx,
            text=event.text,
            typed=release.text,
            scratch=release.scratch,
        )
        if self._journal is not None:
            self._journal.append(
                event.utterance_id,
                event.idx,
                event.text,
                audio_start,
                audio_end,
                typed=release.text,
                scratch=release.scratch,
            )
        self._bus.publish(typed)
        self._next[event.utterance_id] = (event.idx + 1, audio_start, audio_end)
        while len(self._next) > 16:
            del self._next[next(iter(self._next))]

    def type(self, utterance_id: str, text: str) -> None:
        """Queue a commit (already journaled and published) for the typing thread: what the rules let out of it.
        Commits come in order, utterance after utterance; ``text`` is the model's text of that commit."""
        queue = self._released.get(utterance_id)
        if not queue:
            _LOGGER.error("typing: a commit of utterance %s came to be typed without being delivered", utterance_id)
            return
        self._queue(utterance_id, queue.popleft())

    def end(self, utterance_id: str, *, type_it: bool = True) -> None:
        """The utterance is over: journal, publish and (``type_it``) type what the rules still held back."""
        self._released.pop(utterance_id, None)  # commits never typed (a cancelled push-to-talk) stay untyped
        release = self.rules.end(utterance_id)
        if not release.text and not release.scratch:
            return
        idx, audio_start, audio_end = self._next.get(utterance_id, (0, 0.0, 0.0))
        self._record(CommitEvent(utterance_id=utterance_id, idx=idx, text=""), release, audio_start, audio_end)
        if type_it:
            self._queue(utterance_id, release)

    def _queue(self, utterance_id: str, release: Release) -> None:
        if self._typist is None or not (release.text or release.delete):
            return
        task = asyncio.ensure_future(self._type(self._typist, utterance_id, release))
        self._typing.add(task)
        task.add_done_callback(self._typing_done)

    def _typing_done(self, task: asyncio.Future[None]) -> None:
        self._typing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _LOGGER.error("typing: internal error", exc_info=task.exception())

    async def _type(self, typist: Typist, utterance_id: str, release: Release) -> None:
        loop = asyncio.get_running_loop()

        def run() -> OutputResult:
            return typist.type_commit(utterance_id, release.text, newlines=True, scratch=release.delete)

        result = await loop.run_in_executor(self._typing_thread, run)
        if not result.ok:
            _LOGGER.error("typing failed: %s", result.error)
            if self._notifier is not None:
                await loop.run_in_executor(None, self._notify_failure, result)
        for a in result.attempts:
            self._bus.publish(
                OutputEvent(
                    utterance_id=utterance_id, backend=a.backend, ok=a.ok, text=a.delivered or a.text, error=a.error
                )
            )

    def _notify_failure(self, result: OutputResult) -> None:
        assert self._notifier is not None
        last = result.attempts[-1] if result.attempts else None
        if last is not None and last.error and "on the clipboard" in last.error:
            first = result.attempts[0].error if len(result.attempts) > 1 else None
            why = f" (no typing route worked: {first})" if first else ""
            self._notifier.notify("Dictated text is on the clipboard", f"Press Ctrl+V to paste it{why}")
        else:
            self._notifier.notify("Typing failed", result.error or "", urgency="critical")

    async def drain(self) -> None:
        """Wait until everything queued is typed."""
        while self._typing:
            await asyncio.wait(set(self._typing))

    def close(self) -> None:
        if self._typing_thread is not None:
            self._typing_thread.shutdown(wait=True)
        if self._typist is not None:
            self._typist.close()
        if self._journal is not None:
            self._journal.close()
