"""The real `qasr-live serve` process, driven like a user and a caption tool would (no display needed here).

Audio comes from a file or stdin source (the same interface as the microphone); control from `qasr-live ctl` and
WebSocket messages; events are read by a real WebSocket client; commits are checked against the journal.
The desktop test (Xvfb, PulseAudio microphone, typing into a window, hotkeys) is test_e2e_desktop.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from devkit.daemon_checks import assert_heard, check_event_stream, commits_by_utterance, journal_by_utterance
from devkit.daemon_harness import RealtimeMic, RunningDaemon, write_config
from devkit.demo_speech import known_sentences
from qasr_live.errors import EXIT_ALREADY_RUNNING
from qasr_live.model_store import DEMO_MODEL

RATE = 16000


def _pcm(audio: np.ndarray) -> np.ndarray:
    return (audio / (np.max(np.abs(audio)) + 1e-9) * 0.5 * 32767).astype(np.int16)


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), dtype=np.int16)


def _noise(seconds: float, dbfs: float = -45.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * RATE)) * 32768 * 10 ** (dbfs / 20)).astype(np.int16)


def _write_wav(path: Path, pcm: np.ndarray) -> Path:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return path


@pytest.fixture(scope="module")
def model() -> Path:
    return DEMO_MODEL


@pytest.fixture(scope="module")
def known() -> list[tuple[str, np.ndarray]]:
    return known_sentences(DEMO_MODEL, 3, seed=5)


@pytest.fixture(scope="module")
def texts(known) -> list[str]:
    """Held-out sentences of the demo model's grammar that offline transcription gets right."""
    return [text for text, _ in known]


@pytest.fixture(scope="module")
def sentences(known) -> list[np.ndarray]:
    """The texts spoken by the demo model's held-out voice, as 16 kHz int16."""
    return [_pcm(audio) for _, audio in known]


