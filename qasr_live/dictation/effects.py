"""What the dictation controller asks of its shell: recognizer jobs (run in order on the recognizer thread) and
the other effects (publish, deliver, type, timers, the microphone)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from qasr_live.events import CommitEvent, ServerEvent
from qasr_live.streaming.results import Final, Tick

# ------------------------------------------------------------------------------------------------ recognizer jobs


class Recognizer(Protocol):
    """What the jobs call: the streaming recognizer (qasr_live.streaming.recognizer.StreamingRecognizer)."""

    def begin(self) -> None: ...

    def add_audio(self, pcm: np.ndarray) -> None: ...

    def tick(self) -> Tick: ...

    def speculate(self) -> bool: ...

    def finish(self, use_speculation: bool = False) -> Final: ...

    def cancel(self) -> None: ...

    def prepare(self) -> None: ...

    def set_recognition(self, language: str | None, context: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Job:
    """A call on the streaming recognizer, run in order on its thread; ``run`` returns what the controller gets."""

    utterance_id: str

    # Any here, a Recognizer in every subclass: the daemon submits ``job.run`` with its ``StreamingRecognizer | None``
    # attribute (set before any job runs), which a Recognizer parameter would reject.
    def run(self, recognizer: Any) -> object:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Begin(Job):
    def run(self, recognizer: Recognizer) -> None:
        recognizer.begin()


@dataclass(frozen=True, slots=True, eq=False)
class AddAudio(Job):
    pcm: np.ndarray

    def run(self, recognizer: Recognizer) -> None:
        recognizer.add_audio(self.pcm)


@dataclass(frozen=True, slots=True)
class TickJob(Job):
    def run(self, recognizer: Recognizer) -> Tick:
        return recognizer.tick()


@dataclass(frozen=True, slots=True)
class Speculate(Job):
    def run(self, recognizer: Recognizer) -> bool:
        return bool(recognizer.speculate())


@dataclass(frozen=True, slots=True)
class Finish(Job):
    use_speculation: bool

    def run(self, recognizer: Recognizer) -> Final:
        return recognizer.finish(use_speculation=self.use_speculation)


@dataclass(frozen=True, slots=True)
class Cancel(Job):
    def run(self, recognizer: Recognizer) -> None:
        recognizer.cancel()


@dataclass(frozen=True, slots=True)
class Prepare(Job):
    """Prefill the next utterance's memory now, while nobody waits (a Begin queued meanwhile finds it done)."""

    def run(self, recognizer: Recognizer) -> None:
        recognizer.prepare()


@dataclass(frozen=True, slots=True)
class SetRecognition(Job):
    """Forced language and context for the next utterances (belongs to no utterance: ``utterance_id`` is "")."""

    language: str | None
    context: str

    def run(self, recognizer: Recognizer) -> None:
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
