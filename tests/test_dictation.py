"""The dictation controller without devices: feed it audio (real espeak-ng speech through the real VAD), control
actions and recognizer results, and check the effects it asks for."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
import pytest

from qasr_live.config import VadConfig
from qasr_live.dictation.controller import DictationController
from qasr_live.dictation.effects import (
    AddAudio,
    Begin,
    Cancel,
    CloseMic,
    Deliver,
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
from qasr_live.streaming.results import Commit, Final, Partial, Stats, Tick

BLOCK = 320  # 20 ms


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(
    mode: RecordMode, *, microphone: bool = True, speculation_ms: int = 0, interval_ms: int = 200, itn: bool = False
):
    clock = Clock()
    ids = (f"u{i}" for i in itertools.count())
    ctl = DictationController(
        mode,
        VadConfig(),
        partial_interval_ms=interval_ms,
        endpoint_speculation_ms=speculation_ms,
        microphone=microphone,
        itn=itn,
        clock=clock,
        new_id=lambda: next(ids),
    )
    return ctl, clock


def tick(commits: Iterable[tuple[int, str]] = (), partial: str | None = None) -> Tick:
    return Tick([Commit(i, t) for i, t in commits], Partial(1, partial) if partial else None, "English", Stats())


def final(commits: Iterable[tuple[int, str]], no_speech: bool = False) -> Final:
    commits = [Commit(i, t) for i, t in commits]
    return Final(commits, "".join(c.text for c in commits), no_speech, None if no_speech else "English", Stats())


def feed(ctl: DictationController, pcm: np.ndarray) -> list:
    out = []
    for i in range(0, len(pcm), BLOCK):
        out += ctl.feed_audio(pcm[i : i + BLOCK])
    return out


def of(effects: list, kind: type) -> list:
    return [e for e in effects if isinstance(e, kind)]


def events(effects: list, kind: type) -> list:
    return [e.event for e in effects if isinstance(e, Publish) and isinstance(e.event, kind)]


def states(effects: list) -> list[DictationState]:
    return [e.state for e in events(effects, StateEvent)]


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16000), np.int16)


@pytest.fixture(scope="module")
def speech(say) -> np.ndarray:
    return say("The meeting is on Monday at ten thirty.")


# ------------------------------------------------------------------------------------------------ continuous


def test_continuous_utterance_from_speech_to_commit(speech):
    ctl, clock = make(RecordMode.CONTINUOUS)
    assert states(ctl.started()) == [DictationState.LISTENING]
    out = feed(ctl, np.concatenate([silence(0.5), speech]))
    (begin,) = of(out, Begin)
    audio = of(out, AddAudio)
    assert audio and all(a.utterance_id == begin.utterance_id for a in audio)
    assert not of(out, Finish)

    out = ctl.on_result(begin, None)
    (start,) = events(out, UtteranceStartEvent)
    assert 0.0 < start.audio_start < 0.5  # pre-roll before the onset at 0.5 s
    assert states(out) == [DictationState.RECORDING]
    (timer,) = of(out, ScheduleTick)
    assert timer.delay_s == pytest.approx(0.2)

    out = ctl.tick_due(begin.utterance_id)
    (job,) = of(out, TickJob)
    out = ctl.on_result(job, tick([(0, "The meeting")], partial=" is on"))
    (deliver,) = of(out, Deliver)
    assert (deliver.event.idx, deliver.event.text) == (0, "The meeting")
    assert [t.text for t in of(out, Type)] == ["The meeting"]  # typed at once outside push-to-talk
    (partial,) = events(out, PartialEvent)
    assert (partial.rev, partial.text) == (1, " is on")
    assert of(out, ScheduleTick)

    out = ctl.tick_due(begin.utterance_id)  # no new audio since the last tick: wait for more
    assert not of(out, TickJob) and of(out, ScheduleTick)

    clock.now += 1.0
    out = feed(ctl, silence(1.0))
    (finish,) = of(out, Finish)
    assert not finish.use_speculation
    assert states(out) == [DictationState.FINALIZING]
    clock.now += 0.25
    out = ctl.on_result(finish, final([(1, " is on Monday.")]))
    assert [d.event.text for d in of(out, Deliver)] == [" is on Monday."]
    (end,) = events(out, UtteranceEndEvent)
    assert end.reason == EndReason.SILENCE
    assert end.latency["final_ms"] == pytest.approx(250.0)
    assert end.latency["audio_ms"] > len(speech) / 16
    assert states(out) == [DictationState.LISTENING]
    assert of(out, Prepare)
    assert ctl.counts == {"utterances": 1, "no_speech": 0, "commits": 2, "errors": 0}


def test_commit_gap_is_a_bug_not_silently_published(speech):
    ctl, _ = make(RecordMode.CONTINUOUS)
    ctl.started()
    (begin,) = of(feed(ctl, speech), Begin)
    ctl.on_result(begin, None)
    job = of(ctl.tick_due(begin.utterance_id), TickJob)[0]
    with pytest.raises(AssertionError, match="commit idx 1 after 0"):
        ctl.on_result(job, tick([(1, "skipped one")]))


def test_tick_running_at_the_end_reports_its_commits_before_the_final_ones(speech):
    ctl, _ = make(RecordMode.CONTINUOUS)
    ctl.started()
    (begin,) = of(feed(ctl, speech), Begin)
    ctl.on_result(begin, None)
    (job,) = of(ctl.tick_due(begin.utterance_id), TickJob)
    out = feed(ctl, silence(1.0))  # the VAD ends the utterance while the tick runs
    assert of(out, Interrupt) and of(out, Finish)
    assert DictationState.FINALIZING not in states(out)  # not before the running tick's commits
    (finish,) = of(out, Finish)
    out = ctl.on_result(job, tick([(0, "The")], partial=" meeting"))
    assert [d.event.text for d in of(out, Deliver)] == ["The"]
    assert not events(out, PartialEvent)  # nobody will see a partial of an utterance that ended
    assert not of(out, ScheduleTick)
    assert states(out) == [DictationState.FINALIZING]
    out = ctl.on_result(finish, final([(1, " meeting.")]))
    assert [d.event.idx for d in of(out, Deliver)] == [1]


def test_recognizer_failure_ends_the_utterance_with_error(speech):
    ctl, _ = make(RecordMode.CONTINUOUS)
    ctl.started()
    (begin,) = of(feed(ctl, speech), Begin)
    ctl.on_result(begin, None)
    (finish,) = of(feed(ctl, silence(1.0)), Finish)
    out = ctl.on_result(finish, None, error="llama_decode failed")
    (err,) = events(out, ErrorEvent)
    assert (err.code, err.message, err.fatal) == ("recognizer", "llama_decode failed", False)
    assert events(out, UtteranceEndEvent)[0].reason == EndReason.ERROR
    assert ctl.counts["errors"] == 1


def test_no_speech_from_the_model(speech):
    ctl, _ = make(RecordMode.CONTINUOUS)
    ctl.started()
    (begin,) = of(feed(ctl, speech), Begin)
    ctl.on_result(begin, None)
    (finish,) = of(feed(ctl, silence(1.0)), Finish)
    out = ctl.on_result(finish, final([], no_speech=True))
    assert events(out, UtteranceEndEvent)[0].reason == EndReason.NO_SPEECH
    assert ctl.counts["no_speech"] == 1


# ------------------------------------------------------------------------------------- endpoint speculation


def test_speculation_starts_in_the_pause_and_becomes_the_final_decode(speech):
    ctl, clock = make(RecordMode.CONTINUOUS, speculation_ms=200)
    ctl.started()
    (begin,) = of(feed(ctl, speech), Begin)
    ctl.on_result(begin, None)
    out = feed(ctl, silence(0.3))
    (spec,) = of(out, Speculate)
    assert of(out, Interrupt)
    assert not of(out, Finish)
    assert of(ctl.tick_due(begin.utterance_id), ScheduleTick)  # no partial ticks while it runs
    clock.now += 0.1
    ctl.on_result(spec, True)
    out = feed(ctl, silence(1.0))
    (finish,) = of(out, Finish)
    assert finish.use_speculation
    out = ctl.on_result(finish, final([(0, "The meeting.")]))
    assert events(out, UtteranceEndEvent)[0].latency["speculative_decode_ms"] == pytest.approx(100.0)


def test_speculation_is_stale_when_speech_resumes(speech):
    ctl, _ = make(RecordMode.CONTINUOUS, speculation_ms=200)
    ctl.started()
    (begin,) = of(feed(ctl, speech), Begin)
    ctl.on_result(begin, None)
    (spec,) = of(feed(ctl, silence(0.3)), Speculate)
    ctl.on_result(spec, True)
    out = feed(ctl, speech[:8000])  # speech again within the hangover: the same utterance
    assert not of(out, Begin) and not of(out, Finish)
    out = ctl.shutdown()  # ended by the user, not by that silence
    (finish,) = of(out, Finish)
    assert not finish.use_speculation
    out = ctl.on_result(finish, final([(0, "The meeting.")]))
    end = events(out, UtteranceEndEvent)[0]
    assert end.reason == EndReason.KEY_RELEASE
    assert "speculative_decode_ms" not in end.latency


# ----------------------------------------------------------------------------------------------- push-to-talk


def press(ctl: DictationController, samples: int = 0) -> Begin:
    assert ctl.control(ControlAction.PTT_PRESS, samples) == [OpenMic()]
    (begin,) = of(ctl.mic_opened(samples), Begin)
    return begin


def release(ctl: DictationController) -> list:
    assert ctl.control(ControlAction.PTT_RELEASE, 0) == [CloseMic()]
    return ctl.mic_closed()


def test_push_to_talk_types_only_after_the_key_is_released(speech):
    ctl, _ = make(RecordMode.PTT)
    assert ctl.started() == []
    begin = press(ctl, samples=32000)
    out = ctl.on_result(begin, None)
    assert events(out, UtteranceStartEvent)[0].audio_start == 2.0
    out = feed(ctl, speech)
    assert len(of(out, AddAudio)) == -(-len(speech) // BLOCK)  # every block, no VAD in between
    (job,) = of(ctl.tick_due(begin.utterance_id), TickJob)
    out = ctl.on_result(job, tick([(0, "The meeting ")]))
    assert of(out, Deliver) and not of(out, Type)  # journaled and published, typed later
    out = release(ctl)
    assert [t.text for t in of(out, Type)] == ["The meeting "]
    (finish,) = of(out, Finish)
    out = ctl.on_result(finish, final([(1, "is on Monday.")]))
    assert [t.text for t in of(out, Type)] == ["is on Monday."]
    assert events(out, UtteranceEndEvent)[0].reason == EndReason.KEY_RELEASE
    assert states(out)[-1] == DictationState.IDLE


def test_push_to_talk_without_speech_decodes_nothing():
    ctl, _ = make(RecordMode.PTT)
    begin = press(ctl)
    ctl.on_result(begin, None)
    feed(ctl, silence(1.0))
    out = release(ctl)
    (cancel,) = of(out, Cancel)
    assert not of(out, Finish)
    out = ctl.on_result(cancel, None)
    assert events(out, UtteranceEndEvent)[0].reason == EndReason.NO_SPEECH


def test_cancel_types_nothing_held(speech):
    ctl, _ = make(RecordMode.PTT)
    begin = press(ctl)
    ctl.on_result(begin, None)
    feed(ctl, speech)
    (job,) = of(ctl.tick_due(begin.utterance_id), TickJob)
    ctl.on_result(job, tick([(0, "The meeting")]))
    out = ctl.control(ControlAction.CANCEL, 0)
    assert not of(out, Type)
    (cancel,) = of(out, Cancel)
    out = ctl.on_result(cancel, None)
    assert events(out, UtteranceEndEvent)[0].reason == EndReason.CANCELLED


def test_release_before_begin_is_done_keeps_the_event_order(speech):
    ctl, _ = make(RecordMode.PTT)
    begin = press(ctl)
    feed(ctl, speech)
    out = release(ctl)
    assert DictationState.FINALIZING not in states(out)  # utterance_start has not been published yet
    assert of(out, Finish)
    out = ctl.on_result(begin, None)
    assert events(out, UtteranceStartEvent)
    assert states(out) == [DictationState.RECORDING, DictationState.FINALIZING]
    assert not of(out, ScheduleTick)


# ----------------------------------------------------------------------------------------------------- toggle


def test_toggle_stop_flushes_the_utterance_as_key_release(speech):
    ctl, _ = make(RecordMode.TOGGLE, microphone=False)  # a file source: no microphone to open
    assert ctl.feed_audio(speech[:BLOCK]) == []  # not listening yet
    out = ctl.control(ControlAction.TOGGLE, 0)
    assert states(out) == [DictationState.LISTENING]
    (begin,) = of(feed(ctl, speech), Begin)
    out = ctl.control(ControlAction.TOGGLE, len(speech))
    (finish,) = of(out, Finish)
    assert DictationState.IDLE not in states(out)  # idle once the utterance's end is published
    ctl.on_result(begin, None)
    out = ctl.on_result(finish, final([(0, "The meeting.")]))
    assert events(out, UtteranceEndEvent)[0].reason == EndReason.KEY_RELEASE
    assert out.index(Publish(ctl.state_event())) > out.index(Publish(events(out, UtteranceEndEvent)[0]))
    assert ctl.state == DictationState.IDLE and not ctl.active


def test_jobs_name_their_utterance(speech):
    ctl, _ = make(RecordMode.CONTINUOUS)
    ctl.started()
    out = feed(ctl, np.concatenate([speech, silence(1.0), speech, silence(1.0)]))
    jobs = of(out, Job)
    begins = of(jobs, Begin)
    assert len(begins) == 2 and begins[0].utterance_id != begins[1].utterance_id
    finishes = of(jobs, Finish)
    assert [f.utterance_id for f in finishes] == [b.utterance_id for b in begins]
    assert ctl.utterance_id is None


@pytest.mark.parametrize(("itn", "language", "typed"), [
    (True, "Chinese", ["会议在2026年12月3日", "开始，占百分"]),
    (True, "English", ["会议在二〇二六年十二月三日", "开始，占百分"]),
    (False, "Chinese", ["会议在二〇二六年十二月三日", "开始，占百分"]),
])  # fmt: skip
def test_chinese_commits_are_normalised_before_journal_and_typing(speech, itn, language, typed):
    """recognition.itn: a Chinese utterance's commits reach the journal/bus (Deliver) and the typist (Type)
    with their numbers as digits; other languages, or itn off, pass as they are. Each commit on its own."""
    ctl, _ = make(RecordMode.CONTINUOUS, itn=itn)
    ctl.started()
    (begin,) = of(feed(ctl, speech), Begin)
    ctl.on_result(begin, None)
    (job,) = of(ctl.tick_due(begin.utterance_id), TickJob)
    first = Tick([Commit(0, "会议在二〇二六年十二月三日")], None, language, Stats())
    out = ctl.on_result(job, first)
    (finish,) = of(feed(ctl, silence(1.0)), Finish)
    out += ctl.on_result(finish, Final([Commit(1, "开始，占百分")], "", False, language, Stats()))
    assert [d.event.text for d in of(out, Deliver)] == typed
    assert [t.text for t in of(out, Type)] == typed
