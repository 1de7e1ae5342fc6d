"""The forced aligner's text side, as the official `Qwen3ForceAlignProcessor` does it (qwen_asr
inference/qwen3_forced_aligner.py): words to time, the prompt's timestamp slots, and the repair of
out-of-order times. Pure Python: no model here.

Words: the text split at white space, each piece stripped of everything but letters, digits and the
apostrophe (punctuation is not aligned: it is put back by the caller, who keeps the original text), and every
CJK ideograph made a word of its own. Japanese and Korean: the official code segments them with nagisa and
soynlp (dependencies qasr-live does not carry); here Japanese kana and Korean runs are split like any other
text, Japanese kana one character per word, so their words may differ from the official ones.

Times: each word gets two timestamp slots (start, end); the model answers a class per slot, class x 80 ms.
A trained model's answers are mostly increasing; the ones off the longest non-decreasing subsequence are
repaired (`fix_timestamps`, the official algorithm, bit for bit: the parity tests compare it).
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Sequence

CJK_RANGES = (
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0x3400, 0x4DBF),  # Extension A
    (0x20000, 0x2A6DF),  # Extension B
    (0x2A700, 0x2B73F),  # Extension C
    (0x2B740, 0x2B81F),  # Extension D
    (0x2B820, 0x2CEAF),  # Extension E
    (0xF900, 0xFAFF),  # Compatibility Ideographs
)
_KANA = ((0x3040, 0x309F), (0x30A0, 0x30FF))


def is_cjk(ch: str) -> bool:
    code = ord(ch)
    return any(a <= code <= b for a, b in CJK_RANGES)


def _is_kana(ch: str) -> bool:
    code = ord(ch)
    return any(a <= code <= b for a, b in _KANA)


def _kept(ch: str) -> bool:
    return ch == "'" or unicodedata.category(ch)[0] in "LN"


def clean_word(token: str) -> str:
    """Letters, digits and apostrophes of `token` (the official `clean_token`)."""
    return "".join(ch for ch in token if _kept(ch))


def split_words(text: str, language: str | None = None) -> list[str]:
    """The words the aligner times, in order (the official `tokenize_space_lang`; see the module doc for
    Japanese and Korean)."""
    return [word for word, _ in word_starts(text, language)]


def word_starts(text: str, language: str | None = None) -> list[tuple[str, int]]:
    """Each word of `split_words` with the index in `text` of its first character."""
    japanese = (language or "").lower() == "japanese"
    words: list[tuple[str, int]] = []
    for match in re.finditer(r"\S+", text):
        buf: list[str] = []
        buf_start = 0
        for offset, ch in enumerate(match.group()):
            if not _kept(ch):
                continue  # dropped: the word goes on (the official code joins what is kept of a piece)
            at = match.start() + offset
            if is_cjk(ch) or (japanese and _is_kana(ch)):
                if buf:
                    words.append(("".join(buf), buf_start))
                    buf = []
                words.append((ch, at))
            else:
                if not buf:
                    buf_start = at
                buf.append(ch)
        if buf:
            words.append(("".join(buf), buf_start))
    return words


def display_words(text: str, language: str | None = None) -> list[str]:
    """The words as written, punctuation put back: each word runs from its first character to the next word's,
    white space stripped (text before the first word goes to the first). "Hello, world!" -> "Hello,", "world!";
    "你好，世界。" -> "你", "好，", "世", "界。"."""
    starts = [at for _, at in word_starts(text, language)]
    if not starts:
        return []
    bounds = [0, *starts[1:], len(text)]
    return [text[a:b].strip() for a, b in itertools.pairwise(bounds)]


def fix_timestamps(values: Sequence[float]) -> list[int]:
    """Make the slot times non-decreasing, as the official `fix_timestamp`: the values on the longest
    non-decreasing subsequence stay; runs of at most two others take the nearer neighbour's value, longer runs
    are interpolated linearly between their neighbours. Returns ints (the official code truncates)."""
    data = list(values)
    n = len(data)
    if n == 0:
        return []
    dp = [1] * n
    parent = [-1] * n
    for i in range(1, n):
        for j in range(i):
            if data[j] <= data[i] and dp[j] + 1 > dp[i]:
                dp[i] = dp[j] + 1
                parent[i] = j
    idx = dp.index(max(dp))
    normal = [False] * n
    while idx != -1:
        normal[idx] = True
        idx = parent[idx]
    result: list[float] = list(data)
    i = 0
    while i < n:
        if normal[i]:
            i += 1
            continue
        j = i
        while j < n and not normal[j]:
            j += 1
        left = next((result[k] for k in range(i - 1, -1, -1) if normal[k]), None)
        right = next((result[k] for k in range(j, n) if normal[k]), None)
        if j - i <= 2:
            for k in range(i, j):
                if left is None:
                    result[k] = right  # type: ignore[assignment]  # one side always exists: the LIS is non-empty
                elif right is None:
                    result[k] = left
                else:
                    result[k] = left if (k - (i - 1)) <= (j - k) else right
        elif left is not None and right is not None:
            step = (right - left) / (j - i + 1)
            for k in range(i, j):
                result[k] = left + step * (k - i + 1)
        else:
            edge = left if left is not None else right
            for k in range(i, j):
                result[k] = edge  # type: ignore[assignment]
        i = j
    return [int(v) for v in result]
