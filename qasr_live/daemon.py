"""`qasr-live serve`: the lifecycle of the dictation daemon and the asyncio shell around the dictation controller.

Lifecycle: single-instance lock → model → outputs, controls and the audio source → the audio pump until stopped →
shutdown. Everything started is registered on one exit stack, so whatever fails (at start-up or later) the parts
already running are closed, in reverse order, and an utterance in progress is finished first.

The decisions live in :mod:`qasr_live.dictation`; this shell applies its effects. One event loop owns all state;
CPU-heavy work leaves it: the encoder runs in its own process, the decoder (which releases the GIL inside
llama.cpp) on one recognizer thread, keystroke injection on one typing thread (outputs/delivery.py). The
recognizer thread takes its jobs in order and their results come back in that order, which the controller
relies on (dictation.py). The jobs wait in the loop's own queue (dictation/backlog.py), handed to the thread a
batch at a time, so that a recognizer that falls behind skips stale partials and the audio waiting stays bounded
(``streaming.max_backlog_s``: beyond it, an overload is reported and no audio is taken until it catches up).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
from qasr_live.audio.capture import MicrophoneSource
from qasr_live.audio.cues import Cues
from qasr_live.audio.pcm import SAMPLE_RATE
from qasr_live.audio.source import AudioSource
from qasr_live.audio.sources import open_source
from qasr_live.bus import EventHub
from qasr_live.config import AppConfig
from qasr_live.config_file import with_overrides
from qasr_live.control.ctl import CtlServer, install_signal_handlers
from qasr_live.dictation.backlog import RecognizerQueue, Transition
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
from qasr_live.dictation.runner import RecognizerRunner
from qasr_live.engine.generation import AnswerLength
from qasr_live.engine.model_dir import ModelDir
from qasr_live.engine.worker import EncoderWorker
from qasr_live.errors import AlignmentError, AudioDeviceError, HotkeysUnavailable, ProtocolError, QasrError
from qasr_live.events import (
    ControlAction,
    DictationState,
    EndReason,
    ErrorEvent,
    RecordMode,
    StateEvent,
    UtteranceEndEvent,
    UtteranceStartEvent,
)
from qasr_live.heap import return_freed_memory
from qasr_live.notifications import Notifier
from qasr_live.outputs.delivery import Delivery, ErrorHook, rules_for
from qasr_live.outputs.journal import Journal, default_journal_path
from qasr_live.outputs.typing import Typist
from qasr_live.outputs.websocket import WebSocketServer, check_bind
from qasr_live.outputs.word_times import LiveWordTimes
from qasr_live.runtime import RuntimeFiles, write_private
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
            itn=cfg.recognition.itn,
        )
        self._recognizer_thread = ThreadPoolExecutor(1, thread_name_prefix="qasr-recognizer")
        self._encoder: EncoderWorker | None = None
        self._recognizer: StreamingRecognizer | None = None
        self._delivery: Delivery | None = None
        self._cues: Cues | None = None  # start/stop sounds, ducking (feedback section)
        self._server: WebSocketServer | None = None
        self._jobs = RecognizerRunner(
            self._recognizer_thread,
            lambda: self._recognizer,
            RecognizerQueue(max(1, round(cfg.streaming.max_backlog_s * SAMPLE_RATE))),
            on_done=self._job_done,
            on_skipped=lambda job: self._apply(self._dictation.skipped(job)),
        )
        self._applying = 0  # depth of _apply: the backlog is checked once the outermost call is done
        self._timers: set[asyncio.TimerHandle] = set()
        self._pumped = asyncio.Condition()
        self._pumped_samples = 0
        self._word_times: LiveWordTimes | None = None  # recognition.timestamps with an aligner
        self._ctl: CtlServer | None = None
        self._stack = contextlib.AsyncExitStack()  # run()'s: what the runtime guard takes lives as long as the daemon
        self._restore_now = asyncio.Event()
        self.last_error: dict[str, Any] | None = None  # the last failure reported to the user (status shows it)
        # Called with (code, message) of every failure the user must hear about (a full disk...), after the log
        # and the ``error`` event: the hook for desktop notifications.
        self.on_error: list[ErrorHook] = []

    # --------------------------------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        async with contextlib.AsyncExitStack() as stack:
            stack.enter_context(self.runtime.instance_lock())  # before anything loads: a second daemon fails at once
            if self.cfg.websocket.enabled:
                check_bind(self.cfg.websocket)  # a refused configuration costs no model load
            notifier = Notifier(enabled=self.cfg.feedback.notifications)
            if isinstance(self._source, MicrophoneSource):
                try:  # a missing device is refused now in every mode, not at a key press
                    await self._source.check()
                except AudioDeviceError as e:  # started in the background, the user sees no terminal: tell them
                    message = str(e)
                    await loop.run_in_executor(
                        None, lambda: notifier.notify("No microphone", message, urgency="critical")
                    )
                    raise
            stack.callback(self._recognizer_thread.shutdown, wait=True)
            notify("STATUS=loading the model")
            stack.push_async_callback(self._on_recognizer_thread, self._close_engine)
            await self._on_recognizer_thread(self._load_engine)
            journal = Journal(self.cfg.journal.path or default_journal_path()) if self.cfg.journal.enabled else None
            typist = Typist(self.cfg.typing) if self.cfg.typing.enabled else None
            typing_cfg = self.cfg.typing
            if self.model.is_demo and (typing_cfg.voice_commands or typing_cfg.punctuation_words != "off"):
                # the demo model's grammar has no command or punctuation words: they could only misfire
                _LOGGER.info("voice commands and punctuation words are off with the embedded demo model")
                typing_cfg = dataclasses.replace(typing_cfg, voice_commands=False, punctuation_words="off")
            rules = rules_for(typing_cfg, self.cfg.recognition.language)

            # every reported failure (a full disk, the microphone gone) also reaches the desktop, off the loop:
            # a D-Bus round trip must not hold up the audio pump
            def notify_desktop(_code: str, message: str) -> None:
                loop.run_in_executor(None, lambda: notifier.notify("Dictation problem", message, urgency="critical"))

            self.on_error.append(notify_desktop)
            self._delivery = delivery = Delivery(
                self._hub,
                journal,
                typist,
                rules,
                notifier,
                on_error=self.report_error,
                fallback=self.runtime.dir / "journal-unsaved.jsonl",
            )
            stack.callback(delivery.close)
            feedback = self.cfg.feedback
            self._cues = cues = Cues(feedback.sounds, feedback.duck_volume)
            stack.callback(cues.close)
            if self.cfg.websocket.enabled:
                self._server = self._websocket_server()
                stack.push_async_callback(self._server.stop)
                await self._server.start()
            if self.cfg.recognition.timestamps:
                self._word_times = await self._start_word_times()
                stack.push_async_callback(self._word_times.close)  # unwound before the server: words get out
            self._ctl = CtlServer.for_runtime(self.runtime, self.control, self.status, lock=False)  # lock held
            stack.push_async_callback(lambda: self._ctl.close() if self._ctl is not None else asyncio.sleep(0))
            await self._ctl.start()
            self._stack = stack
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self._hangup)  # default: die mid-sentence; here: keep serving
            stack.callback(loop.remove_signal_handler, signal.SIGHUP)
            stack.callback(install_signal_handlers(loop, self.control))
            await self._start_hotkeys(stack, typist)
            stack.push_async_callback(self._source.close)
            if self._dictation.active or not self._source.is_microphone:
                await self._source.start()
            write_private(self.runtime.pid_file, f"{os.getpid()}\n")  # 0600 like every runtime file
            stack.callback(self.runtime.pid_file.unlink, missing_ok=True)
            stack.push_async_callback(self._finish_dictation)  # unwound first: the last words reach every output
            self._apply(self._dictation.started())
            notify("READY=1")
            notify(f"STATUS=ready ({self.mode})")
            _LOGGER.info("ready: mode %s, model %s", self.mode, self.model.path)
            try:
                async with asyncio.TaskGroup() as tasks:
                    pump = tasks.create_task(self._pump_audio(), name="audio-pump")
                    guard = tasks.create_task(self._guard_runtime_dir(), name="runtime-guard")
                    await self._stopping.wait()
                    notify("STOPPING=1")
                    pump.cancel()
                    guard.cancel()
            except ExceptionGroup as group:  # the pump failed: shut down cleanly, then say why
                raise group.exceptions[0] from None

    def stop(self) -> None:
        self._stopping.set()

    # ----------------------------------------------------------------------------------------- runtime directory

    def _hangup(self) -> None:
        """SIGHUP (a closed terminal, or `kill -HUP`): no reason to stop dictating; it restores the runtime
        directory's files at once if they were removed."""
        _LOGGER.info("SIGHUP: the daemon keeps running (stop it with SIGTERM); checking the runtime directory")
        self._restore_now.set()

    async def _guard_runtime_dir(self, period_s: float = 2.0) -> None:
        """Put the runtime directory back when something removed it (a cleaner of /run/user, `rm -r`): without its
        socket, token and URL files no client could find or reach a daemon that is still dictating."""
        reported = False
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._restore_now.wait(), period_s)
            self._restore_now.clear()
            files = (self.runtime.ctl_socket, self.runtime.pid_file, self.runtime.lock_file)
            if all(f.exists() for f in files):
                continue
            try:
                await self._restore_runtime_dir()
                reported = False
            except (QasrError, OSError) as e:  # tried again at the next period; reported once
                if not reported:
                    self.report_error(
                        "runtime_dir_lost", f"cannot restore the runtime directory {self.runtime.dir}: {e}"
                    )
                reported = True

    async def _restore_runtime_dir(self) -> None:
        _LOGGER.warning("the runtime directory %s was removed; restoring its files", self.runtime.dir)
        self.runtime = RuntimeFiles.create(str(self.runtime.dir))
        # Lock the new lock file too: else a second daemon could start on this directory.
        self._stack.enter_context(self.runtime.instance_lock())
        if self._ctl is not None:
            await self._ctl.close()
        self._ctl = CtlServer.for_runtime(self.runtime, self.control, self.status, lock=False)
        await self._ctl.start()
        if self._server is not None:
            self._server.write_runtime_files()  # the same tokens: connected and configured clients keep working
        write_private(self.runtime.pid_file, f"{os.getpid()}\n")

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

    async def _start_word_times(self) -> LiveWordTimes:
        """The aligner of `model.aligner`, loaded off the loop; asking for timestamps without one is refused."""
        from qasr_live.model_store import resolve_aligner

        aligner = resolve_aligner(self.cfg)
        if aligner is None:
            raise AlignmentError(
                "recognition.timestamps needs a Qwen3-ForcedAligner model: install it with `qasr-live pull "
                "Qwen/Qwen3-ForcedAligner-0.6B` and set model.aligner, or set recognition.timestamps: false."
            )
        # one thread: the recognizer keeps the others for the next utterance
        word_times = LiveWordTimes(aligner, self._hub, threads=1, n_gpu_layers=self.cfg.engine.n_gpu_layers)
        await word_times.start()
        return word_times

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
        await self._jobs.drain()
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
            if self._word_times is not None:
                self._word_times.feed(block)
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
        self._applying += 1
        try:
            self._apply_each(effects)
        finally:
            self._applying -= 1
        if self._applying == 0:
            # Not inside: an overload ends the utterance, and its end must be queued after every AddAudio of the
            # effects being applied.
            self._check_backlog()

    def _apply_each(self, effects: Iterable[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Job):
                self._jobs.submit(effect)
            elif isinstance(effect, Interrupt):
                if self._recognizer is not None:
                    self._recognizer.interrupt()
            elif isinstance(effect, Publish):
                if isinstance(effect.event, UtteranceEndEvent) and self._delivery is not None:
                    # what the text rules held back (a possible command's first word) goes out before the end
                    uid, cancelled = effect.event.utterance_id, effect.event.reason == EndReason.CANCELLED
                    self._delivery.end(uid, type_it=not cancelled)
                if isinstance(effect.event, UtteranceStartEvent) and self._delivery is not None:
                    self._delivery.start(effect.event.utterance_id)
                self._hub.publish(effect.event)
                if self._word_times is not None:
                    self._word_times.observe(effect.event)
                if isinstance(effect.event, StateEvent) and self._cues is not None:
                    self._cues.recording(effect.event.state == DictationState.RECORDING)
            elif isinstance(effect, Deliver):
                assert self._delivery is not None
                if self._word_times is not None:
                    self._word_times.observe(effect.event)
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

    def _job_done(self, job: Job, result: Any, exc: Exception | None) -> None:
        if exc is None:
            self._apply(self._dictation.on_result(job, result))
            return
        # An engine failure is reported, not fatal; a bug is logged with its traceback (silence would look like
        # "no speech").
        news = self._dictation.is_news(job)  # not one log line per audio block of an utterance that failed
        if isinstance(exc, QasrError):
            if news:
                _LOGGER.error("recognizer: %s", exc)
            error = str(exc)
        else:
            if news:
                _LOGGER.error("recognizer: internal error", exc_info=exc)
            error = f"internal error: {exc!r}"
        self._apply(self._dictation.on_result(job, None, error))

    def _check_backlog(self) -> None:
        """Overload when the audio waiting for the recognizer passes streaming.max_backlog_s; back under half."""
        change = self._jobs.queue.transition()
        if change is None:
            return
        waiting = self._jobs.queue.queued_samples / SAMPLE_RATE
        limit = self.cfg.streaming.max_backlog_s
        if change == Transition.OVERLOADED:
            self.report_error(
                "overload",
                f"overload: the recognizer is {waiting:.1f} s of audio behind (streaming.max_backlog_s {limit:g} "
                f"s); the utterance being recorded was ended and no audio is taken until it is under {limit / 2:g} "
                "s: use a smaller model or a faster machine, or raise streaming.max_backlog_s",
            )
            self._apply(self._dictation.overload())
        else:
            message = f"the recognizer caught up ({waiting:.1f} s of audio waiting): taking audio again"
            _LOGGER.warning("%s", message)
            self._hub.publish(ErrorEvent(code="overload_ended", message=message, fatal=False))
            self._apply(self._dictation.resume(self._source.samples))

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
        """Forced language and context for the following utterances (a WebSocket ``config`` message).

        Checked before anything changes (``ConfigError`` naming the limit: the client gets ``config_failed``),
        so a bad value leaves recognition as it was."""
        overrides: dict[str, Any] = {}
        if language is not None:
            overrides["recognition.language"] = language or None
        if context is not None:
            overrides["recognition.context"] = context
        cfg = with_overrides(self.cfg, overrides, sources={k: "config message" for k in overrides})
        rec = cfg.recognition
        recognizer = self._recognizer
        if recognizer is None:
            raise ProtocolError("the model is still loading; send the config message again once it is ready")
        # On the recognizer thread, in order with the jobs queued before it; it raises before changing anything.
        await self._jobs.call(SetRecognition("", rec.language, rec.context))
        self.cfg = cfg

    def report_error(self, code: str, message: str) -> None:
        """A failure the user must hear about at once: the log, an ``error`` event, ``status`` and the hooks."""
        _LOGGER.error("%s", message)
        self.last_error = {"code": code, "message": message, "time": round(time.monotonic() - self._started, 1)}
        self._dictation.counts["errors"] += 1
        self._hub.publish(ErrorEvent(code=code, message=message, fatal=False))
        for hook in self.on_error:
            try:
                hook(code, message)
            except Exception:  # a broken notifier must not take the report (or the daemon) down with it
                _LOGGER.exception("an on_error hook failed")

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
            "journal": self._journal_status(),
            "last_error": self.last_error,
            "backlog": self._jobs.status(),
            **d.counts,
        }

    def _journal_status(self) -> dict[str, Any] | None:
        delivery = self._delivery
        if not self.cfg.journal.enabled or delivery is None:
            return None
        return {"ok": delivery.journal_error is None, "error": delivery.journal_error, "unsaved": delivery.unsaved}


def serve(cfg: AppConfig, model: ModelDir, *, answer_length: AnswerLength | None = None) -> int:
    runtime = RuntimeFiles.create(cfg.control.runtime_dir)
    return_freed_memory()  # a process that runs for weeks: freed buffers go back to the system (heap.py)
    asyncio.run(Daemon(cfg, model, runtime, answer_length=answer_length).run())
    return 0
