"""Desktop notifications: over D-Bus to a notification server (a test service on a private session bus), with
the notify-send fallback, and never an exception when neither works."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from devkit.dbus import FakeNotifications, SessionBus
from qasr_live.notifications import Notifier

pytest.importorskip("jeepney", reason="jeepney is a runtime dependency (pip install -e .)")


@pytest.fixture(scope="module")
def bus():
    with SessionBus() as b:
        yield b


def test_notification_goes_over_dbus_and_repeats_are_held_back(bus):
    with FakeNotifications(bus.address) as server:
        n = Notifier({"DBUS_SESSION_BUS_ADDRESS": bus.address, "PATH": ""})
        assert n.notify("Typing failed", "text on clipboard, press Ctrl+V", urgency="critical") == "dbus"
        assert n.notify("Typing failed", "again") == "log"  # the same summary within REPEAT_S: log only
        assert n.notify("No microphone", "plug one in") == "dbus"
        calls = [c for c in server.wait_calls(2) if c[1] == "Notify"]
    app, replaces, _icon, summary, body, actions, hints, _timeout = calls[0][2]
    assert (app, replaces, summary, body, actions) == (
        "qasr-live",
        0,
        "Typing failed",
        "text on clipboard, press Ctrl+V",
        [],
    )
    assert hints["urgency"] == ("y", 2)
    assert calls[1][2][1] == 1  # the second replaces the first on screen (the id the server gave)
    assert calls[1][2][3] == "No microphone"
    assert [route for route, _, _ in n.sent] == ["dbus", "dbus"]


def _fake_notify_send(tmp_path: Path) -> Path:
    exe = tmp_path / "notify-send"
    exe.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/args\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return tmp_path / "args"


def test_without_a_notification_server_notify_send_is_used(bus, tmp_path):
    # a bus where nobody owns org.freedesktop.Notifications: the call fails, notify-send carries it
    args = _fake_notify_send(tmp_path)
    n = Notifier({"DBUS_SESSION_BUS_ADDRESS": bus.address, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert n.notify("Journal failed", "disk full") == "notify-send"
    assert args.read_text().splitlines()[-2:] == ["Journal failed", "disk full"]


def test_no_route_at_all_only_logs_and_never_raises(tmp_path, caplog):
    n = Notifier({"DBUS_SESSION_BUS_ADDRESS": f"unix:path={tmp_path}/absent", "PATH": str(tmp_path)})
    with caplog.at_level("WARNING"):
        assert n.notify("Typing failed", "no route") == "log"
    assert "Typing failed: no route" in caplog.text
    assert Notifier({}, enabled=False).notify("off") == "log"
