"""The audio source interface: what the daemon consumes, and the plumbing every source is built on.

The interface (:class:`AudioSource`) is asynchronous and made for one consumer on the daemon's asyncio loop::

    source = open_source(config.audio)         # microphone, WAV file or stdin, as config.yaml says
    await source.start()
    async for block in source:                 # int16 blocks of about audio.block_ms, until the end
        vad.feed(block)

* ``read()`` returns the next block, or ``None`` at the end of the stream (and on every call after it);
  ``async for`` stops there. A file or stdin ends at EOF or ``stop()``. The microphone's stream never ends
  on its own: ``stop()`` closes the device (push-to-talk opens it per utterance) and ``read()`` waits until the
  next ``start()``; ``drain()`` returns the blocks queued at that moment without waiting (after ``stop()``:
  everything captured), and ``close()`` ends it.
* :attr:`~AudioSource.clock` (alias ``samples``) is the number of samples delivered by ``read()``/``drain()``
  so far, over all start/stop cycles: a monotonic audio clock in 16 kHz samples (``clock / 16000`` seconds of
  audio), the same count the VAD sees. It is audio time, not wall time: gaps (a dropped block, a reopened or
  closed device) are not filled in; they are counted in :attr:`~AudioSource.stats` instead.
* :attr:`~AudioSource.stats` (:class:`SourceStats`) counts blocks and samples, and everything that lost audio
  or disturbed the stream: overruns (blocks dropped because the consumer fell more than ``max_queue_s``
  behind), PortAudio input overflows, reopens, errors. Never silent: each such event is also logged.
* Nothing blocks the event loop: a producer on another thread hands its blocks to the loop (the microphone's
  PortAudio callback with ``call_soon_threadsafe``, the stdin reader with ``run_coroutine_threadsafe``).

:class:`BlockQueue` is that hand-over, :class:`BlockSource` the base class of the sources
(:mod:`qasr_live.audio.sources` for a file or stdin, :mod:`qasr_live.audio.capture` for the microphone;
:func:`~qasr_live.audio.sources.open_source` picks one).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from qasr_live.audio.pcm import SAMPLE_RATE, block_samples

__all__ = ["AudioSource", "BlockQueue", "BlockSource", "SourceStats"]

_LOGGER = logging.getLogger(__name__)


@dataclass(slots=True)
class SourceStats:
    """Counters of one source over its lifetime (all sessions); read them any time from the loop's thread."""

    blocks: int = 0  # blocks delivered by read()
    samples: int = 0  # samples delivered by read() (== AudioSource.clock)
    overruns: int = 0  # blocks dropped because the consumer lagged more than max_queue_s behind
    dropped_samples: int = 0  # samples in those blocks
    input_overflows: int = 0  # PortAudio input-overflow flags: the driver lost audio before we saw it
    opens: int = 0  # successful stream (or file/stream) openings, reopens included
    reopens: int = 0  # reopens after an error, a stall, a lost device or sustained digital silence
    silence_reopens: int = 0  # ... of which after sustained digital silence
    errors: int = 0  # stream errors and failed open attempts
    last_error: str | None = None
    device: str | None = None  # what is (or was last) open: device name and native rate, file path, "stdin"

    def as_dict(self) -> dict[str, int | str | None]:
        return dataclasses.asdict(self)


@runtime_checkable
class AudioSource(Protocol):
    """What the daemon consumes: 16 kHz mono int16 blocks (see the module docstring)."""

    sample_rate: int
    is_microphone: bool
    stats: SourceStats

    @property
    def clock(self) -> int: ...

    @property
    def samples(self) -> int: ...

    @property
    def pending(self) -> int: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def close(self) -> None: ...

    async def read(self) -> np.ndarray | None: ...

    def drain(self) -> list[np.ndarray]: ...

    def __aiter__(self) -> AsyncIterator[np.ndarray]: ...


