"""Token generation on a Decoder: stop tokens, a token budget and the repetition backstop."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from qasr_live.engine.decoder import Decoder

# A run of 15 tokens drawn from 3 or fewer distinct ids is a loop, not speech ("the the the ...", "!!!!").
GUARD_WINDOW = 15
GUARD_MAX_DISTINCT = 3

# A forced answer length (benchmarks: random weights stop at random places): seconds of audio -> the number of
# tokens to generate with end-of-sequence ignored, or None to stop at end-of-sequence as usual.
AnswerLength = Callable[[float], int | None]


@dataclass(frozen=True, slots=True)
class Generation:
    tokens: list[int]
    stopped: str  # "eos", "max_tokens", "repetition" or "interrupted"
    drafted: int = 0  # tokens accepted from the draft (verified in a batch, not decoded one by one)


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
    draft: Sequence[int] = (),
    interrupt: threading.Event | None = None,
) -> Generation:
    """Sample after the current position until a stop token, the budget, or a loop. The prompt must already be
    fed with logits for its last position. Stop tokens are not included; a detected loop is cut off where it
    started.

    `draft`: the tokens expected to come next (e.g. what an earlier decode of the same audio generated after the
    same prefix). Once the first of them is sampled, the rest are fed in one batch (at most the decoder's
    n_batch, then the next) with logits for every position, and each is accepted while it is what would have
    been sampled there: the same tokens, in one batched step instead of one decode per token. A wrong guess
    costs the rest of that batch. Greedy decoding only (a sampling decoder ignores the draft).

    `interrupt`: when set (from any thread), generation stops before the next token ("interrupted"): the
    streaming recognizer abandons a partial tick at the endpoint instead of making the final decode wait."""
    tokens: list[int] = []
    guess = list(draft) if getattr(decoder, "greedy", False) else []
    batch: list[int] = []  # a verification batch fed after the sampled tokens; `index` its position predicting next
    index = -1
    stopped, drafted = "max_tokens", 0
    while len(tokens) < max_new_tokens:
        if interrupt is not None and interrupt.is_set():
            stopped = "interrupted"
            break
        token = decoder.sample(index) if batch else decoder.sample()
        if token in stop_ids:
            stopped = "eos"
            break
        tokens.append(token)
        if on_token is not None:
            on_token(token)
        if repetition_guard and is_looping(tokens):
            stopped = "repetition"
            break
        if len(tokens) >= max_new_tokens:
            break
        if batch:  # `token` was predicted at batch[index]: is it the batch's next token, already fed?
            if index + 1 < len(batch) and batch[index + 1] == token:
                index += 1
                drafted += 1
                continue
            if index + 1 < len(batch):  # a wrong guess: the rest of the draft is given up
                guess = []
            decoder.rewind(decoder.n_past - len(batch) + index + 1)
            batch, index = [], -1
        if guess and token == guess[0]:
            # one llama.cpp batch at a time (the logits of every drafted token are read from it); a draft longer
            # than that goes on in the next batch once this one is accepted whole
            batch = guess[: min(max_new_tokens - len(tokens) + 1, decoder.n_batch)]
            guess = guess[len(batch) :]
            if len(batch) > 1:
                decoder.feed_tokens(batch, all_logits=True)
                index = 0
                continue
            batch = []
        guess = []
        decoder.feed_tokens([token])
    if batch:  # drop the batch's unaccepted guesses: the sequence holds exactly the accepted tokens
        decoder.rewind(decoder.n_past - len(batch) + index + 1)
    if stopped == "repetition":
        return Generation(_before_loop(tokens), "repetition", drafted)
    return Generation(tokens, stopped, drafted)


# Temperature fallback (the seed's recipe): a segment the repetition guard cut is decoded again, each time 0.3
# hotter, with a seed derived from the configured one so that a file gives the same text on every run.
FALLBACK_STEP = 0.3


def with_fallback(
    decoder: Decoder,
    attempt: Callable[[], Generation],
    first: Generation,
    retries: int,
    temperature: float,
    seed: int,
) -> tuple[Generation, int]:
    """`first` was cut by the repetition guard: run `attempt` (which re-feeds the prompt and generates) at
    temperature + 0.3, + 0.6, ... up to `retries` times, until one ends without a loop. Returns the best
    generation (the first that did not loop; if all did, the one that kept the most text) and the number of
    re-decodes. The decoder's sampling is the configured one again afterwards."""
    best, done = first, 0
    try:
        for i in range(1, retries + 1):
            if best.stopped != "repetition":
                break
            decoder.set_sampling(temperature + FALLBACK_STEP * i, seed + i)
            gen = attempt()
            done += 1
            if gen.stopped != "repetition" or len(gen.tokens) > len(best.tokens):
                best = gen
    finally:
        if done:
            decoder.set_sampling(temperature, seed)
    return best, done
