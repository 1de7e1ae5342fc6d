"""A recognizer that cannot keep up: stale partials skipped, the audio waiting bounded, the overload reported, and
nothing that was taken lost (issue #24, the one-hour soak's finding: RSS +71 % with the audio of every waiting
utterance held).

The queue policy (dictation/backlog.py) and the controller's overload are checked without devices; the whole
story against the real daemon process, its recognizer slowed down on purpose by devkit/faults.py (``slow``).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devkit.daemon_checks import check_event_stream, commits_by_utterance, journal_by_utterance
from devkit.demo_speech import known_sentences
from qasr_live.config import AppConfig
from qasr_live.dictation.backlog import RecognizerQueue, Transition
from qasr_live.dictation.effects import AddAudio, Begin, Cancel, Finish, Job, Prepare, Speculate, TickJob
from qasr_live.events import ControlAction, DictationState, EndReason, RecordMode, UtteranceEndEvent
from qasr_live.model_store import DEMO_MODEL
from tests.test_dictation import BLOCK, events, feed, final, make, of, silence, states
from tests.test_hardening import start_daemon, stop_daemon

RATE = 16000


def audio(uid: str, n: int = 320) -> AddAudio:
    return AddAudio(uid, np.zeros(n, np.int16))


def drain(q: RecognizerQueue) -> tuple[list[Job], list[Job]]:
    ran, skipped = [], []
    while q:
        batch = q.take()
        ran += batch.run
        skipped += batch.skipped
    return ran, skipped


# ---------------------------------------------------------------------------------------------- the queue policy


def test_a_batch_carries_the_audio_blocks_up_to_the_next_job_that_computes() -> None:
    q = RecognizerQueue(RATE)
    tick = TickJob("a")
    for job in (Begin("a"), audio("a"), audio("a"), tick, audio("a")):
        q.push(job)
    assert q.take().run == [Begin("a")]
    batch = q.take()
    assert [type(j) for j in batch.run] == [AddAudio, AddAudio, TickJob] and not batch.skipped
    assert q.queued_samples == 320
    assert [type(j) for j in q.take().run] == [AddAudio] and q.queued_samples == 0 and not q


def test_ticks_and_speculations_nobody_will_see_are_skipped_never_audio_or_finals() -> None:
    q = RecognizerQueue(RATE)
    jobs = [Begin("a"), TickJob("a"), audio("a"), Speculate("a"), audio("a"), Finish("a", False), Prepare("a")]
    jobs += [Begin("b"), TickJob("b"), audio("b"), TickJob("b"), Speculate("b"), audio("b")]
    for job in jobs:
        q.push(job)
    ran, skipped = drain(q)
    # a's tick and speculation: its end (which decodes anew) is queued behind them; b's first tick: a newer one
    assert [id(j) for j in skipped] == [id(jobs[1]), id(jobs[3]), id(jobs[8])]
    # the rest runs, in order: b's second tick and its speculation have nothing newer behind them
    assert [id(j) for j in ran] == [id(j) for i, j in enumerate(jobs) if i not in (1, 3, 8)]
    assert q.skipped == {"tick": 2, "speculate": 1}


def test_a_speculation_the_final_decode_will_use_is_kept() -> None:
    q = RecognizerQueue(RATE)
    jobs = [Speculate("a"), audio("a"), Finish("a", True), Speculate("b"), Speculate("b"), Cancel("b")]
    for job in jobs:
        q.push(job)
    ran, skipped = drain(q)
    assert [id(j) for j in skipped] == [id(jobs[3]), id(jobs[4])]
    assert [id(j) for j in ran] == [id(j) for j in jobs[:3]] + [id(jobs[5])]


def test_a_tick_of_another_utterance_or_a_cancel_decides_only_for_its_own() -> None:
    q = RecognizerQueue(RATE)
    for job in (TickJob("a"), Cancel("b"), TickJob("c"), Cancel("c")):
        q.push(job)
    ran, skipped = drain(q)
    assert skipped == [TickJob("c")] and ran == [TickJob("a"), Cancel("b"), Cancel("c")]


def test_overload_above_the_limit_and_recovery_below_half_of_it() -> None:
    q = RecognizerQueue(1000)
    q.push(Begin("a"))
    q.push(audio("a", 600))
    assert q.transition() is None
    q.push(audio("a", 401))
    assert q.queued_samples == 1001 and q.transition() == Transition.OVERLOADED and q.overloaded
    assert q.transition() is None  # said once
    q.take()  # Begin
    q.push(Finish("a", False))
    assert q.take().run[-1] == Finish("a", False)
    assert q.queued_samples == 0 and q.transition() == Transition.RECOVERED and not q.overloaded
    # between half and the limit nothing changes either way (no flapping)
    for n in (600, 401):
        q.push(audio("b", n))
    assert q.transition() == Transition.OVERLOADED
    q.push(TickJob("b"))
    q.push(audio("b", 400))
    q.take()  # 1001 samples leave with the tick; 400 stay, under half of the limit
    assert q.queued_samples == 400 and q.transition() == Transition.RECOVERED
    assert q.overloads == 2 and q.peak_samples == 1401


job_kinds = st.sampled_from(["begin", "audio", "tick", "speculate", "finish", "cancel", "prepare", "take"])


@settings(max_examples=int(os.environ.get("QASR_FUZZ_EXAMPLES", "200")), deadline=None)
@given(st.lists(st.tuples(job_kinds, st.sampled_from("abc"), st.integers(1, 4000)), max_size=80))
def test_queue_properties(ops) -> None:
    """Whatever the order of pushes and takes: FIFO order, only ticks and speculations are skipped and only
    when an end or a newer one of the same utterance was queued behind them, the audio count is exact, and
    nothing per utterance stays behind once the queue is empty."""
    q = RecognizerQueue(5000)
    pushed: list[Job] = []
    out: list[tuple[Job, bool]] = []  # (job, skipped), in the order the queue gave them
    make_job = {
        "begin": lambda u, n: Begin(u),
        "audio": lambda u, n: audio(u, n),
        "tick": lambda u, n: TickJob(u),
        "speculate": lambda u, n: Speculate(u),
        "finish": lambda u, n: Finish(u, n % 2 == 0),
        "cancel": lambda u, n: Cancel(u),
        "prepare": lambda u, n: Prepare(u),
    }
    for kind, uid, n in ops + [("take", "a", 0)] * 100:
        if kind == "take":
            batch = q.take()
            assert len([j for j in batch.run if not isinstance(j, AddAudio)]) <= 1
            out += [(j, True) for j in batch.skipped] + [(j, False) for j in batch.run]
        else:
            job = make_job[kind](uid, n)
            q.push(job)
            pushed.append(job)
        waiting = sum(len(j.pcm) for j in pushed[len(out) :] if isinstance(j, AddAudio))
        assert q.queued_samples == waiting
    position = {id(j): i for i, j in enumerate(pushed)}
    assert sorted(position[id(j)] for j, _ in out) == list(range(len(pushed)))  # each job out exactly once
    ran = [position[id(j)] for j, skipped in out if not skipped]
    assert ran == sorted(ran)  # what runs runs in push order
    for job, skipped in out:
        if not skipped:
            continue
        assert isinstance(job, TickJob | Speculate)
        # stale only because of something of its own utterance pushed behind it
        behind = pushed[position[id(job)] + 1 :]
        newer = TickJob if isinstance(job, TickJob) else Speculate
        ends = [j for j in behind if j.utterance_id == job.utterance_id and isinstance(j, Finish | Cancel | newer)]
        if isinstance(job, Speculate):  # a final decode that will use it keeps it
            ends = [j for j in ends if not (isinstance(j, Finish) and j.use_speculation)]
        assert ends
    assert not q and q.queued_samples == 0
    assert not (q._ends or q._ticks or q._speculations)  # no per-utterance entry left: weeks of uptime


# --------------------------------------------------------------------------------------- the controller's overload


@pytest.fixture(scope="module")
def speech(say) -> np.ndarray:
    return say("The meeting is on Monday at ten thirty.")


def test_overload_ends_the_recording_utterance_and_takes_no_audio_until_resumed(speech) -> None:
    ctl, _ = make(RecordMode.CONTINUOUS)
    ctl.started()
    out = feed(ctl, speech[: len(speech) // 2])
    (begin,) = of(out, Begin)
    ctl.on_result(begin, None)
    out = ctl.overload()
    (finish,) = of(out, Finish)  # decoded like any other end: what it holds is committed
    assert finish.utterance_id == begin.utterance_id and not finish.use_speculation
    assert states(out) == [DictationState.FINALIZING]
    assert feed(ctl, speech) == []  # nothing taken while overloaded, not even the VAD runs
    out = ctl.on_result(finish, final([(0, "The meeting")]))
    (end,) = events(out, UtteranceEndEvent)
    assert end.reason == EndReason.OVERLOAD
    assert states(out) == [DictationState.IDLE]  # not listening: the user must not think it hears
    out = ctl.resume(source_samples=10 * RATE)
    assert states(out) == [DictationState.LISTENING]
    out = feed(ctl, np.concatenate([silence(0.3), speech]))
    (begin2,) = of(out, Begin)
    assert begin2.utterance_id != begin.utterance_id and of(out, AddAudio)
    assert ctl.counts["utterances"] == 2


def test_push_to_talk_overload_while_the_key_is_held(speech) -> None:
    ctl, _ = make(RecordMode.PTT)
    ctl.control(ControlAction.PTT_PRESS, 0)
    (begin,) = of(ctl.mic_opened(0), Begin)
    ctl.on_result(begin, None)
    feed(ctl, speech)
    (finish,) = of(ctl.overload(), Finish)
    assert feed(ctl, speech) == []
    ctl.on_result(finish, final([(0, "The meeting is on Monday.")]))
    # the key is still held when the recognizer catches up: a new utterance starts, and takes audio
    out = ctl.resume(source_samples=5 * RATE)
    (begin2,) = of(out, Begin)
    ctl.on_result(begin2, None)
    assert of(feed(ctl, speech[: 10 * BLOCK]), AddAudio)
    # released while overloaded: nothing starts at the next press until resume()
    ctl.overload()
    ctl.control(ControlAction.PTT_RELEASE, 6 * RATE)
    ctl.mic_closed()
    ctl.control(ControlAction.PTT_PRESS, 7 * RATE)
    assert not of(ctl.mic_opened(7 * RATE), Begin)
    assert of(ctl.resume(8 * RATE), Begin)


def test_a_skipped_tick_is_no_error_and_no_partial(speech) -> None:
    ctl, _ = make(RecordMode.CONTINUOUS)
    ctl.started()
    (begin,) = of(feed(ctl, speech), Begin)
    ctl.on_result(begin, None)
    (tick,) = of(ctl.tick_due(begin.utterance_id), TickJob)
    (finish,) = of(feed(ctl, silence(1.0)), Finish)
    out = ctl.skipped(tick)  # its end was queued behind it
    assert states(out) == [DictationState.FINALIZING] and not events(out, UtteranceEndEvent)
    out = ctl.on_result(finish, final([(0, "The meeting is on Monday.")]))
    assert events(out, UtteranceEndEvent)[0].reason == EndReason.SILENCE
    assert ctl.counts["errors"] == 0


def test_the_backlog_limit_is_a_config_key_with_a_sensible_default() -> None:
    assert AppConfig().streaming.max_backlog_s == 120


# ------------------------------------------------------------------------------------------- the real daemon


LIMIT_S = 2.0
SLOW_S = 1.0


def test_overloaded_daemon_reports_bounds_the_backlog_loses_nothing_and_resumes(tmp_path: Path, report) -> None:
    from devkit.dbus import FakeNotifications, SessionBus

    sentences = [pcm for _, pcm in known_sentences(DEMO_MODEL, 3, seed=5)]
    sentences = [(a / (np.max(np.abs(a)) + 1e-9) * 0.5 * 32767).astype(np.int16) for a in sentences]
    pause = np.zeros(int(0.9 * RATE), np.int16)  # > vad.hangover_ms: one utterance per sentence
    with SessionBus() as bus, FakeNotifications(bus.address) as notifications:
        os.environ["DBUS_SESSION_BUS_ADDRESS"] = bus.address  # the daemon's environment (start_daemon copies it)
        try:
            daemon, mic = start_daemon(
                tmp_path,
                faults=True,
                trigger={"mode": "continuous"},
                streaming={"max_backlog_s": LIMIT_S},
                feedback={"notifications": True},
            )
        finally:
            del os.environ["DBUS_SESSION_BUS_ADDRESS"]
        events = daemon.subscribe()
        polled: list[dict] = []
        stop_polling = threading.Event()

        def poll() -> None:  # the backlog as `ctl status` shows it, all along
            while not stop_polling.is_set():
                polled.append(daemon.status()["backlog"])
                time.sleep(0.1)

        poller = threading.Thread(target=poll, daemon=True)
        try:
            (faults := tmp_path / "faults" / "slow").write_text(str(SLOW_S))
            poller.start()
            t0 = time.monotonic()
            for pcm in sentences * 4:  # dictation in real time, never waiting for the daemon, until it overloads
                mic.say(np.concatenate([pcm, pause]))
                if events.of_type("error"):
                    break
            over = events.wait_for(lambda e: e["type"] == "error" and e["code"] == "overload", timeout=30)
            t_over = time.monotonic() - t0
            faults.unlink()  # the machine is quiet again
            back = events.wait_for(lambda e: e["type"] == "error" and e["code"] == "overload_ended", timeout=90)
            status = daemon.status()
            # new speech after the recovery is taken and committed
            mic.say(np.concatenate([pause, sentences[0], pause, pause]))
            after = events.wait_for(
                lambda e: e["type"] == "utterance_end" and e["seq"] > back["seq"] and e["reason"] != "no_speech",
                timeout=60,
            )
            # every utterance taken ends (one may have started in the silence after the last sentence)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _open_utterances(events.events):
                time.sleep(0.2)
            assert not _open_utterances(events.events), [e for e in events.events if e["type"] != "partial"]
            stop_polling.set()
            poller.join(5)
            daemon_overloads = daemon.status()["backlog"]["overloads"]
            calls = [c for c in notifications.wait_calls(1) if c[1] == "Notify"]
        finally:
            stop_polling.set()
            events.close()
            stop_daemon(daemon, mic)
    log = daemon.log()
    # reported once, everywhere: event, log, status, desktop notification
    assert not over["fatal"] and "streaming.max_backlog_s" in over["message"], over
    overloads = len([e for e in events.events if e["type"] == "error" and e["code"] == "overload"])
    assert overloads == daemon_overloads >= 1  # one report per overload (a loaded machine may make a second)
    assert "overload: the recognizer is" in log and "taking audio again" in log
    assert status["last_error"]["code"] == "overload" and status["backlog"]["overloads"] >= 1
    assert any(b["overloaded"] for b in polled), polled
    assert any("streaming.max_backlog_s" in c[2][4] for c in calls), calls
    # bounded: never more than the limit plus what one pump step can add (the VAD's pre-roll and a block)
    peak = max(b["audio_s"] for b in polled)
    assert status["backlog"]["peak_audio_s"] <= LIMIT_S + 0.5, status["backlog"]
    assert peak <= LIMIT_S + 0.5
    assert status["backlog"]["audio_s"] < LIMIT_S / 2
    # nothing taken is lost: every utterance that started ended, and what was committed is in the journal
    by_utt = check_event_stream(events.events)
    ends = {e["utterance_id"]: e for e in events.of_type("utterance_end")}
    assert set(by_utt) == set(ends), "an utterance that was taken never ended"
    reasons = [e["reason"] for e in ends.values()]
    assert "overload" in reasons and "error" not in reasons, reasons
    committed = commits_by_utterance(events.events)
    assert journal_by_utterance(daemon.journal()) == committed
    spoken = [u for u, e in ends.items() if e["reason"] in ("silence", "overload")]
    assert spoken and all(committed.get(u, "").strip() for u in spoken), (spoken, committed)
    assert committed.get(after["utterance_id"], "").strip()
    report(
        f"overload: reported {t_over:.1f} s into the dictation (limit {LIMIT_S:g} s, {SLOW_S:g} s per decode); "
        f"peak backlog {status['backlog']['peak_audio_s']} s; {len(ends)} utterances taken, all committed; "
        f"skipped {status['backlog']['skipped']}"
    )


def _open_utterances(events: list[dict]) -> set[str]:
    started = {e["utterance_id"] for e in events if e["type"] == "utterance_start"}
    return started - {e["utterance_id"] for e in events if e["type"] == "utterance_end"}
