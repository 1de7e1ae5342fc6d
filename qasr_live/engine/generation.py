"""Token generation on a Decoder: stop tokens, a token budget and the repetition backstop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from qasr_live.engine.decoder import Decoder

# A run of 15 tokens drawn from 3 or fewer distinct ids is a loop, not speech ("the the the ...", "!!!!").
GUARD_WINDOW = 15
GUARD_MAX_DISTINCT = 3


@dataclass(frozen=True, slots=True)
class Generation:
    tokens: list[int]
    stopped: str  # "eos", "max_tokens" or "repetition"


def is_looping(tokens: list[int]) -> bool:
    return len(tokens) > GUARD_WINDOW and len(set(tokens[-GUARD_WINDOW:])) <= GUARD_MAX_DISTINCT


def _before_loop(tokens: list[int]) -> list[int]:
    """Drop the looping tail: every trailing token drawn from what the most recent tokens repeat."""
    looping = set(tokens[-GUARD_WINDOW // 2 :])
    end = len(tokens)
    while end and tokens[end - 1] in looping:
        end -= 1
    return tokens[:end]


def generate(
    decoder: Decoder,
    stop_ids: set[int],
    max_new_tokens: int,
    repetition_guard: bool = True,
    on_token: Callable[[int], None] | None = None,
) -> Generation:
    """Sample after the current position until a stop token, the budget, or a loop. The prompt must already be
    fed with logits for its last position. Stop tokens are not included; a detected loop is cut off where it
    started."""
    tokens: list[int] = []
    while len(tokens) < max_new_tokens:
        token = decoder.sample()
        if token in stop_ids:
            return Generation(tokens, "eos")
        tokens.append(token)
        if on_token is not None:
            on_token(token)
        if repetition_guard and is_looping(tokens):
            return Generation(_before_loop(tokens), "repetition")
        if len(tokens) < max_new_tokens:
            decoder.feed_tokens([token])
    return Generation(tokens, "max_tokens")
