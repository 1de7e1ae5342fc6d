"""`qasr-live serve`: the lifecycle of the dictation daemon and the asyncio shell around the dictation controller.

Lifecycle: single-instance lock → model → outputs, controls and the audio source → the audio pump until stopped →
shutdown. Everything started is registered on one exit stack, so whatever fails (at start-up or later) the parts
already running are closed, in reverse order, and an utterance in progress is finished first.

The decisions live in :mod:`qasr_live.dictation`; this shell applies its effects. One event loop owns all state;
CPU-heavy work leaves it: the encoder runs in its own process, the decoder (which releases the GIL inside
llama.cpp) on one recognizer thread, keystroke injection on one typing thread (outputs/delivery.py). The
recognizer thread takes its jobs in order and their results come back in that order, which the controller
relies on (dictation.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from qasr_live import __version__
from qasr_live.audio.pcm import SAMPLE_RATE
from qasr_live.audio.source import AudioSource
from qasr_live.audio.sources import open_source
from qasr_live.bus import EventHub
from qasr_live.config import AppConfig
from qasr_live.config_file import with_overrides
from qasr_live.control.ctl import CtlServer, install_signal_handlers
from qasr_live.dictation.controller import DictationController
from qasr_live.dictation.effects import (
    CloseMic,
    Deliver,
    Effect,
    Interrupt,
    Job,
    OpenMic,
    Publish,
    ScheduleTick,
    SetRecognition,
    Type,
)
from qasr_live.engine.generation import AnswerLength
from qasr_live.engine.model_dir import ModelDir
from qasr_live.engine.worker import EncoderWorker
from qasr_live.errors import HotkeysUnavailable, ProtocolError, QasrError
from qasr_live.events import ControlAction, RecordMode
from qasr_live.outputs.delivery import Delivery
from qasr_live.outputs.journal import Journal, default_journal_path
from qasr_live.outputs.typing import Typist
from qasr_live.outputs.websocket import WebSocketServer
from qasr_live.runtime import RuntimeFiles
from qasr_live.service import notify
from qasr_live.streaming.recognizer import StreamingRecognizer

_LOGGER = logging.getLogger(__name__)


class Daemon:
    """One running service: ``await run()`` until ``stop()`` or a signal."""

    def __init__(
        self, cfg: AppConfig, model: ModelDir, runtime: RuntimeFiles, *, answer_length: AnswerLength | None = None
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.runtime = runtime
        self.mode = RecordMode(cfg.trigger.mode)
        self.session_id = uuid.uuid4().hex[:12]
        self._answer_length = answer_length  # benchmarks only: the answer length to force (bench/daemon.py)
        self._started = time.monotonic()
        self._stopping = asyncio.Event()
        self._hub = EventHub(self.session_id, cfg.websocket.replay_events)
        self._source: AudioSource = open_source(cfg.audio)
        self._dictation = DictationController(
            self.mode,
            cfg.vad,
            partial_interval_ms=cfg.streaming.partial_interval_ms,
            endpoint_speculation_ms=cfg.streaming.endpoint_speculation_ms,
            microphone=self._source.is_microphone,
        )
        self._recognizer_thread = ThreadPoolExecutor(1, thread_name_prefix="qasr-recognizer")
        self._encoder: EncoderWorker | None = None
        self._recognizer: StreamingRecognizer | None = None
        self._delivery: Delivery | None = None
        self._server: WebSocketServer | None = None
        self._jobs: set[asyncio.Future[Any]] = set()  # queued or running on the recognizer thread
        self._timers: set[asyncio.TimerHandle] = set()
        self._pumped = asyncio.Condition()
        self._pumped_samples = 0

    # --------------------------------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as stack:
            stack.enter_context(self.runtime.instance_lock())  # before anything loads: a second daemon fails at once
            stack.callback(self._recognizer_thread.shutdown, wait=True)
            notify("STATUS=loading the model")
            stack.push_async_callback(self._on_recognizer_thread, self._close_engine)
            await self._on_recognizer_thread(self._load_engine)
            journal = Journal(self.cfg.journal.path or default_journal_path()) if self.cfg.journal.enabled else None
            typist = Typist(self.cfg.typing) if self.cfg.typing.enabled else None
            self._delivery = delivery = Delivery(self._hub, journal, typist)
            stack.callback(delivery.close)
            if self.cfg.websocket.enabled:
                self._server = self._websocket_server()
                stack.push_async_callback(self._server.stop)
                await self._server.start()
            ctl = CtlServer.for_runtime(self.runtime, self.control, self.status, lock=False)  # held since start-up
            stack.push_async_callback(ctl.close)
            await ctl.start()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            stack.callback(install_signal_handlers(loop, self.control))
            await self._start_hotkeys(stack, typist)
            stack.push_async_callback(self._source.close)
            if self._dictation.active or not self._source.is_microphone:
                await self._source.start()
            self.runtime.pid_file.write_text(f"{os.getpid()}\n")
            stack.callback(self.runtime.pid_file.unlink, missing_ok=True)
            stack.push_async_callback(self._finish_dictation)  # unwound first: the last words reach every output
            self._apply(self._dictation.started())
            notify("READY=1")
            notify(f"STATUS=ready ({self.mode})")
            _LOGGER.info("ready: mode %s, model %s", self.mode, self.model.path)
            try:
                async with asyncio.TaskGroup() as tasks:
                    pump = tasks.create_task(self._pump_audio(), name="audio-pump")
                    await self._stopping.wait()
                    notify("STOPPING=1")
                    pump.cancel()
            except ExceptionGroup as group:  # the pump failed: shut down cleanly, then say why
                raise group.exceptions[0] from None

    def stop(self) -> None:
        self._stopping.set()

    def _load_engine(self) -> None:
        """Encoder process + decoder, then one warm-up decode so the first utterance pays no first-call costs."""
        e = self.cfg.engine
        self._encoder = EncoderWorker(
            self.model.frontend, self.model.backend, e.encoder_threads, providers=e.encoder_providers
        )
        self._recognizer = r = StreamingRecognizer(
            self.model,
            e,
            self.cfg.streaming,
            self._encoder,
            language=self.cfg.recognition.language,
            context=self.cfg.recognition.context,
            answer_length=self._answer_length,
        )
        r.begin()
        r.add_audio(np.zeros(SAMPLE_RATE, dtype=np.int16))
        r.tick()
        r.cancel()

    def _close_engine(self) -> None:
        if self._recognizer is not None:
            self._recognizer.close()
        if self._encoder is not None:
            self._encoder.close()

    def _websocket_server(self) -> WebSocketServer:
        return WebSocketServer(
            self._hub,
            self.cfg.websocket,
            self.runtime,
            on_control=self.control,
            on_config=self.set_recognition,
            state=self._dictation.state_event,
            server_version=__version__,
        )

    async def _start_hotkeys(self, stack: contextlib.AsyncExitStack, typist: Typist | None) -> None:
        if not self.cfg.hotkeys.enabled or self.cfg.audio.source is not None:
            return
        # pynput is imported only where global hotkeys can work (not on Wayland, not without a display)
        from qasr_live.control.hotkeys import HotkeyListener, available

        state = available()
        if not state:
            _LOGGER.warning("global hotkeys are off: %s", state.reason)
            return
        loop = asyncio.get_running_loop()
        listener = HotkeyListener(self.cfg.hotkeys, self.control, mode=self.mode, loop=loop)
        try:
            await loop.run_in_executor(None, listener.start)
        except HotkeysUnavailable as e:
            _LOGGER.warning("global hotkeys are off: %s", e)
            return
        stack.callback(listener.stop)
        if typist is not None:
            typist.set_hotkeys(listener)

    async def _finish_dictation(self) -> None:
        """Shutdown: finish the utterance in progress and wait until its text is journaled, published and typed."""
        self._apply(self._dictation.shutdown())
        while self._jobs:
            await asyncio.wait(set(self._jobs))
        for timer in self._timers:
            timer.cancel()
        if self._delivery is not None:
            await self._delivery.drain()

    # ------------------------------------------------------------------------------------------------ audio

    async def _pump_audio(self) -> None:
        """The only consumer of the source, so blocks are handled strictly in capture order."""
        while True:
            block = await self._source.read()
            if block is None:  # a file or stdin ended: finish what was said, then stop
                self._apply(self._dictation.end_of_stream())
                self.stop()
                return
            self._apply(self._dictation.feed_audio(block))
            async with self._pumped:
                self._pumped_samples += len(block)
                self._pumped.notify_all()

    async def _catch_up(self) -> None:
        """Wait until every block the source has captured so far has been handled by the pump."""
        async with self._pumped:
            await self._pumped.wait_for(
                lambda: self._source.pending == 0 and self._pumped_samples >= self._source.samples
            )

    # ---------------------------------------------------------------------------------------------- effects

    def _apply(self, effects: Iterable[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Job):
                self._submit(effect)
            elif isinstance(effect, Interrupt):
                if self._recognizer is not None:
                    self._recognizer.interrupt()
            elif isinstance(effect, Publish):
                self._hub.publish(effect.event)
            elif isinstance(effect, Deliver):
                assert self._delivery is not None
                self._delivery.commit(effect.event, effect.audio_start, effect.audio_end)
            elif isinstance(effect, Type):
                assert self._delivery is not None
                self._delivery.type(effect.utterance_id, effect.text)
            elif isinstance(effect, ScheduleTick):
                self._schedule_tick(effect)
            else:  # OpenMic / CloseMic come only from control(), which awaits them
                raise AssertionError(f"unexpected effect {effect!r}")

    def _schedule_tick(self, effect: ScheduleTick) -> None:
        def due() -> None:
            self._timers.discard(timer)
            self._apply(self._dictation.tick_due(effect.utterance_id))

        timer = asyncio.get_running_loop().call_later(effect.delay_s, due)
        self._timers.add(timer)

    def _submit(self, job: Job) -> asyncio.Future[Any]:
        """Queue ``job`` on the recognizer thread; its result goes back to the controller, in queue order."""
        future = asyncio.get_running_loop().run_in_executor(self._recognizer_thread, job.run, self._recognizer)
        self._jobs.add(future)
        future.add_done_callback(lambda f: self._job_done(job, f))
        return future

    def _job_done(self, job: Job, future: asyncio.Future[Any]) -> None:
        self._jobs.discard(future)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            self._apply(self._dictation.on_result(job, future.result()))
            return
        # An engine failure is reported, not fatal; a bug is logged with its traceback (silence would look like
        # "no speech").
        if isinstance(exc, QasrError):
            _LOGGER.error("recognizer: %s", exc)
            error = str(exc)
        else:
            _LOGGER.error("recognizer: internal error", exc_info=exc)
            error = f"internal error: {exc!r}"
        self._apply(self._dictation.on_result(job, None, error))

    async def _on_recognizer_thread(self, fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._recognizer_thread, fn)

    # ---------------------------------------------------------------------------------------------- control

    async def control(self, action: str) -> None:
        """Apply a control action (from a hotkey, the ctl socket, a signal or a WebSocket client)."""
        try:
            action = ControlAction(action)
        except ValueError:
            raise ProtocolError(f"unknown action {action!r}; known: {', '.join(ControlAction)}") from None
        # Not serialized: as before, an action arriving while the microphone opens or closes sees the state the
        # controller set when that action began (a key's autorepeat press during its release is ignored).
        for effect in self._dictation.control(action, self._source.samples):
            if isinstance(effect, OpenMic):
                await self._source.start()
                self._apply(self._dictation.mic_opened(self._source.samples))
            elif isinstance(effect, CloseMic):
                await self._source.stop()  # queues everything recorded up to now; read() waits for start()
                await self._catch_up()
                self._apply(self._dictation.mic_closed())
            else:
                self._apply([effect])

    async def set_recognition(self, language: str | None, context: str | None) -> None:
        """Forced language and context for the following utterances (a WebSocket ``config`` message)."""
        overrides: dict[str, Any] = {}
        if language is not None:
            overrides["recognition.language"] = language or None
        if context is not None:
            overrides["recognition.context"] = context
        self.cfg = with_overrides(self.cfg, overrides, sources={k: "config message" for k in overrides})
        rec = self.cfg.recognition
        await asyncio.wait([self._submit(SetRecognition("", rec.language, rec.context))])

    def status(self) -> dict[str, Any]:
        d = self._dictation
        return {
            "state": d.state,
            "mode": self.mode,
            "active": d.active,
            "pid": os.getpid(),
            "session_id": self.session_id,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "model": str(self.model.path),
            "websocket": self._server.url if self._server is not None else None,
            "language": self.cfg.recognition.language,
            "encoder_pid": self._encoder.pid if self._encoder is not None else None,
            "encoder_restarts": self._encoder.restarts if self._encoder is not None else 0,
            "audio": self._source.stats.as_dict(),
            **d.counts,
        }


def serve(cfg: AppConfig, model: ModelDir, *, answer_length: AnswerLength | None = None) -> int:
    runtime = RuntimeFiles.create(cfg.control.runtime_dir)
    asyncio.run(Daemon(cfg, model, runtime, answer_length=answer_length).run())
    return 0
