"""Desktop notifications from the real daemon, end to end: the daemon process talks to a notification test
service (``org.freedesktop.Notifications``, devkit/dbus.py) on a private session bus, as it would to GNOME Shell,
Plasma, mako or dunst. Covered: a microphone that is not there at start (refused, and the desktop is told), and a
failure reported while dictating (the journal cannot be written: devkit/faults.py) reaching the desktop through
the daemon's ``on_error`` hook; with ``feedback.notifications: false`` nothing arrives."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from devkit.daemon_harness import RealtimeMic, RunningDaemon, write_config
from devkit.dbus import FakeNotifications, SessionBus
from devkit.demo_speech import known_sentences
from qasr_live.errors import EXIT_DEVICE
from qasr_live.model_store import DEMO_MODEL

pytest.importorskip("jeepney", reason="jeepney is a runtime dependency (pip install -e .)")

RATE = 16000


@pytest.fixture(scope="module")
def bus():
    with SessionBus() as b:
        yield b


@pytest.fixture
def notifications(bus):
    with FakeNotifications(bus.address) as server:
        yield server


def notified(server: FakeNotifications, n: int = 1, timeout: float = 10.0) -> list[tuple[str, str, str]]:
    """(summary, body, urgency hint) of each Notify the test service received (waiting for ``n`` of them)."""
    calls = [c for c in server.wait_calls(n, timeout) if c[1] == "Notify"]
    return [(body[3], body[4], body[6]["urgency"][1]) for _iface, _member, body in calls]


@pytest.mark.parametrize("enabled", [True, False], ids=["notifications-on", "notifications-off"])
def test_a_missing_microphone_at_start_is_refused_and_notified(tmp_path: Path, bus, notifications, enabled):
    config = write_config(
        tmp_path / "config.yaml",
        DEMO_MODEL,
        tmp_path,
        audio={"device": "no-such-microphone-qasr"},
        trigger={"mode": "continuous"},
        hotkeys={"enabled": False},
        feedback={"notifications": enabled},
    )
    result = subprocess.run(
        [sys.executable, "-m", "qasr_live", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": bus.address, "PATH": os.environ["PATH"]},
    )
    # the refusal is unchanged: one clear line, the device exit status
    assert result.returncode == EXIT_DEVICE, result.stderr
    assert "qasr-live: error: audio.device 'no-such-microphone-qasr'" in result.stderr, result.stderr
    if not enabled:
        time.sleep(0.5)
        assert notified(notifications, 0, timeout=0) == []
        return
    ((summary, body, urgency),) = notified(notifications)
    assert summary == "No microphone"
    assert "audio.device 'no-such-microphone-qasr'" in body
    assert urgency == 2  # critical: it stays on screen until dismissed


@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    """A sentence the demo model transcribes exactly: its commit is sure to reach the journal's write."""
    ((_, audio),) = known_sentences(DEMO_MODEL, 1, seed=5)
    return (audio / (np.max(np.abs(audio)) + 1e-9) * 0.5 * 32767).astype(np.int16)


@pytest.mark.parametrize("enabled", [True, False], ids=["notifications-on", "notifications-off"])
def test_a_journal_failure_while_dictating_reaches_the_desktop(tmp_path: Path, bus, notifications, sentence, enabled):
    """The journal cannot be written (EIO injected at its write): the daemon reports it (``error`` event) and its
    ``on_error`` hook puts it on the desktop, once per outage."""
    (tmp_path / "faults").mkdir()
    (tmp_path / "faults" / "journal").write_text("EIO")
    config = write_config(
        tmp_path / "config.yaml",
        DEMO_MODEL,
        tmp_path,
        audio={"source": "-"},
        trigger={"mode": "ptt"},
        typing={"enabled": False},
        hotkeys={"enabled": False},
        streaming={"partial_interval_ms": 250, "memory_tokens": 0},
        feedback={"notifications": enabled},
    )
    env = {"QASR_FAULTS": str(tmp_path / "faults"), "DBUS_SESSION_BUS_ADDRESS": bus.address}
    daemon = RunningDaemon(config, tmp_path, stdin=subprocess.PIPE, command=("-m", "devkit.faults", "serve"), env=env)
    mic = RealtimeMic(daemon.proc.stdin)
    try:
        client = daemon.subscribe()
        client.send({"type": "control", "action": "ptt_press"})
        mic.say(np.concatenate([sentence, np.zeros(RATE // 4, np.int16)]))
        client.send({"type": "control", "action": "ptt_release"})
        error = client.wait_for(lambda e: e["type"] == "error" and e["code"] == "journal_write_failed", timeout=60)
        client.close()
        if enabled:
            ((summary, body, urgency),) = notified(notifications)
            assert (summary, body, urgency) == ("Dictation problem", error["message"], 2)
            assert "journal" in body
        else:
            time.sleep(1.0)  # the hook runs off the event loop: give a wrong notification time to arrive
            assert notified(notifications, 0, timeout=0) == []
    finally:
        mic.close()
        if daemon.alive():
            daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.stop()
    assert code == 0, daemon.log()[-3000:]
