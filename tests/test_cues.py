"""Audible feedback: other applications turned down while recording and put back afterwards, and the start/stop
sounds — against a private PulseAudio server (devkit/pulse.py) with real playback streams."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest

from devkit.pulse import PulseAudio, require_pulse
from qasr_live.audio.cues import Cues, Ducker, tone


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    require_pulse()
    with PulseAudio(tmp_path_factory.mktemp("pulse"), keep_awake=False) as server:
        yield server


def _volumes(pulse: PulseAudio) -> dict[int, list[int]]:
    items = json.loads(pulse.pactl("-f", "json", "list", "sink-inputs") or "[]")
    return {int(i["index"]): [int(ch["value"]) for ch in i["volume"].values()] for i in items}


def _wait_streams(pulse: PulseAudio, n: int, timeout: float = 10.0) -> dict[int, list[int]]:
    deadline = time.monotonic() + timeout
    while len(found := _volumes(pulse)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def test_other_playback_is_ducked_while_recording_and_restored(pulse):
    music = pulse.play(np.zeros(16000 * 20), wait=False)  # another application playing (20 s of audio)
    try:
        (stream,) = _wait_streams(pulse, 1)
        before = _volumes(pulse)[stream]
        ducker = Ducker(0.3, env=pulse.child_env())
        assert ducker.duck() == 1
        ducked = _volumes(pulse)[stream]
        assert all(abs(d - b * 0.3) <= 2 for d, b in zip(ducked, before, strict=True))
        assert ducker.restore() == 1
        assert _volumes(pulse)[stream] == before
        # the user turns the stream up while dictating: their choice is kept
        ducker.duck()
        pulse.pactl("set-sink-input-volume", str(stream), "80%")
        user = _volumes(pulse)[stream]
        assert ducker.restore() == 0
        assert _volumes(pulse)[stream] == user
    finally:
        music.terminate()
        music.wait()


def test_ducking_without_a_sound_server_is_harmless(tmp_path, caplog):
    ducker = Ducker(0.3, env={"PATH": str(tmp_path)})  # no pactl
    assert ducker.duck() == 0 and ducker.restore() == 0
    assert "cannot change other applications' volume" in caplog.text


def test_start_and_stop_sounds_are_played_through_the_default_output(pulse, tmp_path):
    """The cue reaches the sound server: recorded back from the sink's monitor."""
    recording = tmp_path / "monitor.raw"
    with open(recording, "wb") as out:
        rec = subprocess.Popen(
            ["parec", f"--device={pulse.monitor}", "--raw", "--format=s16le", "--rate=48000", "--channels=1"],
            env=pulse.child_env(),
            stdout=out,
        )
        try:
            time.sleep(0.3)
            with pulse.client_env():
                cues = Cues(sounds=True, duck_volume=1.0)
                worker = cues.recording(True)
                assert worker is not None
                worker.join(10)
                assert cues.recording(True) is None  # no change, no second cue
            time.sleep(0.5)
        finally:
            rec.terminate()
            rec.wait()
    pcm = np.frombuffer(recording.read_bytes(), dtype="<i2").astype(np.float32) / 32768
    assert pcm.size > 0
    expected = float(np.sqrt(np.mean(tone(True) ** 2)))
    loudest = max(float(np.sqrt(np.mean(pcm[i : i + 2400] ** 2))) for i in range(0, max(1, pcm.size - 2400), 1200))
    assert loudest > expected * 0.3  # the tone is there (silence otherwise)
