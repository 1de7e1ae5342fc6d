"""The audio encoder in a child process.

ONNX Runtime inference is CPU-heavy and holds the GIL only briefly, but a crash inside it (or an OOM kill)
would take the whole daemon down. The child owns an AudioEncoder; the parent talks to it over a Pipe with
(method, args) requests. If the child dies, calls raise EncoderCrashed and `restart()` brings up a new one;
callers keep the audio they sent, so nothing is lost (they re-encode).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from qasr_live.engine.gpu import CPU_PROVIDER
from qasr_live.errors import EncoderCrashed, QasrError
from qasr_live.heap import return_freed_memory

_LOGGER = logging.getLogger(__name__)


def _serve(conn: Connection, frontend: str, backend: str, threads: int, arena: bool, providers: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    return_freed_memory()  # before the model loads: ONNX Runtime's per-run buffers would stay resident (heap.py)
    from qasr_live.engine.encoder import AudioEncoder
    from qasr_live.engine.gpu import CPU_PROVIDER

    try:
        encoder = AudioEncoder(frontend, backend, threads, arena, providers)
    except QasrError as e:
        conn.send(("error", e))
        return
    conn.send(("ready", (encoder.d_model, os.getpid(), encoder.providers)))
    on_gpu = encoder.providers[0] != CPU_PROVIDER
    while True:
        try:
            method, args = conn.recv()
        except (EOFError, OSError):
            return
        if method == "stop":
            return
        try:
            conn.send(("ok", getattr(encoder, method)(*args)))
        except Exception as e:  # broad: any failure is raised in the caller (not silent)
            if on_gpu:  # a GPU in an unknown state (out of memory, device lost): this worker ends, see restart()
                conn.send(("gpu-failed", f"encoder {method} failed on {encoder.providers[0]}: {e!r}"))
                return
            conn.send(("error", QasrError(f"encoder {method} failed: {e!r}")))  # the worker keeps serving


class EncoderWorker:
    """Same methods as AudioEncoder (encode, frontend, backend, frontend_rows), run in a spawned process."""

    def __init__(
        self,
        frontend: str | Path,
        backend: str | Path,
        threads: int = 1,
        arena: bool = False,
        providers: Sequence[str] = ("auto",),
    ) -> None:
        """`arena`: ONNX Runtime's memory arena (faster repeated large inputs, more resident memory).
        `providers`: `engine.encoder_providers`; after a crash on a GPU, `restart()` goes on with the CPU."""
        self._paths = (str(frontend), str(backend))
        self._threads = threads
        self._arena = arena
        self._requested = list(providers)
        self.providers: list[str] = []  # what the running worker's onnxruntime uses, first = the main one
        self._process: mp.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self.d_model = 0
        self.pid = 0
        self.restarts = 0
        self.start()

    @classmethod
    def for_offline(
        cls,
        frontend: str | Path,
        backend: str | Path,
        encoder_threads: int,
        decoder_threads: int,
        providers: Sequence[str] = ("auto",),
    ) -> EncoderWorker:
        """Offline transcription runs encoder and decoder one after the other: the encoder gets the decoder's
        threads too, and ONNX Runtime's memory arena (30 s segments are encoded at once)."""
        return cls(frontend, backend, max(encoder_threads, decoder_threads), arena=True, providers=providers)

    def start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        process = ctx.Process(
            target=_serve,
            args=(child, *self._paths, self._threads, self._arena, self._requested),
            daemon=True,
            name="qasr-encoder",
        )
        process.start()
        child.close()  # so that a dead child reads as EOF here
        self._process, self._conn = process, parent
        status, payload = self._receive("start")
        if status == "error":
            process.join(5)
            raise payload
        self.d_model, self.pid, self.providers = payload

    def restart(self) -> None:
        """A new worker after a crash. One that ran on a GPU comes back on the CPU: a GPU that failed once
        (out of memory, a lost device, a driver crash) is not trusted with the next utterance."""
        on = self.providers[0] if self.providers else CPU_PROVIDER
        self.close()
        self.restarts += 1
        if on != CPU_PROVIDER:
            self._requested = ["cpu"]
            _LOGGER.warning(
                "restarting the encoder worker (restart #%d) on the CPU: it failed on %s "
                "(engine.encoder_providers: [cpu] avoids the GPU from the start)",
                self.restarts,
                on,
            )
        else:
            _LOGGER.warning("restarting the encoder worker (restart #%d)", self.restarts)
        self.start()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def _receive(self, what: str) -> tuple[str, Any]:
        """A (status, payload) reply: the payload is whatever the child sent (a result, or the error to raise)."""
        assert self._conn is not None, "the worker was started"
        try:
            reply: tuple[str, Any] = self._conn.recv()
            return reply
        except (EOFError, OSError) as e:
            code = self._process.exitcode if self._process else None
            raise EncoderCrashed(f"the encoder worker died during {what} (exit code {code})") from e

    def _call(self, method: str, *args: np.ndarray) -> npt.NDArray[np.float32]:
        if self._process is None or self._conn is None:  # close()d: a caller's bug, not a crash to restart after
            raise RuntimeError(f"encoder {method} on a closed encoder worker")
        if not self._process.is_alive():
            raise EncoderCrashed(f"the encoder worker is not running (exit code {self._process.exitcode})")
        try:
            self._conn.send((method, args))
        except (BrokenPipeError, OSError) as e:
            raise EncoderCrashed(f"the encoder worker died before {method}") from e
        status, payload = self._receive(method)
        if status == "gpu-failed":
            self._process.join(5)
            raise EncoderCrashed(f"{payload}; restart the encoder (it comes back on the CPU)")
        if status == "error":
            raise payload
        rows: npt.NDArray[np.float32] = payload
        return rows

    def encode(self, mel: np.ndarray) -> npt.NDArray[np.float32]:
        return self._call("encode", mel)

    def frontend(self, chunks: np.ndarray) -> npt.NDArray[np.float32]:
        return self._call("frontend", chunks)

    def backend(self, rows: np.ndarray) -> npt.NDArray[np.float32]:
        return self._call("backend", rows)

    def frontend_rows(self, mel: np.ndarray) -> npt.NDArray[np.float32]:
        return self._call("frontend_rows", mel)

    def close(self) -> None:
        if self._process is None:
            return
        assert self._conn is not None, "started together with the process"
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(("stop", ()))
            self._process.join(2)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(2)
        self._conn.close()
        self._process = None

    def __enter__(self) -> EncoderWorker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
