"""The recognizer's job queue: what waits for the one recognizer thread, what of it is not worth running any more,
and when the audio waiting is too much (overload).

Pure, like the controller: the daemon pushes every job the controller emits, takes the next batch when the
recognizer thread is free, and asks :meth:`RecognizerQueue.transition` after each change. A recognizer that falls
behind (a loaded machine, a model too big for it) makes the queue grow with the audio of every utterance that
waits; the queue keeps it bounded:

* work nobody will see is skipped when its turn comes: a partial tick of an utterance whose end (``Finish`` or
  ``Cancel``) is queued behind it, or behind which a newer tick of the same utterance waits; an endpoint
  speculation behind which a newer one, or an end that will not use it (``Cancel``, ``Finish`` without
  ``use_speculation``), is queued (one that the final decode will use is the final decode). The controller
  hears of each skip
  (``DictationController.skipped``). Audio, utterance starts and final decodes are never skipped;
* more than ``limit_samples`` of audio queued (``AddAudio`` not yet handed to the recognizer) is an overload: the
  daemon stops taking audio until less than half of it is left (hysteresis, so that it does not flap).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from enum import StrEnum

from qasr_live.dictation.effects import AddAudio, Cancel, Finish, Job, Speculate, TickJob


class Transition(StrEnum):
    """A change of the overload state (``RecognizerQueue.transition``)."""

    OVERLOADED = "overloaded"
    RECOVERED = "recovered"


@dataclass(slots=True)
class Batch:
    """What to run now, in order (``run``), and what was dropped on the way to it (``skipped``, in queue order)."""

    run: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)


class RecognizerQueue:
    """FIFO of recognizer jobs with the skip and overload policy above."""

    def __init__(self, limit_samples: int) -> None:
        if limit_samples <= 0:
            raise ValueError("limit_samples must be positive")
        self.limit_samples = limit_samples
        self._jobs: deque[Job] = deque()
        self.queued_samples = 0  # audio of the AddAudio jobs queued (not yet handed to the recognizer)
        self.peak_samples = 0
        self.overloaded = False
        self.overloads = 0  # times the limit was crossed
        self.skipped = Counter[str]()  # skipped jobs by kind ("tick", "speculate")
        # per utterance, what is queued behind a job: decides staleness in O(1) when a job's turn comes
        self._ends = Counter[str]()
        self._speculative_ends = Counter[str]()  # of those, Finish(use_speculation=True)
        self._ticks = Counter[str]()
        self._speculations = Counter[str]()

    def __len__(self) -> int:
        return len(self._jobs)

    def push(self, job: Job) -> None:
        self._jobs.append(job)
        self._count(job, +1)

    def take(self) -> Batch:
        """The next jobs to run: the AddAudio blocks at the head (no computation: they only append samples) up to
        and including the next job that computes, so one hop to the recognizer thread carries them all. Stale
        jobs met on the way are dropped into ``skipped``."""
        batch = Batch()
        while self._jobs:
            job = self._jobs.popleft()
            self._count(job, -1)
            if self._stale(job):
                batch.skipped.append(job)
                self.skipped["tick" if isinstance(job, TickJob) else "speculate"] += 1
                continue
            batch.run.append(job)
            if not isinstance(job, AddAudio):
                break
        return batch

    def transition(self) -> Transition | None:
        """Whether the overload state changes now: over the limit, or back under half of it."""
        if not self.overloaded and self.queued_samples > self.limit_samples:
            self.overloaded = True
            self.overloads += 1
            return Transition.OVERLOADED
        if self.overloaded and self.queued_samples < self.limit_samples / 2:
            self.overloaded = False
            return Transition.RECOVERED
        return None

    def _stale(self, job: Job) -> bool:
        """Called once ``job`` left the queue: the counters say what is still queued behind it."""
        uid = job.utterance_id
        if isinstance(job, TickJob):
            return self._ends[uid] > 0 or self._ticks[uid] > 0
        if isinstance(job, Speculate):
            return self._ends[uid] > self._speculative_ends[uid] or self._speculations[uid] > 0
        return False

    def _count(self, job: Job, sign: int) -> None:
        uid = job.utterance_id
        if isinstance(job, AddAudio):
            self.queued_samples += sign * len(job.pcm)
            self.peak_samples = max(self.peak_samples, self.queued_samples)
        elif isinstance(job, Finish | Cancel):
            self._add(self._ends, uid, sign)
            if isinstance(job, Finish) and job.use_speculation:
                self._add(self._speculative_ends, uid, sign)
        elif isinstance(job, TickJob):
            self._add(self._ticks, uid, sign)
        elif isinstance(job, Speculate):
            self._add(self._speculations, uid, sign)

    @staticmethod
    def _add(counter: Counter[str], key: str, sign: int) -> None:
        counter[key] += sign
        if counter[key] <= 0:
            del counter[key]  # no entry per finished utterance left behind: the daemon runs for weeks