def test_continuous_file_replay(tmp_path: Path, model: Path, texts, sentences) -> None:
    """Continuous mode over a recording: utterances found by VAD, events in order, journal == commits,
    noise yields nothing, and the daemon finishes the last utterance and exits cleanly at the end of the file."""
    audio = np.concatenate(
        [_silence(0.5), sentences[0], _silence(1.5), _noise(2.0), _silence(0.5), sentences[1], _silence(1.0)]
    )
    wav = _write_wav(tmp_path / "replay.wav", audio)
    config = write_config(
        tmp_path / "config.yaml",
        model,
        tmp_path,
        audio={"source": str(wav)},
        trigger={"mode": "continuous"},
        typing={"enabled": False},
        hotkeys={"enabled": False},
        streaming={"partial_interval_ms": 300},
    )
    daemon = RunningDaemon(config, tmp_path)
    client = daemon.subscribe(since_seq=0)  # replay whatever happened before we connected
    try:
        assert daemon.proc.wait(60) == 0, daemon.log()
        time.sleep(0.3)
    finally:
        client.close()
        daemon.stop()
    events = client.events
    utterances = check_event_stream(events)
    ends = [e for e in events if e["type"] == "utterance_end"]
    assert len(ends) == len(utterances), [e["type"] for e in events]
    # VAD found the two sentences, each starting a little before its onset (pre-roll), and not the noise
    onsets = [0.5, 0.5 + (len(sentences[0]) / RATE) + 1.5 + 2.0 + 0.5]
    starts = [e["audio_start"] for e in events if e["type"] == "utterance_start"]
    assert len(starts) == 2, starts
    for start, onset in zip(starts, onsets, strict=True):
        assert onset - 0.4 <= start <= onset + 0.15, (starts, onsets)
    # VAD ended both on silence, and each committed its own sentence
    assert [e["reason"] for e in ends] == ["silence", "silence"]
    assert_heard(texts[:2], list(commits_by_utterance(events).values()))
    assert all(e["latency"]["final_ms"] >= 0 and e["latency"]["audio_ms"] > 500 for e in ends)
    # both ended after a full hangover of silence: the final decode was the one speculated at its start
    assert all(e["latency"]["speculative_decode_ms"] > 0 for e in ends)
    assert journal_by_utterance(daemon.journal()) == commits_by_utterance(events)
    assert "Traceback" not in daemon.log()
    history = subprocess.run(
        [sys.executable, "-m", "qasr_live", "history", "-n", "0", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    for text in commits_by_utterance(events).values():
        assert text.strip() in history.stdout


@pytest.fixture
def ptt_daemon(tmp_path: Path, model: Path):
    config = write_config(
        tmp_path / "config.yaml",
        model,
        tmp_path,
        audio={"source": "-"},
        trigger={"mode": "ptt"},
        typing={"enabled": False},
        hotkeys={"enabled": False},
        streaming={"partial_interval_ms": 250, "memory_tokens": 0},
    )
    daemon = RunningDaemon(config, tmp_path, stdin=subprocess.PIPE)
    mic = RealtimeMic(daemon.proc.stdin)
    yield daemon, mic
    mic.close()
    daemon.stop()


def _press_say_release(daemon: RunningDaemon, mic: RealtimeMic, pcm: np.ndarray) -> None:
    daemon.ctl("ptt-press")
    mic.say(pcm)
    daemon.ctl("ptt-release")


def test_push_to_talk_over_ctl(ptt_daemon, texts, sentences) -> None:
    daemon, mic = ptt_daemon
    client = daemon.subscribe()
    try:
        status = daemon.ctl("status")
        assert status["ok"] and status["status"]["mode"] == "ptt" and status["status"]["state"] == "idle"
        _press_say_release(daemon, mic, np.concatenate([sentences[0], _silence(0.3)]))
        first_end = client.wait_for(lambda e: e["type"] == "utterance_end")
        assert first_end["reason"] == "key_release"
        assert "final_ms" in first_end["latency"]
        # silence and noise while the key is held: no text, and the utterance says why
        _press_say_release(daemon, mic, np.concatenate([_silence(0.5), _noise(1.0, -60.0), _silence(0.5)]))
        second_end = client.wait_for(lambda e: e["type"] == "utterance_end" and e["seq"] > first_end["seq"])
        assert second_end["reason"] == "no_speech"
        # cancel ends the utterance at once (text committed before it stays in the journal; ptt types nothing)
        daemon.ctl("ptt-press")
        mic.say(sentences[1][: RATE // 2])
        daemon.ctl("cancel")
        third_end = client.wait_for(lambda e: e["type"] == "utterance_end" and e["seq"] > second_end["seq"])
        assert third_end["reason"] == "cancelled"
        daemon.ctl("ptt-release")
        time.sleep(0.3)
    finally:
        client.close()
    utterances = check_event_stream(client.events)
    assert len(utterances) == 3
    assert utterances[third_end["utterance_id"]][-1]["type"] == "utterance_end"
    assert_heard(texts[:1], [commits_by_utterance(client.events).get(first_end["utterance_id"], "")])
    assert journal_by_utterance(daemon.journal()) == commits_by_utterance(client.events)
    assert daemon.alive()


def test_replay_auth_and_origin(ptt_daemon, sentences) -> None:
    daemon, mic = ptt_daemon
    early = daemon.subscribe()
    _press_say_release(daemon, mic, sentences[2])
    end = early.wait_for(lambda e: e["type"] == "utterance_end")
    early.close()
    # a client that missed everything after seq N gets exactly the missed events, in order
    start = next(e for e in early.events if e["type"] == "utterance_start")
    late = daemon.subscribe(since_seq=start["seq"] - 1)
    late.wait_for(lambda e: e.get("seq") == end["seq"], timeout=10)
    late.close()
    missed = [e for e in early.events if e["seq"] >= start["seq"]]
    replayed = [e for e in late.events if e["seq"] >= start["seq"]]
    assert replayed[: len(missed)] == missed

    with (
        pytest.raises(InvalidStatus) as wrong,
        connect(daemon.url, additional_headers={"Authorization": "Bearer not-the-token"}, open_timeout=5),
    ):
        pass
    assert wrong.value.response.status_code == 401
    with (
        pytest.raises(InvalidStatus) as foreign,
        connect(daemon.url + f"?token={daemon.token()}", origin="https://evil.example", open_timeout=5),
    ):
        pass
    assert foreign.value.response.status_code == 403
    # the read-only token may listen but not control
    reader = daemon.subscribe(kind="read-token")
    reader.send({"type": "control", "action": "ptt_press"})
    error = reader.wait_for(lambda e: e["type"] == "error", timeout=10)
    reader.close()
    assert error["code"] == "forbidden"
    assert daemon.ctl("status")["status"]["state"] == "idle"
    # the control token drives dictation over the WebSocket too
    controller = daemon.subscribe()
    controller.send({"type": "control", "action": "ptt_press"})
    controller.wait_for(lambda e: e["type"] == "state" and e["state"] == "recording", timeout=10)
    controller.send({"type": "control", "action": "ptt_release"})
    controller.wait_for(lambda e: e["type"] == "utterance_end", timeout=30)
    controller.close()
    assert daemon.alive()


def test_encoder_crash_mid_utterance_loses_nothing(ptt_daemon, texts, sentences) -> None:
    daemon, mic = ptt_daemon
    client = daemon.subscribe()
    pid = daemon.ctl("status")["status"]["encoder_pid"]
    daemon.ctl("ptt-press")
    mic.say(sentences[0])  # returns once played in real time: several partial ticks have used the encoder
    os.kill(pid, signal.SIGKILL)  # the encoder process dies while the key is still held
    mic.say(sentences[1])
    daemon.ctl("ptt-release")
    end = client.wait_for(lambda e: e["type"] == "utterance_end", timeout=60)
    client.close()
    assert end["reason"] == "key_release", end
    status = daemon.ctl("status")["status"]
    assert status["encoder_pid"] != pid and status["encoder_restarts"] >= 1
    assert status["errors"] == 0
    assert journal_by_utterance(daemon.journal()) == commits_by_utterance(client.events)
    # the audio after the crash was heard too: the utterance covers both sentences, and so does its text
    assert end["latency"]["audio_ms"] >= (len(sentences[0]) + len(sentences[1])) / RATE * 1000 - 100
    assert_heard(texts[:2], list(commits_by_utterance(client.events).values()))
    assert not [e for e in client.events if e["type"] == "error"]
    assert daemon.alive()


def test_second_daemon_exits_at_once_as_already_running(ptt_daemon, tmp_path: Path) -> None:
    """The single-instance lock is taken before anything loads: the second daemon on the same runtime directory
    says who holds it and exits with its own status, without loading the model."""
    daemon, _ = ptt_daemon
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "second-notify.sock"))
    notify.setblocking(False)
    result = subprocess.run(
        [sys.executable, "-m", "qasr_live", "serve", "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "second-notify.sock")},
    )
    messages = []
    with contextlib.suppress(BlockingIOError):
        while True:
            messages.append(notify.recv(4096).decode())
    notify.close()
    assert result.returncode == EXIT_ALREADY_RUNNING, result.stderr
    assert f"already running (pid {daemon.proc.pid})" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any("loading the model" in m for m in messages), messages  # it stopped before loading
    assert daemon.alive() and daemon.ctl("status")["ok"]


def test_help_lists_the_exit_codes() -> None:
    result = subprocess.run([sys.executable, "-m", "qasr_live", "serve", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for code, what in ((2, "usage"), (3, "model"), (4, "device"), (5, "already runs")):
        assert re.search(rf"^\s+{code}\s+.*{what}", result.stdout, re.M), result.stdout


def test_bad_config_is_a_clear_error(tmp_path: Path, model: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"model:\n  dir: {model}\ntrigger:\n  mode: always\n")
    result = subprocess.run(
        [sys.executable, "-m", "qasr_live", "serve", "--config", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert f"{config}:4: trigger.mode: 'always' is not allowed" in result.stderr
    assert "Traceback" not in result.stderr


def test_ctl_without_daemon_says_how_to_start_it(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"control": {"runtime_dir": str(tmp_path / "run")}}))
    result = subprocess.run(
        [sys.executable, "-m", "qasr_live", "ctl", "status", "--config", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "qasr-live serve" in result.stderr and str(tmp_path / "run") in result.stderr
