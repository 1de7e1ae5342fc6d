"""Transcript files: plain text, SubRip subtitles and JSON, written atomically next to the audio file.

``render(transcript, fmt)`` returns the text of one format; ``write_outputs`` writes ``<stem>.<fmt>`` for each
requested format (next to the audio file, or into ``out_dir``) through a temporary file in the same directory
and ``os.replace``, so a reader never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from qasr_live.offline.transcript import Segment, Transcript

__all__ = ["FORMATS", "render", "write_outputs"]

FORMATS = ("txt", "srt", "json")
SRT_MAX_CHARS = 84  # longer segments are split into several cues (two subtitle lines of 42 characters)


def render(transcript: Transcript, fmt: str) -> str:
    """The file contents of ``transcript`` in format ``fmt`` (one of ``FORMATS``)."""
    if fmt == "txt":
        return transcript.text.rstrip("\n") + "\n"
    if fmt == "srt":
        return _render_srt(transcript.segments)
    if fmt == "json":
        doc = {
            "text": transcript.text,
            "language": transcript.language,
            "segments": [{"start": s.start, "end": s.end, "text": s.text} for s in transcript.segments],
            "token_ids": [int(t) for t in transcript.token_ids],
            "stats": transcript.stats.to_dict(),
        }
        return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
    raise ValueError(f"unknown output format {fmt!r}; valid formats: {', '.join(FORMATS)}")


def write_outputs(
    transcript: Transcript, audio_path: str | Path, formats: Iterable[str], out_dir: str | Path | None = None
) -> list[Path]:
    """Write ``<stem>.<fmt>`` for each format; return the paths written, in the order asked."""
    formats = list(dict.fromkeys(formats))
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    audio_path = Path(audio_path)
    directory = Path(out_dir) if out_dir is not None else audio_path.parent
    if formats:
        directory.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        target = directory / f"{audio_path.stem}.{fmt}"
        _write_atomic(target, render(transcript, fmt))
        written.append(target)
    return written


def _write_atomic(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _timestamp(seconds: float) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def _chunks(text: str) -> list[str]:
    """Split ``text`` at spaces into pieces of at most SRT_MAX_CHARS; unspaced runs (CJK) are cut hard."""
    words: list[str] = []
    for word in text.split():
        words.extend(word[i : i + SRT_MAX_CHARS] for i in range(0, len(word), SRT_MAX_CHARS))
    pieces: list[str] = []
    for word in words:
        if pieces and len(pieces[-1]) + 1 + len(word) <= SRT_MAX_CHARS:
            pieces[-1] += " " + word
        else:
            pieces.append(word)
    return pieces


def _render_srt(segments: Iterable[Segment]) -> str:
    cues: list[str] = []
    for seg in segments:
        pieces = _chunks(seg.text)
        if not pieces:
            continue
        start, end = float(seg.start), max(float(seg.end), float(seg.start))
        total, done = sum(len(p) for p in pieces), 0
        for piece in pieces:
            t0 = start + (end - start) * done / total
            done += len(piece)
            t1 = start + (end - start) * done / total
            cues.append(f"{len(cues) + 1}\n{_timestamp(t0)} --> {_timestamp(t1)}\n{piece}\n\n")
    return "".join(cues)
