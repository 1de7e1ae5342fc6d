"""The sources that are not a microphone, and :func:`open_source`, which picks the one config.yaml asks for.

:class:`FileSource` (a WAV, or anything ffmpeg decodes, via :func:`~qasr_live.audio.files.load_audio`; in real
time or as fast as the consumer reads) and :class:`StdinSource` (raw s16le 16 kHz mono from a binary stream, by
default this process's stdin) are :class:`~qasr_live.audio.source.AudioSource` s (see there for ``start``/
``stop``/``read``/``clock``/``stats``); the microphone is :class:`~qasr_live.audio.capture.MicrophoneSource`.
Neither blocks the event loop: a file is decoded in a thread, stdin is read by a thread of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from qasr_live.audio.capture import MicrophoneSource
from qasr_live.audio.files import load_audio
from qasr_live.audio.pcm import SAMPLE_RATE, float_to_int16
from qasr_live.audio.source import AudioSource, BlockSource
from qasr_live.errors import AudioError

if TYPE_CHECKING:
    from qasr_live.config import AudioConfig

__all__ = ["FileSource", "StdinSource", "open_source"]

_LOGGER = logging.getLogger(__name__)


class FileSource(BlockSource):
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


class StdinSource(BlockSource):
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
        # This process's stdin is read with os.read on its descriptor, never through sys.stdin.buffer: a daemon
        # thread blocked inside a buffered read holds the buffer's lock, and an interpreter exiting meanwhile (a
        # SIGTERM) aborts with "Fatal Python error: _enter_buffered_busy".
        stream = sys.stdin.fileno() if self._stream is None else self._stream
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
                if not self._hand_over(functools.partial(self._queue.put, block)):
                    return
        else:
            return  # stopped: stop() ended the stream
        if len(pending) % 2:
            _LOGGER.warning("stdin: the stream ended with half a sample (an odd byte count); dropped it")
            del pending[-1]
        if pending:
            block = np.frombuffer(bytes(pending), dtype="<i2").astype(np.int16)
            if not self._hand_over(functools.partial(self._queue.put, block)):
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
        return MicrophoneSource(
            audio.device,
            block_ms=audio.block_ms,
            reopen_after_silence_s=audio.reopen_after_silence_s,
            max_queue_s=max_queue_s,
        )
    if audio.source == "-":
        return StdinSource(stdin, block_ms=audio.block_ms)
    return FileSource(audio.source, block_ms=audio.block_ms, realtime=realtime_file)
