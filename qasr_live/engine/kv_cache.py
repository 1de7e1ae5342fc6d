"""What the decoder's single KV-cache sequence holds, so that a new prompt re-feeds only what changed.

Used by the streaming recognizer (every tick extends the same audio) and the offline pipeline (a segment's
prompt starts with the previous segment's rows, which the previous prompt held at the same positions).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qasr_live.engine.decoder import Decoder
from qasr_live.engine.prompt import Prompt


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _rows_between(blocks: Sequence[np.ndarray], start: int, stop: int | None = None) -> np.ndarray:
    """Rows [start, stop) of the concatenation of `blocks`, copying only the blocks that overlap."""
    parts, offset = [], 0
    for block in blocks:
        end = offset + len(block)
        if end > start and (stop is None or offset < stop):
            end_in_block = len(block) if stop is None else min(len(block), stop - offset)
            parts.append(block[max(0, start - offset) : end_in_block])
        offset = end
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


class PrefixCache:
    """What the decoder's single sequence holds (head tokens, audio row blocks, tail tokens incl. generated ones),
    so that a new prompt keeps the longest unchanged prefix and feeds only the rest."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder
        self.head: list[int] | None = None
        self.blocks: list[np.ndarray] = []
        self.tail: list[int] = []

    def invalidate(self) -> None:
        """Forget what the sequence holds (after a failed feed): the next feed starts from position 0."""
        self.head, self.blocks, self.tail = None, [], []

    def _common_rows(self, new: Sequence[np.ndarray]) -> int:
        starts, offset = {}, 0
        for block in self.blocks:
            starts[offset] = block
            offset += len(block)
        n_old, pos = offset, 0
        for block in new:
            if starts.get(pos) is block:  # the very same (read-only) block at the same place
                pos += len(block)
                continue
            old = _rows_between(self.blocks, pos, pos + len(block))
            m = len(old)
            differs = np.flatnonzero(np.any(block[:m] != old, axis=1)) if m else np.zeros(0, int)
            if len(differs):
                return pos + int(differs[0])
            pos += m
            if m < len(block) or pos >= n_old:
                return pos
        return pos

    def feed(self, prompt: Prompt) -> int:
        """Make the sequence hold `prompt` (with logits for its last position when it has a tail); returns the
        number of positions kept."""
        head, blocks, tail = prompt.head, prompt.rows, prompt.tail
        n_rows = prompt.n_rows
        total = prompt.n_positions
        if self.head is None:
            keep = 0
        elif head != self.head:
            keep = common_prefix(head, self.head)
        else:
            rows = self._common_rows(blocks)
            keep = len(head) + rows
            if rows == n_rows == sum(len(b) for b in self.blocks):
                keep += common_prefix(tail, self.tail)
        d = self.decoder
        keep = min(keep, d.n_past, total - 1 if tail else total)
        try:
            d.rewind(keep)
            pos, h = keep, len(head)
            if pos < h:
                d.feed_tokens(head[pos:], want_logits=False)
                pos = h
            if pos < h + n_rows:
                d.feed_embeddings(_rows_between(blocks, pos - h))
                pos = h + n_rows
            if pos < total:
                d.feed_tokens(tail[pos - h - n_rows :])
        except BaseException:
            self.invalidate()
            raise
        self.head, self.blocks, self.tail = list(head), list(blocks), list(tail)
        return keep

    def extend(self, tokens: Sequence[int]) -> None:
        """Generated tokens that were fed after the prompt."""
        self.tail += tokens
