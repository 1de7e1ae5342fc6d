"""The streaming recognizer's state of one utterance, and what one decode of it gave (streaming/recognizer.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qasr_live.engine.incremental import AudioBuffer, ClipEncoder
from qasr_live.streaming.commit_policy import CommitPolicy
from qasr_live.streaming.memory import MemoryEntry
from qasr_live.streaming.results import Commit, StatsSum


@dataclass(slots=True, eq=False)
class Utterance:
    """Everything the recognizer keeps between begin() and finish() or cancel()."""

    language: str | None  # forced
    context: str
    memory: list[MemoryEntry]  # used before the audio, oldest first
    header: str | None  # the header written in the prompt once fixed
    header_fixed: bool
    clip: ClipEncoder
    policy: CommitPolicy
    audio: AudioBuffer = field(default_factory=AudioBuffer)
    carry: list[np.ndarray] = field(default_factory=list)  # rows of the clip before a rollover
    text_start: int = 0  # committed[text_start:] is the utterance's text in the prompt
    committed: list[int] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    text: str = ""
    draft: list[int] = field(default_factory=list)  # what the last decode generated after the prompt's end
    partial_rev: int = 0
    partial_text: str | None = None
    decoded_samples: int = -1
    language_now: str | None = None
    speculation: Decoded | None = None  # speculate()'s final decode, kept for finish(use_speculation=True)
    speculation_stats: StatsSum | None = None  # what it cost: finish() reports it when it keeps it


@dataclass(frozen=True, slots=True)
class Decoded:
    """One decode's answer: the language it stated or was given, and the ids it generated."""

    language: str | None  # "" = language None
    text_ids: list[int]  # after the committed prefix
    stopped: str

    @property
    def silent(self) -> bool:
        """Nothing to publish: the model heard no speech, or looped."""
        return self.language == "" or self.stopped == "repetition"
