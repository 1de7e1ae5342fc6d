"""Committed text to the user, in one order: journal (fsynced) → event bus → typed into the focused window.

Nothing is typed that is not in the journal, and nothing is published twice. Keystroke injection blocks (X
round trips, subprocesses), so it runs on one typing thread that takes commits in order; each typed commit's
outcome is published as an ``output`` event.

When the journal cannot be written (a full disk, an I/O error, a file system remounted read-only) the user's
words matter more than the order: the commit is still published and typed, kept in memory as *unsaved*, and the
failure is reported once through ``on_error`` (the daemon logs it, publishes an ``error`` event and shows it in
``status``). Unsaved commits are written, in order, before the next commit and every ``retry_s`` until the
journal works again; at shutdown what still cannot be written goes to ``fallback`` (a file elsewhere, normally
the runtime directory) and, at worst, to the log.

What is typed of an utterance is its text without leading or trailing white space (the typist puts
``typing.separator`` between utterances). White space at the end of a commit is held back until more text of the
same utterance follows, since nothing typed can be taken back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from qasr_live.bus import EventHub
from qasr_live.events import CommitEvent, OutputEvent
from qasr_live.outputs.journal import Journal
from qasr_live.outputs.typing import Typist, sanitize

_LOGGER = logging.getLogger(__name__)

JOURNAL_WRITE_FAILED = "journal_write_failed"  # the ``error`` event code of a journal the disk refuses

#: ``on_error(code, message)``: a failure the user must hear about (the daemon logs, publishes and notifies).
ErrorHook = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class _Unsaved:
    """A commit that was delivered but not journaled yet."""

    utterance_id: str
    idx: int
    text: str
    audio_start: float
    audio_end: float


class Delivery:
    """Owns the journal and the typist for a running daemon (either may be off in config.yaml)."""

    def __init__(
        self,
        bus: EventHub,
        journal: Journal | None,
        typist: Typist | None,
        *,
        on_error: ErrorHook | None = None,
        fallback: Path | None = None,
        retry_s: float = 5.0,
    ) -> None:
        self._bus = bus
        self._journal = journal
        self._typist = typist
        self._on_error = on_error
        self._fallback = fallback
        self._retry_s = retry_s
        self._unsaved: list[_Unsaved] = []  # delivered, not yet in the journal: the disk refused them
        self.journal_error: str | None = None  # why the journal cannot be written now (None: it can)
        self._retry: asyncio.TimerHandle | None = None
        self._typing_thread = ThreadPoolExecutor(1, thread_name_prefix="qasr-typing") if typist else None
        self._typing: set[asyncio.Future[None]] = set()
        self._utterance_id = ""  # the utterance whose commits are being typed
        self._typed = False  # some visible text of it went to the typist
        self._held_space = ""  # trailing white space of its last commit, typed only if more text follows

    def commit(self, event: CommitEvent, audio_start: float, audio_end: float) -> None:
        """Journal, then publish: a subscriber never sees a commit that a crash could lose (unless the disk
        refuses the journal: then the commit is published anyway and kept for the journal, see the module doc)."""
        if self._journal is not None:
            self._unsaved.append(_Unsaved(event.utterance_id, event.idx, event.text, audio_start, audio_end))
            self._save()
        self._bus.publish(event)

    @property
    def unsaved(self) -> int:
        """How many delivered commits wait for the journal."""
        return len(self._unsaved)

    def _save(self) -> bool:
        """Write the unsaved commits, oldest first; False (and the failure reported once) if the disk refuses."""
        journal = self._journal
        if journal is None:
            return True
        while self._unsaved:
            c = self._unsaved[0]
            try:
                journal.append(c.utterance_id, c.idx, c.text, c.audio_start, c.audio_end)
            except OSError as e:
                self._failed(journal, e)
                return False
            self._unsaved.pop(0)
        if self.journal_error is not None:
            _LOGGER.warning("journal: %s is written again; every held commit is saved", journal.path)
            self.journal_error = None
        return True

    def _failed(self, journal: Journal, e: OSError) -> None:
        first = self.journal_error is None
        self.journal_error = f"{e.strerror or e} ({journal.path})"
        if first:  # once per outage: a full disk must not flood the log and every client with the same line
            message = (
                f"cannot write the transcript journal {journal.path}: {e.strerror or e}; the text is still "
                "typed and published, held in memory and written when the journal works again (free disk space, "
                "or fix the file system)"
            )
            if self._on_error is not None:
                self._on_error(JOURNAL_WRITE_FAILED, message)
            else:
                _LOGGER.error("%s", message)
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self._retry is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (closing): the caller writes the fallback
            return

        def retry() -> None:
            self._retry = None
            if self._unsaved:
                self._save()

        self._retry = loop.call_later(self._retry_s, retry)

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
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._typing_thread is not None:
            self._typing_thread.shutdown(wait=True)
        if self._typist is not None:
            self._typist.close()
        if self._journal is not None:
            if self._unsaved and not self._save():
                self._save_fallback()
            self._journal.close()

    def _save_fallback(self) -> None:
        """Shutdown with commits the journal refused: keep them in ``fallback`` (JSON lines, 0600), else the log."""
        lines = "".join(json.dumps(asdict(c), ensure_ascii=False) + "\n" for c in self._unsaved)
        if self._fallback is not None:
            try:
                fd = os.open(self._fallback, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    os.write(fd, lines.encode("utf-8", "surrogatepass"))
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                _LOGGER.error("journal: cannot write the fallback %s either: %s", self._fallback, e.strerror or e)
            else:
                _LOGGER.error(
                    "journal: %d commit(s) could not be journaled; they are kept in %s",
                    len(self._unsaved),
                    self._fallback,
                )
                self._unsaved.clear()
                return
        for c in self._unsaved:  # the last resort: the log (the journal of systemd) keeps the words
            _LOGGER.error("journal: unsaved commit %s/%d: %s", c.utterance_id, c.idx, c.text)
        self._unsaved.clear()
