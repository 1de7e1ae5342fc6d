"""What the decoder's single KV-cache sequence holds, so that a new prompt re-feeds only what changed.

Used by the streaming recognizer (every tick extends the same audio) and the offline pipeline (a segment's
prompt starts with the previous segment's rows, which the previous prompt held at the same positions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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

    def feed(self, prompt: Prompt, *, shift: bool = False) -> int:
        """Make the sequence hold `prompt` (with logits for its last position when it has a tail); returns the
        number of positions kept. `shift`: see feed_until."""
        keep = self.feed_until(prompt, None, shift=shift)
        assert keep is not None, "a feed without `until` runs to the end"
        return keep

    def feed_until(
        self, prompt: Prompt, until: Callable[[], bool] | None, *, shift: bool = False, reuse: bool = False
    ) -> int | None:
        """feed(), stopping early when `until` says so.

        `reuse` (a decoder with a spare sequence): when rows changed but the held tail starts with the prompt's
        stable tail (header and decoder memory text), that tail's KV entries are parked, the changed rows fed,
        and the entries put back after them instead of being computed again. Not exact: they keep what they
        attended to in the old rows.

        `shift`: when the prompt's rows are the held ones with leading blocks removed (the decoder memory lost its
        oldest utterances), those positions are dropped and the rest moved down (`Decoder.drop`) instead of
        prefilled again: not exact (see there), so only for the streaming memory. `until`: asked between batches;
        when it says True the feed stops, what was fed stays held, and this returns None."""
        head, blocks, tail = prompt.head, prompt.rows, prompt.tail
        n_rows = prompt.n_rows
        total = prompt.n_positions
        if shift and self.head == head and blocks:
            self._drop_leading_blocks(blocks[0])
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
        parked = self._parkable(prompt, keep) if reuse else None
        if parked is not None:
            return self._feed_around(prompt, keep, parked, until)
        try:
            d.rewind(keep)
            pos, h = keep, len(head)
            done = True
            if pos < h:
                done = d.feed_tokens(head[pos:], want_logits=False, until=until)
                pos = h
            if done and pos < h + n_rows:
                done = d.feed_embeddings(_rows_between(blocks, pos - h), until=until)
                pos = h + n_rows
            if done and pos < total:
                done = d.feed_tokens(tail[pos - h - n_rows :], until=until)
        except BaseException:
            self.invalidate()
            raise
        if not done:  # interrupted: the sequence holds the prompt's first n_past positions
            self._hold(prompt, d.n_past)
            return None
        self.head, self.blocks, self.tail = list(head), list(blocks), list(tail)
        return keep

    def _parkable(self, prompt: Prompt, keep: int) -> tuple[int, int] | None:
        """Positions [start, end) of the held stable tail that can be kept while rows before it change."""
        if self.head != prompt.head or not self.decoder.can_shift:
            return None
        h, held_rows = len(prompt.head), sum(len(b) for b in self.blocks)
        n = min(prompt.stable_tail, len(prompt.tail) - 1)  # the prompt's last position is fed: its logits
        start = h + held_rows
        if n <= 0 or keep < h or keep >= start or self.tail[:n] != prompt.tail[:n]:
            return None
        if start + n > self.decoder.n_past:
            return None
        return start, start + n

    def _feed_around(
        self, prompt: Prompt, keep: int, parked: tuple[int, int], until: Callable[[], bool] | None
    ) -> int | None:
        d = self.decoder
        h, n_rows = len(prompt.head), prompt.n_rows
        start, end = parked
        try:
            d.park(start, end)
            d.rewind(keep)
            done = d.feed_embeddings(_rows_between(prompt.rows, keep - h), until=until) if keep < h + n_rows else True
            if not done:
                d.drop_parked()
                self._hold(prompt, d.n_past)
                return None
            d.unpark(start, end)
            done = d.feed_tokens(prompt.tail[end - start :], until=until)
        except BaseException:
            self.invalidate()
            d.drop_parked()
            raise
        if not done:
            self._hold(prompt, d.n_past)
            return None
        self.head, self.blocks, self.tail = list(prompt.head), list(prompt.rows), list(prompt.tail)
        return keep + end - start

    def _hold(self, prompt: Prompt, n: int) -> None:
        """Record that the sequence holds the first `n` positions of `prompt`."""
        h, r = len(prompt.head), prompt.n_rows
        self.head = list(prompt.head[:n])
        self.blocks = list(prompt.rows) if n >= h + r else [_rows_between(prompt.rows, 0, n - h)] if n > h else []
        self.tail = list(prompt.tail[: n - h - r]) if n > h + r else []

    def _drop_leading_blocks(self, first: np.ndarray) -> None:
        """If the held blocks from some k >= 1 on start with `first` (the very same block, or one whose first row is
        equal: a memory entry's copy of an utterance's rows), drop the positions of the k blocks before it and move
        the rest down."""
        if self.head is None or not len(first):
            return
        for index in range(1, len(self.blocks)):
            block = self.blocks[index]
            if block is first or (len(block) and np.array_equal(block[0], first[0])):
                count = sum(len(b) for b in self.blocks[:index])
                if self.decoder.drop(len(self.head), count):
                    self.blocks = self.blocks[index:]
                return

    def extend(self, tokens: Sequence[int]) -> None:
        """Generated tokens that were fed after the prompt."""
        self.tail += tokens
