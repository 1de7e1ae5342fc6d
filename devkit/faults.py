"""`python -m devkit.faults serve --config ...`: the real daemon with switchable faults, for tests/test_faults.py.

Some faults cannot be made for real in a test: an I/O error of the disk, a decoder that fails once, a wall clock
that jumps. This entry point installs thin patches at the lowest layer that meets them (the journal's write,
the recognizer's decode, the journal's clock), then runs the unchanged CLI (`qasr_live.cli.main`). Each fault
is off until the test writes its switch file into ``$QASR_FAULTS`` (a directory the test owns) and stops when
the test removes it, so one daemon start serves a whole series of faults:

* ``journal``: an errno name (``ENOSPC``, ``EIO``, ``EROFS``): every journal write fails with it;
* ``decoder``: ``begin``, ``tick`` or ``finish``: the next utterance start (its prefill), partial tick or final
  decode raises ``DecoderError`` (the switch is consumed, so it fails once);
* ``clock``: seconds (may be negative) added to the wall clock the journal stamps its lines with;
* ``slow``: seconds each recognizer computation (an utterance start's prefill, a partial tick, a speculation, a
  final decode) waits first: a recognizer that cannot keep up (an overloaded machine), for the backlog tests.

Never imported by qasr_live (dev code, tests/test_layers.py checks).
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import sys
import time
from pathlib import Path
from typing import Any


def _switch(name: str) -> str | None:
    root = os.environ.get("QASR_FAULTS")
    if not root:
        return None
    try:
        return (Path(root) / name).read_text().strip()
    except FileNotFoundError:
        return None


def _consume(name: str) -> bool:
    root = os.environ.get("QASR_FAULTS")
    if not root:
        return False
    try:
        (Path(root) / name).unlink()
    except FileNotFoundError:
        return False
    return True


def install() -> None:
    from qasr_live.errors import DecoderError
    from qasr_live.outputs import journal
    from qasr_live.streaming.recognizer import StreamingRecognizer

    real_write_all = journal._write_all

    def write_all(fd: int, data: bytes) -> None:
        name = _switch("journal")
        if name:
            code = getattr(errno, name)
            raise OSError(code, os.strerror(code))
        real_write_all(fd, data)

    journal._write_all = write_all  # type: ignore[assignment]

    class ShiftedClock(_dt.datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            shift = float(_switch("clock") or 0)
            return _dt.datetime.now(tz) + _dt.timedelta(seconds=shift)

    journal.datetime = ShiftedClock  # type: ignore[misc]

    def failing(method: Any, name: str) -> Any:
        def run(self: StreamingRecognizer, *args: Any, **kwargs: Any) -> Any:
            if self.active and _switch("decoder") == name and _consume("decoder"):
                raise DecoderError(f"llama_decode failed in {name} (injected by devkit.faults)")
            return method(self, *args, **kwargs)

        return run

    StreamingRecognizer.tick = failing(StreamingRecognizer.tick, "tick")  # type: ignore[method-assign]
    # inside begin(), once the utterance is set up: its prefill fails (begin() itself must leave no utterance)
    StreamingRecognizer._prefill_memory = failing(StreamingRecognizer._prefill_memory, "begin")  # type: ignore[method-assign]
    # inside finish(): what fails is its decode, not the call (finish() itself must still release the utterance)
    StreamingRecognizer._finish = failing(StreamingRecognizer._finish, "finish")  # type: ignore[method-assign]

    def slow(method: Any) -> Any:
        def run(self: StreamingRecognizer, *args: Any, **kwargs: Any) -> Any:
            delay = float(_switch("slow") or 0)
            if delay > 0:
                time.sleep(delay)
            return method(self, *args, **kwargs)

        return run

    for name in ("tick", "speculate", "_finish", "_prefill_memory"):
        setattr(StreamingRecognizer, name, slow(getattr(StreamingRecognizer, name)))


def main(argv: list[str] | None = None) -> int:
    install()
    from qasr_live.cli import main as cli_main

    return cli_main(argv if argv is not None else sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
