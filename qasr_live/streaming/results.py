"""What the streaming recognizer returns: commits (text that never changes), partials (the uncommitted tail),
per-call stats, and the Tick and Final results that carry them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class Commit:
    """Text that will never change. `idx` counts an utterance's commits from 0, without gaps."""

    idx: int
    text: str


@dataclass(frozen=True, slots=True)
class Partial:
    """The whole not-yet-committed tail: committed text + `text` is the current hypothesis. `rev` counts the
    utterance's published partials from 1."""

    rev: int
    text: str


@dataclass(frozen=True, slots=True)
class Stats:
    """What one tick() or finish() did (summed over its decodes when a rollover adds one)."""

    audio_s: float = 0.0  # audio of the utterance so far
    rows: int = 0  # audio rows in the prompt (memory + utterance)
    encoder_ms: float = 0.0
    frontend_chunks: int = 0  # 1 s chunks through the encoder frontend
    backend_rows: int = 0  # rows through the encoder backend
    encoder_restarts: int = 0
    prompt_tokens: int = 0  # decoder positions of the prompt(s)
    reused_tokens: int = 0  # positions kept in the KV cache (not fed again)
    prefill_tokens: int = 0  # positions fed: prompt_tokens - reused_tokens
    prefill_ms: float = 0.0
    generated_tokens: int = 0
    drafted_tokens: int = 0  # of those, verified in one batch from the previous decode's tail (no decode each)
    generate_ms: float = 0.0
    stopped: str = ""  # how the (last) generation ended: eos, max_tokens, repetition; "" = no decode
    rollovers: int = 0
    fallbacks: int = 0  # re-decodes of a looping final decode at a higher temperature
    total_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Tick:
    """What a partial decode gave."""

    commits: list[Commit]  # new this tick, in order
    partial: Partial | None  # None: nothing new to show (no decode, no speech, a loop, or the same text)
    language: str | None  # forced, fixed or stated so far; None when unknown or no speech
    stats: Stats


@dataclass(frozen=True, slots=True)
class Final:
    """What the endpoint gave: the rest of the utterance's commits and its whole text."""

    commits: list[Commit]  # the commits finish() made (the ones ticks made came with those ticks)
    text: str  # the utterance's whole text: all its commits concatenated ("" for no speech)
    no_speech: bool
    language: str | None
    stats: Stats


@dataclass(slots=True)
class StatsSum:
    """The Stats of one tick() or finish() while it runs: counters added up over its encodings and decodes."""

    values: dict[str, Any] = field(default_factory=lambda: {f.name: f.default for f in fields(Stats)})

    def add(self, **kwargs: float) -> None:
        for key, value in kwargs.items():
            self.values[key] += value

    def set(self, **kwargs: Any) -> None:
        self.values.update(kwargs)

    def freeze(self, t0: float) -> Stats:
        return Stats(**{**self.values, "total_ms": (time.perf_counter() - t0) * 1000})
