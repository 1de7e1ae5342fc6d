"""`qasr-live serve`: the asyncio wiring of capture → VAD → streaming recognizer → journal, WebSocket, typing.

One event loop owns all state; CPU-heavy work leaves it: the encoder runs in its own process, the decoder (which
releases the GIL inside llama.cpp) on one recognizer thread, keystroke injection on one typing thread. Each of
those threads takes its jobs in order, so commits are journaled, published and typed in the order they happen.

Trigger modes:

* ``ptt``: the key (hotkey, `qasr-live ctl ptt-press/ptt-release`, WebSocket control) delimits one utterance; the
  microphone is open only while the key is held. VAD only decides "was there speech at all".
* ``toggle``: one press starts listening, the next stops; VAD splits the speech in between into utterances.
* ``continuous``: always listening; VAD decides everything.

For every commit the order is: journal (fsynced) → WebSocket ``commit`` → typed. Nothing is typed that is not in
the journal, and nothing is published twice.
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qasr_live import __version__
from qasr_live.audio.vad import NoSpeech, SpeechAudio, SpeechEnd, SpeechStart, VadOptions, VadSegmenter, trim
from qasr_live.config import AppConfig
from qasr_live.engine.features import SAMPLE_RATE
from qasr_live.engine.generation import AnswerLength
from qasr_live.engine.model_dir import ModelDir
from qasr_live.errors import ConfigError, QasrError
from qasr_live.outputs.events import (
    CommitEvent,
    ErrorEvent,
    OutputEvent,
    PartialEvent,
    StateEvent,
    UtteranceEndEvent,
    UtteranceStartEvent,
)
from qasr_live.outputs.journal import Journal, default_journal_path
from qasr_live.outputs.typing import sanitize
from qasr_live.runtime import RuntimeFiles
from qasr_live.service import notify

_LOGGER = logging.getLogger(__name__)


def vad_options(cfg: AppConfig) -> VadOptions:
    """The VAD tuning of config.yaml; inconsistent values are config errors naming the keys."""
    v = cfg.vad
    try:
        return VadOptions(**{f.name: getattr(v, f.name) for f in dataclasses.fields(VadOptions)})
    except ValueError as e:
        raise ConfigError(f"vad: {e}; fix the vad section of config.yaml") from None


@dataclass(slots=True)
class _Utterance:
    id: str
    audio_start: float  # seconds on the session's audio clock
    t_start: float  # perf_counter when it began
    pcm: list[np.ndarray] = field(default_factory=list)  # kept for push-to-talk's no-speech check
    samples: int = 0
    commits: int = 0
    rev: int = 0
    first_partial_ms: float | None = None
    t_end: float | None = None  # perf_counter of speech end / key release
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False
    typed: bool = False  # some visible text of this utterance went to the typist
    held_space: str = ""  # trailing white space of the last commit, typed only if more text follows
    ticking: asyncio.Task | None = None
    early: list[np.ndarray] | None = field(default_factory=list)  # audio that came before begin() was done
    begun: asyncio.Event = field(default_factory=asyncio.Event)  # begin() done and `early` handed on
    in_tick: bool = False  # the tick task is waiting for a tick() on the recognizer thread (not sleeping)
    speculation: asyncio.Task | None = None  # endpoint speculation since the current silence began
    speculation_ms: float | None = None  # how long the speculative final decode took


class Daemon:
    """Owns every component of a running service; `run()` until `stop()` or a signal."""

    def __init__(
        self, cfg: AppConfig, model: ModelDir, runtime: RuntimeFiles, *, answer_length: AnswerLength | None = None
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.runtime = runtime
        self.answer_length = answer_length  # benchmarks only (bench/daemon.py): the recognizer's forced answers
        self.mode = cfg.trigger.mode
        self.vad = vad_options(cfg)
        self.session_id = uuid.uuid4().hex[:12]
        self._recognizer_thread = ThreadPoolExecutor(1, thread_name_prefix="qasr-recognizer")
        self._typing_thread = ThreadPoolExecutor(1, thread_name_prefix="qasr-typing")
        self._stopping = asyncio.Event()
        self._state = "idle"
        self._active = self.mode == "continuous"  # is audio wanted now (key held, toggled on, armed)?
        self._segmenter = VadSegmenter(self.vad)
        self._segment_origin = 0  # source sample at which the segmenter was last reset
        self._utt: _Utterance | None = None
        self._started = time.monotonic()
        self._counts = {"utterances": 0, "no_speech": 0, "commits": 0, "errors": 0}
        self._recognizer = None
        self._encoder = None
        self._source = None
        self._journal: Journal | None = None
        self._hub = None
        self._server = None
        self._ctl = None
        self._hotkeys = None
        self._typist = None
        self._tasks: set[asyncio.Task] = set()
        self._pumped = asyncio.Condition()
        self._pumped_samples = 0

    # --------------------------------------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        notify("STATUS=loading the model")
        await loop.run_in_executor(self._recognizer_thread, self._load_engine)
        if self.cfg.journal.enabled:
            self._journal = Journal(self.cfg.journal.path or default_journal_path())
        await self._start_outputs()
        await self._start_controls()
        await self._open_source()
        self.runtime.pid_file.write_text(f"{os.getpid()}\n")
        self._set_state("listening" if self._active else "idle")
        notify("READY=1")
        notify(f"STATUS=ready ({self.mode})")
        _LOGGER.info("ready: mode %s, model %s", self.mode, self.model.path)
        pump = asyncio.create_task(self._pump_audio(), name="audio-pump")
        try:
            await self._stopping.wait()
        finally:
            notify("STOPPING=1")
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
            await self._shutdown()

    def stop(self) -> None:
        self._stopping.set()

    def _load_engine(self) -> None:
        """Encoder process + decoder, then one warm-up decode so the first utterance pays no first-call costs."""
        from qasr_live.engine.worker import EncoderWorker
        from qasr_live.streaming.recognizer import StreamingRecognizer

        e = self.cfg.engine
        self._encoder = EncoderWorker(self.model.frontend, self.model.backend, e.encoder_threads)
        self._recognizer = StreamingRecognizer(
            self.model,
            e,
            self.cfg.streaming,
            self._encoder,
            language=self.cfg.recognition.language,
            context=self.cfg.recognition.context,
            answer_length=self.answer_length,
        )
        r = self._recognizer
        r.begin()
        r.add_audio(np.zeros(SAMPLE_RATE, dtype=np.int16))
        r.tick()
        r.cancel()

    async def _shutdown(self) -> None:
        if self._utt is not None:  # the user is mid-sentence: keep what was said
            await self._end_utterance("key_release")
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._hotkeys is not None:
            self._hotkeys.stop()
        if self._ctl is not None:
            await self._ctl.close()
        if self._server is not None:
            await self._server.stop()
        if self._source is not None:
            await (self._source.close() if self._source.is_microphone else self._source.stop())
        self._typing_thread.shutdown(wait=True)
        if self._typist is not None:
            self._typist.close()
        await asyncio.get_running_loop().run_in_executor(self._recognizer_thread, self._close_engine)
        self._recognizer_thread.shutdown(wait=True)
        if self._journal is not None:
            self._journal.close()
        with contextlib.suppress(FileNotFoundError):
            self.runtime.pid_file.unlink()

    def _close_engine(self) -> None:
        if self._recognizer is not None:
            self._recognizer.close()
        if self._encoder is not None:
            self._encoder.close()

    async def _start_outputs(self) -> None:
        from qasr_live.outputs.websocket import EventHub, WebSocketServer

        self._hub = EventHub(self.session_id, self.cfg.websocket.replay_events)
        if self.cfg.websocket.enabled:
            self._server = WebSocketServer(
                self._hub,
                self.cfg.websocket,
                self.runtime,
                on_control=self.control,
                on_config=self.set_recognition,
                state=self._state_event,
                server_version=__version__,
            )
            await self._server.start()
        if self.cfg.typing.enabled:
            from qasr_live.outputs.typing import Typist

            self._typist = Typist(self.cfg.typing)

    async def _start_controls(self) -> None:
        from qasr_live.control.ctl import CtlServer, install_signal_handlers

        loop = asyncio.get_running_loop()
        self._ctl = CtlServer.for_runtime(self.runtime, self.control, self.status)
        await self._ctl.start()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        install_signal_handlers(loop, self.control)
        if self.cfg.hotkeys.enabled and self.cfg.audio.source is None:
            from qasr_live.control.hotkeys import HotkeyListener, HotkeysUnavailable, available

            state = available()
            if not state:
                _LOGGER.warning("global hotkeys are off: %s", state.reason)
                return
            listener = HotkeyListener(self.cfg.hotkeys, self.control, mode=self.mode, loop=loop)
            try:
                await loop.run_in_executor(None, listener.start)
            except HotkeysUnavailable as e:
                _LOGGER.warning("global hotkeys are off: %s", e)
                return
            self._hotkeys = listener
            if self._typist is not None:
                self._typist.set_hotkeys(listener)

    def _spawn(self, coro) -> asyncio.Task:
        """Run ``coro`` in the background, kept referenced until done (shutdown waits for these)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------------------------------------ audio

    async def _open_source(self) -> None:
        from qasr_live.audio.sources import open_source

        self._source = open_source(self.cfg.audio)
        if self._active or not self._source.is_microphone:
            await self._source.start()

    async def _pump_audio(self) -> None:
        """The only consumer of the source, so blocks are handled strictly in capture order."""
        while True:
            block = await self._source.read()
            if block is None:  # a file or stdin ended: finish what was said, then stop
                await self._on_end_of_stream()
                self.stop()
                return
            if self._active:
                await self._on_audio(block)
            async with self._pumped:
                self._pumped_samples += len(block)
                self._pumped.notify_all()

    async def _catch_up(self) -> None:
        """Wait until every block the source has captured so far has been handled by the pump."""
        async with self._pumped:
            await self._pumped.wait_for(
                lambda: self._source.pending == 0 and self._pumped_samples >= self._source.samples
            )

    async def _on_audio(self, block: np.ndarray) -> None:
        if self.mode == "ptt":
            if self._utt is not None:
                self._add_audio(block)
            return
        for event in self._segmenter.feed(block):
            await self._on_vad(event)
        utt = self._utt
        wait_ms = self.cfg.streaming.endpoint_speculation_ms
        if utt is None or wait_ms <= 0:
            return
        silence = self._segmenter.trailing_silence_ms
        if silence == 0:
            utt.speculation = None  # speech goes on: a decode started at the pause is stale
        elif silence >= wait_ms and utt.speculation is None:
            self._recognizer.interrupt()  # a partial tick running now would only delay the final decode
            utt.speculation = self._spawn(self._speculate(utt))

    async def _speculate(self, utt: _Utterance) -> bool:
        t0 = time.perf_counter()
        held = await self._on_recognizer(lambda r: r.speculate())
        if utt.speculation is asyncio.current_task():
            utt.speculation_ms = (time.perf_counter() - t0) * 1000
        return bool(held)

    async def _on_vad(self, event, flush_reason: str = "silence") -> None:
        """``flush_reason``: how an utterance cut short by flushing the segmenter ended (stop vs end of file)."""
        if isinstance(event, SpeechStart):
            await self._begin_utterance(self._clock_seconds(event.start_sample))
        elif isinstance(event, SpeechAudio):
            self._add_audio(event.pcm)
        elif isinstance(event, SpeechEnd):
            reasons = {"max_length": "max_length", "silence": "silence", "flush": flush_reason}
            await self._end_utterance(reasons[event.reason])
        elif isinstance(event, NoSpeech):
            await self._end_utterance("no_speech")

    async def _on_end_of_stream(self) -> None:
        if self.mode != "ptt":
            for event in self._segmenter.flush():
                await self._on_vad(event)
        elif self._utt is not None:
            await self._end_utterance("key_release")

    def _restart_segmenter(self) -> None:
        self._segmenter.reset()
        self._segment_origin = self._source.samples

    def _clock_seconds(self, segment_sample: int) -> float:
        """Session audio time of a sample the segmenter counted (it counts from its last reset)."""
        return (self._segment_origin + segment_sample) / SAMPLE_RATE

    # ------------------------------------------------------------------------------------------- utterances

    async def _begin_utterance(self, audio_start: float) -> None:
        utt = _Utterance(id=uuid.uuid4().hex[:12], audio_start=audio_start, t_start=time.perf_counter())
        self._utt = utt
        self._counts["utterances"] += 1
        try:
            await self._on_recognizer(lambda r: r.begin())
            early, utt.early = utt.early, None
            for pcm in early:
                self._recognizer.add_audio(pcm)
        finally:
            utt.begun.set()
        self._publish(UtteranceStartEvent(utterance_id=utt.id, audio_start=audio_start))
        self._set_state("recording")
        if self.cfg.streaming.partial_interval_ms > 0:
            utt.ticking = asyncio.create_task(self._tick_loop(utt), name=f"ticks-{utt.id}")

    def _add_audio(self, pcm: np.ndarray) -> None:
        utt = self._utt
        if utt is None:
            return
        pcm = np.asarray(pcm, dtype=np.int16)
        if self.mode == "ptt":
            utt.pcm.append(pcm)
        utt.samples += len(pcm)
        # Directly, not on the recognizer thread: appending is safe beside a running tick, and the audio pump
        # (VAD, key-release catch-up) must never wait for a decode. Push-to-talk audio can come while begin() is
        # still running (the key, not the pump, starts the utterance): it waits in `early`.
        if utt.early is not None:
            utt.early.append(pcm)
        else:
            self._recognizer.add_audio(pcm)

    async def _tick_loop(self, utt: _Utterance) -> None:
        interval = self.cfg.streaming.partial_interval_ms / 1000
        seen = 0
        while self._utt is utt:
            await asyncio.sleep(interval)
            if self._utt is not utt or utt.samples == seen or utt.speculation is not None:
                continue  # nothing new, or the final decode is already under way
            seen = utt.samples
            utt.in_tick = True
            try:
                tick = await self._on_recognizer(lambda r: r.tick())
            finally:
                utt.in_tick = False
            if tick is None:
                return
            await self._publish_commits(utt, tick.commits)  # even when the utterance ended meanwhile
            if self._utt is not utt:
                return
            if tick.partial is not None and tick.partial.text:
                if utt.first_partial_ms is None:
                    utt.first_partial_ms = (time.perf_counter() - utt.t_start) * 1000
                utt.rev += 1
                self._publish(PartialEvent(utterance_id=utt.id, rev=utt.rev, text=tick.partial.text))

    async def _end_utterance(self, reason: str) -> None:
        utt = self._utt
        if utt is None:
            return
        utt.t_end = time.perf_counter()
        utt.cancelled = reason == "cancelled"
        utt.ended.set()
        self._utt = None  # stops the tick loop; audio arriving now belongs to no utterance
        await utt.begun.wait()  # a release right after the press: the recognizer must have all the audio first
        if utt.ticking is not None:
            # A tick in progress is interrupted (the final decode should not wait for a partial nobody will see)
            # and awaited, so that commits it made are published before the final ones; a sleeping loop is
            # simply cancelled.
            self._recognizer.interrupt()
            if not utt.in_tick:
                utt.ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await utt.ticking
        self._set_state("finalizing")
        if reason == "cancelled":
            await self._on_recognizer(lambda r: r.cancel())
        elif reason == "no_speech" or (self.mode == "ptt" and not self._has_speech(utt)):
            await self._on_recognizer(lambda r: r.cancel())
            reason = "no_speech"
        else:
            # Speculation started in this silence (the VAD ended the utterance after more of it): its decode is
            # the final one if it was kept.
            speculated = reason == "silence" and utt.speculation is not None and await utt.speculation
            final = await self._on_recognizer(lambda r: r.finish(use_speculation=speculated))
            if not speculated:
                utt.speculation_ms = None
            if final is None:
                reason = "error"
            else:
                await self._publish_commits(utt, final.commits)
                if final.no_speech:
                    reason = "no_speech"
        if reason == "no_speech":
            self._counts["no_speech"] += 1
        latency = {}
        if utt.first_partial_ms is not None:
            latency["first_partial_ms"] = round(utt.first_partial_ms, 1)
        latency["final_ms"] = round((time.perf_counter() - utt.t_end) * 1000, 1)
        if utt.speculation_ms is not None:
            latency["speculative_decode_ms"] = round(utt.speculation_ms, 1)
        latency["audio_ms"] = round(utt.samples / SAMPLE_RATE * 1000, 1)
        self._publish(UtteranceEndEvent(utterance_id=utt.id, reason=reason, latency=latency))
        self._set_state("listening" if self._active and self.mode != "ptt" else "idle")
        # The next utterance's memory prefill happens now, while nobody waits (a begin() coming meanwhile
        # queues behind it on the recognizer thread and then finds it done).
        self._spawn(self._on_recognizer(lambda r: r.prepare()))

    def _has_speech(self, utt: _Utterance) -> bool:
        if not utt.pcm:
            return False
        return trim(np.concatenate(utt.pcm), self.vad) is not None

    async def _publish_commits(self, utt: _Utterance, commits) -> None:
        audio_end = utt.audio_start + utt.samples / SAMPLE_RATE
        for commit in commits:
            if commit.idx != utt.commits:  # append-only by construction; a gap would be a bug upstream
                raise AssertionError(f"commit idx {commit.idx} after {utt.commits} in utterance {utt.id}")
            utt.commits += 1
            self._counts["commits"] += 1
            if not commit.text:
                continue
            if self._journal is not None:
                self._journal.append(utt.id, commit.idx, commit.text, utt.audio_start, audio_end)
            self._publish(CommitEvent(utterance_id=utt.id, idx=commit.idx, text=commit.text))
            if self._typist is not None:
                text = self._typeable(utt, commit.text)
                if text:
                    self._spawn(self._type(utt, text))

    @staticmethod
    def _typeable(utt: _Utterance, text: str) -> str:
        """What to type for a commit: an utterance's text without leading or trailing white space (the typist
        puts typing.separator between utterances). White space at the end of a commit is held back until more
        text of the same utterance follows, since nothing typed can be taken back."""
        body = utt.held_space + sanitize(text)
        if not utt.typed:
            body = body.lstrip()
        visible = body.rstrip()
        utt.held_space = body[len(visible) :]
        utt.typed = utt.typed or bool(visible)
        return visible

    async def _type(self, utt: _Utterance, text: str) -> None:
        if self.mode == "ptt":
            # Typing while the push-to-talk key is held would interleave with its autorepeat and modifiers:
            # text committed during the hold is typed once the key is released.
            await utt.ended.wait()
            if utt.cancelled:  # cancelled before the key came up: its text stays in the journal, untyped
                return
        utterance_id = utt.id
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self._typing_thread, self._typist.type_commit, utterance_id, text)
        if not result.ok:
            _LOGGER.error("typing failed: %s", result.error)
        for a in result.attempts:
            self._publish(
                OutputEvent(
                    utterance_id=utterance_id, backend=a.backend, ok=a.ok, text=a.delivered or a.text, error=a.error
                )
            )

    async def _on_recognizer(self, job):
        """Run ``job(recognizer)`` on the recognizer thread; an engine failure is reported, not fatal."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._recognizer_thread, job, self._recognizer)
        except QasrError as e:
            self._counts["errors"] += 1
            _LOGGER.error("recognizer: %s", e)
            self._publish(ErrorEvent(code="recognizer", message=str(e), fatal=False))
            return None
        except Exception as e:  # a bug: reported with its traceback (a silent failure looks like "no speech")
            self._counts["errors"] += 1
            _LOGGER.exception("recognizer: internal error")
            self._publish(ErrorEvent(code="recognizer", message=f"internal error: {e!r}", fatal=False))
            return None

    # ---------------------------------------------------------------------------------------- state, events

    def _publish(self, event) -> None:
        self._hub.publish(event)

    def _state_event(self) -> StateEvent:
        return StateEvent(state=self._state, mode=self.mode)

    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self._publish(self._state_event())

    # ---------------------------------------------------------------------------------------------- control

    async def control(self, action: str) -> None:
        """Apply a control action (from a hotkey, the ctl socket, a signal or a WebSocket client)."""
        if action == "toggle":
            action = "stop" if self._active else "start"
        if action in ("start", "ptt_press"):
            await self._activate()
        elif action in ("stop", "ptt_release"):
            await self._deactivate()
        elif action == "cancel":
            await self._end_utterance("cancelled")
        elif action == "finalize":
            if self.mode == "ptt":
                await self._deactivate()
            else:
                await self._end_utterance("key_release")
                self._restart_segmenter()
        else:
            raise QasrError(f"unknown action {action!r}")

    async def _activate(self) -> None:
        if self._active:
            return
        self._active = True
        if self._source.is_microphone:
            await self._source.start()
        self._restart_segmenter()
        if self.mode == "ptt":
            await self._begin_utterance(self._source.samples / SAMPLE_RATE)
        else:
            self._set_state("listening")

    async def _deactivate(self) -> None:
        if not self._active:
            return
        if self._source.is_microphone:
            await self._source.stop()  # queues everything recorded up to now; read() then waits for start()
            await self._catch_up()
        self._active = False
        if self.mode == "ptt":
            await self._end_utterance("key_release")
        else:
            for event in self._segmenter.flush():
                await self._on_vad(event, flush_reason="key_release")
        self._set_state("idle")

    async def set_recognition(self, language: str | None, context: str | None) -> None:
        from qasr_live.config import with_overrides

        overrides = {}
        if language is not None:
            overrides["recognition.language"] = language or None
        if context is not None:
            overrides["recognition.context"] = context
        self.cfg = with_overrides(self.cfg, overrides, sources={k: "config message" for k in overrides})
        rec = self.cfg.recognition
        await self._on_recognizer(lambda r: r.set_recognition(rec.language, rec.context))

    def status(self) -> dict[str, Any]:
        return {
            "state": self._state,
            "mode": self.mode,
            "active": self._active,
            "pid": os.getpid(),
            "session_id": self.session_id,
            "uptime_s": round(time.monotonic() - self._started, 1),
            "model": str(self.model.path),
            "websocket": self._server.url if self._server is not None else None,
            "language": self.cfg.recognition.language,
            "encoder_pid": self._encoder.pid if self._encoder is not None else None,
            "encoder_restarts": self._encoder.restarts if self._encoder is not None else 0,
            "audio": self._source.stats.as_dict() if self._source is not None else None,
            **self._counts,
        }


def serve(cfg: AppConfig, model: ModelDir, *, answer_length: AnswerLength | None = None) -> int:
    runtime = RuntimeFiles.create(cfg.control.runtime_dir)
    daemon = Daemon(cfg, model, runtime, answer_length=answer_length)
    asyncio.run(daemon.run())
    return 0
