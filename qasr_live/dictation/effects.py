"""What the dictation controller asks of its shell: recognizer jobs (run in order on the recognizer thread) and
the other effects (publish, deliver, type, timers, the microphone)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from qasr_live.events import CommitEvent, ServerEvent
from qasr_live.streaming.results import Final, Tick

# ------------------------------------------------------------------------------------------------ recognizer jobs


@dataclass(frozen=True, slots=True)
class Job:
    """A call on the streaming recognizer, run in order on its thread; ``run`` returns what the controller gets."""

    utterance_id: str

    def run(self, recognizer: Any) -> Any:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Begin(Job):
    def run(self, recognizer: Any) -> None:
        recognizer.begin()


@dataclass(frozen=True, slots=True, eq=False)
class AddAudio(Job):
    pcm: np.ndarray

    def run(self, recognizer: Any) -> None:
        recognizer.add_audio(self.pcm)


@dataclass(frozen=True, slots=True)
class TickJob(Job):
    def run(self, recognizer: Any) -> Tick:
        return recognizer.tick()


@dataclass(frozen=True, slots=True)
class Speculate(Job):
    def run(self, recognizer: Any) -> bool:
        return bool(recognizer.speculate())


@dataclass(frozen=True, slots=True)
class Finish(Job):
    use_speculation: bool

    def run(self, recognizer: Any) -> Final:
        return recognizer.finish(use_speculation=self.use_speculation)


@dataclass(frozen=True, slots=True)
class Cancel(Job):
    def run(self, recognizer: Any) -> None:
        recognizer.cancel()


@dataclass(frozen=True, slots=True)
class Prepare(Job):
    """Prefill the next utterance's memory now, while nobody waits (a Begin queued meanwhile finds it done)."""

    def run(self, recognizer: Any) -> None:
        recognizer.prepare()


@dataclass(frozen=True, slots=True)
class SetRecognition(Job):
    """Forced language and context for the next utterances (belongs to no utterance: ``utterance_id`` is "")."""

    language: str | None
    context: str

    def run(self, recognizer: Any) -> None:
        recognizer.set_recognition(self.language, self.context)


# ------------------------------------------------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Cut a running partial decode short (applied at once, not queued)."""


@dataclass(frozen=True, slots=True)
class Publish:
    event: ServerEvent


@dataclass(frozen=True, slots=True)
class Deliver:
    """A commit: journal it, then publish ``event``, in this order."""

    event: CommitEvent
    audio_start: float
    audio_end: float


@dataclass(frozen=True, slots=True)
class Type:
    utterance_id: str
    text: str


@dataclass(frozen=True, slots=True)
class ScheduleTick:
    """Call :meth:`DictationController.tick_due` with this utterance id after ``delay_s``."""

    utterance_id: str
    delay_s: float


@dataclass(frozen=True, slots=True)
class OpenMic:
    pass


@dataclass(frozen=True, slots=True)
class CloseMic:
    pass


Effect = Job | Interrupt | Publish | Deliver | Type | ScheduleTick | OpenMic | CloseMic