class BlockQueue:
    """The hand-over from a producer to the one consumer on the loop; ``None`` is the end marker.

    ``put_nowait`` never blocks and never grows beyond ``max_blocks``: a block that finds the queue full is
    dropped, counted (``stats.overruns``) and logged, since a producer that must not block (PortAudio's
    callback) has no other choice. ``put`` (a coroutine) waits for room instead: sources that can be paused
    (a file, a pipe) use it and lose nothing. The end marker (``None``) is never dropped.
    """

    def __init__(self, stats: SourceStats, max_blocks: int, what: str):
        self.stats = stats
        self.max_blocks = max(1, max_blocks)
        self.what = what
        self._queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue()  # bounded by hand, see put_nowait
        self._room = asyncio.Event()
        self._room.set()
        self._last_overrun_log = -1e9

    def put_nowait(self, block: np.ndarray) -> None:
        if self._queue.qsize() >= self.max_blocks:
            self.stats.overruns += 1
            self.stats.dropped_samples += len(block)
            now = time.monotonic()
            if now - self._last_overrun_log >= 1.0:  # at most one line a second; the counters are exact
                self._last_overrun_log = now
                _LOGGER.warning(
                    "%s: the consumer is %d blocks behind; dropped a block of %d samples "
                    "(%d overruns, %d samples dropped so far)",
                    self.what,
                    self._queue.qsize(),
                    len(block),
                    self.stats.overruns,
                    self.stats.dropped_samples,
                )
            return
        self._queue.put_nowait(block)
        if self._queue.qsize() >= self.max_blocks:
            self._room.clear()

    async def put(self, block: np.ndarray) -> None:
        while self._queue.qsize() >= self.max_blocks:
            self._room.clear()
            await self._room.wait()
        self._queue.put_nowait(block)

    def end(self) -> None:
        self._queue.put_nowait(None)

    def empty(self) -> bool:
        return self._queue.empty()

    def qsize(self) -> int:
        return self._queue.qsize()

    async def get(self) -> np.ndarray | None:
        return self._got(await self._queue.get())

    def get_nowait(self) -> np.ndarray | None:
        return self._got(self._queue.get_nowait())

    def _got(self, item: np.ndarray | None) -> np.ndarray | None:
        if self._queue.qsize() < self.max_blocks:
            self._room.set()
        if item is not None:
            self.stats.blocks += 1
            self.stats.samples += len(item)
        return item


class BlockSource:
    """The plumbing every source shares: the block queue, the clock, ``read``/``drain``/``async for`` and the
    session state. A subclass adds ``start()``/``stop()`` and a producer that fills ``self._queue``."""

    sample_rate = SAMPLE_RATE
    is_microphone = False

    def __init__(self, what: str, block_ms: int, max_queue_s: float):
        self.block_ms = block_ms
        self.block_size = block_samples(block_ms)
        self.stats = SourceStats()
        self._what = what
        self._queue = BlockQueue(self.stats, max(4, round(max_queue_s * 1000 / block_ms)), what)
        self._ended = False  # the end marker (None) has been queued: read() returns None once the queue is empty
        self._running = False

    @property
    def clock(self) -> int:
        """Samples delivered by ``read()`` and ``drain()`` so far (monotonic, over all sessions)."""
        return self.stats.samples

    samples = clock  # the same clock under the name the daemon uses

    @property
    def running(self) -> bool:
        """Between ``start()`` and ``stop()`` (or the end of the stream)."""
        return self._running

    @property
    def pending(self) -> int:
        """Blocks queued and not yet read."""
        return self._queue.qsize()

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        """Stop for good: what the daemon calls at shutdown (a microphone also lets go of its device)."""
        await self.stop()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._queue.end()

    async def read(self) -> np.ndarray | None:
        """The next block (int16, 16 kHz mono), or ``None`` at the end of the stream (and on every call after)."""
        if self._ended and self._queue.empty():
            return None
        return await self._queue.get()

    def drain(self) -> list[np.ndarray]:
        """The blocks queued right now, without waiting (they count in the clock like those of ``read()``)."""
        blocks = []
        while not self._queue.empty():
            block = self._queue.get_nowait()
            if block is None:  # the end marker: _ended is set, so read() returns None from now on
                break
            blocks.append(block)
        return blocks

    def __aiter__(self) -> AsyncIterator[np.ndarray]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[np.ndarray]:
        while (block := await self.read()) is not None:
            yield block
