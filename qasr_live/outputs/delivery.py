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

When the journal cannot be written (a full disk, an I/O error, a file system remounted read-only) the user's
words matter more than the order: the commit is still published and typed, kept in memory as *unsaved*, and the
failure is reported once through ``on_error`` (the daemon logs it, publishes an ``error`` event, shows it in
``status`` and notifies the desktop). Unsaved commits are written, in order, before the next commit and every
``retry_s`` until the journal works again; at shutdown what still cannot be written goes to ``fallback`` (a file
elsewhere, normally the runtime directory) and, at worst, to the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from qasr_live.bus import EventHub
from qasr_live.config import TypingConfig
from qasr_live.events import CommitEvent, OutputEvent
from qasr_live.notifications import Notifier
from qasr_live.outputs.journal import Journal
from qasr_live.outputs.typing import OutputResult, Typist
from qasr_live.outputs.typing.rules import Release, TextRules

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
    typed: str | None
    scratch: bool


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
        *,
        on_error: ErrorHook | None = None,
        fallback: Path | None = None,
        retry_s: float = 5.0,
    ) -> None:
        self._bus = bus
        self._journal = journal
        self._typist = typist
        self.rules = rules or rules_for(TypingConfig(), None)
        self._notifier = notifier
        self._on_error = on_error
        self._fallback = fallback
        self._retry_s = retry_s
        self._unsaved: list[_Unsaved] = []  # delivered, not yet in the journal: the disk refused them
        self.journal_error: str | None = None  # why the journal cannot be written now (None: it can)
        self._retry: asyncio.TimerHandle | None = None
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
        """Apply the text rules, journal, then publish: a subscriber never sees a commit that a crash could lose
        (unless the disk refuses the journal: then the commit is published anyway and kept for the journal, see
        the module doc)."""
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
            self._unsaved.append(
                _Unsaved(
                    event.utterance_id, event.idx, event.text, audio_start, audio_end, release.text, release.scratch
                )
            )
            self._save()
        self._bus.publish(typed)
        self._next[event.utterance_id] = (event.idx + 1, audio_start, audio_end)
        while len(self._next) > 16:
            del self._next[next(iter(self._next))]

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
                journal.append(
                    c.utterance_id, c.idx, c.text, c.audio_start, c.audio_end, typed=c.typed, scratch=c.scratch
                )
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
