"""Transcript files: plain text, SubRip and WebVTT subtitles and JSON, written atomically next to the audio file.

Subtitle cues: a segment with word times (`Segment.words`, from the forced aligner) is cut at word boundaries
into cues of at most `CueLimits.max_seconds` and `CueLimits.lines` lines of `CueLimits.line_chars` characters
(CJK counted by character, a word never split); a segment without them is split in proportion to its text, as
before the aligner existed.

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
from dataclasses import dataclass
from pathlib import Path

from qasr_live.engine.align_text import is_cjk
from qasr_live.offline.transcript import Segment, Transcript, Word

__all__ = ["FORMATS", "CueLimits", "render", "write_outputs"]

FORMATS = ("txt", "srt", "vtt", "json")
SRT_MAX_CHARS = 84  # longer segments are split into several cues (two subtitle lines of 42 characters)
_MIN_CUE_SECONDS = 0.3  # a word timed to one instant still shows this long (unless the next cue starts first)


@dataclass(frozen=True, slots=True)
class CueLimits:
    """How long a subtitle cue cut at word times may be."""

    max_seconds: float = 6.0
    line_chars: int = 42
    lines: int = 2


def render(transcript: Transcript, fmt: str, limits: CueLimits = CueLimits()) -> str:
    """The file contents of ``transcript`` in format ``fmt`` (one of ``FORMATS``)."""
    if fmt == "txt":
        return transcript.text.rstrip("\n") + "\n"
    if fmt in ("srt", "vtt"):
        cues = _cues(transcript.segments, limits)
        if fmt == "srt":
            return "".join(
                f"{i}\n{_timestamp(a)} --> {_timestamp(b)}\n{text}\n\n" for i, (a, b, text) in enumerate(cues, 1)
            )
        body = "".join(f"{_timestamp(a, '.')} --> {_timestamp(b, '.')}\n{text}\n\n" for a, b, text in cues)
        return "WEBVTT\n\n" + body
    if fmt == "json":
        doc = {
            "text": transcript.text,
            "language": transcript.language,
            "segments": [_segment_json(s) for s in transcript.segments],
            "token_ids": [int(t) for t in transcript.token_ids],
            "stats": transcript.stats.to_dict(),
        }
        return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"
    raise ValueError(f"unknown output format {fmt!r}; valid formats: {', '.join(FORMATS)}")


def _segment_json(s: Segment) -> dict[str, object]:
    doc: dict[str, object] = {"start": s.start, "end": s.end, "text": s.text}
    if s.words:
        doc["words"] = [{"text": w.text, "start": w.start, "end": w.end} for w in s.words]
    return doc


def write_outputs(
    transcript: Transcript,
    audio_path: str | Path,
    formats: Iterable[str],
    out_dir: str | Path | None = None,
    limits: CueLimits = CueLimits(),
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
        _write_atomic(target, render(transcript, fmt, limits))
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


def _timestamp(seconds: float, sep: str = ",") -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


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


def _proportional(seg: Segment) -> list[tuple[float, float, str]]:
    """Cues of a segment without word times: pieces of its text, times in proportion to their length."""
    pieces = _chunks(seg.text)
    cues = []
    start, end = float(seg.start), max(float(seg.end), float(seg.start))
    total, done = sum(len(p) for p in pieces), 0
    for piece in pieces:
        t0 = start + (end - start) * done / total
        done += len(piece)
        cues.append((t0, start + (end - start) * done / total, piece))
    return cues


def _glue(left: str, right: str) -> str:
    """The separator between two words: none between CJK characters (or CJK punctuation), else a space."""
    a, b = left[-1:], right[:1]
    wide = [c for c in (a, b) if c and (is_cjk(c) or not (c.isascii() or c.isalnum()))]  # 你 ， 。
    return "" if wide else " "


def _join(words: list[Word]) -> str:
    text = ""
    for w in words:
        text = w.text if not text else text + _glue(text, w.text) + w.text
    return text


def _wrap(words: list[Word], width: int) -> list[str]:
    """Lines of at most `width` characters, broken between words only (a longer word gets a line of its own)."""
    lines: list[list[Word]] = []
    for w in words:
        if lines and len(_join([*lines[-1], w])) <= width:
            lines[-1].append(w)
        else:
            lines.append([w])
    return [_join(line) for line in lines]


def _word_cues(seg: Segment, limits: CueLimits) -> list[tuple[float, float, list[Word]]]:
    cues: list[list[Word]] = []
    for w in seg.words:
        if cues:
            current = cues[-1]
            fits = (
                w.end - current[0].start <= limits.max_seconds
                and len(_wrap([*current, w], limits.line_chars)) <= limits.lines
            )
            if fits:
                current.append(w)
                continue
        cues.append([w])
    return [(c[0].start, c[-1].end, c) for c in cues]


def _cues(segments: Iterable[Segment], limits: CueLimits) -> list[tuple[float, float, str]]:
    """(start, end, text) of every cue, in order; a word cue timed to an instant is stretched to be seen."""
    timed: list[tuple[float, float, str, bool]] = []
    for seg in segments:
        if seg.words:
            for a, b, words in _word_cues(seg, limits):
                timed.append((a, b, "\n".join(_wrap(words, limits.line_chars)), True))
        else:
            timed += [(a, b, text, False) for a, b, text in _proportional(seg)]
    out = []
    for i, (a, b, text, from_words) in enumerate(timed):
        if from_words and b - a < _MIN_CUE_SECONDS:
            following = timed[i + 1][0] if i + 1 < len(timed) else a + _MIN_CUE_SECONDS
            b = max(b, min(a + _MIN_CUE_SECONDS, following))
        out.append((a, b, text))
    return out
