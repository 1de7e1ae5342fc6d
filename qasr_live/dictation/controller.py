"""The dictation controller: the utterance lifecycle without I/O.

Inputs are audio blocks (run through the VAD segmenter here), control actions, timer expiries and the results of
recognizer jobs; outputs are *effects*: recognizer jobs to queue, events to publish, commits to deliver, text to
type, the microphone to open or close. The controller never waits, sleeps, locks or touches a socket, so it is
tested like the VAD segmenter: feed it inputs, look at the effects (tests/test_dictation.py).

The shell (daemon.py) keeps three promises that the controller relies on:

* recognizer jobs run one at a time, in the order they were emitted, and their results come back in that order
  (one worker thread, dictation/runner.py). So ``AddAudio`` queued before ``Finish`` is in the final decode, and
  a tick still running when the utterance ends reports its commits before the final ones; a partial tick or
  speculation that went stale while it waited may be dropped instead, reported through :meth:`skipped`;
* ``Interrupt`` is applied at once, not queued: it cuts a running partial decode short;
* after ``OpenMic`` / ``CloseMic`` it calls :meth:`mic_opened` / :meth:`mic_closed` once the microphone is open,
  or closed with every block captured so far fed in.

Trigger modes:

* ``ptt``: the key delimits one utterance; the microphone is open only while it is held. VAD only decides "was
  there speech at all".
* ``toggle``: one press starts listening, the next stops; VAD splits the speech in between into utterances.
* ``continuous``: always listening; VAD decides everything.

Overload (dictation/backlog.py): when too much audio waits for the recognizer the shell calls :meth:`overload`: the
utterance being recorded ends (reason ``overload``, decoded and committed like any other) and no audio is taken
until :meth:`resume`.

Endpoint speculation (``streaming.endpoint_speculation_ms``): once the VAD has seen that much trailing silence, the
final decode starts (``Speculate``) while the hangover still runs; if speech resumes it is stale and dropped, if the
utterance ends in that silence ``Finish(use_speculation=True)`` keeps it instead of decoding again.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qasr_live.audio.pcm import SAMPLE_RATE
from qasr_live.audio.vad import NoSpeech, SpeechAudio, SpeechEnd, SpeechStart, VadEvent, VadSegmenter, trim
from qasr_live.config import VadConfig
from qasr_live.dictation.effects import (
    AddAudio,
    Begin,
    Cancel,
    CloseMic,
    Deliver,
    Effect,
    Finish,
    Interrupt,
    Job,
    OpenMic,
    Prepare,
    Publish,
    ScheduleTick,
    Speculate,
    TickJob,
    Type,
)
from qasr_live.events import (
    CommitEvent,
    ControlAction,
    DictationState,
    EndReason,
    ErrorEvent,
    PartialEvent,
    RecordMode,
    StateEvent,
    UtteranceEndEvent,
    UtteranceStartEvent,
)
from qasr_live.itn import normalize
from qasr_live.streaming.results import Commit, Final, Tick

# ---------------------------------------------------------------------------------------------------- controller


@dataclass(slots=True)
class _Utterance:
    id: str
    audio_start: float  # seconds on the session's audio clock
    t_start: float
    pcm: list[np.ndarray] = field(default_factory=list)  # push-to-talk keeps it for the "any speech?" check
    samples: int = 0
    commits: int = 0
    rev: int = 0
    begun: bool = False  # the Begin job is done
    failed: bool = False  # a job of it failed and was reported: the errors that follow from it are not news
    ended: bool = False  # end() was called; a running tick may still report
    cancelled: bool = False
    first_partial_ms: float | None = None
    t_end: float | None = None
    ticked_samples: int = 0  # audio length when the last tick was queued
    in_tick: bool = False
    held_types: list[str] = field(default_factory=list)  # push-to-talk: typed once the key is up
    speculating: bool = False  # a speculation started in the current silence and is not stale
    t_speculation: float = 0.0
    speculation_ms: float | None = None
    final: Finish | Cancel | None = None  # the job that ends it, once queued
    end_reason: EndReason | None = None
    ticks: int = 0  # partial decodes run, their time and the positions they fed (the latency profile)
    tick_ms: float = 0.0
    tick_prefill: int = 0


class DictationController:
    """One per running daemon. Every public method returns the effects to apply, in order."""

    def __init__(
        self,
        mode: RecordMode,
        vad: VadConfig,
        *,
        partial_interval_ms: int,
        endpoint_speculation_ms: int,
        microphone: bool,
        itn: bool = False,
        clock: Callable[[], float] = time.perf_counter,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex[:12],
    ) -> None:
        self.mode = mode
        self.vad = vad
        self.microphone = microphone  # the source can be opened and closed (a file or stdin runs on its own)
        self.itn = itn  # Chinese commits: numbers as digits (qasr_live.itn), before journal, bus and typing
        self._partial_interval_s = partial_interval_ms / 1000
        self._speculation_ms = endpoint_speculation_ms
        self._clock = clock
        self._new_id = new_id
        self.active = mode == RecordMode.CONTINUOUS  # is audio wanted now (key held, toggled on)?
        self.overloaded = False  # the recognizer is too far behind: no audio is taken (overload(), resume())
        self.state = DictationState.IDLE
        self.counts = {"utterances": 0, "no_speech": 0, "commits": 0, "errors": 0}
        self._segmenter = VadSegmenter(vad)
        self._segment_origin = 0  # source sample at which the segmenter was last reset
        self._utt: _Utterance | None = None  # the utterance that takes audio now
        self._ending: dict[str, _Utterance] = {}  # ended, waiting for the end of their final job or tick
        self._out: list[Effect] = []

    @property
    def utterance_id(self) -> str | None:
        return self._utt.id if self._utt is not None else None

    def state_event(self) -> StateEvent:
        return StateEvent(state=self.state, mode=self.mode)

    # ------------------------------------------------------------------------------------------------- control

    def started(self) -> list[Effect]:
        """The daemon is ready: continuous mode listens from now on."""
        if self.active:
            self._set_state(DictationState.LISTENING)
        return self._take()

    def control(self, action: ControlAction, source_samples: int) -> list[Effect]:
        """A control action from a hotkey, the ctl socket, a signal or a WebSocket client. ``source_samples``: how
        many samples the source has captured so far (the session's audio clock)."""
        if action == ControlAction.TOGGLE:
            action = ControlAction.STOP if self.active else ControlAction.START
        if action in (ControlAction.START, ControlAction.PTT_PRESS):
            if not self.active:
                self.active = True
                if self.microphone:
                    return [OpenMic()]  # the rest once it is open: mic_opened()
                self._activated(source_samples)
        elif action in (ControlAction.STOP, ControlAction.PTT_RELEASE):
            if self.active:
                if self.microphone:
                    return [CloseMic()]  # the rest once every captured block is in: mic_closed()
                self._deactivated()
        elif action == ControlAction.CANCEL:
            self._end(EndReason.CANCELLED)
        elif action == ControlAction.FINALIZE:
            if self.mode == RecordMode.PTT:
                return self.control(ControlAction.PTT_RELEASE, source_samples)
            self._end(EndReason.KEY_RELEASE)
            self._restart_segmenter(source_samples)
        return self._take()

    def mic_opened(self, source_samples: int) -> list[Effect]:
        self._activated(source_samples)
        return self._take()

    def mic_closed(self) -> list[Effect]:
        self._deactivated()
        return self._take()

    def _activated(self, source_samples: int) -> None:
        self._restart_segmenter(source_samples)
        if self.overloaded:
            return  # resume() starts taking audio
        if self.mode == RecordMode.PTT:
            self._begin(source_samples / SAMPLE_RATE)
        else:
            self._set_state(DictationState.LISTENING)

    def _deactivated(self) -> None:
        self.active = False
        if self.mode == RecordMode.PTT:
            self._end(EndReason.KEY_RELEASE)
        else:
            self._flush(EndReason.KEY_RELEASE)
        if not self._ending:  # else the last final result moves to idle, after its utterance_end
            self._set_state(DictationState.IDLE)

    def overload(self) -> list[Effect]:
        """The recognizer is too far behind (dictation/backlog.py): stop taking audio. The utterance recording now
        ends (reason ``overload``) and is decoded and committed like any other; audio is ignored until
        :meth:`resume`."""
        self.overloaded = True
        self._end(EndReason.OVERLOAD)
        self._segmenter.reset()  # speech cut off here starts afresh after resume()
        if not self._ending:
            self._set_state(DictationState.IDLE)
        return self._take()

    def resume(self, source_samples: int) -> list[Effect]:
        """The recognizer caught up: take audio again (push-to-talk: a new utterance if the key is still held)."""
        self.overloaded = False
        if self.active:
            self._activated(source_samples)
        return self._take()

    def shutdown(self) -> list[Effect]:
        """The daemon stops: the user may be mid-sentence, keep what was said."""
        self._end(EndReason.KEY_RELEASE)
        return self._take()

    # --------------------------------------------------------------------------------------------------- audio

    def feed_audio(self, block: np.ndarray) -> list[Effect]:
        """A captured block, in capture order (ignored while inactive or overloaded)."""
        if not self.active or self.overloaded:
            return []
        if self.mode == RecordMode.PTT:
            self._add_audio(block)
            return self._take()
        for event in self._segmenter.feed(block):
            self._on_vad(event, EndReason.SILENCE)
        self._speculate_at_pause()
        return self._take()

    def end_of_stream(self) -> list[Effect]:
        """A file or stdin ended: finish what was said."""
        if self.mode == RecordMode.PTT:
            self._end(EndReason.KEY_RELEASE)
        else:
            self._flush(EndReason.SILENCE)
        return self._take()

    def _flush(self, reason: EndReason) -> None:
        """``reason``: how an utterance cut short by flushing the segmenter ends (stop vs end of file)."""
        for event in self._segmenter.flush():
            self._on_vad(event, reason)

    def _on_vad(self, event: VadEvent, flush_reason: EndReason) -> None:
        if isinstance(event, SpeechStart):
            self._begin((self._segment_origin + event.start_sample) / SAMPLE_RATE)
        elif isinstance(event, SpeechAudio):
            self._add_audio(event.pcm)
        elif isinstance(event, SpeechEnd):
            by_cut = {"max_length": EndReason.MAX_LENGTH, "silence": EndReason.SILENCE, "flush": flush_reason}
            self._end(by_cut[event.reason])
        elif isinstance(event, NoSpeech):
            self._end(EndReason.NO_SPEECH)

    def _speculate_at_pause(self) -> None:
        utt = self._utt
        if utt is None or self._speculation_ms <= 0:
            return
        silence = self._segmenter.trailing_silence_ms
        if silence == 0:
            utt.speculating = False  # speech goes on: a decode started at the pause is stale
            utt.speculation_ms = None
        elif silence >= self._speculation_ms and not utt.speculating:
            utt.speculating = True
            utt.t_speculation = self._clock()
            self._out.append(Interrupt())  # a partial tick running now would only delay the final decode
            self._out.append(Speculate(utt.id))

    def _restart_segmenter(self, source_samples: int) -> None:
        self._segmenter.reset()
        self._segment_origin = source_samples

    def _add_audio(self, pcm: np.ndarray) -> None:
        utt = self._utt
        if utt is None:
            return
        pcm = np.asarray(pcm, dtype=np.int16)
        if self.mode == RecordMode.PTT:
            utt.pcm.append(pcm)
        utt.samples += len(pcm)
        self._out.append(AddAudio(utt.id, pcm))

    # ---------------------------------------------------------------------------------------------- utterances

    def _begin(self, audio_start: float) -> None:
        utt = _Utterance(id=self._new_id(), audio_start=audio_start, t_start=self._clock())
        self._utt = utt
        self.counts["utterances"] += 1
        self._out.append(Begin(utt.id))

    def _end(self, reason: EndReason) -> None:
        utt = self._utt
        if utt is None:
            return
        self._utt = None  # audio arriving now belongs to no utterance; its tick timer lapses
        self._ending[utt.id] = utt
        utt.ended, utt.t_end, utt.end_reason = True, self._clock(), reason
        utt.cancelled = reason == EndReason.CANCELLED
        if not utt.cancelled:
            self._type_held(utt)  # push-to-talk: what was committed while the key was held
        if utt.in_tick:
            self._out.append(Interrupt())  # its commits still come, before the final ones
        elif utt.begun:  # else once begun: UtteranceStart comes first
            self._set_state(DictationState.FINALIZING)
        if reason == EndReason.CANCELLED:
            utt.final = Cancel(utt.id)
        elif reason == EndReason.NO_SPEECH or (self.mode == RecordMode.PTT and not self._has_speech(utt)):
            utt.end_reason = EndReason.NO_SPEECH
            utt.final = Cancel(utt.id)
        else:
            # A speculation started in this silence (the VAD ended the utterance after more of it) is the final
            # decode if the recognizer kept it.
            utt.final = Finish(utt.id, use_speculation=reason == EndReason.SILENCE and utt.speculating)
        self._out.append(utt.final)

    def _has_speech(self, utt: _Utterance) -> bool:
        return bool(utt.pcm) and trim(np.concatenate(utt.pcm), self.vad) is not None

    # ------------------------------------------------------------------------------------------ ticks, results

    def tick_due(self, utterance_id: str) -> list[Effect]:
        """The partial-result timer of an utterance expired."""
        utt = self._utt
        if utt is None or utt.id != utterance_id:
            return []
        if utt.samples == utt.ticked_samples or utt.speculating:
            # nothing new, or the final decode is already under way
            self._out.append(ScheduleTick(utt.id, self._partial_interval_s))
        else:
            utt.ticked_samples = utt.samples
            utt.in_tick = True
            self._out.append(TickJob(utt.id))
        return self._take()

    def skipped(self, job: Job) -> list[Effect]:
        """The recognizer's queue dropped ``job`` (a stale partial tick or speculation, dictation/backlog.py)."""
        utt = self._find(job.utterance_id)
        if utt is not None:
            if isinstance(job, TickJob):
                self._on_tick(utt, None)  # no partial, no error; an ended utterance moves on to finalizing
            elif isinstance(job, Speculate):
                self._on_speculated(utt, False)
        return self._take()

    def _find(self, utterance_id: str) -> _Utterance | None:
        utt = self._utt if self._utt is not None and self._utt.id == utterance_id else None
        return utt or self._ending.get(utterance_id)

    def is_news(self, job: Job) -> bool:
        """Whether a failure of ``job`` should be reported: one report per utterance that went wrong (after a
        failed Begin or AddAudio, each later job of that utterance fails for the same reason)."""
        utt = self._find(job.utterance_id)
        return utt is None or not utt.failed

    def on_result(self, job: Job, result: Any, error: str | None = None) -> list[Effect]:
        """A recognizer job is done: ``result`` is what ``job.run`` returned, or ``error`` says why it failed."""
        utt = self._find(job.utterance_id)
        if error is not None:
            if self.is_news(job):
                self.counts["errors"] += 1
                self._out.append(Publish(ErrorEvent(code="recognizer", message=error, fatal=False)))
            if utt is not None and isinstance(job, Begin | AddAudio):
                utt.failed = True  # its later jobs fail for the same reason (no utterance in the recognizer)
            result = None
        if utt is not None:
            if isinstance(job, Begin):
                self._on_begun(utt)
            elif isinstance(job, TickJob):
                self._on_tick(utt, result)
            elif isinstance(job, Speculate):
                self._on_speculated(utt, bool(result))
            elif job is utt.final:
                self._on_final(utt, result)
        return self._take()

    def _on_begun(self, utt: _Utterance) -> None:
        utt.begun = True
        self._out.append(Publish(UtteranceStartEvent(utterance_id=utt.id, audio_start=utt.audio_start)))
        self._set_state(DictationState.RECORDING)
        if utt.ended:
            if not utt.in_tick:
                self._set_state(DictationState.FINALIZING)
        elif self._partial_interval_s > 0:
            self._out.append(ScheduleTick(utt.id, self._partial_interval_s))

    def _on_tick(self, utt: _Utterance, tick: Tick | None) -> None:
        utt.in_tick = False
        if tick is not None:
            self._commits(utt, tick.commits, tick.language)  # even when the utterance ended meanwhile
            if tick.stats.encoder_ms or tick.stats.prefill_ms:  # it decoded (or began to)
                utt.ticks += 1
                utt.tick_ms += tick.stats.total_ms
                utt.tick_prefill += tick.stats.prefill_tokens
        if utt.ended:
            self._set_state(DictationState.FINALIZING)
            return
        if tick is None:
            return  # the recognizer failed: no more partials for this utterance
        if tick.partial is not None and tick.partial.text:
            if utt.first_partial_ms is None:
                utt.first_partial_ms = (self._clock() - utt.t_start) * 1000
            utt.rev += 1
            self._out.append(Publish(PartialEvent(utterance_id=utt.id, rev=utt.rev, text=tick.partial.text)))
        self._out.append(ScheduleTick(utt.id, self._partial_interval_s))

    def _on_speculated(self, utt: _Utterance, held: bool) -> None:
        if utt.speculating:
            utt.speculation_ms = (self._clock() - utt.t_speculation) * 1000 if held else None

    def _on_final(self, utt: _Utterance, final: Final | None) -> None:
        del self._ending[utt.id]
        reason = utt.end_reason
        assert reason is not None and utt.t_end is not None
        if isinstance(utt.final, Finish):
            if not utt.final.use_speculation:
                utt.speculation_ms = None
            if final is None:
                reason = EndReason.ERROR
            else:
                self._commits(utt, final.commits, final.language)
                if final.no_speech:
                    reason = EndReason.NO_SPEECH
        if reason == EndReason.NO_SPEECH:
            self.counts["no_speech"] += 1
        latency = {}
        if utt.first_partial_ms is not None:
            latency["first_partial_ms"] = round(utt.first_partial_ms, 1)
        latency["final_ms"] = round((self._clock() - utt.t_end) * 1000, 1)
        if utt.speculation_ms is not None:
            latency["speculative_decode_ms"] = round(utt.speculation_ms, 1)
        latency["audio_ms"] = round(utt.samples / SAMPLE_RATE * 1000, 1)
        if utt.ticks:
            latency.update(ticks=utt.ticks, ticks_ms=round(utt.tick_ms, 1), ticks_prefill_tokens=utt.tick_prefill)
        # decode_ms: the final call itself (near zero when a speculation was kept); the split: the decode that
        # made the text (the speculation's, when one was kept)
        if final is not None:
            s = final.stats
            latency.update(
                decode_ms=round(s.total_ms, 1),
                encoder_ms=round(s.encoder_ms, 1),
                prefill_ms=round(s.prefill_ms, 1),
                prefill_tokens=s.prefill_tokens,
                generate_ms=round(s.generate_ms, 1),
                generated_tokens=s.generated_tokens,
            )
        language = (final.language or None) if final is not None else None
        self._out.append(
            Publish(UtteranceEndEvent(utterance_id=utt.id, reason=reason, latency=latency, language=language))
        )
        listening = self.active and self.mode != RecordMode.PTT and not self.overloaded
        self._set_state(DictationState.LISTENING if listening else DictationState.IDLE)
        self._out.append(Prepare(utt.id))

    # ---------------------------------------------------------------------------------------------- commit fan-out

    def _commits(self, utt: _Utterance, commits: Sequence[Commit], language: str | None) -> None:
        # ITN per commit: a number cut by a commit boundary is normalised in two parts (commits never change)
        normalize_text = self.itn and language == "Chinese"
        audio_end = utt.audio_start + utt.samples / SAMPLE_RATE
        for commit in commits:
            if commit.idx != utt.commits:  # append-only by construction; a gap would be a bug upstream
                raise AssertionError(f"commit idx {commit.idx} after {utt.commits} in utterance {utt.id}")
            utt.commits += 1
            self.counts["commits"] += 1
            if not commit.text:
                continue
            text = normalize(commit.text) if normalize_text else commit.text
            event = CommitEvent(utterance_id=utt.id, idx=commit.idx, text=text)
            self._out.append(Deliver(event, utt.audio_start, audio_end))
            if self.mode != RecordMode.PTT:
                self._out.append(Type(utt.id, text))
            elif not utt.ended:
                # Typing while the push-to-talk key is held would interleave with its autorepeat and modifiers:
                # text committed during the hold is typed once the key is released.
                utt.held_types.append(text)
            elif not utt.cancelled:  # cancelled before the key came up: its text stays in the journal, untyped
                self._out.append(Type(utt.id, text))

    def _type_held(self, utt: _Utterance) -> None:
        self._out.extend(Type(utt.id, text) for text in utt.held_types)
        utt.held_types.clear()

    # ------------------------------------------------------------------------------------------------- helpers

    def _set_state(self, state: DictationState) -> None:
        if state != self.state:
            self.state = state
            self._out.append(Publish(self.state_event()))

    def _take(self) -> list[Effect]:
        out, self._out = self._out, []
        return out
