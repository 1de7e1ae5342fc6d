"""The benchmark's forced answer length: random weights stop at random places (or never), so every decode answers
a fixed number of tokens per second of audio, end-of-sequence ignored (the engine's `answer_length` hook)."""

from __future__ import annotations

from qasr_live.engine.generation import AnswerLength

TOKENS_PER_SECOND = 4.0  # a realistic answer length: ~4 text tokens per second of speech


def tokens_per_second(rate: float) -> AnswerLength:
    """`rate` tokens per second of audio, at least one; a rate of 0 forces nothing."""

    def answer_length(audio_seconds: float) -> int | None:
        return max(1, round(rate * audio_seconds)) if rate > 0 else None

    return answer_length
