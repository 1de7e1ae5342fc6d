"""Which part of a decoded tail may be committed: the rollback window, word boundaries and LocalAgreement-2.

Pure: token ids in, a count out. Tokens are seen only through `piece` (token id -> its bytes), so the policy
runs without a decoder, model or thread.

Each decode re-generates only the tail after the committed prefix. A tick commits the tail minus its last
`rollback_tokens` tokens, cut back to a word boundary (the next token starts with whitespace, or the boundary
touches a CJK character), and with agreement only what an earlier tick's tail agrees with (LocalAgreement-2): the
latest tick that heard at least `agreement_ms` less audio. Comparing with a tick only a few hundred ms older lets
a model that runs ahead of the audio (the likeliest continuation of a sentence it has not heard yet) agree with
itself; with more audio between them the words actually spoken are there to contradict the guess.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qasr_live.engine.kv_cache import common_prefix

Piece = Callable[[int], bytes]

_CJK_RANGES = (
    (0x2E80, 0x2FDF),  # radicals
    (0x3000, 0x303F),  # CJK symbols and punctuation
    (0x3040, 0x30FF),  # hiragana, katakana
    (0x3100, 0x31FF),  # bopomofo, katakana extensions
    (0x3400, 0x4DBF),
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0xFF00, 0xFFEF),  # fullwidth forms and punctuation
    (0x20000, 0x3FFFF),
)


def is_cjk(ch: str) -> bool:
    """A character of a script written without spaces between words (Chinese, Japanese), or its punctuation."""
    if not ch:
        return False
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _utf8_length(lead: int) -> int:
    return 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def starts_word(ids: Sequence[int], k: int, piece: Piece) -> bool:
    """Whether a word starts at ids[k]: its first character is whitespace or CJK, or the character before it is
    CJK; never inside a UTF-8 sequence split over tokens."""
    first_piece = piece(ids[k])
    if not first_piece or 0x80 <= first_piece[0] < 0xC0:
        return False
    length = _utf8_length(first_piece[0])
    after = b""
    for t in ids[k : k + 4]:
        after += piece(t)
        if len(after) >= length:
            break
    first = after[:length].decode("utf-8", "ignore")[:1]
    before = b"".join(piece(t) for t in ids[max(0, k - 4) : k])[-4:].decode("utf-8", "ignore")[-1:]
    return first.isspace() or is_cjk(first) or is_cjk(before)


def word_boundary(ids: Sequence[int], limit: int, piece: Piece) -> int:
    """The largest k <= limit such that ids[:k] ends at a word boundary (0 if none)."""
    for k in range(min(limit, len(ids) - 1), 0, -1):
        if starts_word(ids, k, piece):
            return k
    return 0


@dataclass(frozen=True, slots=True)
class Heard:
    """What a tick decoded after the committed prefix, and how much audio it had heard."""

    samples: int
    language: str | None
    tail: tuple[int, ...]


class CommitPolicy:
    """The commit decisions of one utterance. `agreement_samples`: None commits by the rollback rule alone;
    otherwise a tick commits only what the latest tick that heard at least that many samples less agrees on."""

    def __init__(self, piece: Piece, rollback_tokens: int, agreement_samples: int | None) -> None:
        self.piece = piece
        self.rollback_tokens = rollback_tokens
        self.agreement_samples = agreement_samples
        self.heard: list[Heard] = []  # recent ticks' tails, oldest first, for the agreement

    def tick(self, samples: int, language: str | None, tail: Sequence[int]) -> int:
        """How many leading tokens of `tail` (a tick's decode after the committed prefix, of the first `samples`
        samples) to commit now. Remembers the tick for later agreements, minus what it commits."""
        limit = len(tail) - self.rollback_tokens
        if self.agreement_samples is not None:
            limit = min(limit, self._agreed(samples - self.agreement_samples, language, tail))
        k = word_boundary(tail, limit, self.piece)
        self._remember(Heard(samples, language, tuple(tail)), k)
        return k

    def rollover(self, tail: Sequence[int]) -> int:
        """How much of a rollover decode's `tail` to commit: all but the rollback window, at a word boundary, with
        no agreement (the decode closes its audio)."""
        return word_boundary(tail, len(tail) - self.rollback_tokens, self.piece)

    def forget(self) -> None:
        """No earlier tick to agree with: after a decode that heard no speech, and after a rollover (the clip
        after it is new audio)."""
        self.heard.clear()

    def _agreed(self, older: int, language: str | None, tail: Sequence[int]) -> int:
        """How many leading tokens of `tail` the latest tick that heard at most `older` samples agrees on."""
        ref = next((h for h in reversed(self.heard) if h.samples <= older), None)
        return common_prefix(ref.tail, tail) if ref is not None and ref.language == language else 0

    def _remember(self, heard: Heard, committed: int) -> None:
        """Keep `heard` and the ticks a later agreement may still compare with, minus the `committed` tokens just
        committed from heard.tail (a tick whose tail does not start with them disagrees with the commits: gone)."""
        # the latest tick at or before `older` serves the next tick too
        older = heard.samples - (self.agreement_samples or 0)
        first = max((i for i, h in enumerate(self.heard) if h.samples <= older), default=0)
        done = heard.tail[:committed]
        self.heard = [
            Heard(h.samples, h.language, h.tail[committed:])
            for h in [*self.heard[first:], heard]
            if h.tail[:committed] == done
        ]
