"""The transcript journal: every committed piece of text, appended to a JSON-lines file before anything else sees it.

One line per commit, keys ``seq, time, utterance_id, idx, text, audio_start, audio_end, typed, scratch``
(``text`` as the model wrote it, ``typed`` what the voice commands and text rules let out to be typed, ``scratch``
true where "scratch that" deleted typed text; lines of older versions, without the last two, read as
``typed: null, scratch: false``)::

    {"seq":42,"time":"2025-06-01T09:14:03.123+02:00","utterance_id":"u7","idx":0,"text":"Hi","audio_start":1.2,...}

``Journal.append`` writes the line (unbuffered) and calls ``os.fsync`` before returning its ``seq``; the daemon types or
publishes the text only after that, so committed text survives a crash of the daemon or of the machine. ``seq``
is global and monotonic across restarts: on open the journal continues after the last valid line. A torn last
line (a crash in the middle of a write) is cut off, or completed if only its newline is missing; every earlier
line is kept. While a ``Journal`` is open it
holds an exclusive ``flock`` on the file, so two daemons cannot interleave their lines; ``read_entries`` reads the
file without the lock and without repairing it (for ``qasr-live history`` while the daemon runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from qasr_live.errors import QasrError

__all__ = ["Journal", "JournalEntry", "default_journal_path", "format_history", "read_entries"]

log = logging.getLogger(__name__)

_BLOCK = 1 << 16
_MAX_TORN = 1 << 20  # a torn tail longer than this is not a torn journal line: refuse to cut it off


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One committed piece of text: ``text`` is appended to utterance ``utterance_id`` as its commit ``idx``."""

    seq: int  # global, from 1, increasing across restarts
    time: str  # ISO 8601 local time with UTC offset, when it was journaled
    utterance_id: str
    idx: int  # commit index within the utterance, from 0
    text: str
    audio_start: float  # seconds on the daemon's audio clock
    audio_end: float
    typed: str | None = None  # what was let out to be typed (None: not recorded, older journals)
    scratch: bool = False  # "scratch that": the typed text before it was deleted

    _OPTIONAL = ("typed", "scratch")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_line(self) -> bytes:
        """The journal line, newline included."""
        text = json.dumps(self.to_dict(), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return (text + "\n").encode("utf-8")

    @classmethod
    def from_line(cls, line: bytes | str) -> JournalEntry | None:
        """The entry of one journal line, or ``None`` if the line is not a valid entry."""
        try:
            d = json.loads(line)
        except (ValueError, RecursionError):  # also UnicodeDecodeError; a line of `[[[[...` is no entry either
            return None
        if not isinstance(d, dict):
            return None
        try:
            entry = cls(
                **{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d or f.name not in cls._OPTIONAL}
            )
        except KeyError:
            return None
        return entry if _valid(entry) else None


def _valid(e: JournalEntry) -> bool:
    def count(x: object) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    def number(x: object) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

    return (
        count(e.seq)
        and e.seq >= 1
        and count(e.idx)
        and isinstance(e.time, str)
        and isinstance(e.utterance_id, str)
        and isinstance(e.text, str)
        and number(e.audio_start)
        and number(e.audio_end)
        and (e.typed is None or isinstance(e.typed, str))
        and isinstance(e.scratch, bool)
    )


def default_journal_path() -> Path:
    """``$XDG_STATE_HOME/qasr-live/journal.jsonl``, by default ``~/.local/state/qasr-live/journal.jsonl``."""
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "qasr-live" / "journal.jsonl"


class Journal:
    """The append-only journal at ``path``, open for appending (created with mode 0600, parent created 0700)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        except FileExistsError:
            fd = os.open(self.path, flags)
            created = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise QasrError(
                    f"transcript journal {self.path} is in use by another qasr-live process; "
                    "stop that daemon first, or give this one another journal path"
                ) from None
            if created:
                os.fchmod(fd, 0o600)  # whatever the umask: dictated text is private
                _fsync_dir(self.path.parent)
            self._fd: int | None = fd
            self._size, self._seq = self._recover()
        except BaseException:
            os.close(fd)
            raise

    # -------------------------------------------------------------------------------------------- writing

    def append(
        self,
        utterance_id: str,
        idx: int,
        text: str,
        audio_start: float,
        audio_end: float,
        *,
        typed: str | None = None,
        scratch: bool = False,
    ) -> int:
        """Journal one commit durably (written, flushed, fsync'ed) and return its ``seq``."""
        if not isinstance(utterance_id, str) or not isinstance(text, str):
            raise TypeError("utterance_id and text must be strings")
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise ValueError(f"idx must be a non-negative integer, got {idx!r}")
        for name, value in (("audio_start", audio_start), ("audio_end", audio_end)):
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        with self._lock:
            fd = self._require_open()
            entry = JournalEntry(
                seq=self._seq + 1,
                time=datetime.now().astimezone().isoformat(timespec="milliseconds"),
                utterance_id=utterance_id,
                idx=idx,
                text=text,
                audio_start=float(audio_start),
                audio_end=float(audio_end),
                typed=typed,
                scratch=bool(scratch),
            )
            line = entry.to_line()  # raises before writing anything if text cannot be encoded
            try:
                _write_all(fd, line)
                os.fsync(fd)
            except BaseException:
                # leave no partial line behind: the next append would otherwise be glued onto it
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self._size)
                raise
            self._size += len(line)
            self._seq = entry.seq
            return entry.seq

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the last entry (0 for an empty journal)."""
        return self._seq

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)  # releases the flock
                self._fd = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------------------- reading

    def tail(self, n: int) -> list[JournalEntry]:
        """The last ``n`` entries, oldest first."""
        if n <= 0:
            return []
        out = []
        with self._lock:
            for entry in self._reverse_entries():
                out.append(entry)
                if len(out) == n:
                    break
        return out[::-1]

    def since(self, seq: int) -> list[JournalEntry]:
        """Every entry with ``seq`` greater than ``seq``, oldest first."""
        out = []
        with self._lock:
            for entry in self._reverse_entries():
                if entry.seq <= seq:
                    break
                out.append(entry)
        return out[::-1]

    # -------------------------------------------------------------------------------------------- internals

    def _require_open(self) -> int:
        if self._fd is None:
            raise ValueError(f"journal {self.path} is closed")
        return self._fd

    def _read_at(self, offset: int, size: int) -> bytes:
        return os.pread(self._require_open(), size, offset)

    def _reverse_entries(self, end: int | None = None) -> Iterator[JournalEntry]:
        """Valid entries of ``[0, end)`` (default: the whole journal), last first; invalid lines are skipped."""
        for line in _reverse_lines(self._read_at, self._size if end is None else end):
            entry = JournalEntry.from_line(line)
            if entry is not None:
                yield entry
            else:
                log.warning("journal %s: skipping an invalid line: %.80r", self.path, line)

    def _recover(self) -> tuple[int, int]:
        """Cut off a torn last line; return (file size, last seq)."""
        fd = self._require_open()
        size = os.fstat(fd).st_size
        end = _end_of_last_line(self._read_at, size)
        last = next(self._reverse_entries(end), None)
        seq = last.seq if last is not None else 0
        if end < size:
            if size - end > _MAX_TORN:
                raise QasrError(
                    f"{self.path} ends in {size - end} bytes without a newline: this is not a torn journal line. "
                    "Is this really a qasr-live journal? Move it aside and start again."
                )
            torn = self._read_at(end, size - end)
            entry = JournalEntry.from_line(torn)
            if entry is not None and entry.seq > seq:
                # only the newline is missing: keep the entry
                _write_all(fd, b"\n")
                size += 1
                seq = entry.seq
                log.warning("journal %s: completed a last line that lacked its newline (seq %d)", self.path, seq)
            else:
                os.ftruncate(fd, end)
                size = end
                log.warning("journal %s: cut off a torn last line of %d bytes", self.path, len(torn))
            os.fsync(fd)
        return size, seq


def read_entries(path: str | Path) -> list[JournalEntry]:
    """Every valid entry of the journal at ``path``, oldest first, read without locking or repairing it.

    Invalid lines and a torn last line are skipped; a missing file reads as empty.
    """
    entries = []
    try:
        with open(path, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break  # torn (or still being written)
                entry = JournalEntry.from_line(line)
                if entry is not None:
                    entries.append(entry)
    except FileNotFoundError:
        pass
    return entries


def format_history(entries: Iterable[JournalEntry]) -> str:
    """Human-readable history: a date line when the day changes, then one line per utterance (time, its text).

    An utterance's text is the concatenation of its commits; utterances are listed in order of first commit.
    """
    groups: dict[str, list[JournalEntry]] = {}
    for entry in entries:
        groups.setdefault(entry.utterance_id, []).append(entry)
    lines: list[str] = []
    day = None
    for commits in groups.values():
        stamp = commits[0].time
        try:
            when = datetime.fromisoformat(stamp).astimezone()
        except ValueError:
            clock = stamp
        else:
            if when.date().isoformat() != day:
                day = when.date().isoformat()
                lines.append(day)
            clock = when.strftime("%H:%M:%S")
        text = "".join(c.text for c in commits).strip()
        first, *rest = text.splitlines() or [""]
        lines.append(f"  {clock}  {first}".rstrip())
        lines.extend(" " * (len(clock) + 4) + more for more in rest)
    return "".join(line + "\n" for line in lines)


# ------------------------------------------------------------------------------------------------ file helpers


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _end_of_last_line(read_at: Callable[[int, int], bytes], size: int) -> int:
    """The offset just past the last newline before ``size`` (0 if there is none)."""
    pos = size
    while pos > 0:
        start = max(0, pos - _BLOCK)
        block = read_at(start, pos - start)
        nl = block.rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        pos = start
    return 0


def _reverse_lines(read_at: Callable[[int, int], bytes], end: int) -> Iterator[bytes]:
    """The non-empty lines of ``[0, end)`` (``end`` just past a newline), last first, without their newlines."""
    pos, carry = end, b""
    while pos > 0:
        start = max(0, pos - _BLOCK)
        parts = (read_at(start, pos - start) + carry).split(b"\n")
        carry = parts[0]  # may continue before ``start``
        pos = start
        for line in reversed(parts[1:]):
            if line.strip():
                yield line
    if carry.strip():
        yield carry
