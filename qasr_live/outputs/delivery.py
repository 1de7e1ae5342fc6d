"""Committed text to the user, in one order: journal (fsynced) → event bus → typed into the focused window.

Nothing is typed that is not in the journal, and nothing is published twice. Keystroke injection blocks (X
round trips, subprocesses), so it runs on one typing thread that takes commits in order; each typed commit's
outcome is published as an ``output`` event.

What is typed of an utterance is its text without leading or trailing white space (the typist puts
``typing.separator`` between utterances). White space at the end of a commit is held back until more text of the
same utterance follows, since nothing typed can be taken back.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from qasr_live.bus import EventHub
from qasr_live.events import CommitEvent, OutputEvent
from qasr_live.outputs.journal import Journal
from qasr_live.outputs.typing import Typist, sanitize

_LOGGER = logging.getLogger(__name__)


class Delivery:
    """Owns the journal and the typist for a running daemon (either may be off in config.yaml)."""

    def __init__(self, bus: EventHub, journal: Journal | None, typist: Typist | None) -> None:
        self._bus = bus
        self._journal = journal
        self._typist = typist
        self._typing_thread = ThreadPoolExecutor(1, thread_name_prefix="qasr-typing") if typist else None
        self._typing: set[asyncio.Future[None]] = set()
        self._utterance_id = ""  # the utterance whose commits are being typed
        self._typed = False  # some visible text of it went to the typist
        self._held_space = ""  # trailing white space of its last commit, typed only if more text follows

    def commit(self, event: CommitEvent, audio_start: float, audio_end: float) -> None:
        """Journal, then publish: a subscriber never sees a commit that a crash could lose."""
        if self._journal is not None:
            self._journal.append(event.utterance_id, event.idx, event.text, audio_start, audio_end)
        self._bus.publish(event)

    def type(self, utterance_id: str, text: str) -> None:
        """Queue a commit's ``text`` (already journaled and published) for the typing thread. Commits come in
        order, utterance after utterance."""
        if self._typist is None:
            return
        if utterance_id != self._utterance_id:
            self._utterance_id, self._typed, self._held_space = utterance_id, False, ""
        body = self._held_space + sanitize(text)
        if not self._typed:
            body = body.lstrip()
        text = body.rstrip()
        self._held_space = body[len(text) :]
        if not text:
            return
        self._typed = True
        task = asyncio.ensure_future(self._type(self._typist, utterance_id, text))
        self._typing.add(task)
        task.add_done_callback(self._typing_done)

    def _typing_done(self, task: asyncio.Future[None]) -> None:
        self._typing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _LOGGER.error("typing: internal error", exc_info=task.exception())

    async def _type(self, typist: Typist, utterance_id: str, text: str) -> None:
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._typing_thread, typist.type_commit, utterance_id, text)
        if not result.ok:
            _LOGGER.error("typing failed: %s", result.error)
        for a in result.attempts:
            self._bus.publish(
                OutputEvent(
                    utterance_id=utterance_id, backend=a.backend, ok=a.ok, text=a.delivered or a.text, error=a.error
                )
            )

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
