"""Runs the controller's recognizer jobs on the one recognizer thread, in order, a batch at a time.

The controller relies on the jobs running one at a time in the order they were emitted, their results coming
back in that order (controller.py). The jobs wait here, on the event loop, in a :class:`RecognizerQueue` rather
than in the thread pool's own queue: only here can a job that became stale while it waited be skipped, and the
audio waiting be counted (dictation/backlog.py). The thread gets one batch at a time (the AddAudio blocks up to
the next job that computes), so the loop hop between jobs is paid once per decode, not once per 20 ms block.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from qasr_live.audio.pcm import SAMPLE_RATE
from qasr_live.dictation.backlog import RecognizerQueue
from qasr_live.dictation.effects import Job

#: (job, its result, or the exception it raised): called on the loop, in queue order
DoneHook = Callable[[Job, Any, Exception | None], None]


class RecognizerRunner:
    def __init__(
        self,
        executor: Executor,
        recognizer: Callable[[], Any],
        queue: RecognizerQueue,
        *,
        on_done: DoneHook,
        on_skipped: Callable[[Job], None],
    ) -> None:
        self._executor = executor  # one thread
        self._recognizer = recognizer  # what the jobs run on, read when a batch starts (set after loading)
        self.queue = queue
        self._on_done = on_done
        self._on_skipped = on_skipped
        self._running: asyncio.Future[Any] | None = None
        self._drained = asyncio.Event()  # nothing queued, nothing running
        self._drained.set()
        self._calls: dict[int, asyncio.Future[None]] = {}  # id(job) -> the waiter of call()

    @property
    def jobs(self) -> int:
        """Jobs queued or running."""
        return len(self.queue) + (self._running is not None)

    def status(self) -> dict[str, Any]:
        """What `ctl status` shows as ``backlog``."""
        q, rate = self.queue, SAMPLE_RATE
        return {
            "audio_s": round(q.queued_samples / rate, 2),  # waiting for the recognizer
            "peak_audio_s": round(q.peak_samples / rate, 2),
            "limit_s": round(q.limit_samples / rate, 2),
            "jobs": self.jobs,
            "overloaded": q.overloaded,
            "overloads": q.overloads,
            "skipped": {"tick": q.skipped["tick"], "speculate": q.skipped["speculate"]},
        }

    def submit(self, job: Job) -> None:
        """Queue ``job``; its outcome goes to ``on_done`` (or, for :meth:`call`, to its caller)."""
        self.queue.push(job)
        self._drained.clear()
        self._next()

    async def call(self, job: Job) -> None:
        """Run ``job`` in order with the jobs queued before it and wait for it; raises what it raised."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._calls[id(job)] = waiter
        self.submit(job)
        await waiter

    async def drain(self) -> None:
        """Wait until nothing is queued or running (what the outcomes queue meanwhile is waited for too)."""
        while not self._drained.is_set():
            await self._drained.wait()

    def _next(self) -> None:
        while self._running is None and self.queue:
            batch = self.queue.take()
            if batch.run:
                loop = asyncio.get_running_loop()
                self._running = future = loop.run_in_executor(self._executor, _run_batch, batch.run, self._recognizer())
                future.add_done_callback(functools.partial(self._batch_done, batch.run))
            for job in batch.skipped:  # they came before the batch: the controller hears of them first
                self._on_skipped(job)
        if self._running is None and not self.queue:
            self._drained.set()

    def _batch_done(self, jobs: list[Job], future: asyncio.Future[Any]) -> None:
        self._running = None
        self._next()  # the recognizer goes on while the outcomes are applied here
        if future.cancelled():
            return
        for job, (result, exc) in zip(jobs, future.result(), strict=True):
            waiter = self._calls.pop(id(job), None)
            if waiter is None:
                self._on_done(job, result, exc)
            elif not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)


def _run_batch(jobs: list[Job], recognizer: Any) -> list[tuple[Any, Exception | None]]:
    """On the recognizer thread: each job's result or exception, in order (a failed job does not stop the rest:
    the controller decides what follows from it)."""
    out: list[tuple[Any, Exception | None]] = []
    for job in jobs:
        try:
            out.append((job.run(recognizer), None))
        except Exception as e:  # handed back to the loop, which reports it (the daemon's on_done)
            out.append((None, e))
    return out
