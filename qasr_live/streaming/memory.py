"""Decoder memory: previous utterances' encoded audio and committed text, placed before the current utterance.

The layout is the one the offline pipeline uses for its segments (engine/prompt.py `build_prompt`): the memory's
audio rows and the current utterance's rows form ONE audio block, and after the language header the memory's
text comes first, then the current utterance's committed text, which the model continues::

    <system + context> <|audio_start|> [memory rows ...][current rows] <|audio_end|> ... assistant\\n
    language X<asr_text> [memory text ...][current committed text] -> generation

The buffer is bounded twice: `max_utterances` entries, and `max_tokens` decoder positions (audio rows + text
tokens) over all entries; the oldest entries go first. An entry larger than the whole budget is not kept. Only
utterances with text enter it: a no-speech utterance never does (its audio would only invite the model to repeat
the previous text on silence).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True, eq=False)
class MemoryEntry:
    """One earlier utterance: its encoder rows, its committed token ids and the language header it was decoded
    under (None: no header was written or stated)."""

    rows: np.ndarray
    text_ids: tuple[int, ...]
    language: str | None

    @property
    def tokens(self) -> int:
        """Decoder positions the entry takes: one per audio row and one per text token."""
        return len(self.rows) + len(self.text_ids)


class DecoderMemory:
    """A ring buffer of MemoryEntry, oldest first, bounded by entry count and by decoder positions."""

    def __init__(self, max_tokens: int, max_utterances: int) -> None:
        self.max_tokens = max_tokens
        self.max_utterances = max_utterances
        self._entries: deque[MemoryEntry] = deque()

    @property
    def entries(self) -> tuple[MemoryEntry, ...]:
        return tuple(self._entries)

    @property
    def tokens(self) -> int:
        return sum(e.tokens for e in self._entries)

    def add(self, entry: MemoryEntry) -> bool:
        """Append an utterance and evict the oldest ones until both bounds hold. Returns whether it was kept (an
        entry without text, or larger than the whole budget, is not)."""
        if not entry.text_ids or entry.tokens > self.max_tokens or self.max_utterances == 0:
            return False
        rows = np.array(entry.rows, dtype=np.float32)  # a private, read-only copy: the KV cache compares rows
        rows.setflags(write=False)
        self._entries.append(MemoryEntry(rows, tuple(entry.text_ids), entry.language))
        while len(self._entries) > self.max_utterances or self.tokens > self.max_tokens:
            self._entries.popleft()
        return True

    def clear(self) -> None:
        self._entries.clear()

    def select(self, language: str | None) -> tuple[str | None, list[MemoryEntry]]:
        """The entries an utterance can be decoded after, oldest first, and the language header that goes with
        them. Memory text continues under one header, so only the newest run of entries sharing a language is
        used: the forced `language`, or (auto-detect, `language` None) the newest entry's. Without usable
        entries the header is `language` (None: the model states it)."""
        if not self._entries:
            return language, []
        header = language if language is not None else self._entries[-1].language
        run: list[MemoryEntry] = []
        for entry in reversed(self._entries):
            if entry.language != header:
                break
            run.append(entry)
        return header, run[::-1]
