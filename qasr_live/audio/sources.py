"""Audio sources: everything that produces 16 kHz mono int16 blocks for the daemon, behind one interface.

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
* Nothing here blocks the event loop: the microphone's PortAudio callback thread hands blocks to the loop with
  ``call_soon_threadsafe``, stdin is read by a thread of its own, a file is loaded in a thread.

Sources: :class:`FileSource` (a WAV, or anything ffmpeg decodes, via :func:`~qasr_live.audio.files.load_audio`;
in real time or as fast as the consumer reads), :class:`StdinSource` (raw s16le 16 kHz mono from a binary
stream, by default this process's stdin), and ``qasr_live.audio.capture.MicrophoneSource``. :func:`open_source`
picks one from an :class:`~qasr_live.config.AudioConfig`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from qasr_live.audio.files import load_audio
from qasr_live.errors import AudioError

if TYPE_CHECKING:
    from qasr_live.config import AudioConfig

__all__ = [
    "SAMPLE_RATE",
    "AudioSource",
    "FileSource",
    "SourceStats",
    "StdinSource",
    "block_samples",
    "float_to_int16",
    "open_source",
]

_LOGGER = logging.getLogger(__name__)

SAMPLE_RATE = 16000


def block_samples(block_ms: int, rate: int = SAMPLE_RATE) -> int:
    """Samples in a block of ``block_ms`` milliseconds at ``rate`` Hz (at least 1)."""
    return max(1, round(rate * block_ms / 1000))


def float_to_int16(x: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] to int16 (×32768, rounded, clipped); exact for audio that came from int16."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)


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

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def read(self) -> np.ndarray | None: ...

    def drain(self) -> list[np.ndarray]: ...

    def __aiter__(self) -> AsyncIterator[np.ndarray]: ...


class _BlockQueue:
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


class _SourceBase:
    """Shared plumbing: the block queue, the clock, ``read``/``drain``/``async for`` and the session state."""

    sample_rate = SAMPLE_RATE
    is_microphone = False

    def __init__(self, what: str, block_ms: int, max_queue_s: float):
        self.block_ms = block_ms
        self.block_size = block_samples(block_ms)
        self.stats = SourceStats()
        self._what = what
        self._queue = _BlockQueue(self.stats, max(4, round(max_queue_s * 1000 / block_ms)), what)
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


class FileSource(_SourceBase):
    """The samples of an audio file, in blocks of ``block_ms``; the last block may be shorter.

    ``realtime=True`` paces delivery like a microphone (block *i* is not returned before ``start() + (i + 1) ×
    block`` of wall time; a consumer that falls behind gets the due blocks at once, nothing is dropped);
    ``realtime=False`` returns blocks as fast as they are read. The file is decoded once, in a thread, by
    ``start()`` (any WAV; other formats through ffmpeg), so a bad file fails there with an ``AudioError``.
    ``start()`` after the end (or after ``stop()``) plays the file again from its beginning.
    """

    def __init__(self, path: str | Path, *, block_ms: int = 30, realtime: bool = False):
        super().__init__(f"file {path}", block_ms, max_queue_s=1.0)
        self.path = Path(path)
        self.realtime = realtime
        self._samples: np.ndarray | None = None
        self._pos = 0
        self._t0 = 0.0

    async def start(self) -> None:
        if self._running:
            return
        if self._samples is None:
            audio = await asyncio.to_thread(load_audio, self.path, SAMPLE_RATE)
            self._samples = float_to_int16(audio)
        self._pos = 0
        self._t0 = time.monotonic()
        self._running = True
        self.stats.opens += 1
        self.stats.device = str(self.path)

    async def stop(self) -> None:
        self._running = False

    async def read(self) -> np.ndarray | None:
        if not self._running or self._samples is None:
            return None
        if self._pos >= len(self._samples):
            self._running = False
            return None
        end = min(self._pos + self.block_size, len(self._samples))
        if self.realtime:
            due = self._t0 + end / SAMPLE_RATE
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        else:
            await asyncio.sleep(0)  # let the loop run between blocks even when the consumer never waits
        if not self._running:  # stopped while waiting
            return None
        block = self._samples[self._pos : end]
        self._pos = end
        self.stats.blocks += 1
        self.stats.samples += len(block)
        return block


class StdinSource(_SourceBase):
    """Raw signed 16-bit little-endian, 16 kHz, mono samples from a binary stream (default: this stdin).

    A reader thread (a daemon thread, so a blocked read never holds up the process's exit) reads whatever
    arrives (partial reads of any size, odd byte counts included) and hands on blocks of exactly ``block_ms``;
    at EOF the remainder is delivered as a last, shorter block, then the end (``None``). A trailing odd byte
    (half a sample) is dropped with a warning. The thread waits while the consumer is more than
    ``max_queue_s`` behind, so the writer is throttled by the pipe and nothing is dropped. ``stop()`` ends
    the stream at once (a read already blocked in the thread finishes when data or EOF arrives); an ended
    stream cannot be started again.
    """

    def __init__(self, stream: IO[bytes] | int | None = None, *, block_ms: int = 30, max_queue_s: float = 2.0):
        super().__init__("stdin", block_ms, max_queue_s)
        self._stream = stream
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _read_raw(self, n: int) -> bytes:
        stream = sys.stdin.buffer if self._stream is None else self._stream
        if isinstance(stream, int):
            return os.read(stream, n)
        read1 = getattr(stream, "read1", None)
        return read1(n) if read1 is not None else stream.read(n)

    async def start(self) -> None:
        if self._running:
            return
        if self._ended:
            raise AudioError("stdin: the stream has ended (EOF or stop()); it cannot be started again")
        self._loop = asyncio.get_running_loop()
        self._running = True
        self.stats.opens += 1
        self.stats.device = "stdin"
        self._thread = threading.Thread(target=self._reader, name="qasr-stdin", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._stop.set()
        self._end()

    def _hand_over(self, coro_factory: Callable[[], Coroutine[Any, Any, None]]) -> bool:
        """In the reader thread: run ``coro_factory()`` on the loop and wait for it (the backpressure).
        False when the source was stopped or the loop is gone: the thread should end."""
        assert self._loop is not None
        try:
            future = asyncio.run_coroutine_threadsafe(coro_factory(), self._loop)
        except RuntimeError:  # loop closed
            return False
        while True:
            try:
                future.result(timeout=0.25)
                return True
            except concurrent.futures.TimeoutError:
                if self._stop.is_set() or self._loop.is_closed():
                    future.cancel()
                    return False
            except (concurrent.futures.CancelledError, RuntimeError):
                return False

    def _reader(self) -> None:
        want = self.block_size * 2
        pending = bytearray()
        while not self._stop.is_set():
            try:
                chunk = self._read_raw(max(want - len(pending), 4096))
            except OSError as exc:
                self.stats.errors += 1
                self.stats.last_error = f"stdin: {exc}"
                _LOGGER.error("stdin: read failed (%s); treating it as the end of the stream", exc)
                chunk = b""
            if not chunk:
                break
            pending += chunk
            while len(pending) >= want:
                block = np.frombuffer(bytes(pending[:want]), dtype="<i2").astype(np.int16)
                del pending[:want]
                if not self._hand_over(lambda b=block: self._queue.put(b)):
                    return
        else:
            return  # stopped: stop() ended the stream
        if len(pending) % 2:
            _LOGGER.warning("stdin: the stream ended with half a sample (an odd byte count); dropped it")
            del pending[-1]
        if pending:
            block = np.frombuffer(bytes(pending), dtype="<i2").astype(np.int16)
            if not self._hand_over(lambda b=block: self._queue.put(b)):
                return
        self._hand_over(self._end_of_stream)

    async def _end_of_stream(self) -> None:
        self._running = False
        self._end()


def open_source(
    audio: AudioConfig,
    *,
    stdin: IO[bytes] | int | None = None,
    realtime_file: bool = True,
    max_queue_s: float = 10.0,
) -> AudioSource:
    """The source ``config.yaml``'s ``audio`` section asks for (not started yet).

    ``audio.source``: ``None`` → the microphone ``audio.device`` (``MicrophoneSource``, which reopens after
    ``audio.reopen_after_silence_s`` of digital silence); ``'-'`` → :class:`StdinSource` on ``stdin`` (default:
    this process's stdin); anything else → :class:`FileSource` of that path, paced in real time unless
    ``realtime_file`` is false. ``max_queue_s`` is how far the consumer may lag behind the microphone before
    blocks are dropped (and counted).
    """
    if audio.source is None:
        from qasr_live.audio.capture import MicrophoneSource

        return MicrophoneSource(
            audio.device,
            block_ms=audio.block_ms,
            reopen_after_silence_s=audio.reopen_after_silence_s,
            max_queue_s=max_queue_s,
        )
    if audio.source == "-":
        return StdinSource(stdin, block_ms=audio.block_ms)
    return FileSource(audio.source, block_ms=audio.block_ms, realtime=realtime_file)
