"""What a transcription produces: text, language, timed segments, the raw token ids and timing stats."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True, slots=True)
class Word:
    """One aligned word (one character for CJK text); times are seconds from the start of the file."""

    text: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of audio decoded as one unit; times are seconds from the start of the file. ``words`` is empty
    unless the text was aligned (a forced-aligner model)."""

    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()


@dataclass(slots=True)
class Stats:
    """Where the time went. Token rates are per second of wall time of that stage."""

    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    encoder_seconds: float = 0.0
    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    fallbacks: int = 0  # re-decodes of looping segments at a higher temperature

    @property
    def rtf(self) -> float:
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else 0.0

    @property
    def prefill_tps(self) -> float:
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def generate_tps(self) -> float:
        return self.generated_tokens / self.generate_seconds if self.generate_seconds else 0.0

    def to_dict(self) -> dict[str, float]:
        return {
            **asdict(self),
            "rtf": self.rtf,
            "prefill_tps": self.prefill_tps,
            "generate_tps": self.generate_tps,
        }


@dataclass(slots=True)
class Transcript:
    """The result of transcribing one file. ``token_ids`` are the generated ids of every segment, in order,
    so that outputs can be compared exactly with any reference implementation."""

    text: str
    language: str | None
    segments: list[Segment] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
