"""Word times for a transcript: the recognized text of each segment aligned to its audio by the forced aligner.

Consecutive segments are aligned together, as many as fit one aligner call (`Aligner.max_seconds` of audio,
the context's positions): a segment cut inside speech hands its last words to the next one (pipeline.py,
segment memory), and aligning the two together keeps those words on the audio that holds them. The aligned
words are shared out to the segments again by count (the words of joined texts are the joined words), and
given the text as written (punctuation put back, `align_text.display_words`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

import numpy as np

from qasr_live.audio.pcm import SAMPLE_RATE
from qasr_live.engine.align_text import display_words, split_words
from qasr_live.engine.aligner import Aligner
from qasr_live.errors import AlignmentError
from qasr_live.offline.transcript import Segment, Transcript, Word

_LOGGER = logging.getLogger(__name__)


def _pieces(aligner: Aligner, segments: list[Segment], language: str | None) -> list[list[int]]:
    """Indices of the segments aligned together: runs of consecutive segments within one call's limits."""
    pieces: list[list[int]] = []
    current: list[int] = []
    for i, seg in enumerate(segments):
        candidate = [*current, i]
        first = segments[candidate[0]]
        seconds = seg.end - first.start
        words = [w for k in candidate for w in split_words(segments[k].text, language)]
        fits = seconds <= aligner.max_seconds and (
            aligner.positions(int(seconds * SAMPLE_RATE), aligner.word_ids(words)) <= aligner.decoder.n_ctx
        )
        if current and not fits:
            pieces.append(current)
            candidate = [i]
        current = candidate
    if current:
        pieces.append(current)
    return pieces


def align_transcript(
    aligner: Aligner,
    audio: np.ndarray,
    transcript: Transcript,
    language: str | None = None,
    warn: Callable[[str], None] = _LOGGER.warning,
    audio_start: float = 0.0,
) -> Transcript:
    """`transcript` with `Segment.words` filled (seconds from the start of the file). `audio` holds the samples
    from `audio_start` seconds of the file on (a cut: `transcribe --start`). A stretch the aligner refuses (its
    text cannot be what the audio says, e.g. a loop the recognizer cut) keeps no words and is reported through
    `warn`; its subtitles fall back to proportional cues."""
    language = language or transcript.language
    segments = list(transcript.segments)
    for piece in _pieces(aligner, segments, language):
        chosen = [segments[k] for k in piece]
        texts = [s.text for s in chosen]
        joined = " ".join(t for t in texts if t.strip())
        if not split_words(joined, language):
            continue
        a = max(0, int((chosen[0].start - audio_start) * SAMPLE_RATE))
        b = int((chosen[-1].end - audio_start) * SAMPLE_RATE)
        try:
            aligned = aligner.align(audio[a:b], joined, language)
        except AlignmentError as e:
            warn(f"no word times for {chosen[0].start:.1f}-{chosen[-1].end:.1f} s: {e}")
            continue
        # a time past the audio given is no time in it
        offset, limit = audio_start + a / SAMPLE_RATE, (b - a) / SAMPLE_RATE
        at = 0
        for k, text in zip(piece, texts, strict=True):
            shown = display_words(text, language)
            words = tuple(
                Word(shown[j], round(offset + min(w.start, limit), 3), round(offset + min(w.end, limit), 3))
                for j, w in enumerate(aligned[at : at + len(shown)])
            )
            at += len(shown)
            segments[k] = dataclasses.replace(segments[k], words=words)
    return dataclasses.replace(transcript, segments=segments)
